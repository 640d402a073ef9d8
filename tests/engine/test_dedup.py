"""Deduplication (issue 15, item 3) in the enqueue script, against a real Redis: the three
modes, their windows on the Redis clock, the release of an `active` key on every terminal
state, batches, and the structures left behind (checked with raw Redis reads)."""

from __future__ import annotations

import asyncio
from typing import Any

from app.engine import admin, views
from app.engine.queue import Queue
from app.settings import RetryPolicy
from tests.conftest import wait_for
from tests.engine.conftest import claim_one, raw, req, server_ms


def dd(eval_id: str, key: str = "k", **fields: Any) -> Any:
    return req(eval_id, dedup_key=key, **fields)


async def holder(streams: Queue, key: str = "k") -> str | None:
    held = await raw(streams).hget(streams.keys.dedup, key)
    return held.decode() if held else None


async def test_active_answers_with_the_live_task(streams: Queue) -> None:
    first = await streams.enqueue(dd("a1"))
    assert first["status"] == "queued" and "deduplicated" not in first
    again = await streams.enqueue(dd("a2"))
    assert again == {"eval_id": "a1", "status": "queued", "deduplicated": True}
    assert await raw(streams).exists(streams.keys.task("a2")) == 0
    assert await holder(streams) == "a1"
    task = await claim_one(streams)
    assert (await streams.enqueue(dd("a3")))["status"] == "processing"  # still live
    counts = await views.counts(streams)
    assert counts["totals"] == {"enqueued": 1, "deduplicated": 2}
    await streams.complete("a1", {"ok": 1}, task)
    assert await holder(streams) is None  # released by the terminal state
    assert (await streams.enqueue(dd("a4")))["status"] == "queued"
    assert await holder(streams) == "a4"


async def test_active_is_per_queue_and_per_key(streams: Queue) -> None:
    await streams.enqueue(dd("k1", "one"))
    assert "deduplicated" not in await streams.enqueue(dd("k2", "two"))
    other = streams.engine.queue("other")
    assert "deduplicated" not in await other.enqueue(dd("k3", "one", queue="other"))
    assert (await other.enqueue(dd("k4", "one", queue="other")))["eval_id"] == "k3"
    await streams.cancel("k3")  # found in its own queue; lets go of that queue's key
    assert await raw(streams).hget(other.keys.dedup, "one") is None
    assert await holder(streams, "one") == "k1"


async def test_active_released_by_every_terminal_state(make_streams) -> None:
    streams = make_streams(retry=RetryPolicy(0, 50.0, 2.0, 300.0, False))
    # cancelled while queued
    await streams.enqueue(dd("c1", "c"))
    await streams.cancel("c1")
    assert await holder(streams, "c") is None
    # failed into the DLQ
    await streams.enqueue(dd("f1", "f"))
    task = await claim_one(streams)
    assert (await streams.fail("f1", "boom", task=task))["status"] == "failed"
    assert await holder(streams, "f") is None
    # expired (below, test_expiry.py covers the states)
    await streams.enqueue(dd("e1", "e", expires=0.05))
    await wait_for(lambda: _expired(streams, "e1"), timeout=5)
    assert await holder(streams, "e") is None
    # a dependant cancelled with its failed parent lets go of its own key
    await streams.enqueue(req("p1"))
    await streams.enqueue(dd("d1", "d", depends_on=["p1"]))
    task = await claim_one(streams)
    await streams.fail("p1", "boom", retry=False, task=task)
    assert (await streams.get("d1"))["status"] == "cancelled"
    assert await holder(streams, "d") is None


async def _expired(streams: Queue, eval_id: str) -> bool:
    await streams.promote()
    return bool((await streams.get(eval_id))["status"] == "expired")


async def test_release_leaves_a_key_another_task_took(streams: Queue) -> None:
    """An active key that names another task (taken after a record vanished) stays."""
    await streams.enqueue(dd("r1"))
    await raw(streams).hset(streams.keys.dedup, "k", "someone-else")
    await streams.cancel("r1")
    assert await holder(streams) == "someone-else"


async def test_a_holder_whose_record_is_gone_holds_nothing(streams: Queue) -> None:
    await streams.enqueue(dd("g1"))
    await raw(streams).hset(streams.keys.dedup, "k", "gone")
    assert (await streams.enqueue(dd("g2")))["status"] == "queued"
    assert await holder(streams) == "g2"


