"""`python -m bench [--quick] [--profile] [--only STAGES]`: run the benchmarks, print a report."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import uvloop

from bench import costreport, profile, report
from bench.runner import RESULTS, STAGES, Plan, amain


def parse(argv: list[str] | None) -> tuple[Plan, Path, Path | None]:
    args = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    args.add_argument("--quick", action="store_true", help="smaller N and shorter runs (~2 min)")
    args.add_argument(
        "--profile", action="store_true", help="also py-spy the service (enqueue, drain)"
    )
    args.add_argument("--only", help=f"comma-separated subset of: {','.join(STAGES)},profile")
    args.add_argument("--duration", type=float, help="seconds per HTTP throughput run")
    args.add_argument("--drain-n", type=int, help="tasks pre-queued for the drain")
    args.add_argument("--fill-n", type=int, help="tasks queued for memory and lookups")
    args.add_argument(
        "--scheduled-n", type=int, help="tasks scheduled to come due at once (scheduled stage)"
    )
    args.add_argument("--eas-duration", type=float, help="seconds per PAI-EAS round trip run")
    args.add_argument("--eas-watch-n", type=int, help="sink items the PAI-EAS watchers drain")
    args.add_argument(
        "--retry-base-delay", type=float, help="RETRY_BASE_DELAY of the retry drain (0.05)"
    )
    args.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait at start for other processes to go quiet (default 120, 0 = no)",
    )
    args.add_argument(
        "--json",
        type=Path,
        help="results file (default bench/results/<UTC time>.json, with -quick or "
        "-only-STAGES before .json for those runs)",
    )
    args.add_argument("--report", type=Path, help="only print the report of a saved results file")
    ns = args.parse_args(argv)
    plan = Plan.quick_plan() if ns.quick else Plan()
    changes: dict[str, Any] = {"profile": ns.profile}
    if ns.only:
        stages = tuple(s.strip() for s in ns.only.split(",") if s.strip())
        unknown = set(stages) - {*STAGES, "profile"}
        if unknown:
            args.error(f"unknown stages: {', '.join(sorted(unknown))}")
        changes["stages"] = tuple(s for s in stages if s != "profile")
        changes["profile"] = ns.profile or "profile" in stages
    names = ("duration", "drain_n", "fill_n", "scheduled_n", "retry_base_delay", "quiet_wait")
    for name in (*names, "eas_duration", "eas_watch_n"):
        if getattr(ns, name) is not None:
            changes[name] = getattr(ns, name)
    plan = dataclasses.replace(plan, **changes)
    return plan, ns.json or default_json(plan, bool(ns.only)), ns.report


def default_json(plan: Plan, only: bool) -> Path:
    """bench/results/<UTC time>[-quick][-only-STAGES].json: every run keeps its own file
    (only full runs are meant to be committed; .gitignore drops the others)."""
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    suffix = "-quick" if plan.quick else ""
    if only:
        suffix += f"-only-{'-'.join(plan.stages) or 'profile'}"
    return RESULTS / f"{stamp}{suffix}.json"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every `finally`


def print_report(results: dict[str, Any]) -> None:
    print()
    for line in report.details(results):
        print(line)
    for name, summary in results.get("profiles", {}).items():
        print()
        for line in profile.render(name, summary):
            print(line)
    print()
    print(report.SHARED_CORES_NOTE)
    print()
    print(report.markdown(results))
    print()
    print(costreport.markdown(results))


def main(argv: list[str] | None = None) -> int:
    plan, json_path, saved = parse(argv)
    if saved is not None:
        print_report(orjson.loads(saved.read_bytes()))
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    try:
        results = uvloop.run(amain(plan))
    except KeyboardInterrupt:
        print("interrupted: child processes stopped", file=sys.stderr)
        return 130
    results["targets"] = report.targets(results) + costreport.targets(results)
    print_report(results)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    data = orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n"
    json_path.write_bytes(data)
    print(f"\nresults written to {json_path} ({results['wall_seconds']} s)")
    status = 0
    if failed := costreport.once_failed(results):
        names = ", ".join(c["scenario"] for c in failed)
        print(f"FAILED: exactly-once check of {names} (missing or duplicated tasks)")
        status = 1
    for stage, error in (results.get("failed_stages") or {}).items():
        print(f"FAILED: stage {stage}: {error}")
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
