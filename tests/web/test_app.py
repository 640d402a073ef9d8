"""The app and its runtime through Redis outages (web/app.py): 503 while Redis is away,
recovery, tasks surviving a restart with AOF, prompt answers when Redis hangs.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from app.redis_server import RedisServer, find_binary
from tests.conftest import wait_for
from tests.web.conftest import MakeService, assert_error, enqueue, get, pull

# --- Redis outage -------------------------------------------------------------------


def dedicated_redis(tmp_path: Path, appendonly: bool) -> RedisServer:
    binary = find_binary(prefer=os.environ.get("TASKSTREAM_TEST_REDIS", "path"))
    server = RedisServer(
        tmp_path / "redis", appendonly=appendonly, unix_socket=False, binary=binary
    )
    server.start()
    return server


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[Callable[[bool], RedisServer]]:
    servers: list[RedisServer] = []

    def make(appendonly: bool) -> RedisServer:
        server = dedicated_redis(tmp_path, appendonly)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


async def test_redis_outage_is_503_and_the_service_recovers(
    own_redis: Callable[[bool], RedisServer], make_service: MakeService
):
    server = own_redis(False)
    service = await make_service(redis_url=server.url)
    await enqueue(service, eval_id="before")
    server.kill()

    for i in range(3):
        response = await service.http.post("/tasks", json={"eval_id": f"down-{i}", "code": "1"})
        assert_error(response, 503)
    health = await service.http.get("/health")
    assert_error(health, 503)
    assert health.json()["status"] != "healthy"
    assert_error(await service.http.get("/readyz"), 503)
    assert_error(await service.http.get("/tasks/before"), 503)
    assert_error(await service.http.post("/tasks/batch", json={"tasks": [{"code": "1"}]}), 503)
    assert_error(await service.http.get("/tasks/next", params={"wait": 1}), 503)
    assert_error(await service.http.post("/tasks/before/cancel"), 503)
    assert_error(await service.http.get("/status"), 503)
    assert (await service.http.get("/livez")).status_code == 200
    assert not service.served.job.done()

    server.restart()  # no AOF: it comes back empty

    async def accepts() -> bool:
        response = await service.http.post("/tasks", json={"eval_id": "after", "code": "1"})
        assert response.status_code in (201, 503), response.text
        return response.status_code == 201

    await wait_for(accepts, 8, interval=0.05)

    async def healthy() -> bool:
        return (await service.http.get("/health")).status_code == 200

    await wait_for(healthy, 5, interval=0.05)
    assert (await service.http.get("/readyz")).status_code == 200
    assert (await get(service, "after"))["position"] == 1
    task = await pull(service)
    assert (task["eval_id"], task["attempt"]) == ("after", 1)
    response = await service.http.post("/tasks/after/complete", json={"result": 1})
    assert response.status_code == 200


async def test_tasks_answered_201_survive_a_clean_redis_restart_with_aof(
    own_redis: Callable[[bool], RedisServer], make_service: MakeService
):
    server = own_redis(True)
    service = await make_service(redis_url=server.url)
    await enqueue(service, eval_id="kept-low", priority="low")
    await enqueue(service, eval_id="kept-high", priority="high")
    await enqueue(service, eval_id="kept-later", delay=60)
    server.stop()
    server.start()

    async def readable() -> bool:
        response = await service.http.get("/tasks/kept-high")
        assert response.status_code in (200, 503), response.text
        return response.status_code == 200

    await wait_for(readable, 8, interval=0.05)
    assert (await get(service, "kept-high"))["position"] == 1
    assert (await get(service, "kept-low"))["position"] == 2
    assert (await get(service, "kept-later"))["status"] == "scheduled"
    assert [(await pull(service))["eval_id"] for _ in range(2)] == ["kept-high", "kept-low"]


async def test_health_answers_503_promptly_when_redis_hangs(
    own_redis: Callable[[bool], RedisServer], make_service: MakeService
):
    server = own_redis(False)
    service = await make_service(redis_url=server.url)
    server.pause()  # SIGSTOP: connections stay open, nothing answers (like a partition)
    try:
        response = await service.http.get("/health", timeout=4)
        assert_error(response, 503)
    finally:
        server.resume()
