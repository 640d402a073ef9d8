"""`taskstream worker [--burst]`: the consumers without HTTP, as a subprocess against the
session's Redis and a loopback executor."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.responses import JSONResponse, Response

from app.engine import views
from app.engine.queue import Queue
from app.models import TaskRequest
from tests.cli.test_commands import arun, start
from tests.cli.test_main import dead_redis_url
from tests.conftest import StubExecutor, wait_for
from tests.runtime.test_wire import RawServer, ok


def worker_env(redis_url: str, queue: str, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "QUEUE_NAME": queue, "LOG_FORMAT": "json", **extra}


async def add(streams: Queue, eval_id: str, **data: Any) -> None:
    task = TaskRequest.parse({"eval_id": eval_id, "code": "x", **data})
    await streams.engine.queue(task.queue).enqueue(task)


def stopped_line(stderr_and_out: str) -> dict[str, Any]:
    for line in stderr_and_out.splitlines():
        if '"worker_stopped"' in line:
            record: dict[str, Any] = orjson.loads(line)
            return record
    raise AssertionError(f"no worker_stopped line in:\n{stderr_and_out}")


async def test_burst_exits_0_on_an_empty_queue(
    redis_url: str, queue: str, executor: StubExecutor
) -> None:
    env = worker_env(redis_url, queue, EXECUTOR_URLS=executor.url)
    code, out, err = await arun("worker", "--burst", env=env)
    assert code == 0, err
    assert stopped_line(out + err)["settled"] == 0
    assert executor.calls == []


async def test_burst_drains_the_queue_then_exits_0(
    redis_url: str, queue: str, streams: Queue, executor: StubExecutor
) -> None:
    await streams.ensure_groups()
    for i in range(20):
        await add(streams, f"t{i}", priority=("high", "default", "low")[i % 3])
    await add(streams, "later", delay=3600)  # scheduled tasks do not hold a burst worker
    env = worker_env(redis_url, queue, EXECUTOR_URLS=executor.url, CONCURRENCY="4")
    code, out, err = await arun("worker", "--burst", env=env)
    assert code == 0, err
    assert stopped_line(out + err)["settled"] == 20
    assert sorted(c["eval_id"] for c in executor.calls) == sorted(f"t{i}" for i in range(20))
    for i in range(20):
        assert (await streams.get(f"t{i}"))["status"] == "completed"
    assert (await streams.get("later"))["status"] == "scheduled"


async def test_burst_waits_out_retries(
    redis_url: str,
    queue: str,
    streams: Queue,
    make_executor: Callable[..., Awaitable[StubExecutor]],
) -> None:
    answers = [503, 503]

    async def flaky_answer(body: dict[str, Any]) -> Response:
        if answers:
            return JSONResponse({"error": "busy"}, status_code=answers.pop())
        return JSONResponse({"status": "success", "output": "", "exit_code": 0})

    flaky = await make_executor(flaky_answer)
    await streams.ensure_groups()
    await add(streams, "flaky", retry_intervals=[0.1])
    env = worker_env(redis_url, queue, EXECUTOR_URLS=flaky.url)
    code, _, err = await arun("worker", "--burst", env=env)
    assert code == 0, err
    record = await streams.get("flaky")
    assert record["status"] == "completed"
    assert record["attempts"] == 3


async def test_burst_consumes_only_the_selected_queue(
    redis_url: str,
    queue: str,
    streams: Queue,
    make_executor: Callable[..., Awaitable[StubExecutor]],
) -> None:
    gpu, cpu = await make_executor(), await make_executor()
    await streams.ensure_groups()
    for name in ("gpu", "cpu"):
        await streams.engine.queue(name).ensure_groups()
        for i in range(3):
            await add(streams, f"{name}{i}", queue=name)
    env = worker_env(
        redis_url,
        queue,
        QUEUE_EXECUTORS=f"gpu={gpu.url};cpu={cpu.url}",
        CONSUME="cpu",
    )
    code, _, err = await arun("worker", "--burst", env=env)
    assert code == 0, err
    assert sorted(c["eval_id"] for c in cpu.calls) == ["cpu0", "cpu1", "cpu2"]
    assert gpu.calls == []
    counts = await views.counts(streams.engine.queue("gpu"))
    assert counts["states"]["queued"] == 3
    consumers = await views.consumers(streams.engine.queue("gpu"))
    assert consumers == []  # never read from the gpu streams
    # --consume overrides CONSUME
    code, _, err = await arun("worker", "--burst", "--consume", "gpu", env=env)
    assert code == 0, err
    assert sorted(c["eval_id"] for c in gpu.calls) == ["gpu0", "gpu1", "gpu2"]


async def test_burst_delivers_callbacks_before_it_exits(
    redis_url: str, queue: str, streams: Queue, executor: StubExecutor
) -> None:
    async def answer(request: bytes) -> bytes:
        return ok()

    receiver = RawServer(answer)
    receiver.server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    try:
        env = worker_env(redis_url, queue, EXECUTOR_URLS=executor.url)
        await streams.ensure_groups()
        await add(streams, "cb1", callback_url=receiver.url)
        code, _, err = await arun("worker", "--burst", env=env)
        assert code == 0, err
        bodies = [orjson.loads(r.partition(b"\r\n\r\n")[2]) for r in receiver.requests]
        assert [b["eval_id"] for b in bodies] == ["cb1"]
        assert bodies[0]["status"] == "completed"
    finally:
        receiver.server.close()
        await receiver.server.wait_closed()


async def test_worker_without_burst_runs_until_sigterm(
    redis_url: str, queue: str, streams: Queue, executor: StubExecutor
) -> None:
    await streams.ensure_groups()
    proc = await start("worker", env=worker_env(redis_url, queue, EXECUTOR_URLS=executor.url))
    try:
        await add(streams, "w1")

        async def done() -> bool:
            return bool((await streams.get("w1"))["status"] == "completed")

        await wait_for(done, timeout=20)
        assert proc.returncode is None  # still running with the queue empty
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 20)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_burst_worker_stops_gracefully_on_sigterm(
    redis_url: str,
    queue: str,
    streams: Queue,
    make_executor: Callable[..., Awaitable[StubExecutor]],
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(body: dict[str, Any]) -> Response:
        started.set()
        await release.wait()
        return JSONResponse({"status": "success", "output": "", "exit_code": 0})

    slow_executor = await make_executor(slow)
    await streams.ensure_groups()
    await add(streams, "long")
    env = worker_env(redis_url, queue, EXECUTOR_URLS=slow_executor.url, SHUTDOWN_GRACE="0.2")
    proc = await start("worker", "--burst", env=env)
    try:
        await asyncio.wait_for(started.wait(), 20)
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err
        assert stopped_line((out + err).decode())["burst"] is True
        # the running task was released for another worker, not left to its lease
        record = await streams.get("long")
        assert record["status"] == "processing"
        claimed = await streams.claim("other", 1, 30)
        assert [t.eval_id for t in claimed.tasks] == ["long"]
    finally:
        release.set()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_worker_with_nothing_to_run_exits_2(redis_url: str, queue: str) -> None:
    code, _, err = await arun("worker", "--burst", env=worker_env(redis_url, queue))
    assert code == 2
    assert "no selected queue has executors" in err


async def test_worker_bad_consume_exits_2(redis_url: str, queue: str) -> None:
    env = worker_env(redis_url, queue, EXECUTOR_URLS="http://127.0.0.1:9")
    code, _, err = await arun("worker", "--burst", "--consume", "a:b:c", env=env)
    assert code == 2
    assert err.startswith("taskstream: --consume:")


async def test_worker_against_a_dead_redis_exits_1(queue: str) -> None:
    env = worker_env(dead_redis_url(), queue, EXECUTOR_URLS="http://127.0.0.1:9")
    code, _, err = await arun("worker", "--burst", env=env)
    assert code == 1
    assert "redis" in err.lower()
