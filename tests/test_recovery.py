"""Crash, restart and outage recovery, with the service run as a user runs it:
`python -m app serve` in a subprocess, stopped with SIGKILL or SIGTERM.

The executors are loopback servers in the test's event loop, so every blocking step
(starting a service, waiting for it to exit) runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.responses import JSONResponse, Response

from app.engine.queue import Queue
from app.redis_server import RedisServer, find_binary
from tests.conftest import Process, StubExecutor, wait_for

MakeExecutor = Callable[..., Awaitable[StubExecutor]]
Spawn = Callable[..., Process]


# --- helpers ---------------------------------------------------------------------------------


async def start(spawn_service: Spawn, env: dict[str, str]) -> Process:
    """Start a service without blocking the loop that serves the executors."""
    return await asyncio.to_thread(spawn_service, env)


async def exit_code(process: Process, timeout: float = 15.0) -> int:
    return await asyncio.to_thread(process.proc.wait, timeout)


@contextlib.asynccontextmanager
async def api(process: Process) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=process.url, timeout=10) as http:
        yield http


async def enqueue(http: httpx.AsyncClient, eval_id: str, **fields: Any) -> dict[str, Any]:
    response = await http.post("/tasks", json={"eval_id": eval_id, "code": "x", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def view(http: httpx.AsyncClient, eval_id: str) -> dict[str, Any]:
    response = await http.get(f"/tasks/{eval_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def reaches(
    http: httpx.AsyncClient, eval_id: str, state: str, timeout: float = 10.0
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        response = await http.get(f"/tasks/{eval_id}")
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body if body["status"] == state else None

    try:
        found: dict[str, Any] = await wait_for(check, timeout)
    except AssertionError:
        last = (await http.get(f"/tasks/{eval_id}")).text
        raise AssertionError(f"{eval_id} not {state} within {timeout}s: {last}") from None
    return found


async def logged(process: Process, event: str, timeout: float = 10.0) -> None:
    async def check() -> bool:
        return f'"event":"{event}"' in process.output()

    try:
        await wait_for(check, timeout)
    except AssertionError:
        raise AssertionError(f"no {event} log line:\n{process.output()}") from None


def log_lines(process: Process) -> list[dict[str, Any]]:
    lines = []
    for raw in process.output().splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            line = orjson.loads(raw)
            if isinstance(line, dict):
                lines.append(line)
    return lines


def count_events(process: Process, event: str) -> int:
    return sum(1 for line in log_lines(process) if line.get("event") == event)


def success(body: dict[str, Any]) -> dict[str, Any]:
    return {"status": "success", "output": f"ran {body['eval_id']}", "exit_code": 0}


async def _true(value: object) -> bool:
    return bool(value)


def proc_state(pid: int) -> str | None:
    """The /proc state letter of a process, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def redis_children(data_dir: Path, parent: int | None = None) -> list[int]:
    """Live redis-server processes working in `data_dir` (their cwd), of `parent` if given."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        ours = parent is None or int(ppid) == parent
        here = Path(cwd) == data_dir.absolute()
        if comm.startswith("redis-server") and state != "Z" and ours and here:
            found.append(int(entry.name))
    return found


def aof_holds(data_dir: Path, needle: bytes) -> bool:
    """Whether Redis has written `needle` to its AOF (appendonly.aof, or appendonlydir/ on 7)."""
    for path in data_dir.rglob("*.aof"):
        with contextlib.suppress(OSError):
            if needle in path.read_bytes():
                return True
    return False


@pytest.fixture
def dedicated_redis(tmp_path: Path) -> Iterator[Callable[[bool], RedisServer]]:
    """A redis-server of the test's own, on a loopback port, which the test may kill."""
    servers: list[RedisServer] = []
    binary = find_binary(prefer=os.environ.get("TASKSTREAM_TEST_REDIS", "path"))

    def make(appendonly: bool) -> RedisServer:
        # appendfsync always: what is killed is Redis, and what is checked is that the
        # service loses nothing Redis kept. Under `everysec` Redis itself may drop replied
        # writes on SIGKILL when the disk is slow (it postpones its AOF writes up to 2 s
        # while a background fsync runs; see tests/faultrig.py RedisServers).
        server = RedisServer(
            tmp_path / f"r{len(servers)}",
            appendonly=appendonly,
            appendfsync="always",
            binary=binary,
            unix_socket=False,
        )
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


# --- crash recovery ----------------------------------------------------------------------


