"""In-process consumers end to end: executor outcomes and retry policies, concurrency,
lease renewal, executor health, cancellation with terminate, graceful stop, task logs.

Everything is real: the session's redis-server, the app under uvicorn on loopback and
loopback executors. A `Worker` executor (below) can hold a call for a while and notices
when the caller hangs up, the way a real executor sees an aborted request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.engine.client import connect
from app.engine.engine import Engine
from app.engine.queue import Queue
from app.models import TaskRequest
from app.redis_server import free_port
from app.runtime.consumers import ConsumerPool
from app.runtime.executors import ExecutorPool
from app.settings import RetryPolicy, Settings
from tests.conftest import Served, Service, StubExecutor, serve_asgi, wait_for

MakeService = Callable[..., Awaitable[Service]]
MakeExecutor = Callable[..., Awaitable[StubExecutor]]

FAST = RetryPolicy(2, 0.05, 2.0, 1.0, False)
NEVER = RetryPolicy(0, 0.05, 2.0, 1.0, False)  # a policy that must not be the one applied


# --- helpers ----------------------------------------------------------------------------


def success(body: dict[str, Any]) -> dict[str, Any]:
    return {"status": "success", "output": f"ran {body['eval_id']}", "exit_code": 0}


async def answer(status: int, payload: dict[str, Any]) -> Response:
    return JSONResponse(payload, status_code=status)


async def enqueue(service: Service, eval_id: str, **fields: Any) -> dict[str, Any]:
    response = await service.http.post("/tasks", json={"eval_id": eval_id, "code": "x", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def status_of(service: Service, eval_id: str) -> dict[str, Any]:
    response = await service.http.get(f"/tasks/{eval_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def reaches(
    service: Service, eval_id: str, state: str, timeout: float = 10.0
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        view = await status_of(service, eval_id)
        return view if view["status"] == state else None

    try:
        found: dict[str, Any] = await wait_for(check, timeout)
    except AssertionError:
        raise AssertionError(
            f"{eval_id} not {state} within {timeout}s: {await status_of(service, eval_id)}"
        ) from None
    return found


async def stored(streams: Queue, eval_id: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        view = await streams.get(eval_id)
        return view if view["status"] == state else None

    found: dict[str, Any] = await wait_for(check, timeout)
    return found


async def put(streams: Queue, eval_id: str, **fields: Any) -> None:
    await streams.enqueue(TaskRequest.parse({"eval_id": eval_id, "code": "x", **fields}))


async def settle(seconds: float = 0.3) -> None:
    """Give a wrong behaviour (a retry, a redelivery) time to show itself."""
    await asyncio.sleep(seconds)


# --- an executor that works for a while and notices hang-ups ------------------------------


@dataclass
class Worker:
    """/execute works `hold(body)` seconds, answering early with 499 when the caller hangs up."""

    hold: Callable[[dict[str, Any]], float] = lambda body: 0.0
    status: Callable[[dict[str, Any]], int] = lambda body: 200
    healthy: bool = True
    calls: list[dict[str, Any]] = field(default_factory=list)
    finished: list[dict[str, Any]] = field(default_factory=list)
    hung_up: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    served: Served | None = None

    @property
    def url(self) -> str:
        assert self.served is not None
        return self.served.url

    def attempts(self, eval_id: str) -> list[int]:
        return [int(c["attempt"]) for c in self.calls if c["eval_id"] == eval_id]

    async def _execute(self, request: Request) -> Response:
        body = await request.json()
        self.calls.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            deadline = time.monotonic() + self.hold(body)
            while time.monotonic() < deadline:
                if await request.is_disconnected():
                    self.hung_up.append(body)
                    return Response(status_code=499)
                await asyncio.sleep(0.01)
            self.finished.append(body)
            status = self.status(body)
            payload = success(body) if status < 300 else {"error": f"status {status}"}
            return JSONResponse(payload, status_code=status)
        finally:
            self.in_flight -= 1

    async def _health(self, request: Request) -> Response:
        return JSONResponse({}, status_code=200 if self.healthy else 503)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/execute", self._execute, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
            ]
        )


MakeWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def make_worker() -> AsyncIterator[MakeWorker]:
    started: list[Worker] = []

    async def make(**kwargs: Any) -> Worker:
        worker = Worker(**kwargs)
        worker.served = await serve_asgi(worker.app())
        started.append(worker)
        return worker

    yield make
    for worker in started:
        assert worker.served is not None
        await worker.served.stop()


MakePool = Callable[..., Awaitable[ConsumerPool]]


@pytest.fixture
async def make_pool(
    redis_url: str, make_settings: Callable[..., Settings]
) -> AsyncIterator[MakePool]:
    """A ConsumerPool with its own Redis client and executor pool, as a second process has."""
    made: list[tuple[ConsumerPool, ExecutorPool, Any]] = []

    async def make(consumer: str, urls: tuple[str, ...], **overrides: Any) -> ConsumerPool:
        settings = make_settings(**overrides)
        client = connect(redis_url)
        streams = Engine(client, settings).default
        await streams.ensure_groups()
        executors = ExecutorPool(urls, settings.health_interval)
        await executors.start()
        pool = ConsumerPool(streams, executors, settings, consumer)
        pool.start()
        made.append((pool, executors, client))
        return pool

    yield make
    for pool, executors, client in made:
        await pool.stop(0)
        await executors.close()
        await client.aclose()


# --- outcomes -----------------------------------------------------------------------------


async def test_tasks_complete_with_the_executors_json_as_result(
    make_executor: MakeExecutor, make_service: MakeService
):
    async def handler(body: dict[str, Any]) -> Response:
        return await answer(200, {**success(body), "extra": [1, 2]})

    executor = await make_executor(handler)
    svc = await make_service(executor_urls=(executor.url,))
    ids = [f"ok-{i}" for i in range(5)]
    await enqueue(svc, ids[0], language="bash", metadata={"user": "u1"}, priority="high")
    for eval_id in ids[1:]:
        await enqueue(svc, eval_id)

    for eval_id in ids:
        view = await reaches(svc, eval_id, "completed")
        assert view["result"] == {**success({"eval_id": eval_id}), "extra": [1, 2]}
        assert view["attempts"] == 1
        assert view["error"] is None
        assert view["started_at"] and view["completed_at"]
    first = next(c for c in executor.calls if c["eval_id"] == ids[0])
    assert first == {
        "eval_id": ids[0],
        "code": "x",
        "language": "bash",
        "attempt": 1,
        "metadata": {"user": "u1"},
        "progress_url": f"{svc.settings.base_url}/tasks/{ids[0]}/progress",
    }
    assert sorted(c["eval_id"] for c in executor.calls) == sorted(ids)


async def test_executor_4xx_fails_at_once_without_retry(
    make_executor: MakeExecutor, make_service: MakeService
):
    async def handler(body: dict[str, Any]) -> Response:
        return await answer(400, {"error": "syntax error in code"})

    executor = await make_executor(handler)
    svc = await make_service(executor_urls=(executor.url,), retry=FAST, network_retry=FAST)
    await enqueue(svc, "bad")
    view = await reaches(svc, "bad", "failed")
    assert view["attempts"] == 1
    assert "400" in view["error"] and "syntax error in code" in view["error"]
    await settle()
    assert len(executor.calls) == 1
    dlq = (await svc.http.get("/dlq")).json()
    assert [t["eval_id"] for t in dlq["tasks"]] == ["bad"]


@pytest.mark.parametrize("code", [500, 503, 408, 429])
async def test_executor_5xx_408_429_retried_per_default_policy_then_failed(
    make_executor: MakeExecutor, make_service: MakeService, code: int
):
    async def handler(body: dict[str, Any]) -> Response:
        return await answer(code, {"error": "try later"})

    executor = await make_executor(handler)
    svc = await make_service(executor_urls=(executor.url,), retry=FAST, network_retry=NEVER)
    await enqueue(svc, "flaky")
    view = await reaches(svc, "flaky", "failed")
    assert view["attempts"] == 3
    assert str(code) in view["error"]
    await settle()
    assert [c["attempt"] for c in executor.calls] == [1, 2, 3]


async def test_executor_recovering_after_5xx_completes_on_a_later_attempt(
    make_executor: MakeExecutor, make_service: MakeService
):
    async def handler(body: dict[str, Any]) -> Response:
        if body["attempt"] < 3:
            return await answer(502, {"error": "bad gateway"})
        return await answer(200, success(body))

    executor = await make_executor(handler)
    svc = await make_service(executor_urls=(executor.url,), retry=FAST)
    await enqueue(svc, "third-time")
    view = await reaches(svc, "third-time", "completed")
    assert view["attempts"] == 3
    assert view["result"] == success({"eval_id": "third-time"})
    assert [c["attempt"] for c in executor.calls] == [1, 2, 3]


async def test_connection_refused_uses_the_network_policy(make_service: MakeService):
    """The executor went away after its health check: the attempt fails as a network error
    (the default policy allows no retry here, the network policy does), the executor leaves
    routing, the task waits queued, and runs once the executor is back and healthy."""
    port = free_port()
    stub = StubExecutor()
    stub.served = await serve_asgi(stub.app(), port)
    pool = ExecutorPool([stub.url], health_interval=3600)  # health checked by hand below
    svc = await make_service(
        executors=pool, retry=NEVER, network_retry=RetryPolicy(3, 0.05, 1.0, 1.0, False)
    )
    await wait_for(lambda: _is_set(pool.available))
    await stub.served.stop()

    await enqueue(svc, "net")

    async def attempted() -> dict[str, Any] | None:
        view = await status_of(svc, "net")
        return view if view["attempts"] >= 1 and view["status"] != "processing" else None

    view = await wait_for(attempted)
    assert view["status"] in ("retrying", "queued"), view
    assert "unreachable" in view["error"] or "connect" in view["error"], view
    assert not pool.executors[0].healthy
    await settle()
    view = await status_of(svc, "net")
    assert view["status"] == "queued" and view["position"] == 1, view  # waits, not failed

    back = StubExecutor()
    back.served = await serve_asgi(back.app(), port)
    try:
        await pool.check_health()
        view = await reaches(svc, "net", "completed")
        assert view["result"] == {"status": "success", "output": "42\n", "exit_code": 0}
        assert [c["eval_id"] for c in back.calls] == ["net"]
        assert view["attempts"] == back.calls[0]["attempt"] >= 2
    finally:
        await back.served.stop()


async def _is_set(event: asyncio.Event) -> bool:
    return event.is_set()


async def test_task_timeout_counts_as_retryable_under_the_default_policy(
    make_worker: MakeWorker, make_service: MakeService
):
    worker = await make_worker(hold=lambda body: 3.0)
    svc = await make_service(
        executor_urls=(worker.url,),
        retry=RetryPolicy(1, 0.05, 2.0, 1.0, False),
        network_retry=NEVER,
    )
    started = time.monotonic()
    await enqueue(svc, "slow", timeout=0.3)
    view = await reaches(svc, "slow", "failed")
    assert time.monotonic() - started < 2.5  # two 0.3 s attempts, not two 3 s ones
    assert view["attempts"] == 2
    assert "timed out" in view["error"]
    assert worker.attempts("slow") == [1, 2]
    # the executor saw the caller hang up both times
    await wait_for(lambda: _true(len(worker.hung_up) == 2))


async def _true(value: object) -> bool:
    return bool(value)


async def test_per_task_timeout_shorter_than_the_global_one_then_success(
    make_worker: MakeWorker, make_service: MakeService
):
    worker = await make_worker(hold=lambda body: 3.0 if body["attempt"] == 1 else 0.0)
    svc = await make_service(executor_urls=(worker.url,), retry=FAST, network_retry=NEVER)
    await enqueue(svc, "once-slow", timeout=0.3)
    view = await reaches(svc, "once-slow", "completed")
    assert view["attempts"] == 2
    assert worker.attempts("once-slow") == [1, 2]


# --- concurrency and leases ------------------------------------------------------------------


async def test_concurrency_limits_tasks_in_flight(
    make_worker: MakeWorker, make_service: MakeService
):
    worker = await make_worker(hold=lambda body: 0.25)
    svc = await make_service(executor_urls=(worker.url,), concurrency=2)
    ids = [f"c-{i}" for i in range(6)]
    response = await svc.http.post(
        "/tasks/batch", json={"tasks": [{"eval_id": e, "code": "x"} for e in ids]}
    )
    assert response.status_code == 201
    for eval_id in ids:
        await reaches(svc, eval_id, "completed")
    assert worker.max_in_flight == 2
    assert len(worker.calls) == 6


async def test_lease_is_renewed_so_a_long_task_runs_once(
    make_worker: MakeWorker, make_service: MakeService, make_pool: MakePool
):
    """lease 0.6 s, work 2 s: the holder renews, so neither the other consumer (its own
    Redis client and consumer name, as a second process) nor the holder's own fetch loop
    takes it over, and the result is accepted (the fence still holds)."""
    worker = await make_worker(hold=lambda body: 2.0 if body["eval_id"] == "long" else 0.0)
    svc = await make_service(executor_urls=(worker.url,), lease_timeout=0.6)
    other = await make_pool("intruder", (worker.url,), lease_timeout=0.6)
    await wait_for(lambda: _is_set(other.executors.available))
    await enqueue(svc, "long")
    await wait_for(lambda: _true(worker.calls))
    for i in range(4):  # both consumers keep claiming meanwhile
        await asyncio.sleep(0.3)
        await enqueue(svc, f"short-{i}")
    view = await reaches(svc, "long", "completed")
    assert view["attempts"] == 1
    assert view["result"] == success({"eval_id": "long"})
    assert worker.attempts("long") == [1]
    assert not worker.hung_up
    for i in range(4):
        await reaches(svc, f"short-{i}", "completed")


async def test_a_late_lease_loss_of_an_old_attempt_spares_the_newer_one(
    make_worker: MakeWorker, make_pool: MakePool
):
    """A renewal answer held back by a Redis stall can come back after this process claimed
    the task's next attempt: "lost" then names the old delivery, and only that one may be
    aborted (it used to abort whatever ran under the eval_id, a third execution)."""
    worker = await make_worker(hold=lambda body: 1.0)
    pool = await make_pool("holder", (worker.url,))
    await pool.queue.enqueue(TaskRequest.parse({"eval_id": "t", "code": "x"}))
    await wait_for(lambda: _true(pool.running.get("t")))
    newer = pool.running["t"].task
    older = dataclasses.replace(newer, attempt=newer.attempt - 1)
    pool._abort("t", "lease lost", older)
    await asyncio.sleep(0)
    assert not pool.running["t"].job.cancelled()
    pool._abort("t", "lease lost", newer)
    await wait_for(lambda: _true("t" not in pool.running))
    assert worker.attempts("t") == [1]


async def test_lapsed_lease_of_a_stopped_consumer_is_taken_over(
    make_worker: MakeWorker, make_pool: MakePool, streams: Queue
):
    """The other half of the lease: a holder that stops renewing (here: its loops die
    without a release, as when a process hangs) loses the task after the lease."""
    worker = await make_worker(hold=lambda body: 5.0 if body["attempt"] == 1 else 0.0)
    first = await make_pool("a", (worker.url,), lease_timeout=0.6)
    await put(streams, "orphaned")
    await wait_for(lambda: _true(worker.calls))
    for loop in first._loops:  # stop renewing, keep the executor call open
        loop.cancel()
    assert first._fetcher is not None
    first._fetcher.cancel()
    started = time.monotonic()
    await make_pool("b", (worker.url,), lease_timeout=0.6)
    view = await stored(streams, "orphaned", "completed")
    assert time.monotonic() - started < 3.0
    assert view["attempts"] == 2
    assert worker.attempts("orphaned") == [1, 2]


# --- executor health --------------------------------------------------------------------------


async def test_no_healthy_executor_keeps_tasks_queued_until_one_is(
    make_executor: MakeExecutor, make_service: MakeService
):
    executor = await make_executor()
    executor.healthy = False
    svc = await make_service(executor_urls=(executor.url,), retry=NEVER, network_retry=NEVER)
    for eval_id in ("w1", "w2"):
        await enqueue(svc, eval_id)
    await settle(0.45)  # a couple of health intervals (0.2 s)
    for position, eval_id in enumerate(("w1", "w2"), 1):
        view = await status_of(svc, eval_id)
        assert view["status"] == "queued" and view["position"] == position
        assert view["attempts"] == 0
    assert executor.calls == []
    health = (await svc.http.get("/health")).json()
    assert health["executors"] == {"total": 1, "healthy": 0}

    executor.healthy = True
    for eval_id in ("w1", "w2"):
        view = await reaches(svc, eval_id, "completed")
        assert view["attempts"] == 1
    assert [c["eval_id"] for c in executor.calls] == ["w1", "w2"]


# --- cancellation -------------------------------------------------------------------------


async def test_cancel_terminate_aborts_the_running_executor_call(
    make_worker: MakeWorker, make_service: MakeService
):
    worker = await make_worker(hold=lambda body: 8.0)
    # a long lease: the abort must come from the cancel, not from a failed renewal
    svc = await make_service(
        executor_urls=(worker.url,), retry=FAST, network_retry=FAST, lease_timeout=30.0
    )
    await enqueue(svc, "doomed")
    await reaches(svc, "doomed", "processing")
    await wait_for(lambda: _true(worker.calls))

    refused = await svc.http.post("/tasks/doomed/cancel")
    assert refused.status_code == 409
    started = time.monotonic()
    response = await svc.http.post("/tasks/doomed/cancel", params={"terminate": "true"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    await wait_for(lambda: _true(worker.hung_up), timeout=1.5)
    assert time.monotonic() - started < 1.5

    async def idle() -> bool:
        running: list[Any] = (await svc.http.get("/status")).json()["process"]["running"]
        return not running

    await wait_for(idle, timeout=1.0)
    await settle(0.4)
    view = await status_of(svc, "doomed")
    assert view["status"] == "cancelled"
    assert worker.attempts("doomed") == [1]  # never retried


async def test_cancel_terminate_sent_to_another_process_aborts_the_call(
    make_worker: MakeWorker, make_service: MakeService
):
    """Two services on one queue: only `runner` has executors; the cancel goes to `front`."""
    worker = await make_worker(hold=lambda body: 8.0)
    runner = await make_service(
        executor_urls=(worker.url,), retry=FAST, network_retry=FAST, lease_timeout=30.0
    )
    front = await make_service()
    await enqueue(front, "remote")
    await wait_for(lambda: _true(worker.calls))
    started = time.monotonic()
    response = await front.http.post("/api/eval/remote/cancel", params={"terminate": "1"})
    assert response.status_code == 200, response.text
    await wait_for(lambda: _true(worker.hung_up), timeout=1.5)
    assert time.monotonic() - started < 1.5
    await settle(0.4)
    assert (await status_of(runner, "remote"))["status"] == "cancelled"
    assert worker.attempts("remote") == [1]
    # the runner is free again and keeps working
    worker.hold = lambda body: 0.0
    await enqueue(front, "next-one")
    await reaches(front, "next-one", "completed")


async def test_a_due_time_announced_by_another_process_wakes_the_idle_consumer(
    make_worker: MakeWorker, make_service: MakeService
):
    """`runner` is idle (its promoter and fetch loop asleep for up to 5 s); `front` enqueues
    a task due in 0.3 s: the schedule channel (pub/sub, sharded on a cluster) wakes the
    runner's promoter, so the task runs at its due time, not at the next idle poll."""
    worker = await make_worker()
    runner = await make_service(executor_urls=(worker.url,))
    front = await make_service()
    await enqueue(front, "warm-up")
    await reaches(front, "warm-up", "completed")
    await settle(0.3)  # the runner has gone idle again: nothing scheduled, nothing queued
    started = time.monotonic()
    await enqueue(front, "later", delay=0.3)
    await reaches(runner, "later", "completed", timeout=5.0)
    assert time.monotonic() - started < 2.0


