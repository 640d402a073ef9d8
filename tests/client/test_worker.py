"""The pull worker against the real service: functions run per task and their outcomes
reported; exceptions retried by the service, then dead-lettered; the lease kept while a
function runs longer than it; a cancel seen through a refused renewal; a graceful stop
(by `stop()` here, by SIGTERM in test_worker_signals.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from taskstream_client import AsyncClient, Job, Reject, State, Worker
from tests.client.conftest import FAST_RETRIES
from tests.conftest import wait_for


@pytest.fixture
async def aapi(live) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(live.url) as client:
        yield client


@pytest.fixture
async def start_worker(live) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """Start a Worker serving `live` on this test's loop; stopped (and awaited) at the end."""
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(function: Callable[[Job], Any], **options: Any) -> Worker:
        worker = Worker(function, base_url=live.url, poll=5, **options)
        running.append((worker, asyncio.ensure_future(worker.serve(handle_signals=False))))
        return worker

    yield start
    for worker, serving in running:
        worker.stop()
        await asyncio.wait_for(serving, 15)


def done(aapi: AsyncClient, *eval_ids: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        records = [await aapi.get(eval_id) for eval_id in eval_ids]
        return all(record.done for record in records)

    return check


async def test_runs_plain_and_async_functions_and_reports_results(aapi, start_worker):
    def square(job: Job) -> dict[str, Any]:
        return {"square": int(job.code) ** 2, "meta": job.metadata, "attempt": job.attempt}

    async def negate(job: Job) -> int:
        await asyncio.sleep(0)
        return -int(job.code)

    ids = [(await aapi.enqueue(str(n), metadata={"n": n})).eval_id for n in range(5)]
    worker = await start_worker(square)
    results = [await aapi.result(eval_id, timeout=10) for eval_id in ids]
    assert results == [{"square": n * n, "meta": {"n": n}, "attempt": 1} for n in range(5)]
    assert worker.counts["completed"] == 5
    await aapi.enqueue("7", eval_id="neg", queue="math")
    await start_worker(negate, queue="math")
    assert await aapi.result("neg", timeout=10) == -7


async def test_runs_concurrency_tasks_at_once(aapi, start_worker):
    together = threading.Barrier(3, timeout=10)  # breaks unless 3 run at the same time

    def meet(job: Job) -> str:
        together.wait()
        return job.eval_id

    for n in range(3):
        await aapi.enqueue("x", eval_id=f"c{n}")
    await start_worker(meet, concurrency=3)
    assert [await aapi.result(f"c{n}", timeout=10) for n in range(3)] == ["c0", "c1", "c2"]


async def test_an_exception_is_retried_by_the_service_then_dead_lettered(aapi, start_worker):
    attempts: list[int] = []

    def broken(job: Job) -> None:
        attempts.append(job.attempt)
        raise ValueError(f"bad input on attempt {job.attempt}")

    await aapi.enqueue("x", eval_id="boom")
    worker = await start_worker(broken)
    await wait_for(done(aapi, "boom"))
    record = await aapi.get("boom")
    assert (record.status, record.attempts) == (State.FAILED, FAST_RETRIES.max_retries + 1)
    assert record.error == "ValueError: bad input on attempt 3"
    assert attempts == [1, 2, 3]
    dead = (await aapi.dlq()).tasks[0]
    assert dead.eval_id == "boom" and "raise ValueError" in (dead.traceback or "")
    assert (worker.counts["retried"], worker.counts["failed"]) == (2, 1)


async def test_reject_fails_at_once(aapi, start_worker):
    def refuse(job: Job) -> None:
        raise Reject("language not supported")

    await aapi.enqueue("x", eval_id="rej", language="cobol")
    await start_worker(refuse)
    await wait_for(done(aapi, "rej"))
    record = await aapi.get("rej")
    assert (record.status, record.attempts, record.error) == (
        "failed",
        1,
        "language not supported",
    )


async def test_a_result_that_is_not_json_is_a_failure(aapi, start_worker):
    await aapi.enqueue("x", eval_id="obj", max_retries=0)
    await start_worker(lambda job: object())
    await wait_for(done(aapi, "obj"))
    assert "TypeError" in ((await aapi.get("obj")).error or "")


async def test_the_lease_is_kept_while_a_function_outlasts_it(make_live):
    # The lease of a pulled task is TASK_TIMEOUT (here 1.5 s); the function takes 4 s.
    service = make_live(task_timeout=1.5, lease_timeout=1.5)
    async with AsyncClient(service.url) as aapi:
        await aapi.enqueue("x", eval_id="unkept")
        unkept = await aapi.next()  # a delivery nobody renews lapses: attempt 2 after 1.5 s
        assert unkept is not None and unkept.lease_timeout == 1.5
        again = await aapi.next(wait=5)
        assert again is not None and (again.eval_id, again.attempt) == ("unkept", 2)
        await aapi.complete(again, None)

        started = threading.Event()

        def slow(job: Job) -> str:
            started.set()
            time.sleep(4)
            return "kept"

        await aapi.enqueue("x", eval_id="kept")
        worker = Worker(slow, client=aapi, poll=1)
        serving = asyncio.ensure_future(worker.serve(handle_signals=False))
        await asyncio.to_thread(started.wait, 5)
        assert await aapi.next(wait=3) is None  # the worker's lease holds past 1.5 s
        assert await aapi.result("kept", timeout=10) == "kept"
        record = await aapi.get("kept")
        assert record.attempts == 1 and worker.counts == {"completed": 1}
        worker.stop()
        await asyncio.wait_for(serving, 10)


async def test_a_cancel_with_terminate_reaches_the_function(make_live):
    service = make_live(task_timeout=1.5)  # renewals every 0.5 s
    async with AsyncClient(service.url) as aapi:
        started, stopped = asyncio.Event(), asyncio.Event()

        async def endless(job: Job) -> None:
            started.set()
            try:
                await asyncio.sleep(60)
            finally:
                stopped.set()

        await aapi.enqueue("x", eval_id="endless")
        worker = Worker(endless, client=aapi, poll=1)
        serving = asyncio.ensure_future(worker.serve(handle_signals=False))
        await asyncio.wait_for(started.wait(), 5)
        assert (await aapi.cancel("endless", terminate=True)).status == "cancelled"
        await asyncio.wait_for(stopped.wait(), 5)  # the next renewal is refused: cancelled
        await wait_for(lambda: _true(worker.counts["lost"] == 1))
        assert (await aapi.get("endless")).status == "cancelled"
        worker.stop()
        await asyncio.wait_for(serving, 10)


async def _true(value: bool) -> bool:
    return value


async def test_stop_finishes_the_running_task_and_takes_no_new_one(aapi, live):
    started, release = threading.Event(), threading.Event()

    def work(job: Job) -> str:
        started.set()
        release.wait(10)
        return "finished"

    await aapi.enqueue("x", eval_id="first")
    worker = Worker(work, base_url=live.url, poll=5, concurrency=2)
    serving = asyncio.ensure_future(worker.serve(handle_signals=False))
    await asyncio.to_thread(started.wait, 5)
    await wait_for(lambda: _true(worker.polling == 1))  # the other slot waits for a task
    worker.stop()
    await wait_for(lambda: _true(worker.polling == 0))  # its long-poll abandoned at once
    await aapi.enqueue("x", eval_id="second")
    await asyncio.sleep(0.3)  # a long-poll still open would have taken it by now
    assert not serving.done()  # waits for the running task
    release.set()
    await asyncio.wait_for(serving, 10)
    assert await aapi.result("first", timeout=5) == "finished"
    second = await aapi.get("second")
    assert (second.status, second.attempts) == ("queued", 0)  # not taken, not held
    delivery = await aapi.next()
    assert delivery is not None and (delivery.eval_id, delivery.attempt) == ("second", 1)
