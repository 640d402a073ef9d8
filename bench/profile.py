"""Sampling profiles of the service process with py-spy, summarised from collapsed stacks.

`py-spy record --format raw` writes one `frame;frame;...;leaf COUNT` line per distinct
stack (the format flamegraph.pl, inferno and speedscope read). Only samples in which the
thread was running are recorded (no --idle), so percentages are shares of busy time; the
process's CPU % over the recording comes from /proc. Each sample is attributed to a
component (the innermost frame of a known library or of app/, stdlib frames counted for
their caller), and the heaviest functions are listed by self and by inclusive time.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import cpu_seconds

FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# py-spy names files relative to their sys.path entry: the first path part is the package.
COMPONENTS = {
    "app": "app (own code)",
    "redis": "redis-py (Redis client)",
    "hiredis": "redis-py (Redis client)",
    "aiohttp": "aiohttp (executor client)",
    "yarl": "aiohttp (executor client)",
    "multidict": "aiohttp (executor client)",
    "aiosignal": "aiohttp (executor client)",
    "aiohappyeyeballs": "aiohttp (executor client)",
    "uvicorn": "uvicorn (HTTP server)",
    "httptools": "uvicorn (HTTP server)",
    "starlette": "starlette (routing, requests, responses)",
    "structlog": "structlog",
    "anyio": "anyio",
}
EVENT_LOOP = "event loop (uvloop C code: epoll, socket reads, callbacks)"


def binary() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Recording:
    process: asyncio.subprocess.Process
    out: Path
    pid: int
    started: float
    cpu_started: float

    async def stop(self) -> float:
        """SIGINT makes py-spy write its output; returns the target's CPU % meanwhile."""
        seconds = time.monotonic() - self.started
        busy = round(100 * (cpu_seconds(self.pid) - self.cpu_started) / max(1e-9, seconds), 1)
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return busy


async def record(pid: int, out: Path, rate: int = 250) -> Recording:
    path = binary()
    if path is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    cmd = [path, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
    cmd += ["--function", "--nonblocking", "-o", str(out)]
    process = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await asyncio.sleep(0.5)  # attach
    return Recording(process, out, pid, time.monotonic(), cpu_seconds(pid))


def _parse(line: str) -> tuple[list[str], int] | None:
    stack, _, count = line.rstrip().rpartition(" ")
    if not stack or not count.isdigit():
        return None
    return stack.split(";"), int(count)


def _short(frame: str) -> str:
    match = FRAME_RE.match(frame)
    if not match:
        return frame
    file = match["file"]
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{match['func']} ({file})"


def _file(frame: str) -> str:
    match = FRAME_RE.match(frame)
    return match["file"] if match else frame


def _component(frames: list[str]) -> str:
    """Who the sample's time belongs to: the innermost frame of a known library or of app/,
    skipping stdlib frames (asyncio's StreamWriter.writelines counts for its caller);
    a sample whose innermost Python frame is the loop runner is uvloop's own C code."""
    for frame in reversed(frames):
        if frame.startswith("Runner.run ("):
            return EVENT_LOOP
        top = _file(frame).split("/", 1)[0]
        if top in COMPONENTS:
            return COMPONENTS[top]
    return "other"


def summarise(path: Path, busy_pct: float | None, top: int = 12) -> dict[str, Any]:
    total = 0
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        frames, count = parsed
        total += count
        leaf = frames[-1]
        self_time[_short(leaf)] += count
        categories[_component(frames)] += count
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += count
    if not total:
        return {"samples": 0, "busy_pct": busy_pct}

    def pct(n: int) -> float:
        return round(100 * n / total, 1)

    app_frames = [(f, n) for f, n in inclusive.most_common() if "(app/" in f]
    return {
        "file": str(path),
        "samples": total,
        "busy_pct": busy_pct,
        "by_component_pct": {k: pct(v) for k, v in categories.most_common()},
        "top_self": [(f, pct(n)) for f, n in self_time.most_common(top)],
        "top_app_inclusive": [(f, pct(n)) for f, n in app_frames[:top]],
        "top_inclusive": [(f, pct(n)) for f, n in inclusive.most_common(top * 3) if pct(n) < 95][
            :top
        ],
    }


def render(name: str, summary: dict[str, Any]) -> list[str]:
    if not summary.get("samples"):
        return [f"profile {name}: no samples"]
    lines = [
        f"profile {name}: {summary['samples']} samples; service process at "
        f"{summary['busy_pct']}% of one core; raw stacks in {summary['file']}",
        "  where the CPU goes (innermost library frame, stdlib counted for its caller):",
    ]
    lines += [f"    {p:5.1f}%  {k}" for k, p in summary["by_component_pct"].items()]
    lines.append("  top self time (leaf frame):")
    lines += [f"    {p:5.1f}%  {f}" for f, p in summary["top_self"]]
    lines.append("  top inclusive time in app/:")
    lines += [f"    {p:5.1f}%  {f}" for f, p in summary["top_app_inclusive"]]
    lines.append("  top inclusive time (all code, below 95%):")
    lines += [f"    {p:5.1f}%  {f}" for f, p in summary["top_inclusive"]]
    return lines