async def test_sigkilled_service_task_is_delivered_again_after_the_lease(
    make_executor: MakeExecutor, spawn_service: Spawn, redis_url: str, queue: str
):
    release = asyncio.Event()

    async def handler(body: dict[str, Any]) -> Response:
        if body["attempt"] == 1:  # the first process dies while this call is open
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 10)
        return JSONResponse(success(body))

    executor = await make_executor(handler)
    env = {
        "REDIS_URL": redis_url,
        "QUEUE_NAME": queue,
        "EXECUTOR_URLS": executor.url,
        "LEASE_TIMEOUT": "1",
        "HEALTH_INTERVAL": "0.5",
    }
    try:
        first = await start(spawn_service, env)
        async with api(first) as http:
            await enqueue(http, "crash")
            await wait_for(lambda: _true(executor.calls))
        first.proc.kill()
        assert await exit_code(first) == -signal.SIGKILL

        second = await start(spawn_service, env)
        async with api(second) as http:
            assert (await view(http, "crash"))["status"] in ("processing", "completed")
            done = await reaches(http, "crash", "completed")
        assert done["attempts"] == 2
        assert done["result"] == success({"eval_id": "crash"})
        assert [(c["eval_id"], c["attempt"]) for c in executor.calls] == [
            ("crash", 1),
            ("crash", 2),
        ]
        attempts = [
            line
            for line in log_lines(second)
            if line.get("event") == "task_attempt" and line.get("eval_id") == "crash"
        ]
        assert len(attempts) == 1 and attempts[0]["outcome"] == "success", attempts
        assert attempts[0]["attempt"] == 2
    finally:
        release.set()


# --- embedded Redis ---------------------------------------------------------------------


# A graceful stop on SIGTERM exits 0, as docs/operations.md promises.
GRACEFUL = (0,)

PLAN = [("a", "default"), ("b", "high"), ("c", "low"), ("d", "default")]
POSITIONS = {"a": 2, "b": 1, "c": 4, "d": 3}


