"""POST /tasks/{eval_id}/progress (engine/progress.py) over real loopback HTTP: from an
in-process executor through the `progress_url` it is sent, from a pull worker (whose lease
the report renews), fenced like complete (stale attempt or lease, not processing: 409),
404 unknown, 422 for a bad body with nothing written, and across two replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse, Response

from app.engine.queue import Queue
from app.redis_server import free_port
from app.runtime.executors import ExecutorPool
from app.settings import Settings
from app.web.app import create_app
from tests.conftest import Service, StubExecutor, serve_asgi, wait_for
from tests.web.conftest import MakeService, assert_error, enqueue, get, pull, snapshot


async def reachable_service(
    make_settings: Callable[..., Settings], executors: ExecutorPool | None = None, **overrides: Any
) -> Service:
    """The service on a port chosen first, so PUBLIC_URL (the executors' way back) is known."""
    port = free_port()
    settings = make_settings(public_url=f"http://127.0.0.1:{port}", **overrides)
    served = await serve_asgi(create_app(settings, executors=executors), port=port)
    return Service(served, httpx.AsyncClient(base_url=served.url, timeout=40), settings)


@pytest.fixture
async def reachable(make_settings: Callable[..., Settings]):
    made: list[Service] = []

    async def make(executors: ExecutorPool | None = None, **overrides: Any) -> Service:
        made.append(await reachable_service(make_settings, executors, **overrides))
        return made[-1]

    yield make
    for service in made:
        await service.http.aclose()
        await service.served.stop()


async def events_of(client: Any, streams: Queue, eval_id: str) -> list[dict[bytes, bytes]]:
    entries = await client.xrange(streams.keys.events)
    return [fields for _, fields in entries if fields[b"id"] == eval_id.encode()]


# --- from an executor, through progress_url --------------------------------------------------


async def test_an_executor_reports_progress_through_its_progress_url(
    reachable, make_executor: Callable[..., Awaitable[StubExecutor]], client: Any, streams: Queue
):
    release = asyncio.Event()
    answers: list[httpx.Response] = []

    async def handler(body: dict[str, Any]) -> Response:
        report = {"progress": 40, "message": "halfway", "data": {"rows": 4}}
        async with httpx.AsyncClient() as http:
            answers.append(
                await http.post(body["progress_url"], json={**report, "attempt": body["attempt"]})
            )
        await release.wait()
        return JSONResponse({"status": "success", "output": "done", "exit_code": 0})

    stub = await make_executor(handler)
    service = await reachable(ExecutorPool([stub.url], 0.2))
    await enqueue(service, eval_id="pg-1")
    await wait_for(lambda: asyncio.sleep(0, answers))
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json() == {
        "eval_id": "pg-1",
        "status": "processing",
        "progress": 40,
        "queue": service.settings.queue,
    }
    assert stub.calls[0]["progress_url"] == f"{service.url}/tasks/pg-1/progress"
    assert stub.calls[0]["attempt"] == 1
    record = await get(service, "pg-1")
    assert record["status"] == "processing"
    shown = record["progress"]
    assert (shown["progress"], shown["message"], shown["data"]) == (40, "halfway", {"rows": 4})
    assert shown["attempt"] == 1 and shown["at"].endswith("Z")
    (event,) = [e for e in await events_of(client, streams, "pg-1") if e[b"state"] == b"progress"]
    assert (event[b"progress"], event[b"attempt"]) == (b"40", b"1")
    release.set()
    await wait_for(lambda: _status(service, "pg-1", "completed"))
    assert (await get(service, "pg-1"))["progress"]["progress"] == 40  # the last report stays


async def _status(service: Service, eval_id: str, state: str) -> bool:
    return bool((await get(service, eval_id))["status"] == state)


async def test_a_record_without_reports_shows_progress_null(service: Service):
    await enqueue(service, eval_id="pg-none")
    assert (await get(service, "pg-none"))["progress"] is None


# --- from a pull worker ----------------------------------------------------------------------


async def test_a_pull_worker_reports_with_its_token(service: Service):
    await enqueue(service, eval_id="pp")
    task = await pull(service)
    assert task["progress_url"] == f"{service.settings.base_url}/tasks/pp/progress"
    token = {"lease": task["lease"], "attempt": task["attempt"]}
    response = await service.http.post("/tasks/pp/progress", json={"progress": 12.5, **token})
    assert response.status_code == 200, response.text
    assert (await get(service, "pp"))["progress"]["progress"] == 12.5
    response = await service.http.post("/tasks/pp/progress", json={"progress": 100})
    assert response.status_code == 200  # no token: whoever holds it, as complete
    assert (await get(service, "pp"))["progress"]["progress"] == 100
    done = await service.http.post("/tasks/pp/complete", json={"result": 1, **token})
    assert done.status_code == 200


async def test_a_pull_workers_reports_keep_its_lease(make_service: MakeService):
    """TASK_TIMEOUT is the pulled lease; reports carrying the lease renew it from now."""
    service = await make_service(task_timeout=0.6)
    await enqueue(service, eval_id="alive")
    task = await pull(service)
    token = {"lease": task["lease"], "attempt": task["attempt"]}
    deadline = time.monotonic() + 1.8  # three leases
    while time.monotonic() < deadline:
        response = await service.http.post("/tasks/alive/progress", json={"progress": 5, **token})
        assert response.status_code == 200, response.text
        await asyncio.sleep(0.15)
    assert (await service.http.get("/tasks/next")).status_code == 204  # never delivered again
    record = await get(service, "alive")
    assert (record["status"], record["attempts"]) == ("processing", 1)
    done = await service.http.post("/tasks/alive/complete", json={"result": 1, **token})
    assert done.status_code == 200


async def test_reports_without_the_lease_do_not_renew_it(make_service: MakeService):
    """An attempt-only report (what executors send) leaves the lease alone."""
    service = await make_service(task_timeout=0.5)
    await enqueue(service, eval_id="lapse")
    task = await pull(service)
    sent = await service.http.post(
        "/tasks/lapse/progress", json={"progress": 1, "attempt": task["attempt"]}
    )
    assert sent.status_code == 200
    again = await pull(service, wait=5)
    assert (again["eval_id"], again["attempt"]) == ("lapse", 2)


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stale", [{"attempt": 2}, {"lease": "1-1"}, {"lease": "1-1", "attempt": 1}]
)
async def test_a_stale_token_is_409_and_writes_nothing(
    service: Service, client: Any, streams: Queue, stale: dict[str, Any]
):
    await enqueue(service, eval_id="stale")
    task = await pull(service)
    before = await snapshot(client, streams)
    token = {"lease": task["lease"], "attempt": task["attempt"], **stale}
    if "lease" not in stale:
        del token["lease"]
    response = await service.http.post("/tasks/stale/progress", json={"progress": 9, **token})
    assert "stale" in assert_error(response, 409)
    assert await snapshot(client, streams) == before


