"""Expiry (issue 15, item 4) in the scripts, against a real Redis: a task not started by its
`expires` time becomes `expired` in every waiting state, whether a claim meets it or the
promoter's sweep of `expiries` finds it; the structures it leaves, its counter and event,
its callback and its dependants."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.engine import views
from app.engine.queue import Queue
from app.errors import Conflict
from app.models import State
from app.settings import RetryPolicy
from tests.conftest import wait_for
from tests.engine.conftest import claim_ids, claim_one, raw, req, server_ms


async def state(streams: Queue, eval_id: str) -> str:
    return str((await streams.get(eval_id))["status"])


async def swept(streams: Queue, eval_id: str, timeout: float = 5) -> None:
    """Run the promoter until `eval_id` is expired (it sleeps until the expiry; a test
    runs it by hand)."""

    async def done() -> bool:
        await streams.promote()
        return await state(streams, eval_id) == "expired"

    await wait_for(done, timeout=timeout)


async def after(streams: Queue, ms: int) -> None:
    """Wait until `ms` (Redis clock) has passed."""

    async def passed() -> bool:
        return await server_ms(raw(streams)) > ms

    await wait_for(passed, timeout=5, interval=0.01)


async def events_of(streams: Queue, eval_id: str) -> list[str]:
    found = await raw(streams).xrange(streams.keys.events)
    return [f[b"state"].decode() for _, f in found if f[b"id"] == eval_id.encode()]


async def assert_expired(streams: Queue, eval_id: str, was: str) -> None:
    record = await streams.get(eval_id)
    assert record["status"] == "expired" and record["error"] == "expired before it started"
    assert record["expires_at"] and record["completed_at"]
    assert record["started_at"] is None or was == "retrying"
    assert (await events_of(streams, eval_id))[-1] == "expired"
    assert await raw(streams).zscore(streams.keys.expiries, eval_id) is None
    assert await raw(streams).ttl(streams.keys.task(eval_id)) > 0
    counts = await views.counts(streams)
    assert counts["totals"]["expired"] >= 1
    assert counts["states"][was] == 0
    assert counts["dlq"] == 0


async def test_queued_task_met_by_a_claim_is_expired_not_delivered(streams: Queue) -> None:
    await streams.enqueue(req("q1", expires=0.05))
    await streams.enqueue(req("q2"))
    entry = (await raw(streams).xrange(streams.keys.stream("default")))[0][1]
    exp = int(entry[b"x"])
    assert await raw(streams).zscore(streams.keys.expiries, "q1") == exp
    await after(streams, exp)
    assert await claim_ids(streams, count=1) == ["q2"]  # q1 took no slot
    await assert_expired(streams, "q1", "queued")
    assert await raw(streams).xlen(streams.keys.stream("default")) == 1  # q2's, pending
    position_free = await streams.enqueue(req("q3"))
    assert position_free["position"] == 1


async def test_claim_reads_past_expired_entries(streams: Queue) -> None:
    """Expired entries at the head take no slot: the claim reads on, so the rest is not
    left behind the tails a consumer blocks on."""
    for i in range(5):
        await streams.enqueue(req(f"e{i}", expires=0.05))
    await streams.enqueue(req("live"))
    await after(streams, await server_ms(raw(streams)) + 60)
    assert await claim_ids(streams, count=1) == ["live"]


async def test_queued_task_behind_a_pause_is_swept(streams: Queue) -> None:
    await streams.enqueue(req("p1", expires=0.1))
    await raw(streams).set(streams.keys.paused, "1")
    wait = await streams.promote()
    assert wait is not None and wait <= 0.1  # the promoter wakes for the expiry
    await swept(streams, "p1")
    await assert_expired(streams, "p1", "queued")
    # its sequence number became a hole: positions and counts stay exact
    assert (await views.counts(streams))["states"]["queued"] == 0
    await raw(streams).delete(streams.keys.paused)
    await streams.enqueue(req("p2"))
    assert (await streams.get("p2"))["position"] == 1
    assert await claim_ids(streams) == ["p2"]


async def test_scheduled_task_expires_before_its_run_time(streams: Queue) -> None:
    await streams.enqueue(req("s1", delay=60, expires=0.05))
    await swept(streams, "s1")
    await assert_expired(streams, "s1", "scheduled")
    assert await raw(streams).zscore(streams.keys.scheduled, "s1") is None


async def test_due_task_promoted_by_a_claim_expires_instead(streams: Queue) -> None:
    """Due and expired at once: the claim's promotion settles it expired (no sweep ran)."""
    now = await server_ms(raw(streams))
    await streams.enqueue(req("d1", run_at=(now + 50) / 1000, expires_at=(now + 60) / 1000))
    await after(streams, now + 70)
    assert await claim_ids(streams) == []
    await assert_expired(streams, "d1", "scheduled")


async def test_retrying_task_expires_during_its_backoff(make_streams) -> None:
    streams = make_streams(retry=RetryPolicy(3, 60_000.0, 2.0, 60_000.0, False))
    await streams.enqueue(req("r1", expires=0.3))
    task = await claim_one(streams)
    assert await raw(streams).zscore(streams.keys.expiries, "r1") is None  # started
    assert (await streams.fail("r1", "boom", task=task))["status"] == "retrying"
    assert await raw(streams).zscore(streams.keys.expiries, "r1") is not None  # waits again
    await swept(streams, "r1")
    await assert_expired(streams, "r1", "retrying")
    assert (await streams.get("r1"))["attempts"] == 1


