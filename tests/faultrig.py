"""The rig of the fault tests (tests/test_faults*.py): two `python -m app serve` replicas
on one Redis, the recording executor of tests/totalqueue.py (each replica with its own
base URL, `/r0`, `/r1`, so the executor knows who sent each call), and an enqueue load
through both replicas; `Rig.report` drains and returns the total-queue report.

Short leases (LEASE_TIMEOUT=1) keep the drain after a fault quick. The fixtures stay in
the test modules (a fixture imported from another module is invisible to ruff's checks);
they are thin wrappers of `Rigs` and `RedisServers` here.

Imports: app.redis_server, tests.conftest, tests.totalqueue (and httpx).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.redis_server import RedisServer, find_binary
from tests.conftest import Process, wait_for
from tests.totalqueue import (
    Drained,
    Load,
    Recorder,
    RecordingExecutor,
    Report,
    analyse,
    drain,
    http_lookup,
)

Spawn = Callable[..., Process]  # (env, wait_ready) -> Process, as conftest's spawn_service
CONCURRENCY = 4  # per replica: the most tasks a replica holds, so the repeat bound
REPLICAS = 2
RATE = 100.0  # enqueues per second, spread over the replicas
WORK = 0.05  # seconds the executor takes per task
LEASE = 1.0
FLOW = 20  # enqueues each replica must accept to show it is (again) serving
IN_FLIGHT = REPLICAS * CONCURRENCY  # all the tasks the replicas hold at once


@dataclass
class Rig:
    """Two replicas on one Redis, the recording executor, the load and its recorder."""

    replicas: list[Process]
    executor: RecordingExecutor
    recorder: Recorder = field(default_factory=Recorder)
    load: Load = field(init=False)
    drained: Drained | None = None  # the last drain's records (after `report`)

    def __post_init__(self) -> None:
        self.load = Load(self.recorder, self.urls, rate=RATE, prefix="f")

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.replicas]

    def count(self, url: str, kind: str) -> int:
        return self.load.counts[(url, kind)]

    async def more(self, kind: str, n: int, urls: list[str] | None = None, timeout: float = 20):
        """Wait until each replica in `urls` (default: the load's targets) answered `n` more
        enqueues of `kind` (accepted, indeterminate) than now."""
        urls = list(self.load.targets) if urls is None else urls
        base = {url: self.count(url, kind) for url in urls}

        async def enough() -> bool:
            return all(self.count(url, kind) - base[url] >= n for url in urls)

        try:
            await wait_for(enough, timeout)
        except AssertionError:
            counts = dict(self.load.counts)
            raise AssertionError(f"not {n} more {kind} on each of {urls}: {counts}") from None

    def live(self) -> Process:
        return next(p for p in self.replicas if p.proc.poll() is None)

    async def report(self, timeout: float = 30.0) -> Report:
        """Stop the load, drain through a live replica, analyse."""
        await self.load.stop()
        async with httpx.AsyncClient(base_url=self.live().url, timeout=10) as http:
            self.drained = await drain(
                http_lookup(http), self.recorder.ids(), self.executor, timeout, quiet=LEASE + 0.5
            )
        return analyse(self.recorder, self.executor.executions, self.drained.records)


def replica_env(redis_url: str, queue: str, executor: RecordingExecutor, i: int) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "QUEUE_NAME": queue,
        "EXECUTOR_URLS": f"{executor.url}/r{i}",
        "CONCURRENCY": str(CONCURRENCY),
        "LEASE_TIMEOUT": str(LEASE),
        "HEALTH_INTERVAL": "0.5",
        "SHUTDOWN_GRACE": "1",
    }


async def until_ready(process: Process, timeout: float = 30.0) -> None:
    """Wait until the replica answers /readyz (it reached Redis), without blocking the loop."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=process.url, timeout=2) as http:
        while True:
            if process.proc.poll() is not None:
                raise RuntimeError(f"service exited early:\n{process.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/readyz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"service not ready:\n{process.output()}")
            await asyncio.sleep(0.05)


@dataclass
class Rigs:
    """Makes rigs for one test (its queue) and stops their load and executor at the end.
    `spawn` starts a replica; `make(..., spawns=[...])` may start each one its own way
    (say, under faketime); `env` adds to every replica's environment, `envs` to each
    one's."""

    spawn: Spawn
    queue: str
    made: list[Rig] = field(default_factory=list)

    async def make(
        self,
        redis_url: str,
        decide: Any = None,
        env: dict[str, str] | None = None,
        spawns: Sequence[Spawn] | None = None,
        fields: Any = None,
        envs: Sequence[dict[str, str]] | None = None,
    ) -> Rig:
        executor = await RecordingExecutor(delay=WORK, decide=decide).start()
        spawns = spawns or [self.spawn] * REPLICAS
        envs = envs or [{}] * REPLICAS
        replicas = [
            spawn(
                {**replica_env(redis_url, self.queue, executor, i), **(env or {}), **envs[i]}, False
            )
            for i, spawn in enumerate(spawns)
        ]
        rig = Rig(replicas, executor)
        self.made.append(rig)
        await asyncio.gather(*(until_ready(p) for p in replicas))
        rig.load.fields = fields
        rig.load.start()
        await rig.more("accepted", FLOW)
        return rig

    async def close(self) -> None:
        for rig in self.made:
            await rig.load.stop()
            await rig.executor.stop()


@dataclass
class RedisServers:
    """redis-servers of the test's own on loopback ports, which the test may kill or
    reconfigure (the session's server is shared)."""

    tmp: Path
    started: list[RedisServer] = field(default_factory=list)

    def make(self, appendonly: bool) -> RedisServer:
        # appendfsync always: a test that kills Redis checks that the service loses nothing
        # Redis kept. Under `everysec` Redis itself may drop replied writes on SIGKILL when
        # the disk is slow (it postpones its AOF writes up to 2 s while a background fsync
        # runs): seen once on a loaded VM, none of the 1.7 s before the kill in the AOF.
        server = RedisServer(
            self.tmp / f"redis{len(self.started)}",
            appendonly=appendonly,
            appendfsync="always",
            binary=find_binary(prefer=os.environ.get("TASKSTREAM_TEST_REDIS", "path")),
            unix_socket=False,
        )
        server.start()
        self.started.append(server)
        return server

    def stop(self) -> None:
        for server in self.started:
            server.resume()
            server.stop()


def consumed_since(rig: Rig, moment: float) -> set[str]:
    """The replicas (executor prefixes) that ran a task after `moment`."""
    return {e.via for e in rig.executor.executions if e.at > moment}