async def test_not_processing_is_409(service: Service, client: Any, streams: Queue):
    await enqueue(service, eval_id="waiting")
    before = await snapshot(client, streams)
    response = await service.http.post("/tasks/waiting/progress", json={"progress": 1})
    assert "queued" in assert_error(response, 409)
    assert await snapshot(client, streams) == before
    task = await pull(service)
    assert (await service.http.post("/tasks/waiting/complete", json={"result": 1})).is_success
    response = await service.http.post(
        "/tasks/waiting/progress", json={"progress": 1, "attempt": task["attempt"]}
    )
    assert "completed" in assert_error(response, 409)


async def test_unknown_is_404(service: Service, frozen: Callable[[], Awaitable[None]]):
    assert_error(await service.http.post("/tasks/nope/progress", json={"progress": 1}), 404)
    await frozen()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"progress": 101},
        {"progress": -1},
        {"progress": True},
        {"progress": "50"},
        {"progress": None},
        {"progress": 5, "message": 7},
        {"progress": 5, "message": "x" * 1001},
        {"progress": 5, "attempt": 0},
        {"progress": 5, "attempt": "1"},
        {"progress": 5, "attempt": True},
        {"progress": 5, "lease": 5},
        {"progress": 5, "data": "x" * 20000},
        [1],
    ],
)
async def test_a_bad_body_is_422_and_writes_nothing(
    service: Service, client: Any, streams: Queue, body: Any
):
    await enqueue(service, eval_id="bad")
    await pull(service)
    before = await snapshot(client, streams)
    assert_error(await service.http.post("/tasks/bad/progress", json=body), 422)
    assert await snapshot(client, streams) == before


async def test_malformed_json_is_400(service: Service, frozen: Callable[[], Awaitable[None]]):
    response = await service.http.post("/tasks/x/progress", content=b"{nope")
    assert_error(response, 400)
    await frozen()


# --- two replicas ----------------------------------------------------------------------------


async def test_a_report_of_the_first_holder_is_refused_once_another_replica_took_over(
    make_service: MakeService,
):
    """Replica A hands the task out; its worker goes quiet past the lease; replica B hands
    it out again (attempt 2). A's worker's report is refused on either replica, B's
    worker's is taken on either."""
    first = await make_service(task_timeout=0.4)
    second = await make_service(task_timeout=0.4)
    await enqueue(first, eval_id="moved")
    old = await pull(first)
    new = await pull(second, wait=5)
    assert (new["eval_id"], new["attempt"]) == ("moved", 2)
    for replica in (first, second):
        stale = {"progress": 50, "lease": old["lease"], "attempt": old["attempt"]}
        assert_error(await replica.http.post("/tasks/moved/progress", json=stale), 409)
        stale = {"progress": 50, "attempt": old["attempt"]}
        assert_error(await replica.http.post("/tasks/moved/progress", json=stale), 409)
    fresh = {"progress": 75, "lease": new["lease"], "attempt": new["attempt"]}
    assert (await first.http.post("/tasks/moved/progress", json=fresh)).status_code == 200
    shown = (await get(second, "moved"))["progress"]
    assert (shown["progress"], shown["attempt"]) == (75, 2)