# --- graceful stop --------------------------------------------------------------------------


async def test_stop_lets_short_tasks_finish_and_releases_long_ones(
    make_worker: MakeWorker, make_pool: MakePool, streams: Queue
):
    def hold(body: dict[str, Any]) -> float:
        if body["eval_id"] == "long" and body["attempt"] == 1:
            return 8.0
        return 0.4 if body["eval_id"] == "short" else 0.0

    worker = await make_worker(hold=hold)
    first = await make_pool("first", (worker.url,), concurrency=2, lease_timeout=10.0)
    await put(streams, "long")
    await put(streams, "short")
    await wait_for(lambda: _true(len(worker.calls) == 2))

    started = time.monotonic()
    await first.stop(grace=1.5)
    stopped_in = time.monotonic() - started
    assert 0.3 < stopped_in < 2.5
    short = await streams.get("short")
    assert short["status"] == "completed" and short["attempts"] == 1
    await wait_for(lambda: _true(worker.hung_up), timeout=1.0)  # the call was aborted
    assert [b["eval_id"] for b in worker.hung_up] == ["long"]
    assert (await streams.get("long"))["status"] == "processing"

    # released, not left to the 10 s lease: a consumer that starts now takes it at once
    started = time.monotonic()
    await make_pool("second", (worker.url,), lease_timeout=10.0)
    view = await stored(streams, "long", "completed", timeout=5.0)
    assert time.monotonic() - started < 2.0
    assert view["attempts"] == 2
    assert worker.attempts("long") == [1, 2]
    assert worker.attempts("short") == [1]


