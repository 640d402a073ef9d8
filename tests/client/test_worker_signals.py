"""`Worker.run()` in a process of its own, stopped by a real SIGTERM / SIGINT: the running
task finishes and is reported, no new task is taken, the process exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskstream_client import Client

SCRIPT = """
import logging, sys, time, pathlib
from taskstream_client import Worker

logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
logging.getLogger("taskstream_client").setLevel(logging.INFO)  # started, stopping

marker = pathlib.Path(sys.argv[2])

def work(job):
    marker.write_text(job.eval_id)
    time.sleep(float(job.code))
    return {"slept": float(job.code)}

Worker(work, base_url=sys.argv[1], concurrency=2).run()
print("stopped cleanly", flush=True)
"""


@pytest.fixture
def spawn_worker(tmp_path: Path):
    procs: list[subprocess.Popen[str]] = []

    def spawn(url: str) -> tuple[subprocess.Popen[str], Path]:
        marker = tmp_path / f"started-{len(procs)}"
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, url, str(marker)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        return proc, marker

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_task_finishes_it_and_takes_no_new_one(live, sync_api, spawn_worker, sig):
    proc, marker = spawn_worker(live.url)
    assert proc.stdout is not None and proc.stdout.readline().startswith("worker started")
    sync_api.enqueue("1.5", eval_id="running")
    wait_until(marker.exists)
    started = time.monotonic()
    proc.send_signal(sig)
    assert proc.stdout is not None and proc.stdout.readline().startswith("stopping on SIG")
    time.sleep(0.3)  # the idle slot's long-poll is gone, and the service has seen it go
    sync_api.enqueue("0", eval_id="after")
    output, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, output
    assert "stopped cleanly" in output
    assert time.monotonic() - started < 10  # the running task's 1.5 s, not a long-poll's 30
    assert sync_api.wait("running", timeout=5).result == {"slept": 1.5}
    after = sync_api.get("after")
    assert (after.status, after.attempts) == ("queued", 0)


def test_an_idle_worker_stops_at_once_and_holds_nothing(live, spawn_worker):
    proc, _ = spawn_worker(live.url)
    with Client(live.url) as api:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("worker started: 2 slot(s)")
        time.sleep(0.3)  # both slots are in their long-poll
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "stopped cleanly" in output
        assert time.monotonic() - started < 10  # not the 30 s of a long-poll
        api.enqueue("0", eval_id="later")
        delivery = api.next()
        assert delivery is not None and (delivery.eval_id, delivery.attempt) == ("later", 1)
