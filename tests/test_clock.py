"""Service-side times come from the Redis server's clock, not the replica's.

A replica runs under Debian's `faketime` with its clock 120 s ahead or behind (Redis, the
executor and this test keep the real clock). Tasks delayed through every way in (`POST
/tasks`, a batch, the CLI's `enqueue --delay`, itself under the same skew), a client's
absolute `run_at`, and a retry's backoff must each run when due on the real clock.
`make tools` installs faketime; without it these tests fail (they are not skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.responses import JSONResponse, Response

from app.redis_server import free_port
from tests.conftest import ROOT, Process, StubExecutor, _wait_http, wait_for

DELAY = 1.5  # seconds
EARLY = 0.05  # Redis keeps milliseconds; the test's clock reads are a little apart
LATE = 1.5  # promotion, claim and the call, on a loaded machine
SKEWS = [120, -120]


def faketime(offset: int) -> list[str]:
    """The command prefix running a program `offset` s off. Monotonic clocks stay real:
    libfaketime would otherwise move CLOCK_MONOTONIC to the faked wall time, and asyncio's
    and uvicorn's timers run on it."""
    binary = shutil.which("faketime")
    if binary is None:
        pytest.fail(
            "the faketime binary is missing: `make tools` installs Debian's faketime "
            "(apt-get install faketime); the clock-skew tests need it"
        )
    return [binary, "-m", "--exclude-monotonic", "-f", f"{offset:+d}"]


def base_env(**env: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env}


@pytest.fixture
def spawn_skewed(tmp_path: Path) -> Iterator[Callable[[int, dict[str, str]], Process]]:
    """`python -m app serve` under faketime. faketime forks the program and stays its
    parent, so each runs in a session of its own and the whole group is killed."""
    started: list[Process] = []

    def spawn(offset: int, env: dict[str, str]) -> Process:
        port = free_port()
        log = tmp_path / f"service{offset:+d}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*faketime(offset), sys.executable, "-m", "app", "serve"],
                cwd=ROOT,
                env=base_env(HOST="127.0.0.1", PORT=str(port), LOG_LEVEL="INFO", **env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(proc, f"http://127.0.0.1:{port}", log)
        started.append(process)
        _wait_http(process, "/livez")
        return process

    yield spawn
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.proc.pid, signal.SIGKILL)
        process.proc.wait()


def clock_offset(process: Process, real: float) -> float:
    """How far the replica's clock is from the real one, read from its first log line."""
    first = orjson.loads(process.output().splitlines()[0])
    logged = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00")).timestamp()
    return logged - real


async def cli_enqueue(offset: int, env: dict[str, str], eval_id: str) -> None:
    """`python -m app enqueue --delay` under the same skew."""
    proc = await asyncio.create_subprocess_exec(
        *faketime(offset),
        sys.executable,
        *("-m", "app", "enqueue", "x", "--eval-id", eval_id, "--delay", str(DELAY)),
        cwd=ROOT,
        env=base_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert orjson.loads(out)["status"] == "scheduled", out


async def due(send: Awaitable[Any]) -> tuple[float, float]:
    """When a task submitted with a delay of DELAY is due on the real clock: DELAY after
    the moment just before, and after, its submission."""
    before = time.time()
    await send
    return before + DELAY, time.time() + DELAY


@pytest.mark.parametrize("offset", SKEWS, ids=lambda o: f"clock{o:+d}s")
async def test_delays_and_backoff_follow_the_redis_clock_on_a_skewed_replica(
    make_executor: Callable[..., Awaitable[StubExecutor]],
    spawn_skewed: Callable[[int, dict[str, str]], Process],
    redis_url: str,
    queue: str,
    offset: int,
):
    calls: dict[str, list[float]] = {}

    async def handler(body: dict[str, Any]) -> Response:
        calls.setdefault(body["eval_id"], []).append(time.time())
        if body["eval_id"] == "backoff" and len(calls["backoff"]) == 1:
            return JSONResponse({"error": "try again"}, status_code=500)
        return JSONResponse({"status": "success", "output": "", "exit_code": 0})

    executor = await make_executor(handler)
    env = {"REDIS_URL": redis_url, "QUEUE_NAME": queue}
    real_start = time.time()
    service = await asyncio.to_thread(
        spawn_skewed,
        offset,
        {
            **env,
            "EXECUTOR_URLS": executor.url,
            "RETRY_BASE_DELAY": str(DELAY),
            "RETRY_JITTER": "false",
        },
    )
    skew = clock_offset(service, real_start)
    assert abs(skew - offset) < 10, f"faketime did not move the replica's clock: {skew:+.1f}s"

    windows: dict[str, tuple[float, float]] = {}  # eval_id: (due at the earliest, the latest)
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:

        async def post(path: str, body: dict[str, Any]) -> None:
            answer = await http.post(path, json=body)
            assert answer.status_code == 201, answer.text

        delayed = {"eval_id": "single", "code": "x", "delay": DELAY}
        windows["single"] = await due(post("/tasks", delayed))
        batch = [{"eval_id": "batched", "code": "x", "delay": DELAY}]
        windows["batched"] = await due(post("/tasks/batch", {"tasks": batch}))
        # a client's absolute run_at is taken as given: due DELAY s from now on the real clock
        at = time.time() + DELAY
        await post("/tasks", {"eval_id": "absolute", "code": "x", "run_at": at})
        windows["absolute"] = (at, at)
        windows["cli"] = await due(cli_enqueue(offset, env, "cli"))
        await post("/tasks", {"eval_id": "backoff", "code": "x"})

        async def all_ran() -> bool:
            return all(calls.get(k) for k in windows) and len(calls.get("backoff", [])) >= 2

        try:
            await wait_for(all_ran, timeout=DELAY + 10)
        except AssertionError:
            pytest.fail(f"not every task ran within {DELAY + 10:g}s on a {offset:+d}s replica")

    for eval_id, (earliest, latest) in windows.items():
        ran = calls[eval_id][0]
        assert earliest - EARLY <= ran <= latest + LATE, (
            f"{eval_id}: ran {ran - earliest:+.2f}s from its due time on a replica {offset:+d}s off"
        )
    first, retry = calls["backoff"][:2]
    assert DELAY - EARLY <= retry - first <= DELAY + LATE, (
        f"retry 1 waited {retry - first:.2f}s, not RETRY_BASE_DELAY={DELAY}s"
    )
