"""ExecutorPool against real loopback executors: outcomes, health checks and routing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import orjson
import pytest
from starlette.responses import JSONResponse, PlainTextResponse, Response

from app.models import Outcome, Priority, Task
from app.redis_server import free_port
from app.runtime.executors import ExecutorPool, classify
from app.settings import RetryPolicy
from tests.conftest import StubExecutor, has_state, post, status_of, wait_for
from tests.runtime.test_wire import RawServer, ok

MakeExecutor = Callable[..., Awaitable[StubExecutor]]
MakePool = Callable[..., Awaitable[ExecutorPool]]


def make_task(eval_id: str = "e1", attempt: int = 1, **payload: Any) -> Task:
    return Task(eval_id, "1-0", attempt, Priority.DEFAULT, {"code": "print(1)", **payload})


def answer(status: int, body: Any = None) -> Callable[[dict[str, Any]], Awaitable[Response]]:
    async def handler(_: dict[str, Any]) -> Response:
        if isinstance(body, str):
            return PlainTextResponse(body, status_code=status)
        return JSONResponse(body if body is not None else {}, status_code=status)

    return handler


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[ExecutorPool] = []

    async def make(urls: Sequence[str], health_interval: float = 0.1) -> ExecutorPool:
        pool = ExecutorPool(list(urls), health_interval=health_interval)
        pools.append(pool)
        await pool.start()
        return pool

    yield make
    for pool in pools:
        await pool.close()


def unused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# --- outcomes -------------------------------------------------------------------------


async def test_success_returns_the_executor_answer(
    make_executor: MakeExecutor, make_pool: MakePool
) -> None:
    stub = await make_executor(answer(200, {"status": "success", "output": "1\n", "exit_code": 0}))
    pool = await make_pool([stub.url])
    task = make_task(attempt=2, language="bash", metadata={"user": "u"}, timeout=5)
    execution = await pool.execute(task, timeout=5)
    assert execution.outcome is Outcome.SUCCESS
    assert execution.result == {"status": "success", "output": "1\n", "exit_code": 0}
    assert execution.exit_code == 0
    assert execution.status_code == 200
    assert execution.executor == stub.url
    assert execution.error == ""
    assert stub.calls == [
        {
            "eval_id": "e1",
            "code": "print(1)",
            "language": "bash",
            "attempt": 2,
            "metadata": {"user": "u"},
        }
    ]


async def test_any_2xx_is_success(make_executor: MakeExecutor, make_pool: MakePool) -> None:
    stub = await make_executor(answer(201, {"status": "ok", "exit_code": 3}))
    pool = await make_pool([stub.url])
    execution = await pool.execute(make_task(), timeout=5)
    assert execution.outcome is Outcome.SUCCESS
    assert execution.exit_code == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
async def test_4xx_is_permanent(
    status: int, make_executor: MakeExecutor, make_pool: MakePool
) -> None:
    stub = await make_executor(answer(status, {"error": "bad code"}))
    pool = await make_pool([stub.url])
    execution = await pool.execute(make_task(), timeout=5)
    assert execution.outcome is Outcome.PERMANENT
    assert execution.status_code == status
    assert execution.error == f"executor answered {status}: bad code"
    assert execution.result == {"error": "bad code"}
    assert pool.executors[0].healthy


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_5xx_408_429_are_retryable(
    status: int, make_executor: MakeExecutor, make_pool: MakePool
) -> None:
    stub = await make_executor(answer(status, {"detail": "busy"}))
    pool = await make_pool([stub.url])
    execution = await pool.execute(make_task(), timeout=5)
    assert execution.outcome is Outcome.RETRYABLE
    assert execution.status_code == status
    assert execution.error == f"executor answered {status}"
    assert pool.executors[0].failures == 1
    assert pool.executors[0].succeeded == 0
    # an executor that answers is still routable
    assert pool.executors[0].healthy


async def test_timeout_is_retryable(make_executor: MakeExecutor, make_pool: MakePool) -> None:
    release = asyncio.Event()

    async def slow(_: dict[str, Any]) -> Response:
        await release.wait()
        return JSONResponse({"status": "late"})

    stub = await make_executor(slow)
    pool = await make_pool([stub.url])
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        execution = await pool.execute(make_task(), timeout=0.2)
        elapsed = loop.time() - started
    finally:
        release.set()
    assert execution.outcome is Outcome.RETRYABLE
    assert "timed out" in execution.error
    assert 0.15 < elapsed < 2.0
    assert len(stub.calls) == 1
    assert pool.executors[0].in_flight == 0
    assert pool.executors[0].healthy


async def test_connection_refused_is_network_and_marks_unhealthy(make_pool: MakePool) -> None:
    pool = await make_pool([unused_url()], health_interval=60)
    executor = pool.executors[0]
    assert not executor.healthy
    # as if it had answered its last health check, then died
    executor.healthy = True
    pool.available.set()
    execution = await pool.execute(make_task(), timeout=5)
    assert execution.outcome is Outcome.NETWORK
    assert "unreachable" in execution.error
    assert not executor.healthy
    assert executor.last_error is not None and "connection failed" in executor.last_error
    assert not pool.available.is_set()
    assert executor.in_flight == 0
    assert executor.failures == 1


async def test_stopped_executor_is_taken_out_of_routing(
    make_executor: MakeExecutor, make_pool: MakePool
) -> None:
    dying, alive = await make_executor(), await make_executor()
    pool = await make_pool([dying.url, alive.url], health_interval=60)
    assert all(e.healthy for e in pool.executors)
    assert dying.served is not None
    await dying.served.stop()
    outcomes = [(await pool.execute(make_task(), timeout=5)).outcome for _ in range(6)]
    assert outcomes.count(Outcome.NETWORK) <= 1
    assert not pool.executors[0].healthy
    assert pool.executors[1].healthy
    assert pool.available.is_set()
    assert len(alive.calls) == outcomes.count(Outcome.SUCCESS) >= 5


async def test_no_executor_at_all(make_pool: MakePool) -> None:
    pool = await make_pool([])
    assert pool.pick() is None
    assert not pool.available.is_set()
    execution = await pool.execute(make_task(), timeout=1)
    assert execution.outcome is Outcome.NETWORK
    assert execution.error == "no healthy executor"


async def test_unhealthy_at_start_gets_no_task(
    make_executor: MakeExecutor, make_pool: MakePool
) -> None:
    stub = await make_executor()
    stub.healthy = False
    pool = await make_pool([stub.url, unused_url()], health_interval=60)
    assert not any(e.healthy for e in pool.executors)
    assert not pool.available.is_set()
    execution = await pool.execute(make_task(), timeout=1)
    assert execution.outcome is Outcome.NETWORK
    assert stub.calls == []
    assert pool.executors[0].last_error == "health answered 503"
    assert pool.executors[1].last_error is not None
    assert "health check failed" in pool.executors[1].last_error


# --- classify -----------------------------------------------------------------------


def test_classify_non_json_bodies() -> None:
    ok = classify(200, b"plain output")
    assert (ok.outcome, ok.result) == (Outcome.SUCCESS, "plain output")
    assert ok.exit_code is None
    html = classify(502, b"<html>Bad Gateway</html>")
    assert html.outcome is Outcome.RETRYABLE
    assert html.result == "<html>Bad Gateway</html>"
    assert html.error == "executor answered 502"
    empty = classify(204, b"")
    assert (empty.outcome, empty.result) == (Outcome.SUCCESS, None)
    binary = classify(400, b"\xff\xfe bad")
    assert binary.outcome is Outcome.PERMANENT
    assert isinstance(binary.result, str)
    long = classify(500, b"x" * 10_000)
    assert isinstance(long.result, str) and len(long.result) == 2000


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (299, Outcome.SUCCESS),
        (400, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (499, Outcome.PERMANENT),
        (408, Outcome.RETRYABLE),
        (429, Outcome.RETRYABLE),
        (500, Outcome.RETRYABLE),
        (503, Outcome.RETRYABLE),
        (599, Outcome.RETRYABLE),
    ],
)
def test_classify_status_table(status: int, outcome: Outcome) -> None:
    assert classify(status, b"{}").outcome is outcome


def test_classify_error_message_from_json() -> None:
    assert classify(422, b'{"error": "syntax"}').error == "executor answered 422: syntax"
    assert classify(500, b'["not", "a", "dict"]').error == "executor answered 500"
    assert classify(200, b'{"exit_code": "0"}').exit_code is None


# --- health checks ------------------------------------------------------------------


async def test_health_checks_track_the_executor(
    make_executor: MakeExecutor, make_pool: MakePool
) -> None:
    stub = await make_executor()
    pool = await make_pool([stub.url], health_interval=0.1)
    executor = pool.executors[0]
    assert executor.healthy and pool.available.is_set()
    assert executor.checked_at is not None

    stub.healthy = False

    async def down() -> bool:
        return not executor.healthy and not pool.available.is_set()

    await wait_for(down, timeout=5)
    assert executor.last_error == "health answered 503"
    assert pool.pick() is None
    execution = await pool.execute(make_task(), timeout=1)
    assert execution.outcome is Outcome.NETWORK
    assert stub.calls == []

    stub.healthy = True

    async def up() -> bool:
        return executor.healthy and pool.available.is_set()

    await wait_for(up, timeout=5)
    assert executor.last_error is None
    assert (await pool.execute(make_task(), timeout=5)).outcome is Outcome.SUCCESS


async def test_available_cleared_only_when_none_healthy(
    make_executor: MakeExecutor, make_pool: MakePool
) -> None:
    a, b = await make_executor(), await make_executor()
    pool = await make_pool([a.url, b.url], health_interval=0.1)
    a.healthy = False

    async def a_down() -> bool:
        return not pool.executors[0].healthy

    await wait_for(a_down, timeout=5)
    assert pool.available.is_set()
    for _ in range(4):
        assert (await pool.execute(make_task(), timeout=5)).executor == b.url
    b.healthy = False

    async def none() -> bool:
        return not pool.available.is_set()

    await wait_for(none, timeout=5)
    assert not any(e.healthy for e in pool.executors)


async def test_health_recovers_after_connection_error(
    make_executor: MakeExecutor, make_pool: MakePool
) -> None:
    stub = await make_executor()
    pool = await make_pool([stub.url], health_interval=0.1)
    executor = pool.executors[0]
    # a transient connection error took it out; the next good health check brings it back
    executor.healthy = False
    pool.available.clear()

    async def back() -> bool:
        return executor.healthy and pool.available.is_set()

    await wait_for(back, timeout=5)


async def test_close_stops_the_health_loop(make_executor: MakeExecutor) -> None:
    stub = await make_executor()
    pool = ExecutorPool([stub.url], health_interval=0.05)
    await pool.start()
    await pool.close()
    assert pool._health_task is not None and pool._health_task.done()
    checked = pool.executors[0].checked_at
    await asyncio.sleep(0.2)
    assert pool.executors[0].checked_at == checked


# --- routing ------------------------------------------------------------------------


async def test_sequential_calls_round_robin(
    make_executor: MakeExecutor, make_pool: MakePool
) -> None:
    stubs = [await make_executor() for _ in range(3)]
    pool = await make_pool([s.url for s in stubs], health_interval=60)
    for i in range(30):
        execution = await pool.execute(make_task(f"e{i}"), timeout=5)
        assert execution.outcome is Outcome.SUCCESS
    assert [len(s.calls) for s in stubs] == [10, 10, 10]
    assert [e.routed for e in pool.executors] == [10, 10, 10]
    assert [e.succeeded for e in pool.executors] == [10, 10, 10]
    assert all(e.in_flight == 0 for e in pool.executors)
    assert all(e.latency_ms is not None and e.latency_ms > 0 for e in pool.executors)
    views = pool.views()
    assert [v["url"] for v in views] == [s.url for s in stubs]
    assert views[0]["routed"] == 10 and views[0]["healthy"] is True


async def test_busy_executor_is_avoided(make_executor: MakeExecutor, make_pool: MakePool) -> None:
    release = asyncio.Event()

    async def handler(body: dict[str, Any]) -> Response:
        if body["metadata"].get("block"):
            await release.wait()
        return JSONResponse({"status": "success", "exit_code": 0})

    stubs = [await make_executor(handler) for _ in range(3)]
    pool = await make_pool([s.url for s in stubs], health_interval=60)
    slow = asyncio.create_task(pool.execute(make_task("slow", metadata={"block": True}), 10))
    try:

        async def busy() -> list[int]:
            return [i for i, e in enumerate(pool.executors) if e.in_flight]

        [busy_index] = await wait_for(busy, timeout=5)
        for i in range(20):
            execution = await pool.execute(make_task(f"e{i}"), timeout=5)
            assert execution.outcome is Outcome.SUCCESS
            assert execution.executor != stubs[busy_index].url
        counts = [len(s.calls) for s in stubs]
        assert counts[busy_index] == 1
        assert all(c >= 5 for i, c in enumerate(counts) if i != busy_index)
    finally:
        release.set()
        await slow
    assert all(e.in_flight == 0 for e in pool.executors)


async def test_ties_round_robin_while_one_is_busy(
    make_executor: MakeExecutor, make_pool: MakePool
) -> None:
    release = asyncio.Event()

    async def handler(body: dict[str, Any]) -> Response:
        if body["metadata"].get("block"):
            await release.wait()
        return JSONResponse({"status": "success", "exit_code": 0})

    stubs = [await make_executor(handler) for _ in range(3)]
    pool = await make_pool([s.url for s in stubs], health_interval=60)
    slow = asyncio.create_task(pool.execute(make_task("slow", metadata={"block": True}), 10))
    try:

        async def busy() -> list[int]:
            return [i for i, e in enumerate(pool.executors) if e.in_flight]

        [busy_index] = await wait_for(busy, timeout=5)
        for i in range(20):
            await pool.execute(make_task(f"e{i}"), timeout=5)
        counts = [len(s.calls) for i, s in enumerate(stubs) if i != busy_index]
    finally:
        release.set()
        await slow
    assert counts == [10, 10]


async def test_concurrent_calls_spread_by_in_flight(
    make_executor: MakeExecutor, make_pool: MakePool
) -> None:
    release = asyncio.Event()

    async def handler(_: dict[str, Any]) -> Response:
        await release.wait()
        return JSONResponse({"status": "success", "exit_code": 0})

    stubs = [await make_executor(handler) for _ in range(3)]
    pool = await make_pool([s.url for s in stubs], health_interval=60)
    calls = [asyncio.create_task(pool.execute(make_task(f"e{i}"), 10)) for i in range(9)]
    try:

        async def all_sent() -> bool:
            return sum(len(s.calls) for s in stubs) == 9

        await wait_for(all_sent, timeout=5)
        assert [e.in_flight for e in pool.executors] == [3, 3, 3]
    finally:
        release.set()
        results = await asyncio.gather(*calls)
    assert all(r.outcome is Outcome.SUCCESS for r in results)
    assert [len(s.calls) for s in stubs] == [3, 3, 3]


def test_weighted_pick_shares_by_weight_when_idle() -> None:
    pool = ExecutorPool(["http://a:1", "http://b:2"], weights=[3, 1])
    for executor in pool.executors:
        executor.healthy = True
    for _ in range(400):
        chosen = pool.pick()
        assert chosen is not None
        chosen.routed += 1
    assert [e.routed for e in pool.executors] == [300, 100]


def test_weighted_pick_still_prefers_the_least_loaded() -> None:
    pool = ExecutorPool(["http://a:1", "http://b:2"], weights=[3, 1])
    heavy, light = pool.executors
    heavy.healthy = light.healthy = True
    heavy.in_flight = 6  # 6 / 3 = 2 per unit of weight
    light.in_flight = 1  # 1 / 1 = 1
    assert pool.pick() is light


async def test_weighted_routing_over_1000_tasks(make_service, make_executor):
    a, b = await make_executor(), await make_executor()
    pool = ExecutorPool([a.url, b.url], health_interval=0.2, weights=[3, 1])
    # one slot: every pick finds both idle, so the share follows the weights alone (with
    # more slots the least-loaded rule may, by design, move it with the executors' speed)
    service = await make_service(executors=pool, concurrency=1)
    tasks = [{"eval_id": f"w{i}", "code": "x"} for i in range(1000)]
    assert (await service.http.post("/tasks/batch", json={"tasks": tasks})).status_code == 201

    async def drained() -> bool:
        return len(a.calls) + len(b.calls) >= 1000

    await wait_for(drained, timeout=25)
    share = len(a.calls) / 1000
    assert 0.73 <= share <= 0.77, (len(a.calls), len(b.calls))
    views = (await service.http.get("/status")).json()["executors"]
    assert [v["weight"] for v in views] == [3.0, 1.0]
    assert abs(views[0]["share"] - share) < 0.01
    assert views[0]["success_rate"] == 1.0


# --- idempotency keys -----------------------------------------------------------------


def _key_and_attempt(request: bytes) -> tuple[str | None, int]:
    """The Idempotency-Key header (None when absent) and the body's attempt of a raw request."""
    head, _, body = request.partition(b"\r\n\r\n")
    key = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"idempotency-key":
            key = value.strip().decode()
    return key, int(orjson.loads(body)["attempt"])


