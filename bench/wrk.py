"""wrk (C, epoll) as the non-Python load generator: static POST body, JSON summary.

The body carries no eval_id (the service generates one per task), so wrk sends a static
request and spends no Lua per request; only `done` runs Lua, once, to print a summary.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

LUA = """
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def binary() -> str | None:
    return shutil.which("wrk")


def version() -> str | None:
    path = binary()
    if not path:
        return None
    out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


def write_script(path: Path, body: bytes) -> Path:
    if b"]==]" in body:
        raise ValueError("body cannot be embedded in a Lua long string")
    path.write_text(LUA % {"body": body.decode()})
    return path


async def run(
    url: str, script: Path, connections: int, duration: float, threads: int = 1
) -> dict[str, Any]:
    """Run wrk; returns rps of 2xx/3xx answers, latency percentiles, errors, wrk's CPU %."""
    path = binary()
    if path is None:
        raise FileNotFoundError("wrk is not installed")
    seconds = max(1, round(duration))
    cmd = [path, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
    cmd += ["-s", str(script), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    wall = time.monotonic() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = next((x for x in out.decode().splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {out.decode()} {err.decode()}")
    raw = json.loads(line.removeprefix("WRKJSON "))
    seconds_run = raw["duration_us"] / 1e6
    bad = raw["status"]  # non-2xx/3xx answers
    ok = raw["requests"] - bad
    return {
        "generator": "wrk",
        "concurrency": connections,
        "seconds": round(seconds_run, 3),
        "requests": raw["requests"],
        "ok": ok,
        "rps": round(ok / seconds_run, 1),
        "errors": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]},
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "generator_cpu_pct": round(100 * cpu / wall, 1),
    }
