"""Timeliness (issue 14): punctuality of scheduled tasks, and keep-up under open-loop load.

Punctuality: one service with the stub executor runs; `punctual_rate` x `punctual_seconds`
tasks (1,000/s for 10 s) are then queued with `run_at` spread so that `punctual_rate` fall
due each second, task i at T0 + i / rate (whole milliseconds, as enqueue.lua stores them;
T0 2 s after the fill starts; the fill goes on in due order while the first tasks fall
due, and a task queued after its due time is left out of the figures and counted).
Lateness of a task = the stub's receive time of its request (first byte, CLOCK_MONOTONIC,
turned into epoch time with the offset between the two clocks read in the bench) - its
run_at. That is what a user sees: it includes the
promotion, the claim and the HTTP send, so it bounds claim time - run_at from above.
BullMQ's median is 40.5 ms; the goal is p99 <= 5 ms.

Keep-up: a fresh service with the stub; bench/openloop.py offers `keepup_rate` (5,000)
`POST /tasks` per second on a fixed schedule for `keepup_seconds` (10) after a 1 s
warm-up. Latency = stub receive time - client send time (both CLOCK_MONOTONIC). Achieved
rates: answered enqueues and executions per second. Goal: p99 <= 20 ms.

Both end with the exactly-once check (bench/once.py).
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson

from app.engine.client import connect
from app.engine.engine import Engine
from app.models import TaskRequest
from app.settings import Settings
from bench import once
from bench.cost import QUEUE, record_once
from bench.loadgen import percentile

if TYPE_CHECKING:
    from bench.runner import Bench


def log(message: str) -> None:
    print(message, flush=True)


def clock_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, read tightly (the smallest gap of a few reads)."""
    best: tuple[int, int] | None = None
    for _ in range(20):
        a = time.monotonic_ns()
        wall = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, wall - (a + b) // 2)
    assert best is not None
    return best[1]


