"""In-process consumers under limits (runtime/consumers.py, runtime/executors.py): RATE_LIMITS
paces the starts an executor sees, QUEUE_MAX_IN_FLIGHT bounds its open calls and a freed
slot wakes the consumers at once, `;max=N` bounds the calls to one executor; a held
consumer waits for the limit, never in a busy loop (the claims it makes while held are
counted on /metrics, `taskstream_claims_held_total`).

Real service apps under uvicorn, the session's redis-server, a loopback executor that
counts its starts (tests/conftest.py `Counting`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from app.flow_settings import Flow, Rate
from tests.conftest import Counting, Service, wait_for
from tests.runtime.test_metrics import scrape

MakeService = Callable[..., Awaitable[Service]]
MakeCounting = Callable[..., Awaitable[Counting]]


async def batch(service: Service, n: int, **fields: Any) -> None:
    tasks = [{"eval_id": f"t{i}", "code": "x", **fields} for i in range(n)]
    response = await service.http.post("/tasks/batch", json={"tasks": tasks})
    assert response.status_code == 201, response.text


def most_in_window(starts: list[float], window: float) -> int:
    """The most starts in any interval of `window` seconds."""
    starts = sorted(starts)
    return max(sum(1 for u in starts[i:] if u <= t + window) for i, t in enumerate(starts))


async def held_claims(service: Service, queue: str, limit: str) -> float:
    return (await scrape(service)).value("taskstream_claims_held_total", queue=queue, limit=limit)


async def test_a_rate_limit_paces_the_starts(
    make_service: MakeService, make_counting: MakeCounting, queue: str
) -> None:
    executor = await make_counting()
    flow = Flow(rates={queue: Rate(10, 1.0)})
    svc = await make_service(executor_urls=(executor.url,), flow=flow, concurrency=8)
    started = time.monotonic()
    await batch(svc, 25)
    await wait_for(lambda: _at_least(executor, 25), timeout=15)
    times = [t for t, _ in executor.starts]
    assert times[-1] - started >= 1.4  # a burst of 10, then one every 100 ms
    assert most_in_window(times, 1.0) <= 10 * 1.0 + 10
    assert most_in_window(times, 0.5) <= 10 * 0.5 + 10
    # each held claim slept until the next start was allowed: about one per start
    assert await held_claims(svc, queue, "rate") <= 25


async def test_a_cap_bounds_the_calls_and_a_freed_slot_wakes_the_consumer(
    make_service: MakeService, make_counting: MakeCounting, queue: str
) -> None:
    executor = await make_counting(hold=0.3)
    flow = Flow(max_in_flight={queue: 2})
    svc = await make_service(executor_urls=(executor.url,), flow=flow, concurrency=8)
    started = time.monotonic()
    await batch(svc, 8)
    await wait_for(lambda: _at_least(executor, 8), timeout=10)
    assert executor.most_open == 2
    # 4 rounds of 0.3 s: woken by each release, not by the 5 s re-check
    assert time.monotonic() - started < 3.5
    status = (await svc.http.get("/status")).json()["flow"]
    assert status["limits"] == {"rate": None, "max_in_flight": 2}
    assert await held_claims(svc, queue, "in_flight") <= 8 + 2


async def test_a_held_consumer_does_not_busy_loop(
    make_service: MakeService, make_counting: MakeCounting, queue: str
) -> None:
    executor = await make_counting(hold=2.5)
    flow = Flow(max_in_flight={queue: 1})
    svc = await make_service(executor_urls=(executor.url,), flow=flow, concurrency=4)
    await batch(svc, 3)
    await wait_for(lambda: _at_least(executor, 1))
    before = await held_claims(svc, queue, "in_flight")
    await wait_for(lambda: _at_least(executor, 2), timeout=10)  # an idle period of ~2.5 s
    assert await held_claims(svc, queue, "in_flight") - before <= 3
    record = (await svc.http.get("/tasks/t2")).json()
    assert record["status"] == "queued"  # held back by the cap: still queued


async def test_an_executors_max_bounds_its_calls(
    make_service: MakeService, make_counting: MakeCounting
) -> None:
    executor = await make_counting(hold=0.2)
    svc = await make_service(
        executor_urls=(executor.url,), executor_limits={executor.url: 2}, concurrency=8
    )
    await batch(svc, 8)
    await wait_for(lambda: _at_least(executor, 8), timeout=10)
    assert executor.most_open == 2
    counts = (await svc.http.get("/status")).json()
    assert counts["executors"][0]["max_in_flight"] == 2


async def test_status_and_metrics_show_the_limits_state(
    make_service: MakeService, make_counting: MakeCounting, queue: str
) -> None:
    """Issue 15's "visible in /status and /metrics": the tasks in flight under a cap and
    the starts a rate still allows, read from Redis (every replica's), with the limits."""
    executor = await make_counting(hold=8.0)  # both still in flight while this reads
    flow = Flow(rates={queue: Rate(3, 60.0)}, max_in_flight={queue: 2})
    svc = await make_service(executor_urls=(executor.url,), flow=flow, concurrency=4)
    await batch(svc, 5, tenant="acme")
    await wait_for(lambda: _at_least(executor, 2), timeout=20)
    status = (await svc.http.get("/status")).json()["flow"]
    assert status["limits"] == {"rate": "3/m", "max_in_flight": 2}
    assert status["in_flight"] == 2
    assert status["rate"] == {"available": 1, "next_in_ms": 0}
    assert status["tenants"]["default"]["tenant_tasks"] == 3
    metrics = await scrape(svc)
    assert metrics.value("taskstream_queue_in_flight", queue=queue) == 2
    assert metrics.value("taskstream_queue_max_in_flight", queue=queue) == 2
    assert metrics.value("taskstream_queue_rate_available", queue=queue) == 1
    assert metrics.value("taskstream_queue_rate_limit", queue=queue) == 3 / 60
    waiting = metrics.value("taskstream_tenant_waiting", queue=queue, tenant="acme")
    assert waiting == 3


async def _at_least(executor: Counting, n: int) -> bool:
    return len(executor.starts) >= n