async def test_stop_releases_to_an_idle_consumer_promptly(
    make_worker: MakeWorker, make_pool: MakePool, streams: Queue
):
    """A consumer already running and idle (the usual case: the other replicas) takes a
    released task over at once, not at its next idle poll."""
    worker = await make_worker(hold=lambda body: 8.0 if body["attempt"] == 1 else 0.0)
    first = await make_pool("first", (worker.url,), lease_timeout=10.0)
    await put(streams, "handover")
    await wait_for(lambda: _true(worker.calls))
    await make_pool("second", (worker.url,), lease_timeout=10.0)
    await settle(0.2)  # the second one has polled and gone idle
    started = time.monotonic()
    await first.stop(grace=0.1)
    view = await stored(streams, "handover", "completed", timeout=3.0)
    assert view["attempts"] == 2
    assert time.monotonic() - started < 2.0


async def test_work_added_right_after_an_empty_claim_wakes_the_idle_consumer(
    streams: Queue,
):
    """The fetch loop's idle step, driven by hand in the order a race produces: claim finds
    nothing, a producer adds a task, then the consumer blocks for new work."""
    await streams.ensure_groups()
    claimed = await streams.claim("idle", 4, 5.0)
    assert claimed.tasks == []
    await put(streams, "raced")
    started = time.monotonic()
    await streams.wait_for_work(1.0, claimed.tails)
    assert time.monotonic() - started < 0.5


