"""Queue semantics end to end: strict priorities, backoff, policies, DLQ, scheduling, races."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.responses import JSONResponse, Response

from app.engine import views
from app.engine.client import connect
from app.engine.engine import Engine
from app.engine.queue import Queue
from app.runtime.consumers import ConsumerPool
from app.runtime.executors import ExecutorPool
from app.settings import RetryPolicy
from tests.conftest import wait_for

FAST = RetryPolicy(3, 0.2, 2.0, 10.0, False)


async def status_of(service: Any, eval_id: str) -> dict[str, Any]:
    response = await service.http.get(f"/tasks/{eval_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def finished(service: Any, eval_id: str, state: str) -> bool:
    return bool((await status_of(service, eval_id))["status"] == state)


async def test_pull_order_is_strict_priority_then_fifo(service):
    plan = [("l1", "low"), ("d1", "default"), ("h1", "high"), ("d2", "default")]
    plan += [("h2", "high"), ("l2", "low"), ("d3", "default")]
    for eval_id, priority in plan:
        r = await service.http.post(
            "/tasks", json={"eval_id": eval_id, "code": "x", "priority": priority}
        )
        assert r.status_code == 201
    positions = [(await status_of(service, e))["position"] for e, _ in plan]
    assert positions == [6, 3, 1, 4, 2, 7, 5]
    order = []
    for _ in plan:
        r = await service.http.get("/tasks/next")
        order.append(r.json()["eval_id"])
    assert order == ["h1", "h2", "d1", "d2", "d3", "l1", "l2"]
    assert (await service.http.get("/tasks/next")).status_code == 204


async def test_in_process_order_with_one_slot(make_service, make_executor):
    gate = asyncio.Event()
    seen: list[str] = []

    async def handler(body: dict[str, Any]) -> Response:
        seen.append(body["eval_id"])
        if body["eval_id"] == "first":
            await gate.wait()
        return JSONResponse({"status": "success", "output": "", "exit_code": 0})

    executor = await make_executor(handler)
    svc = await make_service(executor_urls=(executor.url,), concurrency=1)
    await svc.http.post("/tasks", json={"eval_id": "first", "code": "x", "priority": "low"})
    await wait_for(lambda: _true(seen))
    for eval_id, priority in [("l", "low"), ("d", "default"), ("h", "high"), ("h2", True)]:
        await svc.http.post("/tasks", json={"eval_id": eval_id, "code": "x", "priority": priority})
    gate.set()
    await wait_for(lambda: finished(svc, "l", "completed"))
    assert seen == ["first", "h", "h2", "d", "l"]


async def _true(items: list[Any]) -> bool:
    return bool(items)


async def test_backoff_gaps_without_jitter(make_service, make_executor):
    times: list[float] = []

    async def handler(body: dict[str, Any]) -> Response:
        times.append(time.monotonic())
        return JSONResponse({"error": "busy"}, status_code=503)

    executor = await make_executor(handler)
    svc = await make_service(executor_urls=(executor.url,), retry=FAST)
    await svc.http.post("/tasks", json={"eval_id": "b", "code": "x"})
    await wait_for(lambda: finished(svc, "b", "failed"), timeout=10)
    assert len(times) == 4  # MAX_RETRIES=3: four attempts
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    for gap, expected in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert expected - 0.01 <= gap <= expected + 0.25, gaps


async def test_network_policy_applies_to_connection_errors(make_service):
    """An executor that is healthy but drops the connection on /execute: network policy."""
    calls = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /health"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
            await writer.drain()
        else:
            calls += 1
        writer.close()  # /execute: no answer at all

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        svc = await make_service(
            executor_urls=(f"http://127.0.0.1:{port}",),
            retry=RetryPolicy(0, 0.05, 1.0, 1.0, False),
            network_retry=RetryPolicy(2, 0.05, 1.0, 1.0, False),
        )
        await svc.http.post("/tasks", json={"eval_id": "n", "code": "x"})
        await wait_for(lambda: finished(svc, "n", "failed"), timeout=10)
        # The default policy allows no retry; the network policy's two were used instead.
        assert (await status_of(svc, "n"))["attempts"] == 3
        assert calls == 3
    finally:
        server.close()
        await server.wait_closed()


async def test_dlq_list_redrive_and_purge(make_service, make_executor):
    fail = {"on": True}

    async def handler(body: dict[str, Any]) -> Response:
        if fail["on"]:
            return JSONResponse({"error": "bad input"}, status_code=422)
        return JSONResponse({"status": "success", "output": "ok", "exit_code": 0})

    executor = await make_executor(handler)
    svc = await make_service(executor_urls=(executor.url,))
    for eval_id in ("x1", "x2"):
        await svc.http.post("/tasks", json={"eval_id": eval_id, "code": "boom", "priority": "low"})
    await wait_for(lambda: finished(svc, "x2", "failed"))
    await wait_for(lambda: finished(svc, "x1", "failed"))
    listing = (await svc.http.get("/dlq")).json()
    assert listing["count"] == 2
    dead = {d["eval_id"]: d for d in listing["tasks"]}
    assert dead["x1"]["attempts"] == 1
    assert "422" in dead["x1"]["error"]
    assert dead["x1"]["task"]["code"] == "boom" and dead["x1"]["task"]["priority"] == "low"
    assert (await svc.http.get("/dlq?limit=1&offset=1")).json()["tasks"][0]["eval_id"] in dead
    fail["on"] = False
    redo = await svc.http.post("/dlq/x1/retry")
    assert redo.status_code == 200 and redo.json()["status"] == "queued"
    await wait_for(lambda: finished(svc, "x1", "completed"))
    assert (await status_of(svc, "x1"))["attempts"] == 1  # fresh attempt count
    assert (await svc.http.post("/dlq/x1/retry")).status_code == 404
    assert (await svc.http.delete("/dlq?older_than_days=1")).json() == {"removed": 0}
    assert (await svc.http.delete("/dlq/x2")).json() == {"removed": 1}
    assert (await svc.http.delete("/dlq/x2")).status_code == 404
    assert (await svc.http.get("/dlq")).json()["count"] == 0


async def test_dlq_purge_all(service):
    for eval_id in ("p1", "p2", "p3"):
        await service.http.post("/tasks", json={"eval_id": eval_id, "code": "x"})
        await service.http.get("/tasks/next")
        r = await service.http.post(f"/tasks/{eval_id}/fail", json={"error": "no", "retry": False})
        assert r.json()["status"] == "failed"
    assert (await service.http.delete("/dlq")).json() == {"removed": 3}
    assert (await service.http.get("/dlq")).json() == {"count": 0, "tasks": []}


async def test_scheduled_task_never_runs_early(make_service, make_executor):
    ran: dict[str, float] = {}

    async def handler(body: dict[str, Any]) -> Response:
        ran[body["eval_id"]] = time.time()
        return JSONResponse({"status": "success", "output": "", "exit_code": 0})

    executor = await make_executor(handler)
    svc = await make_service(executor_urls=(executor.url,))
    sent = time.time()
    r = await svc.http.post("/tasks", json={"eval_id": "later", "code": "x", "delay": 0.6})
    assert r.json()["status"] == "scheduled"
    r = await svc.http.post("/tasks", json={"eval_id": "at", "code": "x", "run_at": sent + 0.4})
    assert r.json()["status"] == "scheduled"
    await wait_for(lambda: finished(svc, "later", "completed"))
    await wait_for(lambda: finished(svc, "at", "completed"))
    assert ran["later"] >= sent + 0.6 - 0.01
    assert ran["at"] >= sent + 0.4 - 0.01
    assert ran["later"] < sent + 2.0  # promoted promptly, without polling for seconds


async def test_cancel_scheduled_and_retrying_never_run(make_service, make_executor):
    async def handler(body: dict[str, Any]) -> Response:
        return JSONResponse({"error": "later"}, status_code=500)

    executor = await make_executor(handler)
    svc = await make_service(
        executor_urls=(executor.url,), retry=RetryPolicy(3, 1.5, 3.0, 1.0, False)
    )
    await svc.http.post("/tasks", json={"eval_id": "s", "code": "x", "delay": 1.5})
    await svc.http.post("/tasks", json={"eval_id": "r", "code": "x"})
    await wait_for(lambda: finished(svc, "r", "retrying"))
    for eval_id in ("s", "r"):
        r = await svc.http.post(f"/tasks/{eval_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    calls = len(executor.calls)
    await asyncio.sleep(1.8)  # past both due times (1.5 s: room for a slow cancel): nothing may run
    assert len(executor.calls) == calls == 1
    assert (await status_of(svc, "s"))["status"] == "cancelled"


async def test_task_timeout_is_a_retryable_failure(make_service, make_executor):
    async def handler(body: dict[str, Any]) -> Response:
        if body["attempt"] == 1:
            await asyncio.sleep(1)  # far past the task's 0.3 s timeout
        return JSONResponse({"status": "success", "output": "late", "exit_code": 0})

    executor = await make_executor(handler)
    svc = await make_service(executor_urls=(executor.url,), retry=RetryPolicy(2, 0.05, 1, 1, False))
    await svc.http.post("/tasks", json={"eval_id": "t", "code": "x", "timeout": 0.3})
    await wait_for(lambda: finished(svc, "t", "completed"))
    record = await status_of(svc, "t")
    assert record["attempts"] == 2 and record["result"]["output"] == "late"


async def test_two_promoters_move_each_retry_once(redis_url, make_settings):
    settings = make_settings()
    clients = [connect(redis_url), connect(redis_url)]
    try:
        a, b = (Engine(c, settings).default for c in clients)
        await a.ensure_groups()
        from app.models import TaskRequest

        reqs = [
            TaskRequest.parse({"eval_id": f"r{i}", "code": "x", "delay": 0.2}) for i in range(300)
        ]
        await a.engine.enqueue_many(reqs)
        await asyncio.sleep(0.25)
        await asyncio.gather(*(s.promote() for s in (a, b, a, b)))
        counts = await views.counts(a)
        assert counts["states"]["queued"] == 300 and counts["states"]["scheduled"] == 0
        total = await a.redis.xlen(a.keys.stream("default"))
        assert total == 300  # no task pushed twice
    finally:
        for c in clients:
            await c.aclose()


async def test_restart_keeps_retrying_and_scheduled_tasks(make_settings, make_executor, redis_url):
    runs: dict[str, int] = {}

    async def handler(body: dict[str, Any]) -> Response:
        runs[body["eval_id"]] = runs.get(body["eval_id"], 0) + 1
        if body["eval_id"] == "retry" and body["attempt"] == 1:
            return JSONResponse({"error": "again"}, status_code=500)
        return JSONResponse({"status": "success", "output": "", "exit_code": 0})

    executor = await make_executor(handler)
    settings = make_settings(
        executor_urls=(executor.url,), retry=RetryPolicy(3, 0.8, 1.0, 1.0, False)
    )
    first = await _pool(settings, redis_url, "one")
    await first.queue.enqueue(_req("retry"))
    await first.queue.enqueue(_req("sched", delay=0.8))
    await wait_for(lambda: _state(first.queue, "retry", "retrying"))
    await first.stop(1.0)
    await first.executors.close()
    second = await _pool(settings, redis_url, "two")
    try:
        await wait_for(lambda: _state(second.queue, "retry", "completed"))
        await wait_for(lambda: _state(second.queue, "sched", "completed"))
        assert runs == {"retry": 2, "sched": 1}
    finally:
        await second.stop(1.0)
        await second.executors.close()
        await second.queue.redis.aclose()
        await first.queue.redis.aclose()


def _req(eval_id: str, **extra: Any) -> Any:
    from app.models import TaskRequest

    return TaskRequest.parse({"eval_id": eval_id, "code": "x", **extra})


async def _pool(settings: Any, redis_url: str, name: str) -> ConsumerPool:
    streams = Engine(connect(redis_url), settings).default
    executors = ExecutorPool(settings.executor_urls, settings.health_interval)
    await executors.start()
    pool = ConsumerPool(streams, executors, settings, f"test:{name}")
    pool.start()
    return pool


async def _state(streams: Queue, eval_id: str, state: str) -> bool:
    return bool((await streams.get(eval_id))["status"] == state)


async def _attempt_times(make_service, make_executor, task: dict[str, Any], **settings: Any):
    times: list[float] = []

    async def handler(body: dict[str, Any]) -> Response:
        times.append(time.monotonic())
        return JSONResponse({"error": "busy"}, status_code=503)

    executor = await make_executor(handler)
    svc = await make_service(executor_urls=(executor.url,), **settings)
    assert (await svc.http.post("/tasks", json=task)).status_code == 201
    await wait_for(lambda: finished(svc, task["eval_id"], "failed"), timeout=10)
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


async def test_retry_intervals_of_the_task_replace_the_backoff(make_service, make_executor):
    task = {"eval_id": "ri", "code": "x", "retry_intervals": [0.1, 0.5]}
    gaps = await _attempt_times(make_service, make_executor, task, retry=FAST)
    assert len(gaps) == 3  # MAX_RETRIES=3
    for gap, expected in zip(gaps, (0.1, 0.5, 0.5), strict=True):  # the last one repeats
        assert expected - 0.01 <= gap <= expected + 0.25, gaps


async def test_retry_intervals_setting_replaces_the_backoff(make_service, make_executor):
    policy = RetryPolicy(2, 5.0, 2.0, 300.0, False, intervals=(0.4, 0.1))
    gaps = await _attempt_times(
        make_service, make_executor, {"eval_id": "rs", "code": "x"}, retry=policy
    )
    assert len(gaps) == 2
    for gap, expected in zip(gaps, (0.4, 0.1), strict=True):
        assert expected - 0.01 <= gap <= expected + 0.25, gaps
