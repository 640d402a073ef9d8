"""One figure for task dependencies: how long one parent's completion takes to release N
children (default 10,000), and how long one parent's failure takes to cancel them.

`python -m bench.deps [N]`. Not part of `python -m bench`: it starts its own redis-server
(AOF off, free loopback port), stores the parent and its N deferred children with the
service's enqueue script (`Queue.enqueue_many`, batches of 1,000), takes the parent as a
pull worker would, and times the one complete.lua call that releases every child (wall time
of the call, and the script's own time from SLOWLOG). The failure case does the same with
fail.lua (`retry: false`), which cancels every child.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from app.engine import views
from app.engine.client import connect
from app.engine.engine import Engine
from app.engine.queue import Queue
from app.models import Priority, TaskRequest
from app.redis_server import RedisServer
from app.settings import Settings

BATCH = 1000


async def _prepare(streams: Queue, parent: str, n: int) -> None:
    await streams.enqueue(TaskRequest(parent, Priority.HIGH, {"code": "x"}))
    for start in range(0, n, BATCH):
        reqs = [
            TaskRequest(f"{parent}.c{i}", Priority.DEFAULT, {"code": "x"}, depends_on=(parent,))
            for i in range(start, min(n, start + BATCH))
        ]
        answers = await streams.engine.enqueue_many(reqs)
        assert all(a["status"] == "deferred" for a in answers), answers[:3]


async def _script_ms(client: Any) -> float:
    """Duration of the slowest command since the last SLOWLOG RESET (microseconds -> ms)."""
    entries = await client.slowlog_get(128)
    return max((int(e["duration"]) for e in entries), default=0) / 1000


async def _one(streams: Queue, client: Any, n: int, outcome: str) -> dict[str, Any]:
    parent = f"p-{outcome}"
    await _prepare(streams, parent, n)
    claimed = await streams.claim("bench", 1, 60)
    assert [t.eval_id for t in claimed.tasks] == [parent]
    await client.slowlog_reset()
    started = time.perf_counter()
    if outcome == "complete":
        await streams.complete(parent, {"ok": True}, task=claimed.tasks[0])
    else:
        await streams.fail(parent, "boom", retry=False, task=claimed.tasks[0])
    wall_ms = (time.perf_counter() - started) * 1000
    script_ms = await _script_ms(client)
    counts = await views.counts(streams)
    state = "queued" if outcome == "complete" else "cancelled"
    done = counts["states"]["queued"] if outcome == "complete" else counts["totals"]["cancelled"]
    assert done == n and counts["states"]["deferred"] == 0, counts
    return {"wall_ms": wall_ms, "script_ms": script_ms, "state": state}


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), appendonly=False, unix_socket=False)
        server.start()
        try:
            for outcome in ("complete", "fail"):
                client = connect(server.url)
                await client.config_set("slowlog-log-slower-than", 0)
                settings = Settings(redis_url=server.url, queue=f"deps-{outcome}")
                try:
                    r = await _one(Engine(client, settings).default, client, n, outcome)
                finally:
                    await client.aclose()
                print(
                    f"{outcome} of one parent -> {n:,} children {r['state']}: "
                    f"{r['wall_ms']:.1f} ms wall, {r['script_ms']:.1f} ms in the script "
                    f"({r['script_ms'] * 1000 / n:.2f} µs per child)",
                    flush=True,
                )
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))
