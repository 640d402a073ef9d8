"""Child processes of the benchmark: start, wait until ready, measure CPU, always stop.

Every child gets PR_SET_PDEATHSIG (SIGTERM when the benchmark dies, even by SIGKILL) and
is registered in `Children`, whose `stop_all` runs from a `finally` on any exit path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from app.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Every variable app/settings.py reads: the service must see only what the bench sets.
SERVICE_VARS = frozenset(
    {
        "HOST",
        "PORT",
        "REDIS_URL",
        "API_KEY",
        "QUEUE_API_KEY",
        "EAS_TOKEN",
        "EAS_TARGETS",
        "EAS_CONCURRENCY",
        "EXECUTOR_URLS",
        "EXECUTOR_COUNT",
        "EXECUTOR_BASE_URL",
        "TARGET_API_BASE_URL",
        "CONCURRENCY",
        "MAX_RETRIES",
        "RETRY_BASE_DELAY",
        "RETRY_EXPONENTIAL_BASE",
        "RETRY_MAX_DELAY",
        "RETRY_JITTER",
        "NETWORK_RETRY_MAX_RETRIES",
        "NETWORK_RETRY_BASE_DELAY",
        "NETWORK_RETRY_EXPONENTIAL_BASE",
        "NETWORK_RETRY_MAX_DELAY",
        "TASK_TIMEOUT",
        "LEASE_TIMEOUT",
        "LEASE_MAX_LAPSES",
        "RESULT_TTL",
        "FAILURE_TTL",
        "HEALTH_INTERVAL",
        "MAX_BODY_BYTES",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "DATA_DIR",
        "QUEUE_NAME",
        "SHUTDOWN_GRACE",
        "EVENTS_MAXLEN",
        "DLQ_MAX_AGE_DAYS",
        "CLEANUP_INTERVAL",
    }
)

__all__ = ["ROOT", "Child", "Children", "CpuMeter", "free_port", "wait_http"]


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Children:
    """Registry of running children; `stop_all` ends every one still running."""

    log_dir: Path
    running: list[Child] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        cmd: Sequence[str],
        env: Mapping[str, str] | None = None,
        stdout_to_log: bool = True,
    ) -> Child:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                list(cmd),
                cwd=ROOT,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=out if stdout_to_log else subprocess.PIPE,
                stderr=out,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, process, log)
        self.running.append(child)
        return child

    def python(self, name: str, module: str, *args: str, env: Mapping[str, str] | None = None):
        return self.spawn(name, [sys.executable, "-m", module, *args], env)

    def stop(self, child: Child, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(sig)
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        if child in self.running:
            self.running.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.running)):
            self.stop(child, timeout=5.0)


def service_env(
    port: int, redis_url: str, executor_urls: Sequence[str] = (), concurrency: int = 32
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        REDIS_URL=redis_url,
        CONCURRENCY=str(concurrency),
        LOG_LEVEL="WARNING",
    )
    if executor_urls:
        env["EXECUTOR_URLS"] = ",".join(executor_urls)
    return env


async def wait_http(url: str, child: Child, timeout: float = 20.0) -> None:
    """Poll `url` until it answers 2xx; fail fast (with the log tail) if the child exits."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited early:\n{child.tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                    if 200 <= resp.status < 300:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{child.name} not ready at {url} after {timeout}s")
            await asyncio.sleep(0.05)


def machine_cpu_seconds() -> tuple[float, float, float]:
    """CPU seconds of the whole machine since boot, from /proc/stat: (processes, i.e. user +
    nice + system; irq + softirq, which loopback networking adds and no process is charged
    for; steal, time the hypervisor gave to other guests)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system) / CLK_TCK, (irq + softirq) / CLK_TCK, steal / CLK_TCK


def _children_cpu() -> dict[int, float]:
    """CPU seconds of this process's live children (the bench spawns no grandchildren)."""
    me, found = os.getpid(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw.rsplit(")", 1)[1].split()
        if int(fields[1]) == me:
            found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return found


@dataclass
class TreeCpu:
    """CPU seconds of this process, its reaped children and each live child, at one moment."""

    own: float
    reaped: float
    live: dict[int, float]

    @classmethod
    def now(cls) -> TreeCpu:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime, _children_cpu())

    def since(self, start: TreeCpu) -> float:
        """CPU the tree used between `start` and this snapshot."""
        live = sum(cpu - start.live.get(pid, 0.0) for pid, cpu in self.live.items())
        # a child reaped meanwhile is counted in full by RUSAGE_CHILDREN: drop its past
        gone = sum(cpu for pid, cpu in start.live.items() if pid not in self.live)
        return (self.own - start.own) + (self.reaped - start.reaped - gone) + live


class CpuMeter:
    """CPU used by named processes over a window, as % of one core (200 % = both cores).

    Also `other`: CPU used meanwhile by processes that are not the benchmark's (process time
    of the machine from /proc/stat minus this process and its children), i.e. outside
    interference; `softirq` (kernel network processing, mostly our own loopback traffic) and
    `steal` (the hypervisor's) are reported apart.
    """

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.start_cpu: dict[str, float] = {}
        self.start_wall = 0.0

    def __enter__(self) -> CpuMeter:
        self.start_wall = time.monotonic()
        self.start_cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.start_machine = machine_cpu_seconds()
        self.start_tree = TreeCpu.now()
        self.result: dict[str, float] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(1e-9, time.monotonic() - self.start_wall)
        self.result = {
            name: round(100 * (cpu_seconds(pid) - self.start_cpu[name]) / wall, 1)
            for name, pid in self.pids.items()
        }
        ours = TreeCpu.now().since(self.start_tree)
        end = machine_cpu_seconds()
        procs, softirq, steal = (b - a for a, b in zip(self.start_machine, end, strict=True))
        self.result["other"] = round(max(0.0, 100 * (procs - ours) / wall), 1)
        self.result["softirq"] = round(100 * softirq / wall, 1)
        self.result["steal"] = round(100 * steal / wall, 1)


def _all_cpu() -> dict[int, tuple[float, str]]:
    found: dict[int, tuple[float, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = raw.rsplit(")", 1)[1].split()
        found[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / CLK_TCK, cmd.strip())
    return found


def background_load(seconds: float = 1.0) -> tuple[float, list[str]]:
    """CPU % (of one core) used by processes other than this benchmark, and the busiest."""
    with CpuMeter({}) as meter:
        before = _all_cpu()
        time.sleep(seconds)
        after = _all_cpu()
    mine = {os.getpid(), *_children_cpu()}
    deltas = sorted(
        (
            (cpu - before[pid][0], cmd)
            for pid, (cpu, cmd) in after.items()
            if pid in before and pid not in mine
        ),
        reverse=True,
    )
    busiest = [f"{100 * d / seconds:.0f}% {cmd[:80]}" for d, cmd in deltas[:3] if d > 0]
    return meter.result["other"], busiest


async def wait_quiet(limit: float, threshold: float = 15.0) -> tuple[float, list[str]]:
    """Wait up to `limit` s until other processes use < threshold % of a core for 2 s."""
    deadline = time.monotonic() + limit
    quiet = 0
    while True:
        load, busiest = await asyncio.to_thread(background_load, 1.0)
        quiet = quiet + 1 if load < threshold else 0
        if quiet >= 2 or time.monotonic() > deadline:
            return load, busiest
