"""Per-task cost over one window: Redis CPU and commands, and the CPU of named processes.

Redis: `INFO cpu` (used_cpu_sys + used_cpu_user of the redis-server the bench started, all
its threads) and `INFO commandstats` (calls and usec per command), read at the start and
the end of a window; processes: utime + stime from /proc/<pid>/stat. Divided by the tasks
the window handled, they are the figures issue 14 targets: µs of Redis CPU and of service
CPU per task, and the commands behind them, so a regression shows as a number.

Commands run inside a script are counted by commandstats under their own name too, and
their time is inside EVALSHA's usec: the per-command usec column is not to be summed.
The bench's own reads (`INFO`, the `HGET` of the completion counter every 20 ms) are in
the window as well; `info` is left out of the table, `hget` is ~0.01 calls per task.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.engine.client import Redis
from bench.procs import CpuMeter, cpu_seconds, machine_cpu_seconds

OWN_COMMANDS = frozenset({"info"})  # the meter's own reads


@dataclass
class Reading:
    """Counters at one moment."""

    wall: float
    redis_cpu: float
    commands: dict[str, tuple[int, int]]  # command -> (calls, usec)
    procs: dict[str, float]
    machine: float  # CPU seconds of every process on the machine (/proc/stat)


async def read(client: Redis, pids: Mapping[str, int]) -> Reading:
    cpu = await client.info("cpu")
    stats = await client.info("commandstats")
    commands = {
        name.removeprefix("cmdstat_"): (int(row.get("calls", 0)), int(row.get("usec", 0)))
        for name, row in stats.items()
        if isinstance(row, dict)
    }
    return Reading(
        wall=time.monotonic(),
        redis_cpu=float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        commands=commands,
        procs={name: cpu_seconds(pid) for name, pid in pids.items()},
        machine=machine_cpu_seconds()[0],
    )


@dataclass
class CostMeter:
    """`await start()`, the work, `await stop()`, then `per_task(n)`. Process names that
    start with `service` are summed into the service figure (replicas: service1, ...).
    `cpu_pct` is bench/procs.py's CpuMeter over the same window (with `redis`, and `other`:
    processes outside the bench, so a busy machine shows in the results)."""

    client: Redis
    pids: Mapping[str, int]
    redis_pid: int | None = None
    begin: Reading | None = None
    end: Reading | None = None
    cpu: CpuMeter = field(init=False)

    async def start(self) -> CostMeter:
        watched = dict(self.pids)
        if self.redis_pid:
            watched["redis"] = self.redis_pid
        self.cpu = CpuMeter(watched)
        self.cpu.__enter__()
        self.begin = await read(self.client, self.pids)
        return self

    async def stop(self) -> None:
        self.end = await read(self.client, self.pids)
        self.cpu.__exit__(None, None, None)

    @property
    def seconds(self) -> float:
        assert self.begin is not None and self.end is not None
        return max(1e-9, self.end.wall - self.begin.wall)

    def per_task(self, tasks: int) -> dict[str, Any]:
        """The window's figures: per task (µs, calls) and as % of one core."""
        begin, end = self.begin, self.end
        assert begin is not None and end is not None
        n, wall = max(1, tasks), self.seconds
        redis = end.redis_cpu - begin.redis_cpu
        procs = {name: end.procs[name] - begin.procs[name] for name in end.procs}
        service = sum(cpu for name, cpu in procs.items() if name.startswith("service"))
        commands = command_deltas(begin.commands, end.commands, n)
        evalsha = commands.get("evalsha", {"calls": 0.0, "usec": 0.0})
        return {
            "tasks": tasks,
            "seconds": round(wall, 3),
            "redis_us": round(1e6 * redis / n, 2),
            "service_us": round(1e6 * service / n, 2),
            "procs_us": {name: round(1e6 * cpu / n, 2) for name, cpu in procs.items()},
            "redis_cpu_pct": round(100 * redis / wall, 1),
            "cpu_pct": self.cpu.result,
            "machine_cpu_pct": round(100 * (end.machine - begin.machine) / wall, 1),
            "evalsha_per_task": evalsha["calls"],
            "script_us": evalsha["usec"],
            "commands": commands,
        }


def command_deltas(
    before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]], n: int
) -> dict[str, dict[str, float]]:
    """Per task: calls and usec of each command used in the window, busiest first."""
    rows: dict[str, dict[str, float]] = {}
    for name, (calls, usec) in after.items():
        if name in OWN_COMMANDS:
            continue
        calls0, usec0 = before.get(name, (0, 0))
        if calls - calls0 <= 0:
            continue
        rows[name] = {
            "calls": round((calls - calls0) / n, 4),
            "usec": round((usec - usec0) / n, 3),
        }
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]["usec"]))


def median_run(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """The median of each of `keys` over `runs` (each figure on its own, as the issue's
    'median of 3' reads), and the commands of the run whose Redis µs is the median."""
    out: dict[str, Any] = {}
    for key in keys:
        values = sorted(r[key] for r in runs if r.get(key) is not None)
        if values:
            out[key] = values[len(values) // 2]
    by_redis = sorted(runs, key=lambda r: r.get("redis_us") or 0.0)
    middle = by_redis[len(by_redis) // 2]
    out["commands"] = middle.get("commands", {})
    out["commands_of_run"] = runs.index(middle) + 1
    return out