async def test_back_to_back_tasks_start_without_an_idle_delay(
    make_executor: MakeExecutor, make_service: MakeService
):
    """Each second task lands right after the consumer's claim of the first, the moment the
    fetch loop goes idle: it must still be picked up at once, not after MAX_IDLE."""
    executor = await make_executor()
    svc = await make_service(executor_urls=(executor.url,))
    for i in range(10):
        await enqueue(svc, f"pair-{i}-a")
        await enqueue(svc, f"pair-{i}-b")
        await reaches(svc, f"pair-{i}-b", "completed", timeout=1.0)
    assert len(executor.calls) == 20


# --- logs ---------------------------------------------------------------------------------


async def test_one_canonical_log_line_per_task_attempt(
    make_executor: MakeExecutor, make_service: MakeService
):
    async def handler(body: dict[str, Any]) -> Response:
        if body["eval_id"] == "nope":
            return await answer(422, {"error": "unsupported language"})
        return await answer(200, success(body))

    executor = await make_executor(handler)
    svc = await make_service(executor_urls=(executor.url,))
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        tasks = [{"eval_id": "logged", "code": "x"}, {"eval_id": "nope", "code": "x"}]
        assert (await svc.http.post("/tasks/batch", json={"tasks": tasks})).status_code == 201
        await reaches(svc, "logged", "completed")
        await reaches(svc, "nope", "failed")
        await settle(0.1)
    lines = [e for e in logs if e["event"] == "task_attempt"]
    by_id = {e["eval_id"]: e for e in lines}
    assert len(lines) == 2 and set(by_id) == {"logged", "nope"}, lines
    ok, bad = by_id["logged"], by_id["nope"]
    assert ok["outcome"] == "success" and ok["status"] == "completed"
    assert ok["attempt"] == 1 and ok["http_status"] == 200
    assert ok["executor"] == executor.url and ok["duration_ms"] >= 0
    assert bad["outcome"] == "permanent" and bad["status"] == "failed"
    assert bad["http_status"] == 422 and "unsupported language" in bad["error"]
