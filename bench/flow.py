"""What flow control costs Redis per task: fair share on, a rate limit on, a cap on, beside
the plain path (docs/flow-control.md, *What it costs*).

`python -m bench.flow [N]` (default 2,000 tasks per run). Not part of `python -m bench`: it
starts its own redis-server (AOF off, free loopback port) and, for each case, stores N
tasks with the service's enqueue script (pipelined 200 at a time), claims them in batches
of 16 and completes them, as an in-process consumer does. From `INFO commandstats`, reset
before each run: the Redis commands the scripts ran per task, and the scripts' own time
(EVALSHA µs) per task. The cases run interleaved, 5 rounds; the µs column is the smallest
of the rounds (the least disturbed by whatever else shares the machine).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.engine.client import connect
from app.engine.engine import Engine
from app.flow_settings import Flow, Rate
from app.models import TaskRequest
from app.redis_server import RedisServer
from app.settings import Settings

ROUNDS = 5
Case = tuple[str, Callable[[str], dict[str, Any]], Callable[[int], dict[str, Any]]]
CASES: list[Case] = [
    ("plain (no tenant, no limit)", lambda q: {}, lambda i: {}),
    ("fair share: two tenants", lambda q: {}, lambda i: {"tenant": "ab"[i % 2]}),
    ("fair share: tenant + default", lambda q: {}, lambda i: {"tenant": "a"} if i % 2 else {}),
    ("RATE_LIMITS", lambda q: {"flow": Flow(rates={q: Rate(1_000_000, 1.0)})}, lambda i: {}),
    ("QUEUE_MAX_IN_FLIGHT", lambda q: {"flow": Flow(max_in_flight={q: 1_000_000})}, lambda i: {}),
]


async def one(url: str, n: int, case: Case) -> tuple[float, float]:
    """(commands, EVALSHA µs) per task of one run."""
    _, settings_of, fields = case
    client = connect(url)
    try:
        queue = uuid.uuid4().hex
        q = Engine(client, Settings(redis_url=url, queue=queue, **settings_of(queue))).default
        await q.enqueue(TaskRequest.parse({"eval_id": "warm", "code": "x"}))
        warm = await q.claim("c", 1, 30)
        await q.complete("warm", None, warm.tasks[0])
        await client.config_resetstat()
        reqs = [TaskRequest.parse({"eval_id": f"t{i}", "code": "x", **fields(i)}) for i in range(n)]
        for i in range(0, n, 200):
            await asyncio.gather(*(q.enqueue(r) for r in reqs[i : i + 200]))
        done = 0
        while done < n:
            claimed = await q.claim("c", 16, 30)
            await asyncio.gather(*(q.complete(t.eval_id, None, t) for t in claimed.tasks))
            done += len(claimed.tasks)
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    inner = sum(
        v["calls"] for k, v in stats.items() if k not in ("cmdstat_evalsha",) and "config" not in k
    )
    return inner / n, stats["cmdstat_evalsha"]["usec"] / n


async def main(n: int) -> None:
    server = RedisServer(Path(tempfile.mkdtemp()), appendonly=False, unix_socket=False)
    server.start()
    try:
        found: dict[str, list[tuple[float, float]]] = {case[0]: [] for case in CASES}
        for _ in range(ROUNDS):
            for case in CASES:
                found[case[0]].append(await one(server.url, n, case))
    finally:
        server.stop()
    plain = min(us for _, us in found[CASES[0][0]])
    print(f"{'case':32s} {'commands/task':>14s} {'µs/task':>8s} {'vs plain':>9s}")
    for name, runs in found.items():
        us = min(u for _, u in runs)
        print(f"{name:32s} {runs[0][0]:14.2f} {us:8.1f} {us / plain:8.0%}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
