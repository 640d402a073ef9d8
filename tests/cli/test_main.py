"""The command line: `python -m app` (bad configuration, `info`, `--help`) and `main()`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest

from app.__main__ import main
from app.engine.client import connect
from app.engine.engine import Engine
from app.models import TaskRequest
from app.redis_server import free_port
from app.settings import Settings
from tests.conftest import ROOT


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m app ARGS` with a clean environment plus `env`."""
    full_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=20,
    )


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def dead_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


async def fill(redis_url: str, queue: str) -> None:
    """Enqueue 2 high, 1 default, 1 low, 1 scheduled low task on `queue`."""
    client = connect(redis_url)
    try:
        streams = Engine(client, Settings(redis_url=redis_url, queue=queue)).default
        await streams.ensure_groups()
        tasks: list[tuple[str, dict[str, Any]]] = [
            ("h1", {"priority": "high"}),
            ("h2", {"priority": "high"}),
            ("d1", {}),
            ("l1", {"priority": "low"}),
            ("s1", {"priority": "low", "delay": 60}),
        ]
        for eval_id, data in tasks:
            await streams.enqueue(TaskRequest.parse({"eval_id": eval_id, "code": "x", **data}))
    finally:
        await client.aclose()


# --- bad configuration --------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "name", "value"),
    [
        ("serve", "PORT", "abc"),
        ("serve", "PORT", "70000"),
        ("serve", "REDIS_URL", "http://x"),
        ("serve", "REDIS_URL", "redis://host:notaport"),
        ("serve", "EXECUTOR_URLS", "nope"),
        ("serve", "CONCURRENCY", "many"),
        ("serve", "RETRY_JITTER", "maybe"),
        ("serve", "RATE_LIMITS", "evaluations=10/h"),
        ("serve", "QUEUE_MAX_IN_FLIGHT", "evaluations=0"),
        ("serve", "TENANT_WEIGHTS", "acme=heavy"),
        ("serve", "EXECUTOR_URLS", "http://e:1;max=0"),
        ("info", "PORT", "abc"),
        ("info", "REDIS_URL", "http://x"),
    ],
)
def test_a_bad_setting_exits_2_with_one_line_naming_it(command: str, name: str, value: str):
    result = run(command, env={name: value})
    assert result.returncode == 2, result
    line = one_line(result.stderr)
    assert name in line
    assert result.stdout == ""


def test_a_partitioned_queue_with_a_limit_exits_2_naming_both():
    """QUEUE_PARTITIONS with RATE_LIMITS on the same queue: the bad-setting path (exit 2,
    one line naming the queue and why), before anything connects."""
    env = {"QUEUE_PARTITIONS": "gpu=3", "RATE_LIMITS": "gpu=5/s", "REDIS_URL": dead_redis_url()}
    result = run("serve", env=env)
    assert result.returncode == 2, result
    line = one_line(result.stderr)
    assert "QUEUE_PARTITIONS" in line and "gpu" in line and "RATE_LIMITS" in line, line
    assert "hash tag" in line, line
    assert result.stdout == ""


# --- info ---------------------------------------------------------------------------


async def test_info_prints_the_counts(redis_url: str, queue: str):
    await fill(redis_url, queue)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "info",
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), "REDIS_URL": redis_url, "QUEUE_NAME": queue},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    text = out.decode()
    assert queue in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("  ")}
    assert rows["queued"][1] == "4"
    assert (
        "high=2" in rows["queued"] and "default=1" in rows["queued"] and "low=1" in rows["queued"]
    )
    assert rows["scheduled"][1] == "1" and "low=1" in rows["scheduled"]
    assert rows["processing"][1] == "0"
    assert rows["dlq"][1] == "0"


async def test_info_json_is_valid_json_with_the_counts(redis_url: str, queue: str):
    await fill(redis_url, queue)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "info",
        "--json",
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), "REDIS_URL": redis_url, "QUEUE_NAME": queue},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    report = orjson.loads(out)
    assert report["queue"] == queue
    assert report["states"]["queued"] == 4
    assert report["states"]["scheduled"] == 1
    assert report["by_priority"]["queued"] == {"high": 2, "default": 1, "low": 1}
    assert report["dlq"] == 0
    assert report["totals"]["enqueued"] == 5
    assert isinstance(report["consumers"], list)


def test_info_on_an_empty_queue(redis_url: str, queue: str):
    result = run("info", "--json", env={"REDIS_URL": redis_url, "QUEUE_NAME": queue})
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert set(report["states"].values()) == {0}


@pytest.mark.parametrize("as_json", [False, True])
def test_info_against_a_dead_redis_fails_with_one_line(as_json: bool):
    args = ("info", "--json") if as_json else ("info",)
    started = time.monotonic()
    result = run(*args, env={"REDIS_URL": dead_redis_url()})
    assert result.returncode not in (0, 2), result
    assert "redis" in one_line(result.stderr).lower()
    assert result.stdout == ""
    assert time.monotonic() - started < 10


def test_info_against_a_missing_unix_socket_fails_with_one_line(tmp_path: Any):
    result = run("info", env={"REDIS_URL": f"unix://{tmp_path}/none.sock"})
    assert result.returncode not in (0, 2), result
    one_line(result.stderr)


# --- usage --------------------------------------------------------------------------


def test_help_lists_the_commands():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "info" in result.stdout
    info_help = run("info", "--help")
    assert info_help.returncode == 0
    assert "--json" in info_help.stdout


def test_version():
    from app import __version__

    result = run("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


@pytest.mark.parametrize("args", [(), ("frobnicate",), ("info", "--bogus")])
def test_bad_arguments_exit_2(args: tuple[str, ...]):
    result = run(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "usage" in result.stderr.lower()


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "taskstream")
    assert os.access(script, os.X_OK)
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0 and "serve" in result.stdout


# --- main() in-process --------------------------------------------------------------


def test_main_info_json_in_process(
    redis_url: str, queue: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    asyncio.run(fill(redis_url, queue))
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("QUEUE_NAME", queue)
    assert main(["info", "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["queue"] == queue
    assert report["states"]["queued"] == 4


def test_main_bad_setting_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("PORT", "abc")
    assert main(["serve"]) == 2
    captured = capsys.readouterr()
    assert "PORT" in one_line(captured.err)
    assert captured.out == ""


def test_main_info_dead_redis_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("REDIS_URL", dead_redis_url())
    assert main(["info"]) == 1
    one_line(capsys.readouterr().err)
