"""What flow control costs Redis per task: fair share on, a rate limit on, a cap on, a
dedup_key on each task, beside the plain path (docs/flow-control.md, *What it costs*); and
the plain path of other code trees (main, say) measured in the same run.

`python -m bench.flow [--n N] [--rounds R] [--against NAME=PATH ...]` (defaults: 2,000
tasks per run, 5 rounds). Not part of `python -m bench`: it starts its own redis-server
(AOF off, free loopback port). Each run is a fresh process (this file run as
`__worker__`, in the code tree measured) that stores N tasks with the
service's enqueue script (pipelined 200 at a time) in a fresh queue, claims them in
batches of 16 and completes them, as an in-process consumer does. Measured around the
run, on the server: Redis CPU (`INFO cpu`, user + sys) per task, the scripts' own time
(`INFO commandstats` EVALSHA usec) per task, and the Redis commands the scripts ran per
task. The runs are interleaved (every case of every tree once per round); the table shows
the median and the smallest of the rounds (the least disturbed by whatever else shares
the machine), with the machine and its load average. A tree named with `--against` runs
the plain case only (it need not know flow control); its `app` must run on this tree's
virtualenv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CASES: dict[str, str] = {  # name -> what it is, as the table shows it
    "plain": "plain (no tenant, no limit)",
    "fair2": "fair share: two tenants",
    "fair1": "fair share: tenant + default",
    "rate": "RATE_LIMITS (never binding)",
    "cap": "QUEUE_MAX_IN_FLIGHT (never binding)",
    "dedup": "dedup_key on every task (all distinct)",
}


def _fields(case: str, i: int) -> dict[str, Any]:
    if case == "fair2":
        return {"tenant": "ab"[i % 2]}
    if case == "fair1":
        return {"tenant": "a"} if i % 2 else {}
    if case == "dedup":  # the index written and let go, no request deduplicated
        return {"dedup_key": f"k{i}"}
    return {}


def _settings(case: str, queue: str) -> dict[str, Any]:
    if case not in ("rate", "cap"):
        return {}
    from app.flow_settings import Flow, Rate  # only the tree under test knows it

    if case == "rate":
        return {"flow": Flow(rates={queue: Rate(1_000_000, 1.0)})}
    return {"flow": Flow(max_in_flight={queue: 1_000_000})}


async def _run(url: str, n: int, case: str) -> dict[str, float]:
    """One run in this process (the worker): figures per task."""
    from app.engine.client import connect
    from app.engine.engine import Engine
    from app.models import TaskRequest
    from app.settings import Settings

    client = connect(url)
    try:
        queue = uuid.uuid4().hex
        settings = Settings(redis_url=url, queue=queue, **_settings(case, queue))
        q = Engine(client, settings).default
        await q.enqueue(TaskRequest.parse({"eval_id": "warm", "code": "x"}))
        warm = await q.claim("c", 1, 30)
        await q.complete("warm", None, warm.tasks[0])
        reqs = [
            TaskRequest.parse({"eval_id": f"t{i}", "code": "x", **_fields(case, i)})
            for i in range(n)
        ]
        await client.config_resetstat()
        cpu0 = await client.info("cpu")
        for i in range(0, n, 200):
            await asyncio.gather(*(q.enqueue(r) for r in reqs[i : i + 200]))
        done = 0
        while done < n:
            claimed = await q.claim("c", 16, 30)
            await asyncio.gather(*(q.complete(t.eval_id, None, t) for t in claimed.tasks))
            done += len(claimed.tasks)
        cpu1 = await client.info("cpu")
        stats = await client.info("commandstats")
    finally:
        await client.aclose()

    def cpu(info: dict[str, Any]) -> float:
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    inner = sum(
        v["calls"] for k, v in stats.items() if k != "cmdstat_evalsha" and "config" not in k
    )
    return {
        "commands": inner / n,
        "script_us": stats["cmdstat_evalsha"]["usec"] / n,
        "redis_us": (cpu(cpu1) - cpu(cpu0)) * 1e6 / n,
    }


def _measure(tree: Path, url: str, n: int, case: str) -> dict[str, float]:
    """One run in a fresh process whose `app` is the one of `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # run_path, not `python bench/flow.py`: bench/ on sys.path would shadow stdlib modules
    code = f"import runpy, sys; sys.argv = {['flow', url, str(n), case]!r}; "
    code += f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__worker__')"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{case} on {tree} failed:\n{out.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def _machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    return f"{model}, {os.cpu_count()} cores"


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    args = argparse.ArgumentParser(prog="python -m bench.flow", description=__doc__)
    args.add_argument("--n", type=int, default=2000, help="tasks per run")
    args.add_argument("--rounds", type=int, default=5)
    args.add_argument("--against", action="append", default=[], metavar="NAME=PATH")
    args.add_argument("--cases", default=",".join(CASES), help="of: " + ",".join(CASES))
    opts = args.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from app.redis_server import RedisServer

    trees = [(name, Path(path).resolve()) for name, path in (a.split("=", 1) for a in opts.against)]
    cases = [c for c in opts.cases.split(",") if c in CASES]
    runs: list[tuple[str, Path, str]] = [("this tree", ROOT, case) for case in ["plain", *cases]]
    runs = list(dict.fromkeys(runs))  # the plain case always, once
    runs += [(name, tree, "plain") for name, tree in trees]
    server = RedisServer(Path(tempfile.mkdtemp()), appendonly=False, unix_socket=False)
    server.start()
    found: dict[tuple[str, str], list[dict[str, float]]] = {(r[0], r[2]): [] for r in runs}
    load_start = _load()
    try:
        for _ in range(opts.rounds):
            for name, tree, case in runs:
                found[(name, case)].append(_measure(tree, server.url, opts.n, case))
    finally:
        server.stop()
    _print(found, opts, load_start)


def _print(found: dict[tuple[str, str], list[dict[str, float]]], opts: Any, load: str) -> None:
    print(f"Machine: {_machine()}; load average (1, 5, 15 min) {load} at the start, ")
    print(f"{_load()} at the end; {opts.rounds} interleaved rounds of {opts.n} tasks per run")
    print("(enqueue pipelined 200 at a time, claims of 16, completes), one redis-server.")
    print("Per task: commands the scripts ran; Redis CPU µs and EVALSHA µs, median / smallest.")
    plain = found[("this tree", "plain")]
    base = statistics.median(r["redis_us"] for r in plain)
    head = f"{'tree':10s} {'case':36s} {'cmds':>6s} {'Redis µs':>13s} {'script µs':>13s}"
    print(head + f" {'vs plain':>9s}")
    for (name, case), rows in found.items():
        cpu = [r["redis_us"] for r in rows]
        script = [r["script_us"] for r in rows]
        med = statistics.median(cpu)
        print(
            f"{name:10s} {CASES[case]:36s} {rows[0]['commands']:6.1f} "
            f"{med:6.1f} / {min(cpu):5.1f} {statistics.median(script):6.1f} / "
            f"{min(script):5.1f} {med / base:8.0%}"
        )
    # Each round runs every case once, minutes apart at most: the ratio of two runs of one
    # round is less disturbed by the machine's drift than the ratio of two medians.
    for (name, case), rows in found.items():
        if name == "this tree" and case == "plain":
            continue
        pairs = list(zip(plain, rows, strict=True))
        if name == "this tree":  # a feature over the plain path
            what, ratios = (
                f"{CASES[case]} / plain",
                [r["redis_us"] / p["redis_us"] for p, r in pairs],
            )
        else:  # this tree's plain path over the other tree's
            what, ratios = (
                f"plain / {name}'s plain",
                [p["redis_us"] / r["redis_us"] for p, r in pairs],
            )
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        print(
            f"{what}: Redis µs, median of the per-round ratios {statistics.median(ratios):.3f}"
            f" (quartiles {q[0]:.3f}-{q[2]:.3f})"
        )


def _worker(argv: list[str]) -> None:
    url, n, case = argv[0], int(argv[1]), argv[2]
    print(json.dumps(asyncio.run(_run(url, n, case))))


if __name__ == "__worker__":
    _worker(sys.argv[1:])
elif __name__ == "__main__":
    main()