@pytest.mark.parametrize("resets", ["always", "first-time-per-key"])
async def test_distinct_idempotency_keys_equal_attempts(make_service, queue, resets):
    """An executor that reads each request and then resets the connection (the first time it
    sees a key, or always). The service's reused keep-alive connection makes the wire
    client send the same request again on a fresh one, so the executor receives more
    requests than there are attempts (issue: 4 calls for `attempts: 3`); the keys tell
    the re-send from a retry: distinct keys == attempts, each key `<eval_id>:<attempt>`."""
    seen: list[str | None] = []

    async def reply(request: bytes) -> bytes | None:
        if not request.startswith(b"POST /execute "):
            return ok()  # health: keep-alive, so the first attempt reuses this connection
        key, _ = _key_and_attempt(request)
        first = key not in seen
        seen.append(key)
        return None if resets == "always" or first else ok(b'{"status":"success"}')

    raw = RawServer(reply, reset=True)
    raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    try:
        svc = await make_service(
            executor_urls=(raw.url,),
            health_interval=60.0,  # only the start's check: no probe takes the idle connection
            network_retry=RetryPolicy(2, 0.05, 1.0, 1.0, False),  # NETWORK_RETRY_MAX_RETRIES=2
        )
        eval_id = f"idem:{queue[:8]}"  # a `:` inside the eval_id: the attempt follows the last
        await post(svc, eval_id)
        final = "failed" if resets == "always" else "completed"
        await wait_for(has_state(svc, eval_id, final))
    finally:
        raw.server.close()
    attempts = (await status_of(svc, eval_id))["attempts"]
    sent = [_key_and_attempt(r) for r in raw.requests if r.startswith(b"POST /execute ")]
    assert all(key == f"{eval_id}:{attempt}" for key, attempt in sent), sent
    assert len({key for key, _ in sent}) == attempts
    # the exact failure: a re-send within attempt 1 (4 requests, 3 attempts; or 2 and 1)
    assert (len(sent), attempts) == ((4, 3) if resets == "always" else (2, 1))


async def test_max_in_flight_holds_calls_until_one_ends(make_counting) -> None:
    busy, free = await make_counting(hold=0.2), await make_counting(hold=0.0)
    pool = ExecutorPool([busy.url], 0.2, limits={busy.url: 1})
    await pool.start()
    try:
        assert pool.capacity == 1
        tasks = [Task(f"t{i}", "0-1", 1, Priority.DEFAULT) for i in range(3)]
        done = await asyncio.gather(*(pool.execute(t, 5) for t in tasks))
        assert [d.outcome for d in done] == [Outcome.SUCCESS] * 3
        assert busy.most_open == 1
        assert pool.views()[0]["max_in_flight"] == 1
    finally:
        await pool.close()
    mixed = ExecutorPool([busy.url, free.url], 0.2, limits={busy.url: 1})
    await mixed.start()
    try:
        assert mixed.capacity is None  # one executor has no bound: CONCURRENCY alone
    finally:
        await mixed.close()
