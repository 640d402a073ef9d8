"""The example executor (app/example_executor.py), `serve --example-executor`, compose.yaml.

The executor runs real subprocesses under real limits; the service runs as a subprocess
against the session's Redis. No mocks.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from app import example_executor
from app.example_executor import Limits, Replays, create_app
from app.redis_server import free_port
from tests.cli.test_main import one_line, run
from tests.conftest import ROOT, wait_for, wait_http

MiB = 1024 * 1024


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """An HTTP client on the executor app (in-process ASGI; the runs are real processes)."""
    clients: list[httpx.AsyncClient] = []

    def make(**limits: Any) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=create_app(Limits(**limits)))
        client = httpx.AsyncClient(transport=transport, base_url="http://executor", timeout=30)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def execute(client: httpx.AsyncClient, code: str, **extra: Any) -> httpx.Response:
    body = {"eval_id": "e1", "code": code, "language": "python", "attempt": 1, "metadata": {}}
    return await client.post("/execute", json={**body, **extra})


async def gone(pid: int) -> bool:
    return not alive(pid)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# --- runs ---------------------------------------------------------------------------


async def test_print_runs_and_answers_its_output(make_client: Callable[..., httpx.AsyncClient]):
    answer = await execute(make_client(), "print(6*7)")
    assert answer.status_code == 200
    assert answer.json() == {"status": "success", "output": "42\n", "exit_code": 0}


async def test_a_syntax_error_is_an_error_with_exit_code_1(
    make_client: Callable[..., httpx.AsyncClient],
):
    answer = await execute(make_client(), "def (:\n")
    assert answer.status_code == 200
    result = answer.json()
    assert result["status"] == "error"
    assert result["exit_code"] == 1
    assert "SyntaxError" in result["output"]


async def test_stdout_and_stderr_are_both_in_the_output(
    make_client: Callable[..., httpx.AsyncClient],
):
    code = "import sys\nprint('out', flush=True)\nsys.stderr.write('err\\n')\nsys.exit(3)"
    result = (await execute(make_client(), code)).json()
    assert result == {"status": "error", "output": "out\nerr\n", "exit_code": 3}


async def test_an_endless_loop_is_killed_at_the_time_limit(
    make_client: Callable[..., httpx.AsyncClient],
):
    code = "import os\nprint(os.getpid(), flush=True)\nwhile True:\n    pass\n"
    started = time.monotonic()
    answer = await execute(make_client(timeout=1.0), code)
    elapsed = time.monotonic() - started
    result = answer.json()
    assert answer.status_code == 200
    assert result["status"] == "timeout"
    assert result["exit_code"] is None
    assert 1.0 <= elapsed < 5
    assert not alive(int(result["output"].split()[0]))


async def test_a_sleeping_run_is_killed_at_the_time_limit_with_its_children(
    make_client: Callable[..., httpx.AsyncClient],
):
    code = (
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    result = (await execute(make_client(timeout=0.5), code)).json()
    assert result["status"] == "timeout"
    assert time.monotonic() - started < 5
    grandchild = int(result["output"].split()[0])
    await wait_for(lambda: gone(grandchild), timeout=5)


async def test_what_a_run_leaves_in_the_background_is_ended(
    make_client: Callable[..., httpx.AsyncClient],
):
    code = "import subprocess\nprint(subprocess.Popen(['sleep', '60']).pid)\n"
    started = time.monotonic()
    result = (await execute(make_client(timeout=10.0), code)).json()
    assert result["status"] == "success"
    assert time.monotonic() - started < 5  # not held until the time limit by the open pipe
    leftover = int(result["output"].split()[0])
    await wait_for(lambda: gone(leftover), timeout=5)


async def test_a_memory_hog_is_stopped_by_the_address_space_limit(
    make_client: Callable[..., httpx.AsyncClient],
):
    code = "data = bytearray(1024 * 1024 * 1024)\nprint('allocated')\n"
    result = (await execute(make_client(memory_mb=256), code)).json()
    assert result["status"] == "error"
    assert result["exit_code"] == 1
    assert "MemoryError" in result["output"]
    assert "allocated" not in result["output"]


async def test_the_run_has_its_resource_limits():
    """CPU seconds (behind the wall clock: one second more), address space, file size,
    processes, no core files."""
    limits = Limits(timeout=1.0)
    assert limits.cpu_seconds == 2
    code = (
        "import json, resource as r\n"
        "names = ['RLIMIT_CPU', 'RLIMIT_AS', 'RLIMIT_FSIZE', 'RLIMIT_NPROC', 'RLIMIT_CORE']\n"
        "print(json.dumps({n: r.getrlimit(getattr(r, n)) for n in names}))\n"
    )
    result = await example_executor.run_python(code, limits)
    assert result["status"] == "success", result
    seen = orjson.loads(result["output"])
    assert seen["RLIMIT_CPU"] == [2, 2]
    assert seen["RLIMIT_AS"] == [512 * MiB, 512 * MiB]
    assert seen["RLIMIT_FSIZE"] == [16 * MiB, 16 * MiB]
    assert 0 < seen["RLIMIT_NPROC"][0] <= example_executor.PROCESS_LIMIT
    assert seen["RLIMIT_CORE"] == [0, 0]


async def test_a_huge_file_is_refused_by_the_file_size_limit(
    make_client: Callable[..., httpx.AsyncClient],
):
    code = "open('big', 'wb').write(b'x' * (32 * 1024 * 1024))\n"
    result = (await execute(make_client(), code)).json()
    assert result["status"] == "error"
    assert "File too large" in result["output"]


async def test_the_environment_is_empty_but_path_and_the_directory_is_fresh(
    make_client: Callable[..., httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("SECRET_TOKEN", "do-not-leak")
    code = "import json, os\nprint(json.dumps([sorted(os.environ), os.getcwd(), os.listdir()]))"
    result = (await execute(make_client(), code)).json()
    names, cwd, listing = orjson.loads(result["output"])
    assert "PATH" in names
    assert set(names) <= {"PATH", "LC_CTYPE"}  # LC_CTYPE: Python's own C-locale coercion
    assert listing == []
    assert "taskstream-example-" in cwd
    assert not os.path.exists(cwd)  # removed after the run


async def test_long_output_is_truncated(make_client: Callable[..., httpx.AsyncClient]):
    result = (await execute(make_client(), "print('x' * 200000)")).json()
    assert result["status"] == "success"
    kept, _, note = result["output"].partition("\n[output truncated")
    assert kept == "x" * example_executor.OUTPUT_LIMIT
    assert "200001 bytes" in note


async def test_big_code_is_accepted(make_client: Callable[..., httpx.AsyncClient]):
    code = "x = 1\n" * 50000 + "print(x)\n"  # 300 KB: more than one argv string may hold
    result = (await execute(make_client(), code)).json()
    assert result == {"status": "success", "output": "1\n", "exit_code": 0}


# --- protocol -----------------------------------------------------------------------


@pytest.mark.parametrize("language", ["javascript", "bash", ""])
async def test_another_language_is_refused_with_400(
    make_client: Callable[..., httpx.AsyncClient], language: str
):
    answer = await execute(make_client(), "console.log(1)", language=language)
    assert answer.status_code == 400
    assert "language" in answer.json()["error"]


@pytest.mark.parametrize(
    "body", [b"{not json", b"[1]", b'{"language": "python"}', b'{"code": ""}', b'{"code": 5}']
)
async def test_a_malformed_request_is_refused_with_400(
    make_client: Callable[..., httpx.AsyncClient], body: bytes
):
    answer = await make_client().post("/execute", content=body)
    assert answer.status_code == 400
    assert answer.json()["error"]


async def test_language_defaults_to_python(make_client: Callable[..., httpx.AsyncClient]):
    answer = await make_client().post("/execute", json={"code": "print(1)"})
    assert answer.json()["output"] == "1\n"


async def test_health(make_client: Callable[..., httpx.AsyncClient]):
    answer = await make_client(concurrency=3).get("/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "running": 0, "waiting": 0, "concurrency": 3}


async def test_the_concurrency_limit_is_respected(make_client: Callable[..., httpx.AsyncClient]):
    client = make_client(concurrency=2)
    code = "import time\nstart = time.time()\ntime.sleep(0.6)\nprint(start, time.time())\n"
    runs = [asyncio.create_task(execute(client, code)) for _ in range(4)]

    async def two_running_two_waiting() -> Any:
        health = (await client.get("/health")).json()
        return health["running"] == 2 and health["waiting"] == 2

    await wait_for(two_running_two_waiting, timeout=10)
    answers = await asyncio.gather(*runs)
    spans = [tuple(map(float, a.json()["output"].split())) for a in answers]
    for start, _ in spans:  # at any start, at most 2 runs (this one included) are under way
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    assert max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans) == 2
    assert (await client.get("/health")).json()["running"] == 0


# --- Idempotency-Key -------------------------------------------------------------------


async def test_a_repeated_idempotency_key_runs_the_code_once(
    make_client: Callable[..., httpx.AsyncClient], tmp_path: Path
):
    """The service's client re-sends a request (same key, same bytes) when a reused
    connection broke: the repeat waits for the run under way, or gets its answer, and
    the code runs once. Another key, or the same key with other code, runs again."""
    client = make_client()
    runs = tmp_path / "runs"
    code = (
        f"import time, uuid\nopen({str(runs)!r}, 'a').write('run\\n')\n"
        "time.sleep(0.5)\nprint(uuid.uuid4())\n"
    )

    async def send(key: str, attempt: int = 1, source: str = code) -> httpx.Response:
        body = {"eval_id": "e1", "code": source, "attempt": attempt, "metadata": {}}
        return await client.post(
            "/execute", content=orjson.dumps(body), headers={"Idempotency-Key": key}
        )

    first = asyncio.create_task(send("e1:1"))
    await wait_for(lambda: asyncio.sleep(0, runs.exists()))
    during = await send("e1:1")  # arrives while the first run is going
    after = await send("e1:1")  # arrives once it is over
    answer = (await first).json()
    assert answer["status"] == "success" and len(answer["output"]) == 37
    assert during.json() == after.json() == answer
    assert during.headers["idempotent-replayed"] == after.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in (await first).headers
    assert runs.read_text() == "run\n"
    retry = await send("e1:2", attempt=2)  # a retry is a new attempt with a new key
    assert retry.json()["output"] != answer["output"] and runs.read_text() == "run\n" * 2
    other = await send("e1:1", source=code + "print()\n")  # same key, other code: a new task
    assert other.json()["output"] != answer["output"] and runs.read_text() == "run\n" * 3


async def test_replays_are_bounded_in_number_and_age():
    now = [0.0]
    replays = Replays(max_entries=2, max_age=60.0, clock=lambda: now[0])
    count = 0

    async def run() -> dict[str, Any]:
        nonlocal count
        count += 1
        return {"run": count}

    async def answer(key: str) -> tuple[Any, bool]:
        return await replays.answer(key, b"{}", run)

    assert [await answer(k) for k in ("a", "b", "a")] == [
        ({"run": 1}, False),
        ({"run": 2}, False),
        ({"run": 1}, True),
    ]
    assert await answer("c") == ({"run": 3}, False)  # a third answer: the oldest (a) goes
    assert await answer("a") == ({"run": 4}, False)
    now[0] = 61.0  # older than max_age: every kept answer goes
    assert await answer("c") == ({"run": 5}, False)
    assert await replays.answer(None, b"{}", run) == ({"run": 6}, False)  # no key: no replay
    assert await replays.answer(None, b"{}", run) == ({"run": 7}, False)


async def test_a_repeat_of_a_run_that_ended_without_an_answer_gets_none():
    replays = Replays()
    started = asyncio.Event()

    async def broken() -> dict[str, Any]:
        started.set()
        await asyncio.sleep(0.05)
        raise OSError("fork failed")

    first = asyncio.create_task(replays.answer("k", b"{}", broken))
    await started.wait()
    assert await replays.answer("k", b"{}", broken) == (None, True)  # the caller answers 503
    with pytest.raises(OSError):
        await first
    assert not replays.entries and not replays.running


# --- the command --------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "example.com"])
def test_binding_beyond_loopback_is_refused_without_allow_remote(host: str):
    result = run("example-executor", "--host", host, "--port", str(free_port()))
    assert result.returncode == 2, result
    line = one_line(result.stderr)
    assert "--allow-remote" in line and "NOT a sandbox" in line
    assert result.stdout == ""


def test_a_bad_limit_setting_exits_2():
    result = run("example-executor", env={"EXAMPLE_TIMEOUT": "soon"})
    assert result.returncode == 2, result
    assert "EXAMPLE_TIMEOUT" in one_line(result.stderr)


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("EXAMPLE_CONCURRENCY", "0"),
        ("EXAMPLE_MEMORY_MB", "0"),
        ("EXAMPLE_REPLAY_ENTRIES", "-1"),
        ("EXAMPLE_REPLAY_SECONDS", "soon"),
    ],
)
def test_limits_from_env_are_validated(name: str, bad: str):
    with pytest.raises(ValueError, match=name):
        Limits.from_env({name: bad})
    assert Limits.from_env({}) == Limits()
    assert Limits.from_env({"EXAMPLE_TIMEOUT": "2.5"}).timeout == 2.5
    assert Limits.from_env({"EXAMPLE_REPLAY_SECONDS": "30"}).replay_seconds == 30


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_command_serves_the_protocol_over_http(children: list[subprocess.Popen[bytes]]):
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "EXAMPLE_TIMEOUT": "5"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "example-executor", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children.append(proc)
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    answer = httpx.post(f"http://127.0.0.1:{port}/execute", json={"code": "print(6*7)"}, timeout=10)
    assert answer.json() == {"status": "success", "output": "42\n", "exit_code": 0}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


# --- deployment ---------------------------------------------------------------------


def test_compose_file_has_redis_two_replicas_and_the_executor():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    redis = services["redis"]
    assert "healthcheck" in redis
    assert any(v.endswith(":/data") for v in redis["volumes"])
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data" in compose["volumes"]
    for name in ("taskstream", "taskstream-2"):
        replica = services[name]
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "executor" in replica["depends_on"]
        assert replica["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert replica["environment"]["EXECUTOR_URLS"] == "${EXECUTOR_URLS:-http://executor:8083}"
    assert services["taskstream"]["ports"] != services["taskstream-2"]["ports"]
    executor = services["executor"]
    assert executor["build"] == services["taskstream"]["build"]
    assert executor["command"] == [
        "python",
        "-m",
        "app",
        "example-executor",
        "--host",
        "0.0.0.0",
        "--allow-remote",
    ]
    assert "8083" in " ".join(executor["healthcheck"]["test"])
    assert "ports" not in executor  # reachable from the replicas only


def test_dockerfile_is_slim_non_root_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert "\nARG BASE=python:3.11-slim\n" in text
    assert "\nUSER 10001:10001\n" in text  # numeric: runAsNonRoot can check it
    assert "\nHEALTHCHECK " in text
    assert "HOST=0.0.0.0" in text
