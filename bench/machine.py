"""What the benchmark ran on: CPU, cores, RAM, OS, Python, Redis, library versions."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = (
    "taskstream",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "redis",
    "hiredis",
    "aiohttp",
    "orjson",
    "structlog",
    "httpx",
    "httpx-aiohttp",
    "py-spy",
    "protobuf",
    "websockets",
)


def _cpuinfo() -> tuple[str, bool]:
    model, virtual = platform.processor() or "unknown", False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, virtual
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model in ("unknown", "", "x86_64"):
            model = value.strip()
        if key.strip() == "flags" and " hypervisor" in value:
            virtual = True
    return model, virtual


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _protobuf_implementation() -> str | None:
    """python, upb or cpp: the pure-Python one makes PAI-EAS frames several times dearer."""
    try:
        from google.protobuf.internal import api_implementation
    except ImportError:
        return None
    return str(api_implementation.Type())


def describe(redis_info: dict[str, Any], redis_binary: str, wrk: str | None) -> dict[str, Any]:
    model, virtual = _cpuinfo()
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "virtualised": virtual,
        "ram_gib": _ram_gib(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "redis": str(redis_info.get("redis_version", "?")),
        "redis_binary": redis_binary,
        "redis_allocator": str(redis_info.get("mem_allocator", "?")),
        "wrk": wrk,
        "libraries": _versions(),
        "protobuf_implementation": _protobuf_implementation(),
    }


def code_line(code: dict[str, Any]) -> str:
    dirty = code.get("app_uncommitted") or []
    extra = f" + uncommitted changes in {', '.join(dirty)}" if dirty else ""
    return f"Code under test: commit {code.get('commit')}{extra}"


def summary_lines(m: dict[str, Any]) -> list[str]:
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    vm = " (virtual machine)" if m["virtualised"] else ""
    return [
        f"CPU: {m['cpu_model']}, {m['cores']} cores{vm}; RAM {m['ram_gib']} GiB; {m['os']}",
        f"Python: {m['python']}; Redis {m['redis']} ({m['redis_allocator']}, AOF off, "
        f"TCP loopback) from {m['redis_binary']}; load generator: {m['wrk'] or 'none (no wrk)'}",
        f"Libraries: {libs}",
    ]


def code_under_test() -> dict[str, Any]:
    """The commit measured, and which files under app/ differed from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return out.stdout.rstrip()  # not strip(): porcelain lines start with a space

    changed = [line[3:] for line in git("status", "--porcelain", "--", "app").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "app_uncommitted": changed}
