"""The stored layout of a waiting task (issue 14, memory) and how records read back
(engine/records.py): a task queued at its creation keeps its time in its stream entry's id
and, at priority `default`, no `prio` until its first delivery; its entry carries no
sequence number (the record's `seq`). Records and entries of the earlier layout (`created`,
`prio`, and `n` in the entry) still work."""

from __future__ import annotations

from app.engine import views
from app.engine.keys import GROUP
from app.engine.queue import Queue
from app.engine.records import created_ms
from app.models import iso_ms
from tests.engine.conftest import claim_one, raw, req
from tests.engine.test_expiry import after


async def record(streams: Queue, eval_id: str) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = await raw(streams).hgetall(streams.keys.task(eval_id))
    return found


def entry_ms(rec: dict[bytes, bytes]) -> bytes:
    return rec[b"entry"].partition(b"-")[0]


async def test_a_task_queued_at_once_keeps_its_time_in_its_entry(streams: Queue):
    await streams.enqueue(req("r1"))
    rec = await record(streams, "r1")
    assert set(rec) == {b"state", b"seq", b"entry"}
    assert created_ms(rec) == entry_ms(rec)
    entry = (await raw(streams).xrange(streams.keys.stream("default")))[0]
    assert entry[0] == rec[b"entry"] and set(entry[1]) == {b"id", b"payload"}
    view = await streams.get("r1")
    assert view["created_at"] == iso_ms(entry_ms(rec))
    assert (view["priority"], view["position"], view["status"]) == ("default", 1, "queued")

    task = await claim_one(streams)  # the first delivery writes both
    claimed = await record(streams, "r1")
    assert claimed[b"created"] == entry_ms(rec) and claimed[b"prio"] == b"default"
    await streams.complete("r1", {"ok": 1}, task=task)
    done = await streams.get("r1")
    assert (done["status"], done["created_at"]) == ("completed", view["created_at"])


async def test_other_priorities_and_later_starts_keep_their_fields(streams: Queue):
    await streams.enqueue(req("r-high", priority="high"))
    assert (await record(streams, "r-high"))[b"prio"] == b"high"
    await streams.enqueue(req("r-later", delay=60))
    later = await record(streams, "r-later")
    assert b"created" in later and later[b"prio"] == b"default"
    await streams.enqueue(req("r-tenant", tenant="acme"))  # its entry: the tenant stream's
    tenant = await record(streams, "r-tenant")
    assert b"created" not in tenant and tenant[b"prio"] == b"default"
    assert (await streams.get("r-tenant"))["created_at"] == iso_ms(entry_ms(tenant))


async def test_a_task_that_leaves_the_queue_unstarted_keeps_its_creation_time(streams: Queue):
    await streams.enqueue(req("r-c"))
    created = entry_ms(await record(streams, "r-c"))
    await streams.cancel("r-c")
    cancelled = await record(streams, "r-c")
    assert cancelled[b"state"] == b"cancelled" and cancelled[b"created"] == created
    assert (await streams.get("r-c"))["priority"] == "default"

    await streams.enqueue(req("r-x", expires=0.05))
    queued = await record(streams, "r-x")
    assert b"created" not in queued
    await after(streams, int((await record(streams, "r-x"))[b"exp"]))
    assert (await streams.claim("c1", 1, 30)).tasks == []  # the claim meets it expired
    expired = await record(streams, "r-x")
    assert expired[b"state"] == b"expired" and expired[b"created"] == entry_ms(queued)


async def test_records_and_entries_of_the_earlier_layout_still_work(streams: Queue):
    """Two tasks as the previous version stored them (`created`, `prio` in the record, `n`
    in the entry), then one of this version: positions, delivery order, the delivered
    sequence number (`head`) and the creation time all come out as before."""
    k = streams.keys
    for i in (1, 2):
        entry = await raw(streams).xadd(
            k.stream("default"), {"id": f"old{i}", "n": i, "payload": b'{"code": "x"}'}
        )
        await raw(streams).hset(
            k.task(f"old{i}"),
            mapping={
                "created": 1000 + i,
                "state": "queued",
                "prio": "default",
                "seq": i,
                "entry": entry,
            },
        )
    await raw(streams).hset(k.counters, mapping={"seq:default": 2, "total:enqueued": 2})
    await streams.enqueue(req("new3"))
    assert [(await streams.get(i))["position"] for i in ("old1", "old2", "new3")] == [1, 2, 3]
    assert (await streams.get("old2"))["created_at"] == iso_ms(b"1002")

    assert (await claim_one(streams)).eval_id == "old1"
    assert await raw(streams).hget(k.counters, "head:default") == b"1"  # the entry's `n`
    assert [(await streams.get(i))["position"] for i in ("old2", "new3")] == [1, 2]
    await streams.cancel("old2")  # its hole is the record's `seq`
    assert (await streams.get("new3"))["position"] == 1
    task = await claim_one(streams)
    assert task.eval_id == "new3"
    assert await raw(streams).hget(k.counters, "head:default") == b"3"  # the record's `seq`
    assert (await record(streams, "old1"))[b"created"] == b"1001"
    assert (await views.counts(streams))["states"]["queued"] == 0


async def test_a_running_record_without_prio_is_settled(streams: Queue):
    """A task delivered by an earlier version's claim (which writes no `prio`) during a
    rolling deploy: its holder's result and a lapsed lease are handled at `default`."""
    await streams.enqueue(req("r-old"))
    task = await claim_one(streams)
    await raw(streams).hdel(streams.keys.task("r-old"), "prio")
    await streams.complete("r-old", {"ok": 1}, task=task)
    assert (await streams.get("r-old"))["status"] == "completed"
    pending = await raw(streams).xpending(streams.keys.stream("default"), GROUP)
    assert pending["pending"] == 0
