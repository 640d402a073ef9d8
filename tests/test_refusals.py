"""A Redis that answers but refuses writes: out of memory (maxmemory + noeviction, filled),
NOREPLICAS (min-replicas-to-write 1), READONLY (the service's primary demoted to a replica,
as a failover does) and MISCONF (a failed BGSAVE with stop-writes-on-bgsave-error).

For each, on real servers the test starts: every route that writes answers 503 JSON naming
the cause, `/health` answers 503 "refusing writes", reads still work, nothing is written,
and once the condition is lifted the same requests succeed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import OutOfMemoryError

from app.engine import admin as engine_admin
from app.engine import views
from app.engine.client import connect, redis_failure
from app.engine.engine import Engine
from app.errors import Unavailable, WritesRefused
from app.models import TaskRequest
from app.redis_server import RedisServer, find_binary
from tests.conftest import ROOT, Service, wait_for

CAUSES = {
    "oom": "out of memory",
    "noreplicas": "not enough replicas",
    "readonly": "read-only replica",
    "misconf": "cannot persist to disk",
}


def _server(path: Path) -> RedisServer:
    binary = find_binary(prefer=os.environ.get("TASKSTREAM_TEST_REDIS", "path"))
    server = RedisServer(path, appendonly=False, binary=binary, unix_socket=False)
    server.start()
    return server


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[RedisServer]:
    """The service's Redis, which the test makes refuse writes."""
    server = _server(tmp_path / "victim")
    yield server
    server.stop()


@pytest.fixture
def redis_url(victim: RedisServer) -> str:  # make_service and client use the victim
    return victim.url


@pytest.fixture
async def admin(victim: RedisServer) -> AsyncIterator[Any]:
    client = connect(victim.url)
    yield client
    await client.aclose()


# --- the faults: apply, yield, lift ---------------------------------------------------


@contextlib.asynccontextmanager
async def out_of_memory(admin: Any, **_: Any) -> AsyncIterator[None]:
    await admin.config_set("maxmemory-policy", "noeviction")
    used = int((await admin.info("memory"))["used_memory"])
    await admin.config_set("maxmemory", used + 2_000_000)
    filled = 0
    with pytest.raises(OutOfMemoryError):
        while filled < 1000:
            await admin.set(f"fill:{filled}", b"x" * 100_000)
            filled += 1
    # Well below what is used: a small write must not slip into what freeing the refused
    # SET's query buffer gave back.
    await admin.config_set("maxmemory", used + 1_000_000)
    try:
        yield
    finally:
        await admin.unlink(*(f"fill:{i}" for i in range(filled + 1)))
        await admin.config_set("maxmemory", 0)


@contextlib.asynccontextmanager
async def no_replicas(admin: Any, **_: Any) -> AsyncIterator[None]:
    await admin.config_set("min-replicas-to-write", 1)
    try:
        yield
    finally:
        await admin.config_set("min-replicas-to-write", 0)


@contextlib.asynccontextmanager
async def demoted(admin: Any, victim: RedisServer, tmp_path: Path) -> AsyncIterator[None]:
    """A failover: a copy of the victim is promoted and the victim becomes its replica, so
    it keeps its data but answers READONLY."""
    other = _server(tmp_path / "promoted")
    promoted: Any = connect(other.url)
    try:
        for client in (admin, promoted):
            await client.config_set("repl-diskless-sync-delay", 0)
        await _replicate(promoted, victim.port)
        await promoted.execute_command("REPLICAOF", "NO", "ONE")
        await _replicate(admin, other.port)
        yield
    finally:
        await admin.execute_command("REPLICAOF", "NO", "ONE")
        await promoted.aclose()
        other.stop()


async def _replicate(client: Any, port: int) -> None:
    await client.execute_command("REPLICAOF", "127.0.0.1", port)

    async def synced() -> bool:
        with contextlib.suppress(Exception):  # LOADING while the copy loads
            info = await client.info("replication")
            return bool(info.get("master_link_status") == "up")
        return False

    await wait_for(synced, timeout=20)


@contextlib.asynccontextmanager
async def disk_error(admin: Any, victim: RedisServer, **_: Any) -> AsyncIterator[None]:
    """A BGSAVE that fails (its directory is gone: as root, chmod would not stop it)."""
    await admin.config_set("save", "3600 1")  # MISCONF needs save points configured
    await admin.config_set("stop-writes-on-bgsave-error", "yes")
    shutil.rmtree(victim.data_dir)
    await admin.bgsave()

    async def failed() -> bool:
        info = await admin.info("persistence")
        return bool(info["rdb_bgsave_in_progress"] == 0 and info["rdb_last_bgsave_status"] == "err")

    try:
        await wait_for(failed)
        yield
    finally:
        victim.data_dir.mkdir(parents=True, exist_ok=True)
        await admin.config_set("stop-writes-on-bgsave-error", "no")
        await admin.config_set("save", "")


