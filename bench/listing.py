"""Redis time of progress reports, task listing and ETAs (issue 15, items 6-8).

`python -m bench.listing [N]`. Not part of `python -m bench`: it starts its own
redis-server (AOF off, free loopback port), fills one queue with N queued tasks (default
100,000; a tenth of them carry `metadata.user = "needle"` every 10th task), a few thousand
finished, scheduled, deferred and processing ones, and reads the Redis CPU time of each
operation from `INFO commandstats` (EVALSHA microseconds per call): a progress report, a
pace reading (`eta`), and one page of each state's listing, with and without a filter.
Also the enqueue script's cost for a deferred task (which now joins the `deferred` zset),
beside a plain enqueue.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from app.engine import listing, pace, progress
from app.engine.client import connect
from app.engine.engine import Engine
from app.engine.queue import Queue
from app.models import Priority, State, TaskRequest
from app.redis_server import RedisServer
from app.settings import Settings

BATCH = 1000
REPEAT = 20


async def evalsha(client: Any) -> tuple[int, int]:
    """EVALSHA calls and their microseconds in Redis so far."""
    stats = (await client.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


async def timed(client: Any, label: str, call: Any, repeat: int = REPEAT) -> float:
    """Redis µs per script call of `call()`, over `repeat` calls."""
    calls0, usec0 = await evalsha(client)
    for _ in range(repeat):
        await call()
    calls1, usec1 = await evalsha(client)
    per = (usec1 - usec0) / max(1, calls1 - calls0)
    print(f"{label:<58} {per:>9.1f} µs")
    return per


def task(eval_id: str, **extra: Any) -> TaskRequest:
    payload: dict[str, Any] = {"code": "x" * 200, **extra}
    return TaskRequest(eval_id, Priority.DEFAULT, payload)


async def fill(streams: Queue, n: int) -> None:
    engine = streams.engine
    for start in range(0, n, BATCH):
        reqs = []
        for i in range(start, min(n, start + BATCH)):
            meta = {"metadata": {"user": "needle" if i % 10 == 0 else f"u{i}"}}
            reqs.append(task(f"q{i:07}", **meta))
        await engine.enqueue_many(reqs)


async def finished(streams: Queue, n: int) -> None:
    await streams.engine.enqueue_many([task(f"f{i:05}") for i in range(n)])
    for _ in range(n):
        claimed = await streams.claim("bench", 1, 60)
        await streams.complete(claimed.tasks[0].eval_id, {"ok": True}, claimed.tasks[0])


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), appendonly=False, unix_socket=False)
        server.start()
        client = connect(server.url)
        try:
            settings = Settings(queue="bench", events_maxlen=10_000)
            streams = Engine(client, settings).default
            await run(streams, client, n)
        finally:
            await client.aclose()
            server.stop()


async def run(streams: Queue, client: Any, n: int) -> None:
    await finished(streams, 2000)  # completed: the events stream holds their history
    await streams.enqueue(task("parent"))
    await timed(client, "enqueue (plain)", lambda: streams.enqueue(task(_next("plain"))))
    await timed(
        client,
        "enqueue (deferred: joins the deferred zset)",
        lambda: streams.enqueue(
            TaskRequest(_next("kid"), Priority.DEFAULT, {"code": "x"}, depends_on=("parent",))
        ),
    )
    claimed = await streams.claim("bench", 1, 60)
    running = claimed.tasks[0]
    sent = progress.Report(40, "rows", None, running.attempt, running.entry)
    await timed(
        client,
        "progress report (pulled: renews the lease)",
        lambda: _report(streams, running, sent),
    )
    await fill(streams, n)
    print(f"queue: {n} queued, 2,000 completed, {2 * REPEAT} deferred")
    await timed(client, "pace reading (eta)", lambda: pace.pace_of(streams))
    for state, limit, q in [
        (State.QUEUED, 50, None),
        (State.QUEUED, 500, None),
        (State.QUEUED, 50, "needle"),
        (State.QUEUED, 50, "nobody"),
        (State.PROCESSING, 50, None),
        (State.DEFERRED, 50, None),
        (State.COMPLETED, 50, None),
    ]:
        page = listing.Page(state, limit, None, q, None)
        label = f"page of {state.value}, limit {limit}" + (f", q={q}" if q else "")
        await timed(client, label, lambda page=page: listing.list_tasks(streams, page), 5)


_counter = iter(range(10**9))


def _next(prefix: str) -> str:
    return f"{prefix}{next(_counter)}"


async def _report(streams: Queue, running: Any, sent: progress.Report) -> None:
    await progress.report(streams, running.eval_id, sent)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
