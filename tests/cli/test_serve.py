"""`serve` (cli/serve.py) with `--example-executor`: the example executor as a child process
(its socket bound and handed over, stopped with the service, dying with a killed one),
EXECUTOR_URLS winning over it, and the start failing on a taken port or a bad setting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli.serve import spawn_example
from app.redis_server import free_port
from tests.conftest import ROOT, wait_for, wait_http


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except OSError:
        return True
    return False


def test_spawn_hands_over_a_bound_socket_and_stop_ends_the_child():
    child = spawn_example(0)
    try:
        port = int(child.url.rsplit(":", 1)[1])
        assert httpx.get(f"{child.url}/health", timeout=5).json()["status"] == "ok"
        with pytest.raises(OSError):
            spawn_example(port)  # the port is taken: fails at once
    finally:
        child.stop()
    assert child.process.returncode == 0
    assert refuses(port)


# --- serve --example-executor (make run) ------------------------------------------------


@dataclass
class Spawned:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def spawn_serve(tmp_path: Path, redis_url: str, queue: str) -> Iterator[Callable[..., Spawned]]:
    """`python -m app serve ARGS` on free ports; killed at teardown if still running."""
    spawned: list[Spawned] = []

    def spawn(*args: str, env: dict[str, str] | None = None, ready: bool = True) -> Spawned:
        port = free_port()
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", str(tmp_path)),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "REDIS_URL": redis_url,
            "QUEUE_NAME": queue,
            "HEALTH_INTERVAL": "0.5",
            "SHUTDOWN_GRACE": "2",
            **(env or {}),
        }
        log = tmp_path / f"serve-{len(spawned)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", *args],
                cwd=ROOT,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        service = Spawned(proc, f"http://127.0.0.1:{port}", log)
        spawned.append(service)
        if ready:
            try:
                wait_http(service.url + "/livez", proc, timeout=20)
            except (AssertionError, TimeoutError):
                raise AssertionError(service.output()) from None
        return service

    yield spawn
    for service in spawned:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait()


def executor_port(service: Spawned) -> int:
    executors = httpx.get(service.url + "/status", timeout=5).json()["executors"]
    assert len(executors) == 1
    return int(executors[0]["url"].rsplit(":", 1)[1])


async def completed(http: httpx.AsyncClient, eval_id: str) -> dict[str, Any] | None:
    record = (await http.get(f"/tasks/{eval_id}")).json()
    assert record["status"] in ("queued", "processing", "completed"), record
    return record if record["status"] == "completed" else None


async def test_first_run_print_6_times_7_completes_with_42(spawn_serve: Callable[..., Spawned]):
    service = spawn_serve("--example-executor", "--example-executor-port", "0")
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as http:
        answer = await http.post("/tasks", content=b'{"code": "print(6*7)"}')
        assert answer.status_code == 201, answer.text
        record = await wait_for(lambda: completed(http, answer.json()["eval_id"]), timeout=15)
    assert record["result"] == {"status": "success", "output": "42\n", "exit_code": 0}
    assert record["attempts"] == 1
    port = executor_port(service)
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(15) == 0, service.output()
    assert refuses(port)  # the executor ended with the service


def test_the_example_executor_dies_with_a_killed_service(spawn_serve: Callable[..., Spawned]):
    service = spawn_serve("--example-executor", "--example-executor-port", "0")
    port = executor_port(service)
    service.proc.kill()
    service.proc.wait()
    deadline = time.monotonic() + 10
    while not refuses(port):
        assert time.monotonic() < deadline, "the example executor outlived the service"
        time.sleep(0.05)


def test_executor_urls_wins_over_the_example_executor(spawn_serve: Callable[..., Spawned]):
    mine = f"http://127.0.0.1:{free_port()}"
    service = spawn_serve(
        "--example-executor", "--example-executor-port", "0", env={"EXECUTOR_URLS": mine}
    )
    executors = httpx.get(service.url + "/status", timeout=5).json()["executors"]
    assert [e["url"] for e in executors] == [mine]
    assert "example_executor_skipped" in service.output()


def test_a_taken_example_executor_port_fails_the_start(spawn_serve: Callable[..., Spawned]):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = spawn_serve(
            "--example-executor", "--example-executor-port", str(port), ready=False
        )
        assert service.proc.wait(20) == 1, service.output()
    assert "example executor" in service.output()


def test_a_bad_example_setting_fails_the_start_with_2(spawn_serve: Callable[..., Spawned]):
    service = spawn_serve("--example-executor", env={"EXAMPLE_CONCURRENCY": "lots"}, ready=False)
    assert service.proc.wait(20) == 2, service.output()
    assert "EXAMPLE_CONCURRENCY" in service.output()
