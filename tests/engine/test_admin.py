"""Operator actions (engine/admin.py): clear, and the dead-letter queue (list, re-drive,
purge).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app.engine import admin, views
from app.engine.engine import Engine
from app.engine.keys import GROUP
from app.engine.queue import Queue
from app.errors import Conflict, NotFound
from app.models import Priority
from app.settings import Settings
from tests.conftest import wait_for
from tests.engine.conftest import claim_one, raw, req, server_ms, stream_lengths

# --- clear --------------------------------------------------------------------------


async def test_clear_removes_everything_and_groups_still_work(streams: Queue) -> None:
    await streams.enqueue(req("done"))
    await streams.enqueue(req("dead"))
    await streams.enqueue(req("running"))
    done, dead, _ = (await streams.claim("c1", 3, 30)).tasks
    await streams.complete("done", {}, done)
    await streams.fail("dead", "x", retry=False, task=dead)
    await streams.enqueue(req("queued", priority="high"))
    await streams.enqueue(req("later", delay=60))
    await streams.enqueue(req("cancelled"))
    await streams.cancel("cancelled")
    removed = await admin.clear(streams.engine)
    assert removed == 6
    for eval_id in ("done", "dead", "running", "queued", "later", "cancelled"):
        with pytest.raises(NotFound):
            await streams.get(eval_id)
    left = [k.decode() async for k in raw(streams).scan_iter(match=f"{streams.keys.prefix}*")]
    # history stays: the events stream and its per-minute counts
    kept = [*streams.keys.streams, streams.keys.events, streams.keys.stats]
    assert sorted(left) == sorted(kept)
    assert await stream_lengths(streams) == [0, 0, 0]
    for key in streams.keys.streams:
        groups = await raw(streams).xinfo_groups(key)
        assert [(g["name"], g["pending"]) for g in groups] == [(GROUP.encode(), 0)]
    counts = await views.counts(streams)
    assert counts["states"] == {
        "queued": 0,
        "processing": 0,
        "scheduled": 0,
        "retrying": 0,
        "deferred": 0,
    }
    assert counts["dlq"] == 0
    # the stale holder of "running" is refused, and the queue works as new
    assert (await streams.enqueue(req("fresh")))["position"] == 1
    claimed = await streams.claim("c1", 5, 30)
    assert claimed.recreated is False
    assert [t.eval_id for t in claimed.tasks] == ["fresh"]
    assert (await streams.enqueue(req("done")))["status"] == "queued"


async def test_clear_an_empty_queue(streams: Queue) -> None:
    assert await admin.clear(streams.engine) == 0
    assert await admin.clear(streams.engine) == 0


async def test_clear_leaves_other_queues_alone(
    client: Any, streams: Queue, make_settings: Callable[..., Settings]
) -> None:
    other = Engine(client, make_settings(queue=f"{streams.keys.queue}-other")).default
    await other.enqueue(req("mine"))
    await streams.enqueue(req("mine"))
    try:
        assert await admin.clear(streams.engine) == 1
        assert (await other.get("mine"))["status"] == "queued"
    finally:
        await admin.clear(other.engine)


# --- dead-letter queue --------------------------------------------------------------


async def bury(streams: Queue, eval_id: str, **fields: Any) -> None:
    await streams.enqueue(req(eval_id, **fields))
    claimed = await streams.claim("c1", 10, 30)
    [task] = [t for t in claimed.tasks if t.eval_id == eval_id]
    await streams.fail(eval_id, f"error of {eval_id}", retry=False, task=task)


async def test_dlq_list(streams: Queue) -> None:
    await bury(streams, "a1", priority="high", metadata={"m": 1})
    await bury(streams, "a2")
    listing = await admin.dlq_list(streams)
    assert listing["count"] == 2
    assert [t["eval_id"] for t in listing["tasks"]] == ["a2", "a1"]
    first = listing["tasks"][1]
    assert first["error"] == "error of a1"
    assert first["attempts"] == 1
    assert first["failed_at"] is not None
    assert first["task"]["code"] == "print(1)"
    assert first["task"]["priority"] == "high"
    assert first["task"]["metadata"] == {"m": 1}
    page = await admin.dlq_list(streams, limit=1, offset=1)
    assert page["count"] == 2
    assert [t["eval_id"] for t in page["tasks"]] == ["a1"]


async def test_dlq_retry(streams: Queue) -> None:
    await bury(streams, "again", priority="low")
    assert await admin.dlq_retry(streams, "again") == {"eval_id": "again", "status": "queued"}
    record = await streams.get("again")
    assert (record["status"], record["attempts"], record["position"]) == ("queued", 0, 1)
    assert (await admin.dlq_list(streams))["count"] == 0
    task = await claim_one(streams)
    assert (task.eval_id, task.attempt, task.priority) == ("again", 1, Priority.LOW)
    assert task.payload == {"code": "print(1)"}
    with pytest.raises(NotFound):
        await admin.dlq_retry(streams, "again")
    with pytest.raises(NotFound):
        await admin.dlq_retry(streams, "never")
    # buried a second time: one DLQ entry, not two
    await streams.fail("again", "twice", retry=False, task=task)
    assert (await admin.dlq_list(streams))["count"] == 1


async def test_dlq_retry_refused_while_a_live_task_uses_the_id(streams: Queue) -> None:
    await bury(streams, "reused")
    await raw(streams).delete(streams.keys.task("reused"))
    await streams.enqueue(req("reused", priority="high"))
    with pytest.raises(Conflict, match="queued"):
        await admin.dlq_retry(streams, "reused")
    assert (await admin.dlq_list(streams))["count"] == 1
    assert (await streams.get("reused"))["priority"] == "high"


async def test_dlq_retry_after_the_record_expired(streams: Queue) -> None:
    await bury(streams, "expired")
    await raw(streams).delete(streams.keys.task("expired"))
    await admin.dlq_retry(streams, "expired")
    assert (await streams.get("expired"))["status"] == "queued"


async def test_dlq_purge(streams: Queue) -> None:
    for name in ("x1", "x2", "x3"):
        await bury(streams, name)
    assert await admin.dlq_purge(streams, eval_id="x2") == 1
    assert await admin.dlq_purge(streams, eval_id="x2") == 0
    assert [t["eval_id"] for t in (await admin.dlq_list(streams))["tasks"]] == ["x3", "x1"]
    assert await admin.dlq_purge(streams, older_than=3600) == 0
    assert await admin.dlq_purge(streams) == 2
    assert (await admin.dlq_list(streams))["count"] == 0
    with pytest.raises(NotFound):
        await admin.dlq_retry(streams, "x1")


async def test_dlq_purge_older_than(streams: Queue) -> None:
    await bury(streams, "old")
    buried_old = await server_ms(raw(streams))

    async def later() -> bool:
        return await server_ms(raw(streams)) > buried_old + 200

    await wait_for(later)
    await bury(streams, "new")
    now = await server_ms(raw(streams))
    # older than a moment 100 ms after "old" was buried (and > 100 ms before "new")
    assert await admin.dlq_purge(streams, older_than=(now - buried_old - 100) / 1000) == 1
    assert [t["eval_id"] for t in (await admin.dlq_list(streams))["tasks"]] == ["new"]

    async def after_new() -> bool:
        return await server_ms(raw(streams)) > now + 2

    await wait_for(after_new)
    assert await admin.dlq_purge(streams, older_than=0) == 1
