"""Credentials: the API key of the legacy API and the token of the PAI-EAS routes.

API_KEY guards every route but the probes, the docs and the dashboard's pages and files
(`X-API-Key: KEY` or `Authorization: Bearer KEY`); EAS_TOKEN guards `/api/predict/...`
instead (`Authorization: TOKEN` or `Bearer TOKEN`). Both compare in constant time.

Imports: errors.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from app.errors import Unauthorized

PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/livez",
        "/readyz",
        "/docs",
        "/redoc",
        "/openapi.json",
        "/openapi.yaml",
        "/dashboard",  # a page without data: its API calls carry the key
    }
)
STATIC_PREFIX = "/static/"  # the dashboard's scripts and styles
PAGES_PREFIX = "/dashboard/"  # the dashboard's other pages (web/browser.py), as data-less
EAS_PREFIX = "/api/predict/"  # EAS_TOKEN guards these instead (web/eas.py)


def needs_api_key(path: str, api_keys: tuple[bytes, ...]) -> bool:
    """Whether a request to `path` must carry the API key (when one is set)."""
    return (
        bool(api_keys)
        and path not in PUBLIC_PATHS
        and not path.startswith((EAS_PREFIX, STATIC_PREFIX, PAGES_PREFIX))
    )


def api_key_ok(headers: Mapping[bytes, bytes], api_keys: tuple[bytes, ...]) -> bool:
    """`X-API-Key`, or a Bearer `Authorization`, is one of API_KEY's keys."""
    offered = headers.get(b"x-api-key", b"")
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        offered = offered or auth[7:].strip()
    return any(hmac.compare_digest(offered, key) for key in api_keys)


def check_eas_token(header: str | None, tokens: tuple[str, ...]) -> None:
    """`Authorization: TOKEN` or `Bearer TOKEN`, checked in constant time against
    EAS_TOKEN; with no EAS_TOKEN set, any non-empty value passes (warned at start)."""
    offered = (header or "").strip()
    if offered[:7].lower() == "bearer ":
        offered = offered[7:].strip()
    if not offered:
        raise Unauthorized("Authorization header required")
    if tokens and not any(hmac.compare_digest(offered.encode(), t.encode()) for t in tokens):
        raise Unauthorized("wrong token")
