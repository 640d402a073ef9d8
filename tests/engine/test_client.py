"""The engine's client (engine/client.py): an unreachable Redis is `Unavailable` on every
operation, never a hang or a raw redis-py error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster

from app.engine import admin, views
from app.engine.client import SentinelRedis, connect
from app.engine.engine import Engine
from app.engine.queue import Queue
from app.errors import Unavailable
from app.models import Priority, Task
from app.redis_server import free_port
from app.settings import Settings
from tests.engine.conftest import req

# --- Redis unavailable --------------------------------------------------------------


@pytest.fixture
async def dead_streams(settings: Settings) -> AsyncIterator[Queue]:
    client = connect(f"redis://127.0.0.1:{free_port()}/0")
    yield Engine(client, settings).default
    await client.aclose()


async def test_unreachable_redis_is_unavailable(dead_streams: Queue) -> None:
    task = Task("t", "1-0", 1, Priority.DEFAULT, {})
    calls = [
        dead_streams.enqueue(req("x")),
        dead_streams.engine.enqueue_many([req("y")]),
        dead_streams.claim("c1", 1, 30),
        dead_streams.complete("t", {}, task),
        dead_streams.fail("t", "x", task=task),
        dead_streams.renew("c1", [task], 30),
        dead_streams.cancel("t"),
        dead_streams.get("t"),
        views.counts(dead_streams),
        admin.clear(dead_streams.engine),
        dead_streams.engine.ping(),
        dead_streams.ensure_groups(),
        dead_streams.promote(),
        admin.dlq_list(dead_streams),
        admin.dlq_retry(dead_streams, "t"),
        admin.dlq_purge(dead_streams),
    ]
    for call in calls:
        with pytest.raises(Unavailable, match="redis unavailable"):
            await call


# --- topologies -------------------------------------------------------------------------


async def test_the_url_chooses_the_topology_client() -> None:
    """Nothing is connected until used: the clients only say where they will go."""
    sentinel = connect("redis+sentinel://127.0.0.1:1,127.0.0.1:2/prime/2?sentinel_password=s")
    assert isinstance(sentinel, SentinelRedis) and sentinel.sentinels is not None
    assert [c.connection_pool.connection_kwargs["port"] for c in sentinel.sentinels.sentinels] == [
        1,
        2,
    ]
    kwargs = sentinel.connection_pool.connection_kwargs
    assert (kwargs["db"], kwargs["protocol"], kwargs["socket_timeout"]) == (2, 2, 3.0)
    await sentinel.aclose()
    cluster = connect("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001")
    assert isinstance(cluster, RedisCluster)
    assert sorted(n.port for n in cluster.startup_nodes) == [7000, 7001]
    await cluster.aclose()


async def test_a_sentinel_set_nobody_answers_is_unavailable(settings: Settings) -> None:
    url = f"redis+sentinel://127.0.0.1:{free_port()}/nobody"
    engine = Engine.connect(url, settings)
    try:
        with pytest.raises(Unavailable):
            await engine.default.enqueue(req("x"))
    finally:
        await engine.close()