def spread(values: list[float]) -> dict[str, float | None]:
    values.sort()
    return {
        "p50_ms": _r(percentile(values, 50)),
        "p90_ms": _r(percentile(values, 90)),
        "p99_ms": _r(percentile(values, 99)),
        "max_ms": _r(values[-1] if values else None),
        "min_ms": _r(values[0] if values else None),
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def wait_recorded(
    bench: Bench, total: int, not_before: float = 0.0, stall: float = 15.0
) -> int:
    """Poll the stub until it has seen `total` eval_ids. A backlog may take long to drain
    on a loaded machine, so this gives up only after `stall` s without progress (counted
    from `not_before`, monotonic: the last due time), or after 10 minutes."""
    last, since, began = -1, time.monotonic(), time.monotonic()
    while True:
        seen = int((await bench.stub_call("GET", "/stats"))["recorded"])
        now = time.monotonic()
        if seen >= total:
            return seen
        if seen != last or now < not_before:
            last, since = seen, now
        elif now - since > stall or now - began > 600:
            return seen
        await asyncio.sleep(0.1)


# --- punctuality ---------------------------------------------------------------------------

CHUNK = 500  # tasks per enqueue_many call of the punctuality fill
LEAD = 2.0  # seconds from the fill's start to the first due time


async def punctuality(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    rate, seconds = plan.punctual_rate, plan.punctual_seconds
    n = int(rate * seconds)
    await bench.flush()
    await bench.stub_call("POST", "/reset")
    service, _ = await bench.start_service("service-punctual", executors=True)
    try:
        t0 = math.ceil((time.time() + LEAD) * 1000)
        due = [t0 + int(i * 1000 / rate) for i in range(n)]
        ids = [f"p-{i}" for i in range(n)]
        meter = await bench.cost_meter({"service": service.pid, "stub": _stub_pid(bench)}).start()
        queued_at = await _fill_in_due_order(bench, ids, due)
        last_due = time.monotonic() + due[-1] / 1000 - time.time()
        seen = await wait_recorded(bench, n, not_before=last_due)
        await meter.stop()
    finally:
        bench.children.stop(service)
    offset = clock_offset_ns()
    received: dict[str, int] = await bench.stub_call("GET", "/received")
    ahead = [d / 1000 - q for d, q in zip(due, queued_at, strict=True)]
    measured = [i for i in range(n) if ahead[i] > 0 and ids[i] in received]
    late = [(received[ids[i]] + offset) / 1e6 - due[i] for i in measured]
    cost = meter.per_task(n)
    result: dict[str, Any] = {
        "tasks": n,
        "due_per_second": rate,
        "seconds": seconds,
        "measure": "stub receive time - run_at",
        "queued_ahead_min_s": round(min(ahead), 3),
        "enqueued_after_due": sum(1 for a in ahead if a <= 0),
        "measured": len(measured),
        "received": seen,
        "early": sum(1 for x in late if x < 0),
        **spread(late),
        "cost": cost,
        "cpu_pct": cost["cpu_pct"],
    }
    counts = await bench.stub_call("GET", "/counts")
    result["exactly_once"] = record_once(bench, once.check("punctual", ids, counts))
    return result


async def _fill_in_due_order(bench: Bench, ids: list[str], due: list[int]) -> list[float]:
    """enqueue_many in chunks, in due order, while the service runs (producers schedule
    while earlier tasks fall due): the fill only has to stay ahead of the due times, which
    any fill faster than the due rate does. Returns each task's enqueue time (epoch s);
    a task enqueued after its due time is left out of the lateness figures."""
    engine = Engine(connect(bench.redis.url), Settings(redis_url=bench.redis.url, queue=QUEUE))
    queued_at: list[float] = []
    try:
        for offset in range(0, len(ids), CHUNK):
            reqs = [
                TaskRequest.parse(
                    {"code": bench.code, "eval_id": ids[i], "run_at": (due[i] + 0.5) / 1000}
                )
                for i in range(offset, min(len(ids), offset + CHUNK))
            ]
            await engine.enqueue_many(reqs)
            queued_at += [time.time()] * len(reqs)
    finally:
        await engine.close()
    return queued_at


def _stub_pid(bench: Bench) -> int:
    assert bench.stub is not None
    return bench.stub.pid


# --- keep-up -------------------------------------------------------------------------------


async def keepup(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    await bench.flush()
    await bench.stub_call("POST", "/reset")
    service, base = await bench.start_service("service-keepup", executors=True)
    out = bench.tmp / "keepup.json"
    cmd = [sys.executable, "-m", "bench.openloop", f"{base}/tasks", "--out", str(out)]
    cmd += ["--rate", str(plan.keepup_rate), "--duration", str(plan.keepup_seconds)]
    cmd += ["--warmup", str(plan.warmup), "--prefix", "k-", "--code-bytes", str(plan.code_bytes)]
    from bench.runner import run_json  # runner imports this module

    try:
        meter = await bench.cost_meter({"service": service.pid, "stub": _stub_pid(bench)}).start()
        sent = await run_json(cmd, plan.keepup_seconds + plan.warmup + 90)
        total = int(sent["sent"])
        seen = await wait_recorded(bench, total)
        await meter.stop()
    finally:
        bench.children.stop(service)
    sends = orjson.loads(out.read_bytes())
    received: dict[str, int] = await bench.stub_call("GET", "/received")
    result = _keepup_figures(sends, received, plan.keepup_rate, plan.keepup_seconds)
    result.update(generator=sent, received=seen, cost=meter.per_task(total))
    result["cpu_pct"] = result["cost"]["cpu_pct"]
    accepted = [f"k-{i}" for i, s in enumerate(sends["status"]) if 200 <= s < 300]
    unanswered = [f"k-{i}" for i, s in enumerate(sends["status"]) if not 200 <= s < 300]
    counts = await bench.stub_call("GET", "/counts")
    checked = once.check("keepup", accepted, counts, maybe=unanswered)
    result["exactly_once"] = record_once(bench, checked)
    result["refused"] = total - len(accepted)
    return result


def _keepup_figures(
    sends: dict[str, Any], received: dict[str, int], rate: float, seconds: float
) -> dict[str, Any]:
    """Latency (measured window only) and the achieved rates."""
    warm = int(sends["warm"])
    latency, lag, answers, executed = [], [], [], []
    for i in range(warm, len(sends["sent"])):
        sent, status = sends["sent"][i], sends["status"][i]
        lag.append((sent - sends["scheduled"][i]) / 1e6)
        got = received.get(f"k-{i}")
        if not 200 <= status < 300 or got is None:
            continue
        answers.append(sends["answered"][i])
        executed.append(got)
        latency.append((got - sent) / 1e6)
    window = seconds * 1e9
    answers.sort()
    executed.sort()
    return {
        "offered_rate": rate,
        "seconds": seconds,
        "measured": len(latency),
        "enqueue_rate": round(len(answers) / max(1e-9, (answers[-1] - answers[0]) / 1e9), 1)
        if len(answers) > 1
        else None,
        "executed_rate": round(len(executed) / max(1e-9, (executed[-1] - executed[0]) / 1e9), 1)
        if len(executed) > 1
        else None,
        "executed_within_window_rate": round(
            sum(1 for t in executed if t - executed[0] <= window) / seconds, 1
        )
        if executed
        else None,
        "send_lag_p99_ms": _r(percentile(sorted(lag), 99)),
        **spread(latency),
    }