async def test_throttle_holds_for_the_ttl_then_lapses(streams: Queue) -> None:
    first = await streams.enqueue(dd("t1", dedup="throttle", dedup_ttl=0.5))
    assert first["status"] == "queued"
    task = await claim_one(streams)
    await streams.complete("t1", 1, task)  # finished: the window still holds
    again = await streams.enqueue(dd("t2", dedup="throttle", dedup_ttl=0.5))
    assert again == {"eval_id": "t1", "status": "completed", "deduplicated": True}
    until = await raw(streams).zscore(streams.keys.dedup_ttl, "k")
    assert until is not None and until > await server_ms(raw(streams))

    async def lapsed() -> bool:
        answer = await streams.enqueue(dd("t3", dedup="throttle", dedup_ttl=0.5))
        return "deduplicated" not in answer

    await wait_for(lapsed, timeout=5, interval=0.05)
    assert await holder(streams) == "t3"


async def test_promoter_sweeps_lapsed_throttle_windows(streams: Queue) -> None:
    await streams.enqueue(dd("w1", dedup="throttle", dedup_ttl=0.05))
    await streams.enqueue(dd("w2", "active"))  # an active holder is never swept

    async def swept() -> bool:
        await streams.promote()
        return bool(await raw(streams).zcard(streams.keys.dedup_ttl) == 0)

    await wait_for(swept, timeout=5)
    assert await holder(streams) is None
    assert await holder(streams, "active") == "w2"


async def test_debounce_takes_the_newest_payload_and_time(streams: Queue) -> None:
    first = await streams.enqueue(dd("b1", dedup="debounce", dedup_ttl=0.6, metadata={"n": 1}))
    assert first["status"] == "scheduled"
    due1 = await raw(streams).zscore(streams.keys.scheduled, "b1")
    await asyncio.sleep(0.1)
    again = await streams.enqueue(dd("b2", dedup="debounce", dedup_ttl=0.6, metadata={"n": 2}))
    assert again == {"eval_id": "b1", "status": "scheduled", "deduplicated": True}
    due2 = await raw(streams).zscore(streams.keys.scheduled, "b1")
    assert due2 >= due1 + 100  # pushed back by the time between the requests
    record = await raw(streams).hgetall(streams.keys.task("b1"))
    assert int(record[b"run_at"]) == due2
    assert (await views.counts(streams))["states"]["scheduled"] == 1

    async def promoted() -> bool:
        await streams.promote()
        return bool((await streams.get("b1"))["status"] == "queued")

    await wait_for(promoted, timeout=5)
    task = await claim_one(streams)
    assert task.payload["metadata"] == {"n": 2}
    # started: the next request makes a new task
    third = await streams.enqueue(dd("b3", dedup="debounce", dedup_ttl=0.6))
    assert third["eval_id"] == "b3" and third["status"] == "scheduled"
    assert await holder(streams) == "b3"
    await streams.complete("b1", 1, task)
    assert await holder(streams) == "b3"  # b1 finishing leaves b3's key alone


async def test_batch_dedups_within_and_across_apis(streams: Queue) -> None:
    engine = streams.engine
    await streams.enqueue(dd("x1", "before"))
    answers = await engine.enqueue_many(
        [dd("x2", "inside"), dd("x3", "inside"), dd("x4", "before"), req("x5")]
    )
    assert answers[0]["status"] == "queued" and "deduplicated" not in answers[0]
    assert answers[1] == {"eval_id": "x2", "status": "queued", "deduplicated": True}
    assert answers[2] == {"eval_id": "x1", "status": "queued", "deduplicated": True}
    assert answers[3]["status"] == "queued"
    assert (await streams.enqueue(dd("x6", "inside")))["eval_id"] == "x2"
    assert (await views.counts(streams))["states"]["queued"] == 3


async def test_dedup_wins_over_a_known_eval_id(streams: Queue) -> None:
    """A client re-sending its own request (same eval_id and key) gets the dedup answer."""
    await streams.enqueue(dd("same"))
    assert (await streams.enqueue(dd("same")))["deduplicated"] is True


async def test_clear_drops_the_dedup_structures(streams: Queue) -> None:
    await streams.enqueue(dd("c1"))
    await streams.enqueue(dd("c2", "t", dedup="throttle", dedup_ttl=60))
    await admin.clear(streams.engine)
    for key in (streams.keys.dedup, streams.keys.dedup_ttl, streams.keys.expiries):
        assert await raw(streams).exists(key) == 0
    assert (await streams.enqueue(dd("c3")))["status"] == "queued"


async def test_plain_enqueue_writes_no_option_structure(streams: Queue) -> None:
    await streams.enqueue(req("plain"))
    record = await raw(streams).hgetall(streams.keys.task("plain"))
    assert b"dk" not in record and b"exp" not in record
    for key in (streams.keys.dedup, streams.keys.dedup_ttl, streams.keys.expiries):
        assert await raw(streams).exists(key) == 0
    entry = (await raw(streams).xrange(streams.keys.stream("default")))[0][1]
    assert set(entry) == {b"id", b"payload"}  # the sequence number is the record's (issue 14)
