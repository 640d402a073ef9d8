"""What both clients build their httpx client from: the service's URL, the API key, the
timeout. `TASKSTREAM_URL` and `TASKSTREAM_API_KEY` fill in what the caller leaves out,
as `celery` reads its broker URL and `rq` its Redis URL from the environment.

Imports: stdlib only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8081"
DEFAULT_TIMEOUT = 30.0


def _version() -> str:
    try:
        return version("taskstream-client")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "0"


def http_options(
    base_url: str | None,
    api_key: str | None,
    timeout: float | None,
    headers: Mapping[str, str] | None,
) -> dict[str, Any]:
    """Keyword arguments of `httpx.Client` / `httpx.AsyncClient`: the key goes in
    `X-API-Key` (the service takes that or `Authorization: Bearer`)."""
    url = base_url or os.environ.get("TASKSTREAM_URL") or DEFAULT_URL
    key = api_key if api_key is not None else os.environ.get("TASKSTREAM_API_KEY")
    sent = {"User-Agent": f"taskstream-client/{_version()}", **(headers or {})}
    if key:
        sent["X-API-Key"] = key
    return {"base_url": url.rstrip("/"), "headers": sent, "timeout": timeout}
