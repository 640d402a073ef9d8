"""Read-only views (engine/views.py): counts per state and priority, the events stream."""

from __future__ import annotations

from collections.abc import Callable

from app.engine import views
from app.engine.queue import Queue
from app.models import Task
from app.settings import RetryPolicy
from tests.conftest import wait_for
from tests.engine.conftest import claim_one, raw, req

# --- counts, events, get ------------------------------------------------------------


async def test_counts_per_state_and_priority(streams: Queue) -> None:
    for eval_id, priority in [("p-h", "high"), ("p-d", "default")]:
        await streams.enqueue(req(eval_id, priority=priority))
    running = (await streams.claim("c1", 2, 30)).tasks
    for eval_id, priority in [("q-h1", "high"), ("q-h2", "high"), ("q-l", "low")]:
        await streams.enqueue(req(eval_id, priority=priority))
    await streams.enqueue(req("s-l", priority="low", delay=60))
    await streams.enqueue(req("s-d", delay=60))
    await streams.fail("p-d", "x", task=running[1], policy=RetryPolicy(3, 60, 2, 60, False))
    await streams.enqueue(req("gone"))
    await streams.cancel("gone")
    counts = await views.counts(streams)
    assert counts["by_priority"] == {
        "queued": {"high": 2, "default": 0, "low": 1},
        "processing": {"high": 1, "default": 0, "low": 0},
        "scheduled": {"high": 0, "default": 1, "low": 1},
        "retrying": {"high": 0, "default": 1, "low": 0},
        "deferred": {"high": 0, "default": 0, "low": 0},
    }
    assert counts["states"] == {
        "queued": 3,
        "processing": 1,
        "scheduled": 2,
        "retrying": 1,
        "deferred": 0,
    }
    assert counts["dlq"] == 0
    assert counts["totals"]["enqueued"] == 8
    assert counts["totals"]["retried"] == 1
    assert counts["totals"]["cancelled"] == 1
    await streams.fail("p-h", "x", task=running[0], retry=False)
    counts = await views.counts(streams)
    assert counts["states"]["processing"] == 0
    assert counts["dlq"] == 1


async def test_counts_on_an_empty_queue(streams: Queue) -> None:
    counts = await views.counts(streams)
    assert counts["states"] == {
        "queued": 0,
        "processing": 0,
        "scheduled": 0,
        "retrying": 0,
        "deferred": 0,
    }
    assert counts["dlq"] == 0
    assert counts["totals"] == {}


async def test_events_stream_records_each_state_change(streams: Queue) -> None:
    await streams.enqueue(req("ev"))
    task = await claim_one(streams)
    await streams.fail("ev", "x", task=task, policy=RetryPolicy(3, 0.01, 1, 1, False))

    async def delivered() -> list[Task]:
        return (await streams.claim("c1", 1, 30)).tasks

    [task] = await wait_for(delivered, timeout=5)
    await streams.complete("ev", {}, task)
    await streams.enqueue(req("ev2", delay=60))
    await streams.cancel("ev2")
    events = [
        (f[b"id"].decode(), f[b"state"].decode(), f[b"attempt"].decode())
        for _, f in await raw(streams).xrange(streams.keys.events)
    ]
    assert events == [
        ("ev", "queued", ""),
        ("ev", "processing", "1"),
        ("ev", "retrying", "1"),
        ("ev", "queued", ""),
        ("ev", "processing", "2"),
        ("ev", "completed", "2"),
        ("ev2", "scheduled", ""),
        ("ev2", "cancelled", "0"),
    ]


async def test_events_stream_is_capped(make_streams: Callable[..., Queue]) -> None:
    streams = make_streams(events_maxlen=10)
    for i in range(300):
        await streams.enqueue(req(f"e{i}"))
    # MAXLEN ~ trims whole nodes: far fewer than 300 remain, at least 10
    assert 10 <= await raw(streams).xlen(streams.keys.events) < 300
