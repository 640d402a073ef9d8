"""The two references issue 14's ratios are taken against, measured in the same run.

Streams floor: the leanest queue Redis Streams allow, on the bench's redis-server: a
producer XADDs entries of the task's size (pipelined by 100), a consumer group reads them
with XREADGROUP COUNT 100 and settles each 100 with one XACK and one XDEL in one pipeline;
both run at once, as a queue does. Redis CPU per task of that is the floor for any queue on
Streams (ChasquiMQ-class: one XADD, batched reads, batched acks).

Stub per request: the bare asyncio stub executor (bench/stub.py, uvloop + httptools, no
framework) driven by the raw httptools client of bench/loadgen.py, 32 connections: its
CPU per HTTP request is one bare HTTP exchange's server side, the yardstick for the
service's CPU per task (which includes a real HTTP call to that same stub).

Each is the median of `runs` (3) short runs.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any, cast

from bench.procs import cpu_seconds

if TYPE_CHECKING:
    from redis.asyncio import Redis as SingleRedis

    from bench.runner import Bench

FLOOR_KEY = "bench:floor:stream"
FLOOR_GROUP = "floor"
BATCH = 100


async def streams_floor(bench: Bench, n: int, runs: int = 3) -> dict[str, Any]:
    """Redis µs per task of XADD -> XREADGROUP COUNT 100 -> XACK + XDEL, median of runs."""
    body = bench.task_body
    results = [await _floor_once(bench, n, body) for _ in range(runs)]
    ordered = sorted(results, key=lambda r: r["redis_us"])
    middle = ordered[len(ordered) // 2]
    split = _split(middle["commands"])
    return {
        "tasks_per_run": n,
        "runs": [{k: r[k] for k in ("redis_us", "seconds", "redis_cpu_pct")} for r in results],
        "redis_us": middle["redis_us"],
        "commands": middle["commands"],
        "produce_us": split[0],
        "consume_us": split[1],
        "entry_bytes": len(body),
    }


def _split(commands: dict[str, dict[str, float]]) -> tuple[float, float]:
    """Command time (usec per task) of producing (XADD) and of consuming (the rest)."""
    produce = commands.get("xadd", {}).get("usec", 0.0)
    consume = sum(
        row["usec"] for name, row in commands.items() if name in ("xreadgroup", "xack", "xdel")
    )
    return round(produce, 3), round(consume, 3)


async def _floor_once(bench: Bench, n: int, body: bytes) -> dict[str, Any]:
    client = cast("SingleRedis", bench.client)
    await client.delete(FLOOR_KEY)
    await client.xgroup_create(FLOOR_KEY, FLOOR_GROUP, id="0", mkstream=True)
    meter = await bench.cost_meter({}).start()

    async def produce() -> None:
        for offset in range(0, n, BATCH):
            pipe = client.pipeline(transaction=False)
            for _ in range(min(BATCH, n - offset)):
                pipe.xadd(FLOOR_KEY, {"payload": body})
            await pipe.execute()

    async def consume() -> None:
        done = 0
        while done < n:
            got: Any = await client.xreadgroup(
                FLOOR_GROUP, "c", {FLOOR_KEY: ">"}, count=BATCH, block=500
            )
            if not got:
                continue
            ids: list[bytes] = [entry for entry, _ in got[0][1]]
            pipe = client.pipeline(transaction=False)
            pipe.xack(FLOOR_KEY, FLOOR_GROUP, *ids)
            pipe.xdel(FLOOR_KEY, *ids)
            await pipe.execute()
            done += len(ids)

    await asyncio.gather(produce(), consume())
    await meter.stop()
    left = await client.xlen(FLOOR_KEY)
    await client.delete(FLOOR_KEY)
    if left:
        raise RuntimeError(f"streams floor: {left} entries left in the stream")
    return meter.per_task(n)


async def stub_per_request(bench: Bench, seconds: float, runs: int = 3) -> dict[str, Any]:
    """The stub's CPU µs per `POST /execute` (the executor body) under 32 raw connections."""
    from bench.runner import run_json  # runner imports this module

    assert bench.stub is not None
    path = bench.file("execute.json", bench.executor_body)
    results = []
    for _ in range(runs):
        before_cpu = cpu_seconds(bench.stub.pid)
        before = (await bench.stub_call("GET", "/stats"))["executed"]
        cmd = [sys.executable, "-m", "bench.loadgen", "closed", f"{bench.stub_url}/execute"]
        cmd += ["--body-file", str(path), "--concurrency", str(bench.plan.concurrency)]
        cmd += ["--duration", str(seconds), "--warmup", "0.2", "--client", "raw-httptools"]
        load = await run_json(cmd, seconds + 60)
        requests = (await bench.stub_call("GET", "/stats"))["executed"] - before
        cpu = cpu_seconds(bench.stub.pid) - before_cpu
        results.append(
            {
                "requests": requests,
                "us_per_request": round(1e6 * cpu / max(1, requests), 2),
                "rps": load["rps"],
                "client_cpu_pct": load.get("cpu_pct_self"),
            }
        )
    await bench.stub_call("POST", "/reset")
    ordered = sorted(results, key=lambda r: r["us_per_request"])
    return {
        "client": "raw-httptools",
        "concurrency": bench.plan.concurrency,
        "runs": results,
        "us_per_request": ordered[len(ordered) // 2]["us_per_request"],
        "rps": ordered[len(ordered) // 2]["rps"],
    }