FAULTS: dict[str, Callable[..., contextlib.AbstractAsyncContextManager[None]]] = {
    "oom": out_of_memory,
    "noreplicas": no_replicas,
    "readonly": demoted,
    "misconf": disk_error,
}


# --- the routes -------------------------------------------------------------------------

Request = tuple[str, str, dict[str, Any]]
SVC = "refusals"
EAS = {"Authorization": "token"}


async def prepare(service: Service, queue: str) -> None:
    """Tasks in each state the write routes act on: p1, p2 processing (pulled), d1, d2 in
    the DLQ, c1, c2 queued; two PAI-EAS items."""
    http = service.http
    for eval_id in ("p1", "p2", "d1", "d2", "c1", "c2"):
        answer = await http.post("/tasks", json={"eval_id": eval_id, "code": "x"})
        assert answer.status_code == 201, answer.text
    for expected in ("p1", "p2", "d1", "d2"):
        assert (await http.get("/tasks/next")).json()["eval_id"] == expected
    for dead in ("d1", "d2"):
        answer = await http.post(f"/tasks/{dead}/fail", json={"error": "boom", "retry": False})
        assert answer.json()["status"] == "failed"
    for body in (b"a", b"b"):
        assert (await http.post(f"/api/predict/{SVC}", content=body, headers=EAS)).is_success


def writes(queue: str) -> list[tuple[Request, bool]]:
    """Every route that writes, in an order in which each succeeds once Redis takes writes
    again; with whether Redis refuses it when out of memory too. Out of memory, Redis
    refuses what adds data (a script's first write decides) and lets through what settles
    or removes existing work, so the queue still drains and frees memory."""
    return [
        (("POST", "/tasks", {"json": {"eval_id": "n1", "code": "x"}}), True),
        (("POST", "/tasks/batch", {"json": {"tasks": [{"eval_id": "n2", "code": "x"}]}}), True),
        (("POST", "/tasks/p1/complete", {"json": {"result": 1}}), False),
        (("POST", "/tasks/p2/fail", {"json": {"error": "e", "retry": False}}), False),
        (("POST", "/tasks/c1/cancel", {}), False),
        (("POST", "/api/eval/c2/cancel", {}), False),
        (("POST", "/dlq/d1/retry", {}), False),
        (("POST", f"/queues/{queue}/pause", {}), True),
        (("POST", f"/queues/{queue}/resume", {}), True),
        (("POST", f"/api/predict/{SVC}", {"content": b"c", "headers": EAS}), True),
        (("GET", "/tasks/next", {}), False),
        (("GET", f"/api/predict/{SVC}?_index_=1&_length_=1", {"headers": EAS}), False),
        (("PUT", f"/api/predict/{SVC}?_indexes_=2", {"headers": EAS}), False),
        (("DELETE", f"/api/predict/{SVC}?_indexes_=2", {"headers": EAS}), False),
        (("DELETE", "/dlq/d2", {}), False),
        (("DELETE", "/dlq", {}), False),
        (("DELETE", "/tasks", {}), False),
    ]


async def send(service: Service, request: Request) -> Any:
    method, path, kwargs = request
    return await service.http.request(method, path, **kwargs)


def assert_refused(response: Any, cause: str, what: Any) -> None:
    assert response.status_code == 503, (what, response.status_code, response.text)
    assert response.headers["content-type"] == "application/json", what
    error = response.json()["error"]
    assert error.startswith("redis refusing writes: ") and cause in error, (what, error)


async def snapshot(client: Any, queue: str) -> dict[bytes, bytes]:
    """Every key of the test's queue and PAI-EAS service, dumped (the probe key aside)."""
    found: dict[bytes, bytes] = {}
    for pattern in (f"ts:{{{queue}}}:*", f"ts:{{eas:{SVC}}}:*"):
        async for key in client.scan_iter(match=pattern, count=1000):
            if b":probe:" not in key:
                found[key] = await client.dump(key)
    return found


