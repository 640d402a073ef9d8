"""Stages for tasks that wait: the retry drain and 100k scheduled tasks coming due at once.

Retry drain: `drain_n` tasks pre-queued as in the plain drain, every third one flagged
`"metadata": {"fail_once": true}`, which the stub answers 503 on its first execution and
200 after that; the service runs with RETRY_BASE_DELAY small and RETRY_JITTER off, so each
flagged task goes fail.lua -> `scheduled` zset -> promotion -> stream -> second execution.

Scheduled: `scheduled_n` tasks written with `Queue.enqueue_many` (the service's
enqueue.lua), all with the same `run_at`. First with the due time an hour ahead and
nothing running: Redis memory per scheduled task. Then twice more, due a few seconds
ahead, with one and then two service processes (no executors, so a promoted task stays
`queued`): the time from the due moment until the counters show every task queued.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from app.engine.keys import QueueKeys
from app.models import Priority
from bench.procs import Child, CpuMeter

if TYPE_CHECKING:
    from bench.runner import Bench

QUEUE = "evaluations"
FAIL_EVERY = 3  # task i is flagged fail_once when i % FAIL_EVERY == 0
POLL = 0.005  # seconds between counter reads while promotion runs


def _log(message: str) -> None:
    print(message, flush=True)


# --- retry drain ---------------------------------------------------------------------------


async def retry_drain(bench: Bench, profile_to: Path | None = None) -> dict[str, Any]:
    """Drain with a third of the tasks failing once; checks every count against the stub."""
    plan = bench.plan
    n = plan.drain_n
    flagged = len(range(0, n, FAIL_EVERY))
    code = bench.code

    def make(i: int) -> dict[str, Any]:
        if i % FAIL_EVERY == 0:
            return {"code": code, "metadata": {"fail_once": True}}
        return {"code": code}

    env = {
        "RETRY_BASE_DELAY": str(plan.retry_base_delay),
        "RETRY_JITTER": "false",
        "MAX_RETRIES": "3",
    }

    def times(eval_id: str) -> int:  # executions expected: ids are retry-<i>
        return 2 if int(eval_id.rsplit("-", 1)[1]) % FAIL_EVERY == 0 else 1

    result, service, _ = await bench.drain(profile_to, make, env, name="retry", times=times)
    try:
        counters = await _counters(bench)
    finally:
        bench.children.stop(service)
    stats = result.pop("stub_stats")
    executions = n + flagged
    checks = {
        "stub_executions": stats["executed"],
        "expected_executions": executions,
        "stub_503": stats["failed"],
        "flagged": flagged,
        "attempts_received": stats["attempts"],
        "total_retried": counters.get("total:retried", 0),
        "total_completed": counters.get("total:completed", 0),
        "total_failed": counters.get("total:failed", 0),
        "left_waiting": {k: v for k, v in (result.get("status_states") or {}).items() if v},
    }
    checks["ok"] = (
        stats["executed"] == executions
        and stats["failed"] == flagged
        and stats["attempts"] == ({"1": n, "2": flagged} if flagged else {"1": n})
        and checks["total_retried"] == flagged
        and checks["total_completed"] == n
        and checks["total_failed"] == 0
        and not checks["left_waiting"]
    )
    plain = (bench.results.get("drain") or {}).get("rate")
    exec_rate = result["rate"] * executions / n
    result.update(
        flagged=flagged,
        executions=executions,
        executions_rate=round(exec_rate, 1),
        retry_base_delay=plan.retry_base_delay,
        plain_drain_rate=plain,
        vs_plain=round(result["rate"] / plain, 3) if plain else None,
        executions_vs_plain=round(exec_rate / plain, 3) if plain else None,
        checks=checks,
    )
    _log(
        f"  {result['rate']:,.0f} tasks/s, {exec_rate:,.0f} executions/s "
        f"(plain drain {plain:,.0f} tasks/s); stub executed {stats['executed']:,} "
        f"of {executions:,} expected; checks {'ok' if checks['ok'] else 'FAILED'} "
        f"CPU {result['cpu_pct']}"
    )
    if not checks["ok"]:
        _log(f"  WARNING: retry drain counts off: {checks}")
    return result


# --- scheduled tasks -----------------------------------------------------------------------


async def scheduled(bench: Bench) -> dict[str, Any]:
    """Memory per scheduled task, then promotion with one and with two service processes."""
    n = bench.plan.scheduled_n
    out: dict[str, Any] = {"tasks": n, "code_bytes": bench.plan.code_bytes}
    out["memory"] = memory = await _memory(bench, n)
    _log(
        f"  {memory['bytes_per_task']} B per scheduled task (used_memory); "
        f"filled at {memory['fill']['rate']:,.0f} tasks/s"
    )
    # Due far enough ahead that the fill and the service start are over by then (a
    # shared machine can run several times slower than a quiet one).
    lead = 2.0 * memory["fill"]["seconds"] + 10.0
    for procs in (1, 2):
        run = await _promotion(bench, n, procs, lead)
        out[f"processes_{procs}"] = run
        _log(
            f"  {procs} process{'es' if procs > 1 else ''}: all {n:,} queued "
            f"{run['seconds_from_due']} s after the due time ({run['rate']:,.0f} tasks/s; "
            f"first after {run['first_ms']} ms); {run['promote_calls']} promote calls; "
            f"stream length {run['checks']['stream_length']:,}; checks "
            f"{'ok' if run['checks']['ok'] else 'FAILED'} CPU {run['cpu_pct']}"
        )
        if not run["checks"]["ok"]:
            _log(f"  WARNING: promotion counts off: {run['checks']}")
    return out


async def _memory(bench: Bench, n: int) -> dict[str, Any]:
    keys, client = QueueKeys.default(QUEUE), bench.client
    await bench.flush()
    before = await client.info("memory")
    task = {"code": bench.code, "run_at": time.time() + 3600}
    ids, _, fill = await bench.fill_direct(n, task)
    after = await client.info("memory")
    delta = int(after["used_memory"]) - int(before["used_memory"])
    sample = random.sample(ids, min(200, len(ids)))
    sizes = [await client.memory_usage(keys.task(i)) or 0 for i in sample]
    zset = await client.memory_usage(keys.scheduled, samples=0) or 0
    events = await client.memory_usage(keys.events, samples=0) or 0
    result = {
        "tasks": n,
        "in_scheduled_zset": await client.zcard(keys.scheduled),
        "used_memory_delta": delta,
        "bytes_per_task": round(delta / n, 1),
        "task_hash_bytes": round(sum(sizes) / len(sizes), 1),
        # listpack while every value is <= hash-max-listpack-value (64 B by default)
        "task_hash_encoding": _text(await client.object("encoding", keys.task(ids[0]))),
        "zset_bytes_per_task": round(zset / n, 1),
        "events_stream_bytes": events,
        "fill": fill,
    }
    await bench.flush()
    return result


async def _promotion(bench: Bench, n: int, procs: int, lead: float) -> dict[str, Any]:
    await bench.flush()
    due = math.ceil((time.time() + lead) * 1000) / 1000  # whole ms, as enqueue.lua stores it
    await bench.fill_direct(n, {"code": bench.code, "run_at": due})
    started = await asyncio.gather(
        *(bench.start_service(f"service-promote-{procs}-{i}") for i in range(procs))
    )
    services = [child for child, _ in started]
    try:
        margin = due - time.time()
        if margin < 0.1:
            raise RuntimeError(
                f"scheduled: the fill and service start ended {-margin:.1f} s after the due "
                "time; the machine is slower than the lead assumed (2 x fill time + 10 s)"
            )
        evalsha_before = await _evalsha(bench)
        await asyncio.sleep(max(0.0, due - time.time() - 0.02))
        pids = bench.pids(**{f"service{i + 1}": c for i, c in enumerate(services)})
        with CpuMeter(pids) as cpu:
            first, done = await _wait_promoted(bench, n, due, services)
        evalsha_after = await _evalsha(bench)
        checks = await _check(bench, n, started[0][1])
    finally:
        for child in services:
            bench.children.stop(child)
    await bench.flush()
    calls = evalsha_after[0] - evalsha_before[0]
    script_usec = evalsha_after[1] - evalsha_before[1]
    return {
        "processes": procs,
        "tasks": n,
        "lead_s": round(lead, 1),
        "margin_s": round(margin, 2),
        "seconds_from_due": round(done - due, 3),
        "rate": round(n / max(1e-9, done - due), 1),
        "first_ms": round(1000 * (first - due), 1),
        "rate_after_first": round(n / max(1e-9, done - first), 1),
        "promote_calls": calls,
        "tasks_per_call": round(n / calls, 1) if calls else None,
        "script_seconds": round(script_usec / 1e6, 3),  # Redis time inside EVALSHA
        "script_us_per_task": round(script_usec / n, 2),
        "cpu_pct": cpu.result,
        "checks": checks,
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _counters(bench: Bench) -> dict[str, int]:
    raw = await bench.client.hgetall(QueueKeys.default(QUEUE).counters)
    return {_text(k): int(v) for k, v in raw.items()}


async def _evalsha(bench: Bench) -> tuple[int, int]:
    """EVALSHA calls and their total microseconds in Redis so far (INFO commandstats)."""
    stats = await bench.client.info("commandstats")
    row = stats.get("cmdstat_evalsha") or {}
    return int(row.get("calls", 0)), int(row.get("usec", 0))


async def _wait_promoted(
    bench: Bench, n: int, due: float, services: list[Child]
) -> tuple[float, float]:
    """Poll the counters until no task is `scheduled`; (first promotion, all) epoch times."""
    keys = QueueKeys.default(QUEUE)
    deadline = due + max(60.0, n / 500)
    first = 0.0
    while True:
        left = int(await bench.client.hget(keys.counters, "scheduled:default") or 0)
        now = time.time()
        if left < n and not first:
            first = now
        if left <= 0:
            return first, now
        for child in services:
            if not child.alive():
                raise RuntimeError(f"{child.name} died during promotion:\n{child.tail()}")
        if now > deadline:
            raise TimeoutError(f"promotion stuck: {left:,} of {n:,} still scheduled")
        await asyncio.sleep(POLL)


async def _check(bench: Bench, n: int, base: str) -> dict[str, Any]:
    """Each task queued exactly once: stream length, sequence, zset and GET /status agree."""
    keys, client = QueueKeys.default(QUEUE), bench.client
    stream_length = await client.xlen(keys.stream(Priority.DEFAULT))
    counters = await _counters(bench)
    async with aiohttp.ClientSession() as session, session.get(f"{base}/status") as resp:
        states = orjson.loads(await resp.read()).get("states", {})
    checks = {
        "stream_length": stream_length,
        "seq": counters.get("seq:default", 0),
        "scheduled_counter": counters.get("scheduled:default", 0),
        "zset_left": await client.zcard(keys.scheduled),
        "status_queued": states.get("queued"),
        "status_scheduled": states.get("scheduled"),
    }
    checks["ok"] = (
        stream_length == n
        and checks["seq"] == n
        and checks["scheduled_counter"] == 0
        and checks["zset_left"] == 0
        and checks["status_queued"] == n
        and checks["status_scheduled"] == 0
    )
    return checks
