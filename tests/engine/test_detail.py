"""A task in depth (engine/detail.py): payload wherever it lives, holder and lease, the dead
letter, and the timeline read from the events stream."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine import detail
from app.engine.queue import Queue
from app.engine.records import created_ms
from app.errors import NotFound
from app.settings import RetryPolicy
from tests.engine.conftest import claim_one, raw, req

SLOW = RetryPolicy(3, 60.0, 2.0, 60.0, False)  # a retried task stays `retrying`


async def details(streams: Queue, eval_id: str) -> dict[str, Any]:
    return await detail.detail(streams.engine, eval_id)


async def test_the_payload_of_a_queued_task_is_read_from_its_stream_entry(streams: Queue):
    await streams.enqueue(req("d-q", metadata={"team": "red"}))
    found = await details(streams, "d-q")
    assert found["payload"]["metadata"] == {"team": "red"}
    assert found["state"] == "queued"
    assert found["worker"] is None and found["lease_expires_at"] is None
    assert [e["state"] for e in found["timeline"]] == ["queued"]
    assert found["timeline_complete"] is True


async def test_a_running_task_has_a_holder_and_a_lease(streams: Queue):
    await streams.enqueue(req("d-p"))
    await claim_one(streams, consumer="host:42")
    found = await details(streams, "d-p")
    assert found["worker"] == "host:42"
    assert found["lease_expires_at"].endswith("Z")
    assert found["payload"]["code"] == "print(1)"
    assert [(e["state"], e["attempt"]) for e in found["timeline"]] == [
        ("queued", None),
        ("processing", 1),
    ]


async def test_a_retried_and_failed_task_has_its_attempts_and_dead_letter(streams: Queue):
    await streams.enqueue(req("d-f", metadata={"k": "v"}))
    for _ in range(2):
        task = await claim_one(streams)
        await streams.fail("d-f", "boom", task=task, policy=SLOW)
        await streams.engine.client.zadd(streams.keys.scheduled, {"d-f": 0})  # due now
    task = await claim_one(streams)
    await streams.fail("d-f", "last", task=task, retry=False, detail={"traceback": "TB"})
    found = await details(streams, "d-f")
    assert [(e["state"], e["attempt"]) for e in found["timeline"]] == [
        ("queued", None),
        ("processing", 1),
        ("retrying", 1),
        ("queued", None),
        ("processing", 2),
        ("retrying", 2),
        ("queued", None),
        ("processing", 3),
        ("failed", 3),
    ]
    assert found["dead_letter"]["error"] == "last"
    assert found["dead_letter"]["traceback"] == "TB"
    assert found["payload"]["metadata"] == {"k": "v"}  # from the dead letter


async def test_a_completed_task_has_no_payload_left(streams: Queue):
    await streams.enqueue(req("d-c"))
    task = await claim_one(streams)
    await streams.complete("d-c", {"ok": True}, task)
    found = await details(streams, "d-c")
    assert found["payload"] is None and found["dead_letter"] is None
    assert found["timeline"][-1]["state"] == "completed"


async def test_a_named_queues_task_reads_that_queues_events(streams: Queue):
    """Its record is on the named queue's tag: the id directory points there."""
    await streams.engine.queue("gpu").enqueue(req("d-n", queue="gpu", metadata={"k": "v"}))
    found = await details(streams, "d-n")
    assert found["queue"] == "gpu" and found["state"] == "queued"
    assert found["payload"]["metadata"] == {"k": "v"}
    assert [e["state"] for e in found["timeline"]] == ["queued"]
    assert found["timeline_complete"] is True


async def test_a_trimmed_events_stream_says_the_timeline_is_partial(streams: Queue):
    await streams.enqueue(req("d-t"))
    await raw(streams).xtrim(streams.keys.events, maxlen=0)
    await streams.enqueue(req("other"))  # maybe in the same millisecond as d-t's creation
    task = await claim_one(streams)
    assert task.eval_id == "d-t"
    found = await details(streams, "d-t")
    assert [e["state"] for e in found["timeline"]] == ["processing"]
    assert found["timeline_complete"] is False


async def test_a_creation_event_a_little_after_created_still_makes_it_whole(streams: Queue):
    """The creating script reads the clock for `created`, then its XADD reads it again: on
    a loaded server the creation event may carry a later millisecond (here, 3 ms)."""
    await streams.enqueue(req("d-slow"))
    key = streams.keys.task("d-slow")
    created = int(created_ms(await raw(streams).hgetall(key)) or 0)  # (its entry's time)
    await raw(streams).hset(key, "created", created - 3)
    assert (await details(streams, "d-slow"))["timeline_complete"] is True
    await raw(streams).hset(key, "created", created - detail.CREATION_SLACK_MS - 1000)
    assert (await details(streams, "d-slow"))["timeline_complete"] is False  # not its creation


async def test_an_unknown_task_is_not_found(streams: Queue):
    with pytest.raises(NotFound):
        await details(streams, "nobody")


async def test_the_last_event_counts_though_its_millisecond_is_after_finished(streams: Queue):
    """A script reads the time once; its XADD may land a millisecond later (a slow script,
    a loaded server): the timeline is not cut at `finished`."""
    await streams.enqueue(req("d-late"))
    task = await claim_one(streams)
    await streams.fail("d-late", "x", task=task, retry=False)
    created = await raw(streams).hget(streams.keys.task("d-late"), "created")
    await raw(streams).hset(streams.keys.task("d-late"), "finished", created)
    found = await details(streams, "d-late")
    assert [e["state"] for e in found["timeline"]] == ["queued", "processing", "failed"]
