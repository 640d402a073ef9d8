"""GET /tasks?state=… (engine/listing.py) and a queued task's `eta` (engine/pace.py) over
real loopback HTTP: the route beside GET /tasks/next and /tasks/{id}, paging by cursor,
422 for bad parameters with nothing written, named queues, and the ETA checked against
the real start of a task on a steady drain through a real executor."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest
from starlette.responses import JSONResponse, Response

from app.runtime.executors import ExecutorPool
from tests.conftest import Service, StubExecutor
from tests.web.conftest import MakeService, assert_error, enqueue, get, pull


async def listed(service: Service, **query: Any) -> dict[str, Any]:
    response = await service.http.get("/tasks", params=query)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def test_the_listing_lives_beside_next_and_by_id(service: Service):
    await enqueue(service, eval_id="a", priority="low")
    await enqueue(service, eval_id="b", priority="high")
    page = await listed(service, state="queued")
    assert [t["eval_id"] for t in page["tasks"]] == ["b", "a"]
    assert [t["position"] for t in page["tasks"]] == [1, 2]
    assert page["next_cursor"] is None
    assert (await get(service, "a"))["position"] == 2
    assert (await pull(service))["eval_id"] == "b"
    page = await listed(service, state="processing")
    assert [t["eval_id"] for t in page["tasks"]] == ["b"] and "worker" in page["tasks"][0]


async def test_paging_by_cursor_over_http(service: Service):
    batch = [{"eval_id": f"h{i:03}", "code": "x"} for i in range(120)]
    assert (await service.http.post("/tasks/batch", json={"tasks": batch})).status_code == 201
    seen, cursor = [], None
    while True:
        page = await listed(
            service, state="queued", limit=50, **({"cursor": cursor} if cursor else {})
        )
        seen += [t["eval_id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"h{i:03}" for i in range(120)]


async def test_a_named_queue_is_listed_by_name(service: Service):
    await enqueue(service, eval_id="gpu-1", queue="gpu", metadata={"model": "m7"})
    await enqueue(service, eval_id="cpu-1")
    page = await listed(service, state="queued", queue="gpu", q="m7")
    assert [(t["eval_id"], t["queue"], t["metadata"]) for t in page["tasks"]] == [
        ("gpu-1", "gpu", {"model": "m7"})
    ]
    assert_error(await service.http.get("/tasks", params={"state": "queued", "queue": "nope"}), 404)


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"state": "sleeping"},
        {"state": "queued", "limit": "0"},
        {"state": "queued", "limit": "501"},
        {"state": "queued", "limit": "ten"},
        {"state": "queued", "cursor": "garbage!"},
        {"state": "queued", "tenant": "a b"},
        {"state": "queued", "q": "x" * 257},
        {"state": "queued", "queue": "bad/name"},
    ],
)
async def test_bad_parameters_are_422_and_write_nothing(
    service: Service, frozen: Callable[[], Awaitable[None]], query: dict[str, str]
):
    assert_error(await service.http.get("/tasks", params=query), 422)
    await frozen()


async def test_a_cursor_of_another_state_is_422(service: Service):
    for i in range(3):
        await enqueue(service, eval_id=f"c{i}")
    cursor = (await listed(service, state="queued", limit=1))["next_cursor"]
    assert cursor
    response = await service.http.get("/tasks", params={"state": "scheduled", "cursor": cursor})
    assert_error(response, 422)


# --- ETA -------------------------------------------------------------------------------------


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def test_the_eta_is_within_a_quarter_of_the_wait_on_a_steady_drain(
    make_service: MakeService, make_executor: Callable[..., Awaitable[StubExecutor]]
):
    """320 tasks through a real executor that takes 0.1 s each, 4 at a time (~40/s). Once
    the drain has run 2.5 s (past the start-up, so the pace is steady), the last task's ETA
    is asked for; it must land within ±25 % of the wait from that moment to the task's real
    start (its `started_at`)."""

    async def fixed(body: dict[str, Any]) -> Response:
        await asyncio.sleep(0.1)
        return JSONResponse({"status": "success", "output": "", "exit_code": 0})

    stub = await make_executor(fixed)
    service = await make_service(ExecutorPool([stub.url], 0.2), concurrency=4)
    batch = [{"eval_id": f"s{i:03}", "code": "x"} for i in range(320)]
    assert (await service.http.post("/tasks/batch", json={"tasks": batch})).status_code == 201
    began = time.time()
    assert "eta" not in await get(service, "s319")  # no pace yet: no estimate
    record: dict[str, Any] = {}
    while time.time() - began < 2.5 or "eta" not in record:  # a pace of two seconds and more
        await asyncio.sleep(0.1)
        record = await get(service, "s319")
        assert record["status"] == "queued", "the drain outran the test"
    asked, eta = time.time(), epoch(record["eta"])
    listed_eta = (await listed(service, state="queued", q="s319"))["tasks"][0]["eta"]
    assert abs(epoch(listed_eta) - eta) < 1.0  # the listing gives the same estimate
    while (record := await get(service, "s319"))["started_at"] is None:
        await asyncio.sleep(0.1)
    started = epoch(record["started_at"])
    wait = started - asked
    assert wait > 2.0, "too little left to judge"
    assert abs(eta - started) <= 0.25 * wait, (eta - asked, wait)