async def refused_health(service: Service) -> Any:
    response = await service.http.get("/health")
    return response if response.json().get("redis") == "refusing writes" else None


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_redis_refusing_writes_answers_503_naming_the_cause(
    fault: str,
    make_service: Callable[..., Awaitable[Service]],
    admin: Any,
    victim: RedisServer,
    queue: str,
    tmp_path: Path,
) -> None:
    service = await make_service()
    await prepare(service, queue)
    cause = CAUSES[fault]
    refused = [req for req, even_oom in writes(queue) if even_oom or fault != "oom"]
    async with FAULTS[fault](admin=admin, victim=victim, tmp_path=tmp_path):
        health = await wait_for(lambda: refused_health(service))  # pooled connections settle
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy" and cause in health.json()["error"]
        assert (await service.http.get("/readyz")).status_code == 200  # see readyz()
        before = await snapshot(admin, queue)
        for request in refused:
            assert_refused(await send(service, request), cause, request)
        assert await snapshot(admin, queue) == before  # nothing (partly) written
        record = await service.http.get("/tasks/p1")
        assert record.status_code == 200 and record.json()["status"] == "processing"
        record = await service.http.get("/tasks/c2")  # queued: its ETA's sample is a write
        assert record.status_code == 200 and record.json()["status"] == "queued"
        page = await service.http.get("/tasks", params={"state": "queued"})
        assert page.status_code == 200 and "c2" in page.text
        for request in [req for req, _ in writes(queue) if req not in refused]:
            response = await send(service, request)  # out of memory: Redis lets it through
            assert response.is_success or response.status_code == 404, (request, response.text)
    await wait_for(lambda: _healthy(service))
    for request in refused:  # the same requests, now taken
        response = await send(service, request)
        assert response.is_success, (request, response.text)
        assert "error" not in response.text, (request, response.text)


async def _healthy(service: Service) -> bool:
    return bool((await service.http.get("/health")).status_code == 200)


async def test_write_refusals_are_classified_inside_scripts_and_pipelines(
    admin: Any, settings: Any
) -> None:
    """The engine's own view: a script's refusal (6.2 wraps it in "Error running script"),
    a pipeline's and a plain command's all become WritesRefused naming the cause."""
    streams = Engine(admin, settings).default
    async with no_replicas(admin):
        for attempt in (
            lambda: engine_admin.set_paused(streams, True),  # a MULTI pipeline
            lambda: streams.enqueue(TaskRequest.parse({"code": "x"})),  # a script
            lambda: views.health(streams),  # the probe in a pipeline
        ):
            with pytest.raises(WritesRefused, match="not enough replicas"):
                await attempt()
        with pytest.raises(WritesRefused, match=r"\(NOREPLICAS Not enough good replicas"):
            try:
                await admin.set("k", "v")
            except Exception as exc:
                failure = redis_failure(exc)
                assert failure is not None
                raise failure from exc


def test_bad_arguments_and_wrong_commands_are_no_outage() -> None:
    from redis.exceptions import DataError, ResponseError

    assert redis_failure(DataError("Invalid input of type: 'dict'")) is None
    assert redis_failure(ResponseError("WRONGTYPE Operation against a key")) is None
    wrapped = ResponseError(
        "Error running script (call to f_0123): @user_script:1: @user_script: 1: "
        "-READONLY You can't write against a read only replica."
    )
    refused = redis_failure(wrapped)
    assert isinstance(refused, WritesRefused)
    assert str(refused) == (
        "redis refusing writes: read-only replica "
        "(READONLY You can't write against a read only replica.)"
    )
    loading = redis_failure(ResponseError("LOADING Redis is loading the dataset in memory"))
    assert isinstance(loading, Unavailable) and not isinstance(loading, WritesRefused)
    rethrown = ResponseError(  # claim.lua re-raises what redis.pcall caught
        "user_script:414: NOREPLICAS Not enough good replicas to write. script: 939d7cdc7cfb, "
        "on @user_script:414."
    )
    assert str(redis_failure(rethrown)) == (
        "redis refusing writes: not enough replicas (NOREPLICAS Not enough good replicas to write.)"
    )
    assert isinstance(redis_failure(ConnectionResetError()), Unavailable)


async def test_the_cli_reports_a_refusal_in_one_line(admin: Any, victim: RedisServer) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "REDIS_URL": victim.url, "QUEUE_NAME": "cli"}
    async with no_replicas(admin):
        done = subprocess.run(
            [sys.executable, "-m", "app", "enqueue", "print(1)"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=30,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.decode().strip() == (
        "taskstream: redis refusing writes: not enough replicas "
        "(NOREPLICAS Not enough good replicas to write.)"
    )
