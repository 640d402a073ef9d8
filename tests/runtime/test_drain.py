"""The graceful stop (app/runtime/drain.py, `Server` in app/cli/serve.py): after SIGTERM /readyz
answers 503 at once and /livez 200, the listener stays open SHUTDOWN_DELAY s and still
answers (enqueues included), the task in flight completes, the process exits 0; a second
signal exits at once. And the consumers' `cancel()` survives a swallowed cancellation,
which would otherwise hang the stop."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse, Response

from app.engine.queue import Queue
from app.runtime.aio import cancel
from app.runtime.drain import Drain
from tests.conftest import Process, StubExecutor, wait_for

MakeExecutor = Callable[..., Awaitable[StubExecutor]]


async def holding(make_executor: MakeExecutor) -> tuple[StubExecutor, asyncio.Event]:
    """An executor that holds every call until the event is set."""
    release = asyncio.Event()

    async def hold(body: dict[str, Any]) -> Response:
        await release.wait()
        return JSONResponse({"status": "success", "output": "done", "exit_code": 0})

    return await make_executor(hold), release


def service_env(redis_url: str, queue: str, executor: StubExecutor, delay: float) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "QUEUE_NAME": queue,
        "EXECUTOR_URLS": executor.url,
        "HEALTH_INTERVAL": "0.2",
        "SHUTDOWN_GRACE": "10",
        "SHUTDOWN_DELAY": str(delay),
    }


async def exited(process: Process, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (code := process.proc.poll()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"still running after {timeout}s:\n{process.output()}")
        await asyncio.sleep(0.05)
    return code


async def running_one(http: httpx.AsyncClient, executor: StubExecutor, eval_id: str) -> None:
    answer = await http.post("/tasks", json={"eval_id": eval_id, "code": "x"})
    assert answer.status_code == 201, answer.text

    async def called() -> bool:
        return len(executor.calls) == 1

    await wait_for(called)


async def not_ready(http: httpx.AsyncClient) -> httpx.Response | None:
    response = await http.get("/readyz")
    return response if response.status_code == 503 else None


async def test_sigterm_drains_then_exits_0(
    spawn_service: Callable[..., Process],
    make_executor: MakeExecutor,
    redis_url: str,
    queue: str,
    streams: Queue,
) -> None:
    executor, release = await holding(make_executor)
    process = spawn_service(service_env(redis_url, queue, executor, delay=1.0))
    async with httpx.AsyncClient(base_url=process.url, timeout=5) as http:
        await running_one(http, executor, "inflight")
        signalled = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        readyz = await wait_for(lambda: not_ready(http), timeout=1, interval=0.02)
        assert "SIGTERM" in readyz.json()["error"]
        assert (await http.get("/livez")).status_code == 200

        async def stopped_claiming() -> bool:
            return "consumer_draining" in process.output()

        await wait_for(stopped_claiming, timeout=2)
        # A draining replica only stops consuming: it still takes enqueues.
        late = await http.post("/tasks", json={"eval_id": "late", "code": "x"})
        assert late.status_code == 201, late.text
        assert (await http.get("/tasks/inflight")).json()["status"] == "processing"
    release.set()
    assert await exited(process, timeout=15) == 0
    assert time.monotonic() - signalled >= 1.0  # the listener stayed SHUTDOWN_DELAY s
    assert (await streams.get("inflight"))["status"] == "completed"
    assert (await streams.get("late"))["status"] == "queued"  # not claimed while draining
    assert len(executor.calls) == 1
    assert "service_draining" in process.output()


async def test_a_second_signal_exits_at_once(
    spawn_service: Callable[..., Process],
    make_executor: MakeExecutor,
    redis_url: str,
    queue: str,
) -> None:
    executor, release = await holding(make_executor)
    process = spawn_service(service_env(redis_url, queue, executor, delay=60.0))
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=5) as http:
            await running_one(http, executor, "held")
            process.proc.send_signal(signal.SIGTERM)
            await wait_for(lambda: not_ready(http), timeout=1, interval=0.02)
        process.proc.send_signal(signal.SIGTERM)
        assert await exited(process, timeout=5) == 128 + signal.SIGTERM
    finally:
        release.set()


async def test_cancel_survives_a_swallowed_cancellation() -> None:
    """Python 3.11's asyncio.wait_for (inside redis-py) can eat a cancel that lands as its
    inner call completes; the loop then goes on. `cancel` asks again until it ends."""
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as wait_for does when its inner future just finished

    job = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel(job), 5)
    assert job.cancelled() and swallowed == 1


async def test_drain_stops_the_consumers_once() -> None:
    stops = 0

    async def stop() -> None:
        nonlocal stops
        stops += 1

    drain = Drain()
    assert not drain.draining and drain.elapsed() == 0.0
    drain.attach(stop)
    assert not drain.kick()  # not draining yet
    drain.begin("draining: SIGTERM")
    drain.begin("draining: SIGINT")  # the first reason stays
    assert drain.reason == "draining: SIGTERM"
    assert drain.kick() and not drain.kick()
    await drain.stopped()
    await drain.stopped()
    assert stops == 1


@pytest.mark.parametrize("began", [False, True])
async def test_the_lifespan_stops_the_consumers_without_a_drain(began: bool) -> None:
    stopped = asyncio.Event()

    async def stop() -> None:
        stopped.set()

    drain = Drain()
    drain.attach(stop)
    if began:
        drain.begin("draining")
    await drain.stopped()
    assert stopped.is_set()
