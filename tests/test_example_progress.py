"""The example executor's progress reports (app/example_progress.py): `PROGRESS n` lines of
the running code reach the service through the task's `progress_url`, end to end (the
service and the example executor on loopback, the code a real subprocess)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import example_executor
from app.example_progress import Progress, api_key, parse
from app.runtime.executors import ExecutorPool
from app.settings import Settings
from tests.conftest import serve_asgi, wait_for
from tests.web.test_progress import reachable_service


@pytest.mark.parametrize(
    ("line", "report"),
    [
        (b"PROGRESS 5", {"progress": 5}),
        (b"PROGRESS 12.5 rows done\r", {"progress": 12.5, "message": "rows done"}),
        (b"PROGRESS\t100", {"progress": 100}),
        (b"PROGRESS 101", None),
        (b"PROGRESS -1", None),
        (b"PROGRESS x", None),
        (b"progress 5", None),
        (b" PROGRESS 5", None),
    ],
)
def test_parse(line: bytes, report: dict[str, Any] | None):
    assert parse(line) == report


def test_the_api_key_comes_from_the_environment():
    assert api_key({"API_KEY": " k1 ,k2"}) == "k1"
    assert api_key({"QUEUE_API_KEY": "q"}) == "q"
    assert api_key({}) is None


async def test_reports_go_in_order_and_carry_the_key_and_attempt():
    seen: list[tuple[dict[str, Any], str | None]] = []

    async def progress(request: Request) -> Response:
        seen.append((await request.json(), request.headers.get("x-api-key")))
        return JSONResponse({})

    served = await serve_asgi(Starlette(routes=[Route("/p", progress, methods=["POST"])]))
    try:
        reporter = Progress(f"{served.url}/p", 3, "key")
        reporter.feed(b"hello\nPROGRESS 1")  # a line split across chunks
        reporter.feed(b"0 first\nPROGR")
        reporter.feed(b"ESS 20\n")
        await reporter.close()
    finally:
        await served.stop()
    reports = [body for body, _ in seen]
    assert reports[-1] == {"progress": 20, "attempt": 3}
    assert reports[0]["progress"] in (10, 20)  # a newer waiting report replaces an older one
    assert all(key == "key" for _, key in seen)


async def test_a_run_without_a_progress_url_reports_nothing():
    reporter = Progress(None, 1)
    reporter.feed(b"PROGRESS 5\n")
    await reporter.close()
    assert reporter.sent == 0


async def test_progress_lines_of_a_run_reach_the_task_record(
    make_settings: Callable[..., Settings],
):
    executor = await serve_asgi(example_executor.create_app(example_executor.Limits()))
    service = await reachable_service(make_settings, ExecutorPool([executor.url], 0.2))
    code = (
        "import time\n"
        "print('PROGRESS 30 loading', flush=True)\n"
        "time.sleep(0.3)\n"
        "print('PROGRESS 70 writing', flush=True)\n"
        "time.sleep(2)\n"
    )
    try:
        created = await service.http.post("/tasks", json={"eval_id": "ex-pg", "code": code})
        assert created.status_code == 201

        async def reported() -> Any:
            record = (await service.http.get("/tasks/ex-pg")).json()
            shown = record["progress"]
            return shown if shown and shown["progress"] == 70 else None

        shown = await wait_for(reported, timeout=15)
        assert (shown["message"], shown["attempt"]) == ("writing", 1)
        assert (await service.http.get("/tasks/ex-pg")).json()["status"] == "processing"

        async def completed() -> bool:
            record = (await service.http.get("/tasks/ex-pg")).json()
            return bool(record["status"] == "completed")

        await wait_for(completed, timeout=15)
    finally:
        await service.http.aclose()
        await service.served.stop()
        await executor.stop()
