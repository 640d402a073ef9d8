"""Operator routes (web/operator.py): health and probes, status, the dead-letter queue's
error paths.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from app.engine.queue import Queue
from tests.conftest import Service, StubExecutor, wait_for
from tests.web.conftest import (
    MakeService,
    assert_error,
    assert_unknown,
    enqueue,
    get,
    pull,
    snapshot,
)

# --- health, probes, status ---------------------------------------------------------


async def test_health_reports_redis_and_counts(service: Service):
    await enqueue(service, eval_id="h1")
    await enqueue(service, eval_id="h2", delay=60)
    response = await service.http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["redis"] == "ok"
    assert body["queued"] == 1
    assert body["scheduled"] == 1
    assert body["processing"] == 0
    assert body["dlq"] == 0
    assert body["executors"] == {"total": 0, "healthy": 0}


async def test_livez_and_readyz(service: Service):
    livez = await service.http.get("/livez")
    assert livez.status_code == 200 and livez.json()["status"] == "ok"
    readyz = await service.http.get("/readyz")
    assert readyz.status_code == 200 and readyz.json()["status"] == "ready"


async def test_status_counts_states_priorities_and_consumers(service: Service):
    await enqueue(service, eval_id="s-high", priority="high")
    await enqueue(service, eval_id="s-d1")
    await enqueue(service, eval_id="s-d2")
    await enqueue(service, eval_id="s-low", priority="low")
    await enqueue(service, eval_id="s-later", priority="low", delay=60)
    await pull(service)
    response = await service.http.get("/status")
    assert response.status_code == 200
    body = response.json()
    assert body["queue"] == service.settings.queue
    assert body["states"] == {
        "queued": 3,
        "processing": 1,
        "scheduled": 1,
        "retrying": 0,
        "deferred": 0,
    }
    assert body["by_priority"]["queued"] == {"high": 0, "default": 2, "low": 1}
    assert body["by_priority"]["processing"] == {"high": 1, "default": 0, "low": 0}
    assert body["by_priority"]["scheduled"] == {"high": 0, "default": 0, "low": 1}
    assert body["totals"]["enqueued"] == 5
    assert body["dlq"] == 0
    assert [c["pending"] for c in body["consumers"]] == [1]
    assert body["executors"] == []


async def test_status_lists_executors(
    make_service: MakeService, make_executor: Callable[..., Awaitable[StubExecutor]]
):
    stub = await make_executor()
    service = await make_service(executor_urls=(stub.url,))

    async def executor_healthy() -> Any:
        views = (await service.http.get("/status")).json()["executors"]
        return views if views and views[0]["healthy"] else None

    await wait_for(executor_healthy, 5)
    await enqueue(service, eval_id="run")

    async def completed() -> bool:
        return bool((await get(service, "run"))["status"] == "completed")

    await wait_for(completed, 5)
    body = (await service.http.get("/status")).json()
    [view] = body["executors"]
    assert view["url"] == stub.url
    assert view["healthy"] is True
    assert view["in_flight"] == 0
    assert view["routed"] == 1
    assert view["failures"] == 0
    assert any(key.startswith("latency") for key in view)
    assert body["totals"]["completed"] == 1
    health = (await service.http.get("/health")).json()
    assert health["executors"] == {"total": 1, "healthy": 1}


# --- /dlq error paths ---------------------------------------------------------------


async def test_dlq_bad_input_and_unknown_ids(
    service: Service, frozen: Callable[[], Awaitable[None]]
):
    for params in ({"limit": "abc"}, {"limit": "-1"}, {"limit": "1.5"}, {"offset": "x"}):
        assert_error(await service.http.get("/dlq", params=params), 422)
    assert_error(await service.http.delete("/dlq", params={"older_than_days": "x"}), 422)
    assert_error(await service.http.delete("/dlq", params={"older_than_days": "-1"}), 422)
    assert_error(await service.http.post("/dlq/ghost/retry"), 404)
    assert_error(await service.http.post("/dlq/a%20b/retry"), 422)
    assert_error(await service.http.delete("/dlq/ghost"), 404)
    assert_error(await service.http.delete("/dlq/a%20b"), 422)
    await frozen()
    await assert_unknown(service, "ghost")


async def test_dlq_retry_after_the_record_expired_and_when_the_id_is_reused(
    make_service: MakeService, client: Any, streams: Queue
):
    service = await make_service(failure_ttl=1)
    await enqueue(service, eval_id="gone", code="print('kept')", priority="high")
    await pull(service)
    await service.http.post("/tasks/gone/fail", json={"error": "x", "retry": False})

    async def expired() -> bool:
        return (await service.http.get("/tasks/gone")).status_code == 404

    await wait_for(expired, 5, interval=0.05)
    # The dead letter still holds the task: re-driving it queues it again.
    response = await service.http.post("/dlq/gone/retry")
    assert response.status_code == 200, response.text
    record = await get(service, "gone")
    assert (record["status"], record["priority"], record["attempts"]) == ("queued", "high", 0)
    task = await pull(service)
    assert (task["code"], task["attempt"]) == ("print('kept')", 1)

    await service.http.post("/tasks/gone/fail", json={"error": "y", "retry": False})
    await wait_for(expired, 5, interval=0.05)
    await enqueue(service, eval_id="gone", code="new")  # a live task reuses the id
    before = await snapshot(client, streams)
    assert_error(await service.http.post("/dlq/gone/retry"), 409)
    assert await snapshot(client, streams) == before
    assert (await pull(service))["code"] == "new"
