"""Per-task cost of the drain (issue 14): through the real HTTP stub and engine-only.

Every drain here runs the same way, so its CPU per task holds only the drain: the queue
is paused (engine/admin `set_paused`), the backlog is queued (`POST /tasks/batch` of 1000
through the drain's own service, whose enqueue cost is measured on the way), the
consuming processes start and report ready, and only then do the meters start and the
queue resume; they stop when the `total:completed` counter reaches N. So no process start
and no enqueue is in the drain's figures, and every task is drained inside the window.

- `drains`: `drain_runs` (3) drains of `drain_n` (20,000) through a service with
  `EXECUTOR_URLS=<stub>`, CONCURRENCY=32; the median of each figure.
- `engine_drains`: the same backlog, drained by bench/enginedrain.py (the service's
  runtime with a no-op executor in-process, no HTTP); median of 3.
- `queued_memory`: 50,000 tasks with a 200-byte `code` queued, `used_memory` delta / N.
- `VARIANTS`: per-feature costs (issue 15): each entry is a drain with extra service
  settings and task fields, reported beside the plain drain: fair share (every task of
  one of two tenants), a rate limit and an in-flight cap (both set far above what the
  drain reaches, so they cost their checks but hold nothing back).

Each drain ends with the exactly-once check (bench/once.py) against the executions the
stub (or the no-op executor) counted per eval_id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from app.engine import admin
from app.engine.engine import Engine
from app.engine.keys import QueueKeys
from app.models import Priority
from app.settings import Settings
from bench import once, profile
from bench.meter import CostMeter, median_run
from bench.procs import Child, free_port, service_env

if TYPE_CHECKING:
    from bench.runner import Bench

QUEUE = "evaluations"
BATCH = 1000
TaskMaker = Callable[[int], dict[str, Any]]
MEDIAN_KEYS = (
    "rate",
    "redis_us",
    "service_us",
    "stub_us",
    "redis_cpu_pct",
    "service_cpu_pct",
    "evalsha_per_task",
    "script_us",
)


@dataclass(frozen=True)
class Variant:
    """A drain with a feature on (issue 15): service env and task fields; task i also gets
    `cycle[i % len(cycle)]` when `cycle` is given."""

    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    task: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""
    cycle: tuple[Mapping[str, Any], ...] = ()


# Per-feature costs, measured beside the plain drain (docs/flow-control.md, *What it costs*).
VARIANTS: tuple[Variant, ...] = (
    Variant(
        "fair share",
        cycle=({"tenant": "a"}, {"tenant": "b"}),
        note="every task of one of two tenants",
    ),
    Variant(
        "rate limit",
        {"RATE_LIMITS": f"{QUEUE}=1000000/s"},
        note="RATE_LIMITS far above the drain's rate: checked, never binding",
    ),
    Variant(
        "in-flight cap",
        {"QUEUE_MAX_IN_FLIGHT": f"{QUEUE}=100000"},
        note="QUEUE_MAX_IN_FLIGHT far above CONCURRENCY: checked, never binding",
    ),
)


def log(message: str) -> None:
    print(message, flush=True)


async def set_paused(bench: Bench, paused: bool) -> None:
    """Pause or resume the bench queue the way an operator does (resume wakes consumers)."""
    engine = Engine(bench.client, Settings(redis_url=bench.redis.url, queue=QUEUE))
    await admin.set_paused(engine.default, paused)


async def batch_fill(
    bench: Bench, base: str, ids: list[str], make: TaskMaker | None, meter_pids: dict[str, int]
) -> dict[str, Any]:
    """`POST /tasks/batch` of 1000 with the given eval_ids; rate and cost per task."""
    code = bench.code
    meter = await bench.cost_meter(meter_pids).start()
    started = time.perf_counter()
    created = 0
    async with aiohttp.ClientSession() as session:
        for offset in range(0, len(ids), BATCH):
            tasks = [
                {**(make(i) if make else {"code": code}), "eval_id": ids[i]}
                for i in range(offset, min(len(ids), offset + BATCH))
            ]
            async with session.post(
                f"{base}/tasks/batch", data=orjson.dumps({"tasks": tasks})
            ) as resp:
                answer = orjson.loads(await resp.read())
                if resp.status != 201:
                    raise RuntimeError(f"batch enqueue answered {resp.status}: {answer}")
                created += sum(1 for t in answer["tasks"] if t.get("status") == "queued")
    seconds = time.perf_counter() - started
    await meter.stop()
    if created != len(ids):
        raise RuntimeError(f"batch enqueue queued {created} of {len(ids)}")
    n = len(ids)
    return {"tasks": n, "seconds": round(seconds, 3), "rate": round(n / seconds, 1)} | {
        "cost": meter.per_task(n)
    }


async def wait_completed(bench: Bench, n: int, children: list[Child]) -> tuple[float, int, float]:
    """Poll `total:completed` every 20 ms until n: (first completion seen, its count, done)."""
    deadline = time.monotonic() + max(120.0, n / 100)
    first, first_count = 0.0, 0
    while True:
        count = await bench.counter("total:completed")
        now = time.perf_counter()
        if count and not first:
            first, first_count = now, count
        if count >= n:
            return first, first_count, now
        for child in children:
            if not child.alive():
                raise RuntimeError(f"{child.name} died during the drain:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"drain stuck at {count} of {n} completed")
        await asyncio.sleep(0.02)


def summarise(
    n: int, resumed: float, window: tuple[float, int, float], meter: CostMeter
) -> dict[str, Any]:
    first, first_count, done = window
    cost = meter.per_task(n)
    services = {k: v for k, v in cost["cpu_pct"].items() if k.startswith("service")}
    return {
        "tasks": n,
        "rate": round((n - first_count) / max(1e-9, done - first), 1),
        "seconds_steady": round(done - first, 3),
        "seconds_from_resume": round(done - resumed, 3),
        "rate_from_resume": round(n / max(1e-9, done - resumed), 1),
        "redis_us": cost["redis_us"],
        "service_us": cost["service_us"],
        "stub_us": cost["procs_us"].get("stub"),
        "redis_cpu_pct": cost["redis_cpu_pct"],
        "service_cpu_pct": round(sum(services.values()), 1),
        "evalsha_per_task": cost["evalsha_per_task"],
        "script_us": cost["script_us"],
        "cpu_pct": cost["cpu_pct"],
        "commands": cost["commands"],
        "cost": cost,
    }


async def drain_once(
    bench: Bench,
    name: str = "drain",
    *,
    n: int | None = None,
    processes: int = 1,
    make: TaskMaker | None = None,
    extra_env: Mapping[str, str] | None = None,
    profile_to: Path | None = None,
    times: Callable[[str], int] | None = None,
) -> tuple[dict[str, Any], list[Child], str]:
    """Queue n tasks (paused), start `processes` services with the stub, meter the drain.
    Returns the result and the services, still running (the caller stops them)."""
    n = n or bench.plan.drain_n
    await bench.flush()
    await set_paused(bench, True)
    names = (
        [f"service-{name}"]
        if processes == 1
        else [f"service-{name}-{i + 1}" for i in range(processes)]
    )
    started = await asyncio.gather(
        *(bench.start_service(s, executors=True, extra_env=extra_env) for s in names)
    )
    services, base = [child for child, _ in started], started[0][1]
    try:
        ids = [f"{name}-{i}" for i in range(n)]
        batch = await batch_fill(bench, base, ids, make, {"service": services[0].pid})
        await bench.stub_call("POST", "/reset")
        pids = {
            ("service" if processes == 1 else f"service{i + 1}"): c.pid
            for i, c in enumerate(services)
        }
        if bench.stub is not None:
            pids["stub"] = bench.stub.pid
        meter = bench.cost_meter(pids)
        recording = await profile.record(services[0].pid, profile_to) if profile_to else None
        await meter.start()
        await set_paused(bench, False)
        resumed = time.perf_counter()
        try:
            window = await wait_completed(bench, n, services)
        finally:
            await meter.stop()
            busy = await recording.stop() if recording else None
        result = summarise(n, resumed, window, meter)
        result.update(processes=processes, concurrency=bench.plan.concurrency, batch_enqueue=batch)
        if busy is not None:
            result["profile_busy_pct"] = busy
        await _after(bench, base, result, ids, times, name)
    except BaseException:
        for child in services:
            bench.children.stop(child)
        raise
    return result, services, base


async def _after(
    bench: Bench,
    base: str,
    result: dict[str, Any],
    ids: list[str],
    times: Callable[[str], int] | None,
    name: str,
) -> None:
    """Status totals, the stub's counts and the exactly-once check of one drain."""
    async with aiohttp.ClientSession() as session, session.get(f"{base}/status") as resp:
        status = orjson.loads(await resp.read())
    result["status_totals"] = status.get("totals")
    result["status_states"] = status.get("states")
    stats = await bench.stub_call("GET", "/stats")
    result["stub_executed"] = stats["executed"]
    result["stub_stats"] = stats
    counts = await bench.stub_call("GET", "/counts")
    result["exactly_once"] = record_once(bench, once.check(name, ids, counts, times))


