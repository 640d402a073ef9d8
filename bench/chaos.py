"""`python -m bench.chaos` (`make chaos`): minutes of faults under load, then the
total-queue report.

Runs a redis-server (AOF on, `appendfsync everysec`), REPLICAS `python -m app serve`
processes sharing it, the recording executor of tests/totalqueue.py (each replica gets its
own base URL, `/r<i>`, so every call is traced to its sender) and a fixed-rate enqueue load
spread over the live replicas. Meanwhile, one fault at a time:

- every ~KILL_INTERVAL s (uniformly 0.5-1.5x) a random replica is killed with SIGKILL and
  started again on its port (the load skips it until it is ready);
- every REDIS_KILL_INTERVAL s (0: never) redis-server is killed with SIGKILL and
  restarted on its AOF;
- every REDIS_PAUSE_INTERVAL s (0: never) redis-server is stopped (SIGSTOP) for
  REDIS_PAUSE s, then continued.

Then the load stops, every replica is brought back, the tasks are drained (every
accepted task terminal, then a quiet period) and the report printed and written as JSON
(bench/results/chaos.json unless --json). Exit status 1 when the check fails: a lost or
unexpected task, or more repeat executions than the faults allow (CONCURRENCY per
replica kill, REPLICAS x CONCURRENCY per Redis fault).

Imports: app.redis_server, bench.procs, bench.machine, tests.totalqueue.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import orjson
import redis
import uvloop

from app.redis_server import RedisServer
from bench import machine
from bench.procs import Child, Children, free_port, service_env, wait_http
from tests.totalqueue import (
    Load,
    Lookup,
    Recorder,
    RecordingExecutor,
    Report,
    Unknown,
    analyse,
    drain,
)

RESULTS = Path(__file__).resolve().parent / "results"
QUEUE = "chaos"


@dataclass(frozen=True)
class Plan:
    duration: float = 180.0  # seconds of faults under load
    replicas: int = 3
    kill_interval: float = 5.0  # mean seconds between replica kills
    rate: float = 100.0  # enqueues per second, over the live replicas
    concurrency: int = 8  # CONCURRENCY of each replica
    work: float = 0.02  # seconds the executor takes per task
    lease: float = 2.0  # LEASE_TIMEOUT
    redis_kill_interval: float = 60.0  # 0: never
    redis_pause_interval: float = 45.0  # 0: never
    redis_pause: float = 4.0  # seconds each pause lasts
    drain_timeout: float = 180.0
    seed: int | None = None


@dataclass
class Fault:
    at: float  # seconds since the load started
    kind: str  # replica-kill, redis-kill, redis-pause
    target: str
    held: int = 0  # calls of the killed replica open at the executor when it died
    downtime: float = 0.0  # until the replica answered /readyz again, or Redis PING

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Chaos:
    """The processes of one run and the faults done to them."""

    plan: Plan
    tmp: Path
    children: Children
    rng: random.Random
    redis: RedisServer = field(init=False)
    executor: RecordingExecutor = field(init=False)
    ports: list[int] = field(default_factory=list)
    live: dict[int, Child] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    recorder: Recorder = field(default_factory=Recorder)
    load: Load = field(init=False)
    started: float = 0.0

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    async def start(self) -> None:
        self.redis = RedisServer(self.tmp / "redis", appendonly=True, unix_socket=False)
        await asyncio.to_thread(self.redis.start)
        self.executor = await RecordingExecutor(delay=self.plan.work).start()
        self.ports = [free_port() for _ in range(self.plan.replicas)]
        await asyncio.gather(*(self.spawn(i) for i in range(self.plan.replicas)))
        self.load = Load(self.recorder, [], rate=self.plan.rate, prefix="c", max_in_flight=64)
        self.load.targets[:] = [self.url(i) for i in sorted(self.live)]

    async def spawn(self, i: int) -> float:
        """Start replica i on its port; return the seconds until it answered /readyz."""
        began = time.monotonic()
        env = service_env(self.ports[i], self.redis.url, [f"{self.executor.url}/r{i}"])
        env.update(
            QUEUE_NAME=QUEUE,
            CONCURRENCY=str(self.plan.concurrency),
            LEASE_TIMEOUT=str(self.plan.lease),
            HEALTH_INTERVAL="0.5",
        )
        child = self.children.python(f"replica{i}", "app", "serve", env=env)
        await wait_http(self.url(i) + "/readyz", child, timeout=60)
        self.live[i] = child
        return time.monotonic() - began

    def note(self, kind: str, target: str, held: int = 0) -> Fault:
        fault = Fault(round(time.monotonic() - self.started, 2), kind, target, held)
        self.faults.append(fault)
        print(f"  {fault.at:7.1f} s  {kind} {target}" + (f" ({held} open)" if held else ""))
        return fault

    async def kill_replica(self) -> None:
        i = self.rng.choice(sorted(self.live))
        child = self.live.pop(i)
        self.load.targets.remove(self.url(i))
        fault = self.note("replica-kill", f"r{i}", len(self.executor.open(f"/r{i}")))
        self.children.stop(child, sig=signal.SIGKILL)
        fault.downtime = round(await self.spawn(i), 2)
        self.load.targets.append(self.url(i))

    async def kill_redis(self) -> None:
        fault = self.note("redis-kill", "redis")
        began = time.monotonic()
        await asyncio.to_thread(self.redis.kill)
        await asyncio.to_thread(self.redis.start, 60.0)
        fault.downtime = round(time.monotonic() - began, 2)

    async def pause_redis(self) -> None:
        fault = self.note("redis-pause", "redis")
        self.redis.pause()
        try:
            await asyncio.sleep(self.plan.redis_pause)
        finally:
            self.redis.resume()
        fault.downtime = self.plan.redis_pause

    def schedule(self) -> dict[str, tuple[float, Callable[[], Awaitable[None]]]]:
        """Each fault kind: its mean interval and its action (kinds with interval 0 are off)."""
        kinds = {
            "replica-kill": (self.plan.kill_interval, self.kill_replica),
            "redis-kill": (self.plan.redis_kill_interval, self.kill_redis),
            "redis-pause": (self.plan.redis_pause_interval, self.pause_redis),
        }
        return {kind: entry for kind, entry in kinds.items() if entry[0] > 0}

    async def run_faults(self) -> None:
        """One fault at a time, each kind at its own pace, until the duration is over."""
        kinds = self.schedule()
        end = self.started + self.plan.duration
        due = {kind: self.started + self.next_in(kind, mean) for kind, (mean, _) in kinds.items()}
        while due:
            kind = min(due, key=lambda k: due[k])
            if due[kind] >= end:
                break
            await asyncio.sleep(max(0.0, due[kind] - time.monotonic()))
            await kinds[kind][1]()
            due[kind] = time.monotonic() + self.next_in(kind, kinds[kind][0])
        await asyncio.sleep(max(0.0, end - time.monotonic()))

    def next_in(self, kind: str, mean: float) -> float:
        """Replica kills come at random (0.5-1.5x the mean); Redis faults on the interval."""
        return mean * self.rng.uniform(0.5, 1.5) if kind == "replica-kill" else mean

    def bound(self) -> int:
        """Repeat executions the faults allow: what each killed or stalled process held."""
        per_kind = {
            "replica-kill": self.plan.concurrency,
            "redis-kill": self.plan.replicas * self.plan.concurrency,
            "redis-pause": self.plan.replicas * self.plan.concurrency,
        }
        return sum(per_kind[f.kind] for f in self.faults)

    def repeats_by_fault(self, report: Report) -> dict[str, int]:
        """Each repeat execution charged to the last fault before it: which kinds of fault
        cost how many repeats (approximate when faults follow each other closely)."""
        charged: dict[str, int] = {}
        runs: dict[str, list[float]] = {}
        for execution in self.executor.executions:
            if execution.eval_id in report.duplicated:
                runs.setdefault(execution.eval_id, []).append(execution.at - self.started)
        for times in runs.values():
            for repeat in times[1:]:
                kinds = [f.kind for f in self.faults if f.at <= repeat]
                kind = kinds[-1] if kinds else "none"
                charged[kind] = charged.get(kind, 0) + 1
        return charged

    async def restore(self) -> None:
        """Bring back any replica that is down (say, a fault was cut short)."""
        down = [i for i in range(self.plan.replicas) if i not in self.live]
        await asyncio.gather(*(self.spawn(i) for i in down))

    async def drained(self) -> tuple[Report, float, set[str]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            lookup = _lookup(session, [self.url(i) for i in sorted(self.live)])
            result = await drain(
                lookup,
                self.recorder.ids(),
                self.executor,
                self.plan.drain_timeout,
                quiet=self.plan.lease + 1.0,
                concurrency=32,
            )
        report = analyse(self.recorder, self.executor.executions, result.records)
        return report, result.seconds, result.open


def _lookup(session: aiohttp.ClientSession, urls: list[str]) -> Lookup:
    """GET /tasks/{id} spread over the replicas (aiohttp: cheaper per call than httpx)."""
    turn = itertools.cycle(urls)

    async def lookup(eval_id: str) -> Mapping[str, Any] | None:
        try:
            async with session.get(f"{next(turn)}/tasks/{eval_id}") as response:
                if response.status == 404:
                    return None
                if response.status != 200:
                    raise Unknown(f"answered {response.status}")
                record: dict[str, Any] = await response.json()
                return record
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unknown(exc.__class__.__name__) from exc

    return lookup


async def amain(plan: Plan) -> dict[str, Any]:
    """Run; the logs (replicas, Redis) are kept in a temporary directory when it fails."""
    if plan.seed is None:  # a seed of its own, kept in the results to run it again
        plan = dataclasses.replace(plan, seed=random.randrange(2**32))
    tmp = Path(tempfile.mkdtemp(prefix="taskstream-chaos-"))
    children = Children(tmp)
    chaos = Chaos(plan, tmp, children, random.Random(plan.seed))
    passed = False
    try:
        results = await _run(chaos)
        passed = bool(results["passed"])
        return results
    finally:
        children.stop_all()
        if hasattr(chaos, "redis"):
            chaos.redis.resume()
            chaos.redis.stop()
        if hasattr(chaos, "executor"):
            await chaos.executor.stop()
        if passed:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}", file=sys.stderr)


async def _run(chaos: Chaos) -> dict[str, Any]:
    plan = chaos.plan
    await chaos.start()
    print(f"chaos: {plan.duration:g} s, {plan.replicas} replicas, {plan.rate:g} enqueues/s")
    chaos.started = time.monotonic()
    chaos.load.start()
    await chaos.run_faults()
    await chaos.load.stop()
    loaded = time.monotonic() - chaos.started
    await chaos.restore()
    report, drain_seconds, still_open = await chaos.drained()
    bound = chaos.bound()
    problems = report.problems(bound)
    report = dataclasses.replace(report, max_duplicates=bound)
    return {
        "plan": dataclasses.asdict(plan),
        "machine": _machine(chaos.redis),
        "code": machine.code_under_test(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_seconds": round(loaded, 1),
        "accepted_per_second": round(report.accepted / loaded, 1),
        "drain_seconds": round(drain_seconds, 1),
        "still_open": sorted(still_open),
        "faults": [f.as_dict() for f in chaos.faults],
        "held_at_kills": sum(f.held for f in chaos.faults),
        "repeats_by_fault": chaos.repeats_by_fault(report),
        "report": report.as_dict(),
        "summary": report.summary(),
        "problems": problems,
        "passed": not problems,
    }


def _machine(server: RedisServer) -> dict[str, Any]:
    client = redis.Redis.from_url(server.url)
    try:
        info = client.info("server")
    finally:
        client.close()
    described = machine.describe(info, server.binary, None)
    described.pop("libraries")
    return described


def summary(results: Mapping[str, Any]) -> list[str]:
    """The figures of a run, as printed and as docs/operations.md quotes them."""
    plan, faults, m = results["plan"], results["faults"], results["machine"]
    kinds: dict[str, list[Mapping[str, Any]]] = {}
    for fault in faults:
        kinds.setdefault(fault["kind"], []).append(fault)
    lines = [
        f"chaos run of {results['date']}: {results['load_seconds']} s under load, "
        f"{plan['replicas']} replicas (CONCURRENCY {plan['concurrency']}, LEASE_TIMEOUT "
        f"{plan['lease']:g}), {plan['rate']:g} enqueues/s offered, "
        f"{results['accepted_per_second']} accepted/s, executor {plan['work'] * 1000:g} ms/task",
        f"machine: {m['cpu_model']}, {m['cores']} cores, Python {m['python']}, Redis "
        f"{m['redis']} (AOF everysec); commit {results['code']['commit']}",
    ]
    for kind, done in kinds.items():
        downs = [f["downtime"] for f in done]
        held = sum(f["held"] for f in done)
        opened = (
            f", {held} calls open at the executor when killed" if kind == "replica-kill" else ""
        )
        lines.append(f"  {kind}: {len(done)}, down {min(downs):.2f}-{max(downs):.2f} s{opened}")
    charged = ", ".join(f"{k} {n}" for k, n in sorted(results["repeats_by_fault"].items()))
    lines.append(f"drain: {results['drain_seconds']} s; repeats by fault: {charged or 'none'}")
    lines += results["summary"].splitlines()
    lines.append("PASSED" if results["passed"] else "FAILED: " + "; ".join(results["problems"]))
    return lines


def parse(argv: list[str] | None) -> tuple[Plan, Path]:
    args = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    defaults = Plan()
    for name in (f.name for f in dataclasses.fields(Plan)):
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        kind = type(default) if default is not None else int
        args.add_argument(flag, type=kind, default=default, help=f"default {default}")
    args.add_argument("--json", type=Path, default=RESULTS / "chaos.json", help="results file")
    ns = vars(args.parse_args(argv))
    path = ns.pop("json")
    return Plan(**ns), path


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every `finally`


def main(argv: list[str] | None = None) -> int:
    plan, path = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        results = uvloop.run(amain(plan))
    except KeyboardInterrupt:
        print("interrupted: child processes stopped", file=sys.stderr)
        return 130
    print()
    print("\n".join(summary(results)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nresults written to {path}")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