async def test_started_task_is_not_expired(streams: Queue) -> None:
    await streams.enqueue(req("run", expires=0.05))
    task = await claim_one(streams)
    await after(streams, await server_ms(raw(streams)) + 60)
    await streams.promote()
    assert await state(streams, "run") == "processing"
    await streams.complete("run", 1, task)
    assert await state(streams, "run") == "completed"


async def test_deferred_task_expires_and_leaves_its_parent(streams: Queue) -> None:
    await streams.enqueue(req("parent"))
    await streams.enqueue(req("child", depends_on=["parent"], expires=0.05))
    await swept(streams, "child")
    await assert_expired(streams, "child", "deferred")
    assert await raw(streams).hget(streams.keys.task("parent"), "d:child") is None  # no mark
    assert await raw(streams).zscore(streams.keys.deferred, "child") is None  # listing's
    task = await claim_one(streams)
    await streams.complete("parent", 1, task)
    assert await state(streams, "child") == "expired"  # not released


async def test_dependants_of_an_expired_task_are_cancelled(streams: Queue) -> None:
    await streams.enqueue(req("gate"))
    await streams.enqueue(req("old", depends_on=["gate"], expires=0.05))
    await streams.enqueue(req("kid", depends_on=["old"]))
    await streams.enqueue(req("tolerant", depends_on=["old"], allow_failure=True))
    await swept(streams, "old")
    kid = await streams.get("kid")
    assert kid["status"] == "cancelled" and kid["error"] == "dependency old expired"
    assert await state(streams, "tolerant") == "queued"
    late = await streams.enqueue(req("late", depends_on=["old"]))
    assert late["status"] == "cancelled" and late["error"] == "dependency old expired"


async def test_an_expired_task_gets_its_callback(streams: Queue) -> None:
    await streams.enqueue(req("cb", expires=0.05, callback_url="http://127.0.0.1:9/hook"))
    await swept(streams, "cb")
    entries = await raw(streams).xrange(streams.keys.callbacks)
    fields = entries[-1][1]
    assert fields[b"id"] == b"cb" and fields[b"status"] == b"expired"
    assert fields[b"error"] == b"expired before it started"


async def test_cancel_of_an_expired_task_is_refused(streams: Queue) -> None:
    await streams.enqueue(req("c1", delay=30, expires=0.05))
    await swept(streams, "c1")
    with pytest.raises(Conflict):
        await streams.cancel("c1")


async def test_cancel_leaves_the_expiries(streams: Queue) -> None:
    await streams.enqueue(req("c2", delay=30, expires=30))
    await streams.cancel("c2")
    assert await raw(streams).zcard(streams.keys.expiries) == 0


async def test_expires_at_in_the_past_expires_at_once(streams: Queue) -> None:
    answer = await streams.enqueue(req("past", expires_at="2001-01-01T00:00:00Z"))
    assert answer["status"] == "queued"
    assert await claim_ids(streams) == []
    assert await state(streams, "past") == "expired"


async def test_expiry_on_the_redis_clock(streams: Queue) -> None:
    before = await server_ms(raw(streams))
    await streams.enqueue(req("clock", expires=100))
    exp = int(await raw(streams).zscore(streams.keys.expiries, "clock"))
    assert before + 100_000 <= exp <= await server_ms(raw(streams)) + 100_000
    assert (await streams.get("clock"))["expires_at"].endswith("Z")


async def test_promoter_reports_expiries_to_the_observer(streams: Queue) -> None:
    seen: list[tuple[str, str, str]] = []

    class Recorder:
        def enqueued(self, *args: Any) -> None:
            pass

        def settled(self, queue: str, priority: str, status: str) -> None:
            seen.append((queue, priority, status))

        def redriven(self, *args: Any) -> None:
            pass

        def throttled(self, *args: Any) -> None:
            pass

    streams.observer = Recorder()
    await streams.enqueue(req("o1", expires=0.05, priority="low"))
    await swept(streams, "o1")
    assert seen == [(streams.keys.queue, "low", State.EXPIRED.value)]


async def test_many_expiries_in_one_sweep(streams: Queue) -> None:
    for batch in range(3):
        await asyncio.gather(
            *(streams.enqueue(req(f"m{batch}-{i}", expires=0.05)) for i in range(100))
        )
    await after(streams, await server_ms(raw(streams)) + 60)
    assert await streams.promote() == 0.0  # a full batch: call again
    while await streams.promote() == 0.0:
        pass
    assert (await views.counts(streams))["totals"]["expired"] == 300


async def test_a_named_queue_has_its_own_expiries(streams: Queue) -> None:
    gpu = streams.engine.queue("gpu")
    await gpu.enqueue(req("g1", queue="gpu", expires=0.05))
    await gpu.enqueue(req("g2", queue="gpu", expires=600, delay=60))
    assert await raw(streams).zcard(gpu.keys.expiries) == 2
    assert await raw(streams).exists(streams.keys.expiries) == 0
    await swept(gpu, "g1")
    await streams.cancel("g2")
    assert await raw(streams).zcard(gpu.keys.expiries) == 0
    assert (await views.counts(gpu))["totals"]["expired"] == 1