def record_once(bench: Bench, check: dict[str, Any]) -> dict[str, Any]:
    """Keep the check in the results (the run exits 1 when any failed) and say it."""
    bench.results.setdefault("exactly_once", []).append(check)
    log(f"  {once.line(check)}")
    return check


async def drains(bench: Bench) -> dict[str, Any]:
    """`drain_runs` drains through the stub; the median of each figure, every run kept."""
    runs = []
    for index in range(bench.plan.drain_runs):
        result, services, _ = await drain_once(bench, f"drain{index + 1}")
        for child in services:
            bench.children.stop(child)
        runs.append(result)
        log(
            f"  run {index + 1}: {result['rate']:,.0f} tasks/s; per task Redis "
            f"{result['redis_us']} µs, service {result['service_us']} µs, stub "
            f"{result['stub_us']} µs; {result['evalsha_per_task']} EVALSHA"
        )
    out = _median_of(runs)
    batches = [r["batch_enqueue"] for r in runs]
    out["batch_enqueue"] = _median_batch(batches)
    for variant in VARIANTS:
        out.setdefault("variants", {})[variant.name] = await _variant(bench, variant)
    return out


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = median_run(runs, MEDIAN_KEYS)
    middle = runs[out["commands_of_run"] - 1]
    out.update(
        tasks=middle["tasks"],
        concurrency=middle["concurrency"],
        seconds_steady=middle["seconds_steady"],
        seconds_from_resume=middle["seconds_from_resume"],
        cpu_pct=middle["cost"]["cpu_pct"],
        stub_executed=middle["stub_executed"],
        status_totals=middle["status_totals"],
        status_states=middle["status_states"],
        runs=[{k: v for k, v in r.items() if k not in ("stub_stats",)} for r in runs],
    )
    return out


