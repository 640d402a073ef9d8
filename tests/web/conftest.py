"""Helpers of the web tests: Redis snapshots ("bad input changes nothing"), error
bodies, a few API calls, and a page of headless Chromium for the dashboard's tests.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from playwright.async_api import ViewportSize, async_playwright

from app.engine import views
from app.engine.history import rolled_key
from app.engine.queue import Queue
from tests.conftest import Service

MakeService = Callable[..., Awaitable[Service]]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}  # the dashboard tests' browser window


# --- helpers ------------------------------------------------------------------------


async def snapshot(client: Any, streams: Queue) -> dict[str, Any]:
    """Everything this queue holds in Redis: every key's content, plus the counts."""
    stored: dict[Any, Any] = {}
    async for key in client.scan_iter(match=f"{streams.keys.prefix}*", count=1000):
        if key in (streams.keys.cleanup_lock.encode(), rolled_key(streams).encode()):
            continue  # housekeeping's lock and roll-up marker, set by its first run at any moment
        kind = (await client.type(key)).decode()
        if kind == "stream":
            stored[key] = (kind, await client.xrange(key))
        elif kind == "hash":
            stored[key] = (kind, await client.hgetall(key))
        elif kind == "zset":
            stored[key] = (kind, await client.zrange(key, 0, -1, withscores=True))
        elif kind == "string":
            stored[key] = (kind, await client.get(key))
        else:
            stored[key] = (kind, None)
    return {"keys": stored, "counts": await views.counts(streams)}


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict)
    assert isinstance(body.get("error"), str) and body["error"]
    return str(body["error"])


async def enqueue(service: Service, **task: Any) -> dict[str, Any]:
    task.setdefault("code", "print(1)")
    response = await service.http.post("/tasks", json=task)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def get(service: Service, eval_id: str) -> dict[str, Any]:
    response = await service.http.get(f"/tasks/{eval_id}")
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


async def pull(service: Service, wait: float = 0) -> dict[str, Any]:
    response = await service.http.get("/tasks/next", params={"wait": wait})
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


async def assert_unknown(service: Service, *eval_ids: str) -> None:
    for eval_id in eval_ids:
        response = await service.http.get(f"/tasks/{eval_id}")
        assert_error(response, 404)


@pytest.fixture
async def frozen(service: Service, client: Any, streams: Queue) -> Callable[[], Awaitable[None]]:
    """Snapshot once `service` runs; calling the result asserts Redis still holds exactly that."""
    before = await snapshot(client, streams)

    async def unchanged() -> None:
        assert await snapshot(client, streams) == before

    return unchanged


@pytest.fixture
async def page():
    """A page of Debian's headless Chromium (driven by Playwright), VIEWPORT-sized."""
    assert CHROMIUM, "Debian's chromium is needed (make test installs it)"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        context = await browser.new_context(viewport=VIEWPORT)
        yield await context.new_page()
        await browser.close()
