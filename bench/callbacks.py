"""One figure for result callbacks: how fast one process's `CallbackSender` delivers a
backlog of N callbacks (default 5,000) to a loopback receiver, and its CPU per callback.

`python -m bench.callbacks [N]`. Not part of `python -m bench`: it starts its own
redis-server (AOF off, free loopback port) and the stub executor (`bench/stub.py`, whose
`POST /` answers 200 `{}`) in a separate process as the receiver, so the receiver's CPU is
not the sender's. It enqueues N tasks with a `callback_url` and completes them through
`Queue` directly (as a pull worker would; the terminal script appends each callback), then
starts one `CallbackSender` on uvloop (as the service runs) and times it from start until
it has finished all N entries: callbacks/s (wall) and the sender process's CPU
(`time.process_time`) per callback. Repeated `--runs` times (default 3) on fresh backlogs;
`--in-flight K` tries another MAX_IN_FLIGHT.
Logging is configured as the service's (JSON, INFO: one `callback_delivered` line per
callback, part of the cost) and written to `--logs` (default /dev/null).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import uvloop

from app.engine.callbacks import CallbackStream
from app.engine.client import connect
from app.engine.engine import Engine
from app.engine.queue import Queue
from app.logs import configure
from app.models import TaskRequest
from app.redis_server import RedisServer, free_port
from app.runtime import callbacks
from app.runtime.callbacks import CallbackSender
from app.runtime.metrics import Metrics
from app.settings import Settings

BATCH = 500


class Counted:
    """Stands in for Metrics: counts finished targets and says when all N are done."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.delivered = 0
        self.failed = 0
        self.done = asyncio.Event()

    def count_callbacks(self, outcome: str, n: int = 1) -> None:
        if outcome == "delivered":
            self.delivered += n
        else:
            self.failed += n
        if self.delivered + self.failed >= self.n:
            self.done.set()


def start_receiver(port: int) -> subprocess.Popen[bytes]:
    """bench/stub.py in its own process; returns once it listens."""
    cmd = [sys.executable, "-m", "bench.stub", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if b"listening" not in line:
        proc.kill()
        raise RuntimeError(f"receiver did not start: {line!r}")
    return proc


async def prepare(streams: Queue, n: int, url: str, run: int) -> None:
    """N tasks with `url` as callback_url, enqueued, claimed and completed."""
    for start in range(0, n, BATCH):
        reqs = [
            TaskRequest.parse({"eval_id": f"r{run}-{i}", "code": "x", "callback_url": url})
            for i in range(start, min(n, start + BATCH))
        ]
        await streams.engine.enqueue_many(reqs)
        claimed = await streams.claim("bench", len(reqs), 600)
        assert len(claimed.tasks) == len(reqs), len(claimed.tasks)
        result = {"status": "success", "output": "42\n", "exit_code": 0}
        await asyncio.gather(*(streams.complete(t.eval_id, result, t) for t in claimed.tasks))


async def one_run(streams: Queue, n: int, url: str, run: int) -> dict[str, Any]:
    await prepare(streams, n, url, run)
    stream = CallbackStream(streams.engine, streams.keys)
    await stream.ensure_group()
    backlog = await streams.redis.xlen(stream.key)
    assert backlog == n, backlog
    counted = Counted(n)
    sender = CallbackSender(
        stream, streams.settings, f"bench:{run}", metrics=cast(Metrics, counted)
    )
    cpu, wall = time.process_time(), time.perf_counter()
    sender.start()
    try:
        await asyncio.wait_for(counted.done.wait(), timeout=max(60.0, n / 20))
    finally:
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        await sender.stop(1.0)
    assert counted.failed == 0 and counted.delivered == n, (counted.delivered, counted.failed)
    assert await streams.redis.xlen(stream.key) == 0
    return {"per_s": n / wall, "cpu_us": cpu * 1e6 / n, "wall": wall}


async def main(n: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp), appendonly=False, unix_socket=False)
        server.start()
        port = free_port()
        receiver = start_receiver(port)
        url = f"http://127.0.0.1:{port}/?from=bench"  # the stub routes `/` whatever the query
        client = connect(server.url)
        settings = Settings(redis_url=server.url, queue="cbbench")
        try:
            streams = Engine(client, settings).default
            await streams.ensure_groups()
            print(
                f"{n:,} callbacks per run, 1 CallbackSender "
                f"(MAX_IN_FLIGHT={callbacks.MAX_IN_FLIGHT}), uvloop, "
                "receiver bench/stub.py in its own process",
                flush=True,
            )
            for run in range(runs):
                r = await one_run(streams, n, url, run)
                print(
                    f"run {run + 1}: {n:,} callbacks in {r['wall']:.2f} s = {r['per_s']:,.0f}/s, "
                    f"sender CPU {r['cpu_us']:,.0f} µs per callback",
                    flush=True,
                )
        finally:
            await client.aclose()
            receiver.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                receiver.wait(5)
            if receiver.poll() is None:
                receiver.kill()
            server.stop()


if __name__ == "__main__":
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("n", nargs="?", type=int, default=5000, help="callbacks per run")
    args.add_argument("--runs", type=int, default=3)
    args.add_argument("--in-flight", type=int, help="override MAX_IN_FLIGHT (POST slots)")
    args.add_argument("--logs", default=os.devnull, help="where the sender's log lines go")
    ns = args.parse_args()
    logs = open(ns.logs, "w")  # noqa: SIM115 - open for the whole run
    sys.stderr, stderr = logs, sys.stderr
    configure("INFO", "json")  # as the service: JSON lines, to `logs`
    sys.stderr = stderr
    if ns.in_flight:
        callbacks.MAX_IN_FLIGHT = ns.in_flight
    uvloop.run(main(ns.n, ns.runs))
