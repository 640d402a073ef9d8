"""`taskstream worker`: the consumers without the HTTP API, for batch jobs and CI.

The same `Workers` as `serve` (one consumer pool per selected queue, CONSUME or
`--consume`), so a worker and the service share queues, leases and retries. With `burst`
it stops once every queue it consumes is drained — nothing queued, running or waiting
out a retry in the priorities it takes — like RQ's `rq worker --burst`; scheduled tasks
(a future `run_at`) and deferred ones do not hold it. Without, it runs until SIGTERM or
Ctrl-C. Either way running tasks get SHUTDOWN_GRACE to finish.

Imports: consumers, streams, settings, errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog
from redis.exceptions import RedisError

from app.callbacks import CallbackSender, start_sender
from app.consumers import ConsumerPool, Workers
from app.errors import Unavailable
from app.settings import Settings
from app.streams import Streams, connect, consumer_name

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
        if burst:
            await _until_drained(list(runnable.values()), sender)
        else:
            await _until_signalled()
    finally:
        await workers.stop(settings.shutdown_grace)
        await sender.stop(settings.shutdown_grace)
        await client.aclose()
    settled = sum(pool.settled for pool in runnable.values())
    log.info("worker_stopped", burst=burst, settled=settled)
    return settled


async def _until_drained(pools: list[ConsumerPool], sender: CallbackSender) -> None:
    """Until the queues are drained and their result callbacks delivered (or given up)."""
    while True:
        await asyncio.sleep(POLL)
        try:
            drained = all([await _drained(pool) for pool in pools])
            if drained and not await sender.stream.redis.xlen(sender.stream.key):
                return
        except (Unavailable, RedisError, OSError) as exc:
            log.warning("worker_redis_unavailable", error=str(exc))


async def _drained(pool: ConsumerPool) -> bool:
    if pool.running:
        return False
    counts = await pool.streams.counts()
    taken = pool.priorities or ("high", "default", "low")
    by_state = counts["by_priority"]
    waiting = ("queued", "processing", "retrying")
    return not any(by_state[state].get(prio, 0) for state in waiting for prio in taken)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
