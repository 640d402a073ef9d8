"""Replica scaling (issue 14): 1, 2 and 4 service processes on one Redis, one backlog.

Each run is bench/cost.py's metered drain (queue paused while `scaling_n` tasks are
queued and the processes start; meters from the resume to the last completion) with
`processes` services, each CONCURRENCY=32 and the same stub executor. Per run: tasks/s,
Redis and service (all processes together) CPU µs per task, Redis CPU as % of one core
(Redis runs commands on one thread: 100 % is saturation), and the rate one Redis core
would carry at that cost (1e6 / Redis µs per task).

On a 2-core machine that also runs Redis, the stub and the bench, more processes cannot
raise the rate much: the run shows the CPU per task and Redis's distance from saturation,
not absolute scaling; the output says so.

Issue 13's partitions on a three-master cluster are bench/partitions.py (`--only cluster`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench import cost

if TYPE_CHECKING:
    from bench.runner import Bench

NOTE = (
    "2 cores run Redis, the stub, the bench and every service process: these runs cannot "
    "show absolute scaling; read the CPU per task and how far Redis is from one full core."
)


def log(message: str) -> None:
    print(message, flush=True)


async def scaling(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    out: dict[str, Any] = {"tasks": plan.scaling_n, "note": NOTE, "machine_cores": _cores()}
    for procs in plan.scaling_processes:
        result, services, _ = await cost.drain_once(
            bench, f"scale{procs}", n=plan.scaling_n, processes=procs
        )
        for child in services:
            bench.children.stop(child)
        redis_us = result["redis_us"]
        row = {
            "processes": procs,
            "rate": result["rate"],
            "rate_from_resume": result["rate_from_resume"],
            "redis_us": redis_us,
            "service_us": result["service_us"],
            "stub_us": result["stub_us"],
            "redis_cpu_pct": result["redis_cpu_pct"],
            "redis_headroom_pct": round(100 - result["redis_cpu_pct"], 1),
            "redis_bound_rate": round(1e6 / redis_us) if redis_us else None,
            "machine_cpu_pct": result["cost"]["machine_cpu_pct"],
            "evalsha_per_task": result["evalsha_per_task"],
            "cpu_pct": result["cost"]["cpu_pct"],
            "exactly_once": result["exactly_once"],
        }
        out[f"processes_{procs}"] = row
        log(
            f"  {procs} process(es): {row['rate']:,.0f} tasks/s; per task Redis {redis_us} µs, "
            f"service {row['service_us']} µs; Redis at {row['redis_cpu_pct']} % of a core "
            f"(one core would carry ~{row['redis_bound_rate'] or 0:,} tasks/s); machine "
            f"{row['machine_cpu_pct']} % of {100 * out['machine_cores']} %"
        )
    log(f"  NOTE: {NOTE}")
    return out


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))
