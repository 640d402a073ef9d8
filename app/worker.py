"""`taskstream worker`: the consumers without the HTTP API, for batch jobs and CI.

The same `Workers` as `serve` (one consumer pool per selected queue, CONSUME or
`--consume`), so a worker and the service share queues, leases and retries. With `burst`
it stops once every queue it consumes is drained — nothing queued, running or waiting
out a retry in the priorities it takes — like RQ's `rq worker --burst`; scheduled tasks
(a future `run_at`) and deferred ones do not hold it. Without, it runs until SIGTERM or
Ctrl-C. Either way running tasks get SHUTDOWN_GRACE to finish.

Imports: callbacks, consumers, streams, models, settings, errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any

import structlog

from app.callbacks import CallbackSender, start_sender
from app.consumers import ConsumerPool, Workers
from app.errors import Unavailable
from app.models import PRIORITY_ORDER
from app.settings import Settings
from app.streams import Streams, connect, consumer_name, counts_of

log = structlog.get_logger()

POLL = 0.2  # seconds between two looks at the queues' counts in burst mode


class NothingToConsume(Exception):
    """The selection names no queue this process could execute."""


async def work(settings: Settings, redis_url: str, burst: bool) -> int:
    """Consume until drained (`burst`) or stopped; returns how many tasks were settled."""
    client = connect(redis_url)
    streams = Streams(client, settings)
    workers = Workers(streams, settings, consumer_name())
    runnable = {name: p for name, p in workers.pools.items() if p.executors.executors}
    for name in set(workers.pools) - set(runnable):
        log.warning("worker_queue_skipped", queue=name, reason="no executors for this queue")
    workers.pools = runnable
    try:
        await streams.ping()
    except Unavailable:
        await client.aclose()
        raise
    if not runnable:
        await client.aclose()
        raise NothingToConsume(
            "no selected queue has executors (EXECUTOR_URLS, QUEUE_EXECUTORS, CONSUME)"
        )
    await workers.start()
    sender = await start_sender(streams, consumer_name())
    log.info("worker_started", queues=sorted(runnable), burst=burst, consume=settings.consume.text)
    try:
        stop = _stop_on_signals()
        if burst:
            await _first(_until_drained(list(runnable.values()), sender), stop.wait())
        else:
            await stop.wait()
    finally:
        await workers.stop(settings.shutdown_grace)
        await sender.stop(settings.shutdown_grace)
        await client.aclose()
    settled = sum(pool.settled for pool in runnable.values())
    log.info("worker_stopped", burst=burst, settled=settled)
    return settled


async def _until_drained(pools: list[ConsumerPool], sender: CallbackSender) -> None:
    """Until the queues are drained twice in a row with no change between the looks (a
    task settled elsewhere, or a child released across queues, shows as a change), and the
    callbacks this worker holds, or nobody has read yet, are done."""
    previous: list[Any] | None = None
    while True:
        await asyncio.sleep(POLL)
        try:
            looks = await _look(pools)
            drained = all(empty for empty, _ in looks)
            counters = [seen for _, seen in looks]
            settled = drained and counters == previous and not sender.held
            if settled and not await sender.stream.outstanding(sender.consumer):
                return
            previous = counters if drained else None
        except Unavailable as exc:
            log.warning("worker_redis_unavailable", error=str(exc))
            previous = None


async def _look(pools: list[ConsumerPool]) -> list[tuple[bool, Any]]:
    """Per pool (nothing queued, running or retrying in its priorities; the counters seen),
    read in one go (two round trips however many queues)."""
    all_counts = await counts_of(pools[0].streams.redis, [p.streams.keys for p in pools])
    waiting = ("queued", "processing", "retrying")
    looks = []
    for pool, counts in zip(pools, all_counts, strict=True):
        taken = pool.priorities or tuple(p.value for p in PRIORITY_ORDER)
        by_state = counts["by_priority"]
        busy = any(by_state[state].get(prio, 0) for state in waiting for prio in taken)
        looks.append((not busy and not pool.running, (counts["totals"], by_state)))
    return looks


def _stop_on_signals() -> asyncio.Event:
    """SIGTERM and SIGINT end the wait (then running tasks get SHUTDOWN_GRACE)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    jobs = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
