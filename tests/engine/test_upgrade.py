"""Upgrading a deployment stored under the previous key layout (engine/upgrade.py): a named
queue's keys under the default queue's tag, its records in the default queue's key space,
`deps:` sets, one callbacks stream. The old layout is written here as the previous
version's scripts wrote it; the first service started on it migrates it, and everything
works on: queued, finished and deferred tasks, dependencies (now across hash tags), a
waiting callback. A second migration finds nothing to do."""

from __future__ import annotations

from typing import Any

from app.engine import upgrade
from app.engine.engine import Engine
from app.engine.keys import CALLBACK_GROUP, GROUP, QueueKeys
from tests.conftest import has_state, status_of, wait_for

PAYLOAD = b'{"code": "x"}'


async def old_layout(client: Any, queue: str) -> None:
    """Named queue `gpu` as the previous version stored it: `g1` queued, `g0` completed
    (with its TTL), `c1` deferred on `p` (a task of the default queue, queued), and a
    callback of `g0` waiting in the shared stream."""
    base = f"ts:{{{queue}}}:"
    old = f"{base}q:gpu:"
    for prio in ("high", "default", "low"):
        await client.xgroup_create(f"{old}stream:{prio}", GROUP, id="0", mkstream=True)
        await client.xgroup_create(f"{base}stream:{prio}", GROUP, id="0", mkstream=True)
    entry = await client.xadd(f"{old}stream:default", {"id": "g1", "n": 1, "payload": PAYLOAD})
    record = {"created": 1, "attempts": 0, "q": "gpu", "state": "queued", "prio": "default"}
    await client.hset(f"{base}task:g1", mapping={**record, "seq": 1, "entry": entry})
    done = {**record, "state": "completed", "result": "7", "finished": 2, "cb": "http://x/"}
    await client.hset(f"{base}task:g0", mapping=done)
    await client.expire(f"{base}task:g0", 3600)
    deferred = {**record, "state": "deferred", "deps": '["p"]', "waiting": 1, "payload": PAYLOAD}
    await client.hset(f"{base}task:c1", mapping=deferred)
    counts = {"seq:default": 1, "total:enqueued": 3, "total:completed": 1, "deferred:default": 1}
    await client.hset(f"{old}counters", mapping=counts)
    await client.sadd(f"{base}queues", "gpu")
    p_entry = await client.xadd(f"{base}stream:default", {"id": "p", "n": 1, "payload": PAYLOAD})
    parent = {"created": 1, "attempts": 0, "state": "queued", "prio": "default", "seq": 1}
    await client.hset(f"{base}task:p", mapping={**parent, "entry": p_entry, "kids": 1})
    await client.hset(f"{base}counters", mapping={"seq:default": 1, "total:enqueued": 1})
    await client.sadd(f"{base}deps:p", "c1")
    await client.xgroup_create(f"{base}callbacks", CALLBACK_GROUP, id="0", mkstream=True)
    callback = {"id": "g0", "status": "completed", "result": "7", "attempts": "1"}
    await client.xadd(f"{base}callbacks", {**callback, "finished": "2", "url": "", "queue": "gpu"})


async def test_the_old_layout_is_migrated_and_keeps_working(make_service, client, queue):
    await old_layout(client, queue)
    service = await make_service()  # its start migrates
    gpu = QueueKeys.named(queue, "gpu")
    home = QueueKeys.default(queue)

    view = await status_of(service, "g1")  # by id, no queue named: through the directory
    assert (view["queue"], view["status"], view["position"]) == ("gpu", "queued", 1)
    view = await status_of(service, "g0")
    assert (view["queue"], view["status"], view["result"]) == ("gpu", "completed", 7)
    assert 0 < await client.ttl(gpu.task("g0")) <= 3600
    assert await client.zscore(gpu.expiring, "g0")  # its pointer goes when it expires
    assert (await status_of(service, "c1"))["status"] == "deferred"
    assert await client.hget(home.directory("g1"), "q") == b"gpu"

    task = (await service.http.get("/tasks/next?queue=gpu")).json()
    assert (task["eval_id"], task["attempt"]) == ("g1", 1)
    assert (await service.http.post("/tasks/g1/complete", json={"result": 1})).status_code == 200
    # the dependency now crosses hash tags: the parent's end is relayed
    assert (await service.http.get("/tasks/next")).json()["eval_id"] == "p"
    assert (await service.http.post("/tasks/p/complete", json={"result": 1})).status_code == 200
    await wait_for(has_state(service, "c1", "queued"))
    assert (await service.http.get("/tasks/next?queue=gpu")).json()["eval_id"] == "c1"
    row = (await service.http.get("/status")).json()["queues"]["gpu"]
    assert row["totals"]["completed"] == 2 and row["states"]["deferred"] == 0

    assert not [k async for k in client.scan_iter(match=f"ts:{{{queue}}}:q:*")]
    assert not [k async for k in client.scan_iter(match=f"ts:{{{queue}}}:deps:*")]
    assert await client.xlen(home.callbacks) == 0

    async def called_back() -> bool:  # moved to gpu's stream, where the sender took it
        view = (await status_of(service, "g0")).get("callback", {})
        return bool(view.get("status") == "skipped")

    await wait_for(called_back)  # (no URL, no STORAGE_SERVICE_URL here: skipped)
    assert await client.xlen(gpu.callbacks) == 0
    engine = Engine(client, service.settings)
    assert await upgrade.migrate(engine) is None  # done once: the layout key says so
    await client.delete(home.shared("layout"))
    again = await upgrade.migrate(engine)
    assert again == {"structures": 0, "records": 0, "dependants": 0, "callbacks": 0}


async def test_a_fresh_deployment_is_marked_without_a_scan(make_service, client, queue):
    await make_service()
    assert await client.get(QueueKeys.default(queue).shared("layout")) == upgrade.LAYOUT.encode()