def _median_batch(batches: list[dict[str, Any]]) -> dict[str, Any]:
    costs = [b["cost"] | {"rate": b["rate"]} for b in batches]
    out = median_run(costs, ("rate", "redis_us", "service_us", "evalsha_per_task", "script_us"))
    out.update(tasks=batches[0]["tasks"], per_request=BATCH, runs=len(batches))
    out["seconds"] = round(out["tasks"] / out["rate"], 3) if out.get("rate") else None
    return out


async def _variant(bench: Bench, variant: Variant) -> dict[str, Any]:
    def make(i: int) -> dict[str, Any]:
        extra = variant.cycle[i % len(variant.cycle)] if variant.cycle else {}
        return {"code": bench.code, **variant.task, **extra}

    slug = variant.name.replace(" ", "-")
    result, services, _ = await drain_once(bench, slug, make=make, extra_env=variant.env)
    for child in services:
        bench.children.stop(child)
    result["note"] = variant.note
    return result


# --- engine-only -------------------------------------------------------------------------


async def engine_drains(bench: Bench) -> dict[str, Any]:
    """The same backlog drained by the runtime with a no-op executor (no HTTP); median."""
    runs = []
    for index in range(bench.plan.drain_runs):
        result = await _engine_once(bench, f"engine{index + 1}")
        runs.append(result)
        log(
            f"  run {index + 1}: {result['rate']:,.0f} tasks/s; per task Redis "
            f"{result['redis_us']} µs, process {result['service_us']} µs; "
            f"{result['evalsha_per_task']} EVALSHA"
        )
    flat = [{**r, "stub_us": None} for r in runs]
    out = median_run(flat, MEDIAN_KEYS)
    out.update(tasks=runs[0]["tasks"], runs=runs)
    return out


async def _engine_once(bench: Bench, name: str) -> dict[str, Any]:
    n = bench.plan.drain_n
    await bench.flush()
    await set_paused(bench, True)
    ids, _, fill = await bench.fill_direct(n)
    out = bench.tmp / f"{name}.json"
    env = service_env(free_port(), bench.redis.url, (), bench.plan.concurrency)
    child = bench.children.python(
        f"service-{name}", "bench.enginedrain", "--out", str(out), env=env
    )
    try:
        await _wait_file(out.with_suffix(".ready"), child)
        meter = await bench.cost_meter({"service": child.pid}).start()
        await set_paused(bench, False)
        resumed = time.perf_counter()
        try:
            window = await wait_completed(bench, n, [child])
        finally:
            await meter.stop()
    finally:
        bench.children.stop(child)
    result = summarise(n, resumed, window, meter)
    result.update(processes=1, concurrency=bench.plan.concurrency, fill=fill)
    counts = orjson.loads(out.read_bytes())["counts"] if out.exists() else {}
    result["exactly_once"] = record_once(bench, once.check(name, ids, counts))
    return result


async def _wait_file(path: Path, child: Child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name} not ready after {timeout}s")
        await asyncio.sleep(0.05)


# --- memory ------------------------------------------------------------------------------


async def queued_memory(bench: Bench, n: int) -> dict[str, Any]:
    """used_memory delta / n over n queued tasks (200-byte code), with the split."""
    keys, client = QueueKeys.default(QUEUE), bench.client
    await bench.flush()
    before = int((await client.info("memory"))["used_memory"])
    ids, _, fill = await bench.fill_direct(n)
    after = int((await client.info("memory"))["used_memory"])
    split = await bench._memory_breakdown(ids)
    events = await client.memory_usage(keys.events, samples=0) or 0
    counters = await client.memory_usage(keys.counters, samples=0) or 0
    queued = await client.xlen(keys.stream(Priority.DEFAULT))
    await bench.flush()
    return {
        "tasks": n,
        "queued_in_stream": queued,
        "code_bytes": bench.plan.code_bytes,
        "used_memory_delta": after - before,
        "bytes_per_task": round((after - before) / n, 1),
        **split,
        "events_stream_bytes_per_task": round(events / n, 1),
        "counters_bytes": counters,
        "fill": fill,
    }
