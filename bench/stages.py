"""The order of the stages of `python -m bench`, and what each one runs.

A stage is a row of `STEPS`: its name (what `--only` takes), a title printed when it
starts, and the coroutine that runs it and returns what goes into the results under
`key`. Adding a scenario (issue 15's per-feature costs, issue 13's cluster partitions) is
one function and one row here, plus its name in runner.STAGES.

`refs` (the Streams floor and the stub's CPU per request: issue 14's references) runs
first whenever a stage whose per-task cost is compared with them runs, so every ratio is
to references measured in the same run. The 1-minute load average is kept at the start
of every stage (`load_average`): the machine is shared. A stage that fails is recorded in
`failed_stages` and the run goes on with the next one (and exits 1 at the end), so one
stage broken by an overloaded machine does not lose the others' figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench import cost, delayed, eas, floor, partitions, scaling, timely

if TYPE_CHECKING:
    from bench.runner import Bench, Plan

NEEDS_REFS = frozenset({"enqueue", "drain", "engine", "scaling", "keepup", "punctual"})


@dataclass(frozen=True)
class Step:
    stage: str
    title: Callable[[Plan], str]
    run: Callable[[Bench], Awaitable[Any]]
    key: str | None = None  # results key (default: the stage's name); None: run stores


def log(message: str) -> None:
    print(message, flush=True)


async def _ceilings(bench: Bench) -> None:
    await bench.ceilings()


async def _refs(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    out = {
        "floor": await floor.streams_floor(bench, plan.floor_n),
        "stub": await floor.stub_per_request(bench, plan.stub_seconds),
    }
    f, s = out["floor"], out["stub"]
    log(
        f"  Streams floor: {f['redis_us']} µs of Redis CPU per task (XADD {f['produce_us']}, "
        f"read + ack + del {f['consume_us']} µs of command time); stub: "
        f"{s['us_per_request']} µs of CPU per HTTP request ({s['rps']:,.0f} req/s)"
    )
    return out


async def _enqueue(bench: Bench) -> None:
    await bench.enqueue()


async def _drain(bench: Bench) -> dict[str, Any]:
    out = await cost.drains(bench)
    log(
        f"  median of {len(out['runs'])}: {out['rate']:,.0f} tasks/s; per task Redis "
        f"{out['redis_us']} µs, service {out['service_us']} µs; batch enqueue: Redis "
        f"{out['batch_enqueue']['redis_us']} µs, service {out['batch_enqueue']['service_us']} µs"
    )
    return out


async def _engine(bench: Bench) -> dict[str, Any]:
    out = await cost.engine_drains(bench)
    log(
        f"  median of {len(out['runs'])}: {out['rate']:,.0f} tasks/s; per task Redis "
        f"{out['redis_us']} µs, process {out['service_us']} µs"
    )
    return out


async def _latency(bench: Bench) -> dict[str, Any]:
    service, base = await bench.start_service("service-latency", executors=True)
    try:
        lat = await bench.latency(service, base)
    finally:
        bench.children.stop(service)
    log(
        f"  p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms, "
        f"missing {lat['missing']}"
    )
    return lat


async def _memory(bench: Bench) -> dict[str, Any]:
    out = await cost.queued_memory(bench, bench.plan.memory_n)
    log(
        f"  {out['bytes_per_task']} B per queued task (task hash {out['task_hash_bytes']} B, "
        f"stream entry {out['stream_bytes_per_entry']} B, events stream "
        f"{out['events_stream_bytes_per_task']} B per task)"
    )
    return out


async def _lookup(bench: Bench) -> None:
    await bench.lookup_and_memory()
    look = bench.results["lookup"]
    log(f"  GET /tasks/{{id}} p50 {look['p50_ms']} ms, p99 {look['p99_ms']} ms")


async def _punctual(bench: Bench) -> dict[str, Any]:
    out = await timely.punctuality(bench)
    log(
        f"  lateness (stub receive - run_at): p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, "
        f"max {out['max_ms']} ms over {out['measured']:,} tasks; {out['early']} early; "
        f"{out['enqueued_after_due']} queued after their due time (left out)"
    )
    return out


async def _keepup(bench: Bench) -> dict[str, Any]:
    out = await timely.keepup(bench)
    log(
        f"  enqueue->executor p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, max "
        f"{out['max_ms']} ms; achieved {out['enqueue_rate'] or 0:,.0f} enqueues/s, "
        f"{out['executed_rate'] or 0:,.0f} executions/s; send lag p99 {out['send_lag_p99_ms']} ms"
    )
    return out


async def _cluster(bench: Bench) -> dict[str, Any]:
    return await partitions.cluster_partitions(bench)


STEPS = (
    Step(
        "ceilings",
        lambda p: "ceilings: stub executor, Python HTTP clients, trivial endpoint",
        _ceilings,
        "",
    ),
    Step(
        "refs",
        lambda p: (
            "references: the Streams floor (XADD; XREADGROUP COUNT 100; XACK+XDEL; "
            "pipelined by 100) and the bare stub's CPU per HTTP request"
        ),
        _refs,
    ),
    Step(
        "enqueue",
        lambda p: "enqueue over HTTP (no executors), with Redis and service CPU per task",
        _enqueue,
        "",
    ),
    Step(
        "drain",
        lambda p: (
            f"drain of {p.drain_n:,} tasks through the stub, CONCURRENCY={p.concurrency}, "
            f"{p.drain_runs} runs (median)"
        ),
        _drain,
    ),
    Step(
        "engine",
        lambda p: (
            f"engine-only drain of {p.drain_n:,} tasks (runtime + no-op executor, no HTTP), "
            f"{p.drain_runs} runs (median)"
        ),
        _engine,
    ),
    Step(
        "latency",
        lambda p: f"enqueue->executor latency at {p.latency_rate:g} tasks/s, open loop",
        _latency,
    ),
    Step(
        "memory",
        lambda p: f"Redis memory per queued task, {p.memory_n:,} queued",
        _memory,
        "queued_memory",
    ),
    Step(
        "lookup",
        lambda p: f"{p.fill_n:,} queued tasks: Redis memory per task, GET /tasks/{{id}}",
        _lookup,
        "",
    ),
    Step(
        "retry",
        lambda p: (
            f"retry drain: {p.drain_n:,} tasks, a third answered 503 once, "
            f"RETRY_BASE_DELAY={p.retry_base_delay:g}, no jitter"
        ),
        delayed.retry_drain,
    ),
    Step(
        "scheduled",
        lambda p: f"{p.scheduled_n:,} scheduled tasks: memory, promotion when all come due",
        delayed.scheduled,
    ),
    Step(
        "punctual",
        lambda p: (
            f"punctuality: {p.punctual_rate:,.0f} scheduled tasks due per second for "
            f"{p.punctual_seconds:g} s"
        ),
        _punctual,
    ),
    Step(
        "keepup",
        lambda p: (
            f"keep-up: {p.keepup_rate:,.0f} POST /tasks per second offered (open loop) "
            f"for {p.keepup_seconds:g} s"
        ),
        _keepup,
    ),
    Step(
        "scaling",
        lambda p: (
            f"replica scaling: {', '.join(map(str, p.scaling_processes))} service "
            f"processes drain {p.scaling_n:,} tasks"
        ),
        scaling.scaling,
    ),
    Step(
        "eas",
        lambda p: (
            f"PAI-EAS: {p.eas_clients} clients put -> read the answer by request id "
            f"({p.eas_duration:g} s each, protobuf and JSON status reads); {p.eas_watch_n:,} sink "
            f"items drained by 1 and {p.eas_watchers} watchers"
        ),
        eas.run,
    ),
    Step(
        "cluster",
        lambda p: "cluster partitions (QUEUE_PARTITIONS on a 3-master cluster)",
        _cluster,
    ),
)


def selected(plan: Plan) -> list[Step]:
    wanted = set(plan.stages)
    if "retry" in wanted:  # compared with the plain drain
        wanted.add("drain")
    if wanted & NEEDS_REFS:
        wanted.add("refs")
    return [step for step in STEPS if step.stage in wanted]


async def run(bench: Bench) -> None:
    await bench.start_stub()
    steps = selected(bench.plan)
    loads = bench.results.setdefault("load_average", {})
    total = len(steps) + int(bench.plan.profile)
    for number, step in enumerate(steps, 1):
        loads[step.stage] = round(os.getloadavg()[0], 2)
        log(f"[{number}/{total}] {step.title(bench.plan)} (load average {loads[step.stage]})")
        began = time.monotonic()
        try:
            value = await step.run(bench)
        except Exception as exc:  # one stage's failure must not lose the other figures
            failed = f"{type(exc).__name__}: {exc}"
            bench.results.setdefault("failed_stages", {})[step.stage] = failed
            log(f"  STAGE FAILED ({step.stage}): {failed}")
            continue
        finally:
            bench.results.setdefault("stage_seconds", {})[step.stage] = round(
                time.monotonic() - began, 1
            )
        key = step.stage if step.key is None else step.key
        if key:
            bench.results[key] = value
    if bench.plan.profile:
        which = (
            "PAI-EAS round trip, watch" if bench.plan.stages == ("eas",) else "enqueue -c32, drain"
        )
        log(f"[{total}/{total}] py-spy profiles of the service ({which})")
        await bench.profiles()
    loads["end"] = round(os.getloadavg()[0], 2)