async def enqueue_plan(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    for eval_id, priority in PLAN:
        await enqueue(http, eval_id, priority=priority)
    await enqueue(http, "later", delay=3600)
    views = {eval_id: await view(http, eval_id) for eval_id, _ in PLAN}
    assert {e: v["position"] for e, v in views.items()} == POSITIONS
    views["later"] = await view(http, "later")
    assert views["later"]["status"] == "scheduled"
    return views


async def assert_plan_kept(http: httpx.AsyncClient, before: dict[str, dict[str, Any]]) -> None:
    for eval_id, old in before.items():
        new = await view(http, eval_id)
        assert new == old, (eval_id, old, new)
    for eval_id, _ in PLAN:
        assert (await view(http, eval_id))["status"] == "queued"


async def test_embedded_redis_keeps_queued_tasks_across_a_sigterm_restart(
    spawn_service: Spawn, tmp_path: Path, queue: str
):
    env = {"DATA_DIR": str(tmp_path / "data"), "QUEUE_NAME": queue}
    first = await start(spawn_service, env)
    async with api(first) as http:
        before = await enqueue_plan(http)
    assert len(redis_children(tmp_path / "data", first.proc.pid)) == 1
    first.proc.terminate()
    assert await exit_code(first) in GRACEFUL, first.output()
    assert count_events(first, "service_stopped") == 1, first.output()

    async def stopped() -> bool:
        return not redis_children(tmp_path / "data")

    await wait_for(stopped, timeout=5.0)

    second = await start(spawn_service, env)
    async with api(second) as http:
        await assert_plan_kept(http, before)


async def test_embedded_redis_dies_with_a_sigkilled_service_and_keeps_the_tasks(
    spawn_service: Spawn, tmp_path: Path, queue: str
):
    data = tmp_path / "data"
    env = {"DATA_DIR": str(data), "QUEUE_NAME": queue}
    first = await start(spawn_service, env)
    async with api(first) as http:
        before = await enqueue_plan(http)
    children = redis_children(data, first.proc.pid)
    assert len(children) == 1, children
    child = children[0]

    first.proc.kill()
    assert await exit_code(first) == -signal.SIGKILL

    async def gone() -> bool:
        return proc_state(child) in (None, "Z")

    await wait_for(gone, timeout=5.0)  # no second server left writing the same AOF

    second = await start(spawn_service, env)
    async with api(second) as http:
        await assert_plan_kept(http, before)


# --- graceful shutdown ------------------------------------------------------------------


async def test_sigterm_lets_the_task_in_flight_finish(
    make_executor: MakeExecutor,
    spawn_service: Spawn,
    redis_url: str,
    queue: str,
    streams: Queue,
):
    async def handler(body: dict[str, Any]) -> Response:
        await asyncio.sleep(1.0)  # the simulated work
        return JSONResponse(success(body))

    executor = await make_executor(handler)
    env = {
        "REDIS_URL": redis_url,
        "QUEUE_NAME": queue,
        "EXECUTOR_URLS": executor.url,
        "SHUTDOWN_GRACE": "5",
    }
    process = await start(spawn_service, env)
    async with api(process) as http:
        await enqueue(http, "in-flight")
        await wait_for(lambda: _true(executor.calls))
    started = time.monotonic()
    process.proc.terminate()
    assert await exit_code(process) in GRACEFUL, process.output()
    assert time.monotonic() - started < 5.0
    done = await streams.get("in-flight")
    assert done["status"] == "completed", (done, process.output())
    assert done["attempts"] == 1
    assert done["result"] == success({"eval_id": "in-flight"})
    assert len(executor.calls) == 1
    assert count_events(process, "consumer_draining") == 1
    assert count_events(process, "service_stopped") == 1


async def test_sigterm_exits_with_status_0(spawn_service: Spawn, tmp_path: Path, queue: str):
    process = await start(spawn_service, {"DATA_DIR": str(tmp_path / "data"), "QUEUE_NAME": queue})
    process.proc.terminate()
    assert await exit_code(process) == 0, process.output()


# --- Redis outages --------------------------------------------------------------------------


async def test_redis_killed_and_restarted_with_its_aof(
    make_executor: MakeExecutor,
    spawn_service: Spawn,
    dedicated_redis: Callable[[bool], RedisServer],
    queue: str,
):
    """SIGKILL Redis (a crash, not a clean stop). Redis writes every command to its AOF file
    at once and only fsyncs once a second (everysec); the OS keeps what was written when
    the process dies, so once a task is in the file it survives the kill: the test waits
    for that instead of sleeping."""
    server = dedicated_redis(True)
    executor = await make_executor()
    executor.healthy = False  # tasks wait queued until after the outage
    env = {
        "REDIS_URL": server.url,
        "QUEUE_NAME": queue,
        "EXECUTOR_URLS": executor.url,
        "HEALTH_INTERVAL": "0.2",
    }
    process = await start(spawn_service, env)
    ids = [f"before-{i}" for i in range(3)]
    async with api(process) as http:
        for eval_id in ids:
            await enqueue(http, eval_id)

        async def persisted() -> bool:
            return aof_holds(server.data_dir, ids[-1].encode())

        await wait_for(persisted, timeout=5.0)
        server.kill()

        assert (await http.get("/livez")).status_code == 200
        assert (await http.get("/health")).status_code == 503
        refused = await http.post("/tasks", json={"eval_id": "during", "code": "x"})
        assert refused.status_code == 503
        executor.healthy = True  # the consumer now tries to claim and finds Redis gone
        await logged(process, "redis_unavailable")
        assert process.proc.poll() is None

        await asyncio.to_thread(server.start)
        for eval_id in ids:
            done = await reaches(http, eval_id, "completed")
            assert done["attempts"] == 1
        await enqueue(http, "after")
        await reaches(http, "after", "completed")
        assert (await http.get("/health")).status_code == 200
    assert sorted(c["eval_id"] for c in executor.calls) == sorted([*ids, "after"])
    assert count_events(process, "redis_unavailable") == 1
    assert count_events(process, "redis_reconnected") == 1
    assert count_events(process, "consumer_group_recreated") == 0  # the AOF kept the group


async def test_redis_restarted_empty_recreates_the_group_and_consumes_new_tasks(
    make_executor: MakeExecutor,
    spawn_service: Spawn,
    dedicated_redis: Callable[[bool], RedisServer],
    queue: str,
):
    server = dedicated_redis(False)
    executor = await make_executor()
    env = {
        "REDIS_URL": server.url,
        "QUEUE_NAME": queue,
        "EXECUTOR_URLS": executor.url,
        "HEALTH_INTERVAL": "0.2",
    }
    process = await start(spawn_service, env)
    async with api(process) as http:
        await enqueue(http, "first")
        await reaches(http, "first", "completed")
        server.kill()
        await logged(process, "redis_unavailable")
        assert (await http.get("/livez")).status_code == 200

        await asyncio.to_thread(server.start)  # no AOF: it comes back empty
        await logged(process, "consumer_group_recreated")
        assert (await http.get("/tasks/first")).status_code == 404
        for i in range(3):
            await enqueue(http, f"after-{i}")
        for i in range(3):
            done = await reaches(http, f"after-{i}", "completed")
            assert done["attempts"] == 1
    assert count_events(process, "consumer_group_recreated") == 1
    assert count_events(process, "redis_reconnected") == 1
    assert process.proc.poll() is None
