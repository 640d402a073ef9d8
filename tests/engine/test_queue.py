"""A queue's transitions (engine/queue.py), one Lua script each, against the real Redis
server: enqueue, positions, claim, fencing and leases, complete, fail, cancel, get,
promote, waiting for work.

Checked through the `Queue` API and, independently, with raw Redis commands, so a
script that answers right but leaves the wrong structures behind is caught too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import orjson
import pytest

from app.engine import views
from app.engine.client import connect
from app.engine.keys import GROUP
from app.engine.queue import Queue
from app.errors import Conflict, NotFound
from app.models import Priority, Task
from app.settings import RetryPolicy
from tests.conftest import wait_for
from tests.engine.conftest import claim_ids, claim_one, raw, req, server_ms, stream_lengths

FAST = RetryPolicy(3, 0.2, 2.0, 300.0, False)


async def wait_lease_lapsed(streams: Queue, eval_id: str) -> None:
    async def lapsed() -> bool:
        deadline = await raw(streams).zscore(streams.keys.leases, eval_id)
        return deadline is not None and deadline < await server_ms(raw(streams))

    await wait_for(lapsed, timeout=5, interval=0.01)


async def pending(streams: Queue, priority: str = "default") -> int:
    summary = await raw(streams).xpending(streams.keys.stream(priority), GROUP)
    return int(summary["pending"])


def kind(message: dict[str, Any]) -> str:
    value = message["type"]
    return value.decode() if isinstance(value, bytes) else str(value)


class Subscriber:
    """A second connection subscribed to a channel; messages filtered by eval_id."""

    def __init__(self, client: Any) -> None:
        self.pubsub = client.pubsub()
        self.seen: list[dict[str, Any]] = []

    async def subscribe(self, channel: str) -> None:
        await self.pubsub.subscribe(channel)

        async def confirmed() -> bool:
            message = await self.pubsub.get_message(timeout=0.1)
            return message is not None and kind(message) == "subscribe"

        await wait_for(confirmed, timeout=5)

    async def message_for(self, eval_id: str, timeout: float = 5) -> dict[str, Any]:
        async def found() -> dict[str, Any] | None:
            message = await self.pubsub.get_message(timeout=0.05)
            if message is not None and kind(message) == "message":
                self.seen.append(orjson.loads(message["data"]))
            return next((m for m in self.seen if m.get("eval_id") == eval_id), None)

        result: dict[str, Any] = await wait_for(found, timeout=timeout)
        return result


@pytest.fixture
async def subscriber(redis_url: str) -> AsyncIterator[Callable[[str], Any]]:
    clients: list[Any] = []
    subs: list[Subscriber] = []

    async def make(channel: str) -> Subscriber:
        client = connect(redis_url)
        clients.append(client)
        sub = Subscriber(client)
        subs.append(sub)
        await sub.subscribe(channel)
        return sub

    yield make
    for sub in subs:
        await sub.pubsub.aclose()
    for client in clients:
        await client.aclose()


# --- enqueue ------------------------------------------------------------------------


async def test_enqueue_answers_queued_with_position(streams: Queue) -> None:
    answers = [await streams.enqueue(req(f"t{i}")) for i in range(3)]
    assert answers == [
        {"eval_id": f"t{i}", "status": "queued", "priority": "default", "position": i + 1}
        for i in range(3)
    ]
    record = await streams.get("t1")
    assert record["status"] == "queued"
    assert record["position"] == 2
    assert record["priority"] == "default"
    assert record["attempts"] == 0
    assert record["created_at"] is not None and record["started_at"] is None
    assert record["result"] is None and record["error"] is None
    assert await stream_lengths(streams) == [0, 3, 0]


async def test_enqueue_stores_the_payload_in_the_stream(streams: Queue) -> None:
    await streams.enqueue(req("p1", language="bash", metadata={"k": 1}, priority="low"))
    [(_, fields)] = await raw(streams).xrange(streams.keys.stream("low"))
    assert fields[b"id"] == b"p1"
    assert orjson.loads(fields[b"payload"]) == {
        "code": "print(1)",
        "language": "bash",
        "metadata": {"k": 1},
    }
    task = await claim_one(streams)
    assert task.payload == {"code": "print(1)", "language": "bash", "metadata": {"k": 1}}
    assert task.priority is Priority.LOW


async def test_duplicate_eval_id_conflicts(streams: Queue) -> None:
    await streams.enqueue(req("dup"))
    with pytest.raises(Conflict, match="dup"):
        await streams.enqueue(req("dup", priority="high"))
    assert await stream_lengths(streams) == [0, 1, 0]
    assert (await streams.get("dup"))["priority"] == "default"
    # also while scheduled, and once finished (until its record expires)
    await streams.enqueue(req("later", delay=60))
    with pytest.raises(Conflict):
        await streams.enqueue(req("later"))
    task = await claim_one(streams)
    await streams.complete("dup", {"ok": 1}, task)
    with pytest.raises(Conflict):
        await streams.enqueue(req("dup"))


async def test_enqueue_scheduled_in_the_future(streams: Queue) -> None:
    run_at = time.time() + 60
    answer = await streams.enqueue(req("s1", run_at=run_at, priority="high"))
    assert answer == {"eval_id": "s1", "status": "scheduled", "priority": "high"}
    record = await streams.get("s1")
    assert record["status"] == "scheduled"
    assert "position" not in record
    scheduled_at = datetime.fromisoformat(record["run_at"].replace("Z", "+00:00")).timestamp()
    assert scheduled_at == pytest.approx(run_at, abs=0.002)
    score = await raw(streams).zscore(streams.keys.scheduled, "s1")
    assert score == int(run_at * 1000)
    assert await stream_lengths(streams) == [0, 0, 0]
    claimed = await streams.claim("c1", 5, 30)
    assert claimed.tasks == []
    assert claimed.wake_in is not None and 58 < claimed.wake_in <= 60
    counts = await views.counts(streams)
    assert counts["states"]["scheduled"] == 1
    assert counts["by_priority"]["scheduled"]["high"] == 1
    # a queued task behind it is position 1: scheduled work does not count
    assert (await streams.enqueue(req("q1", priority="low")))["position"] == 1


async def test_scheduled_task_is_delivered_once_due(streams: Queue) -> None:
    await streams.enqueue(req("soon", delay=0.2))
    await streams.enqueue(req("now"))
    assert await claim_ids(streams) == ["now"]

    async def delivered() -> list[Task]:
        return (await streams.claim("c1", 5, 30)).tasks

    [task] = await wait_for(delivered, timeout=5)
    assert task.eval_id == "soon"
    assert task.attempt == 1
    assert task.payload == {"code": "print(1)"}
    assert (await views.counts(streams))["states"]["scheduled"] == 0


async def test_enqueue_many(streams: Queue) -> None:
    await streams.enqueue(req("b0"))
    answers = await streams.engine.enqueue_many(
        [req("b1", priority="high"), req("b0"), req("b2", delay=30), req("b3")]
    )
    assert answers[0] == {"eval_id": "b1", "status": "queued", "priority": "high", "position": 1}
    assert answers[1]["eval_id"] == "b0" and answers[1]["code"] == 409
    assert "already exists" in answers[1]["error"]
    assert answers[2] == {"eval_id": "b2", "status": "scheduled", "priority": "default"}
    assert answers[3]["position"] == 3
    assert await claim_ids(streams) == ["b1", "b0", "b3"]


async def test_enqueue_many_empty(streams: Queue) -> None:
    assert await streams.engine.enqueue_many([]) == []


# --- positions ----------------------------------------------------------------------


async def test_positions_in_strict_priority_order(streams: Queue) -> None:
    order = [("L1", "low"), ("D1", "default"), ("H1", "high"), ("L2", "low")]
    order += [("H2", "high"), ("D2", "default")]
    at_enqueue = [(await streams.enqueue(req(i, priority=p)))["position"] for i, p in order]
    assert at_enqueue == [1, 1, 1, 4, 2, 4]
    expected = {"H1": 1, "H2": 2, "D1": 3, "D2": 4, "L1": 5, "L2": 6}
    assert {i: (await streams.get(i))["position"] for i in expected} == expected
    # after delivering the first one everyone moves up
    assert await claim_ids(streams, 1) == ["H1"]
    assert {i: (await streams.get(i))["position"] for i in expected if i != "H1"} == {
        i: p - 1 for i, p in expected.items() if i != "H1"
    }
    assert "position" not in await streams.get("H1")


async def test_positions_after_cancelling_queued_tasks(streams: Queue) -> None:
    for i in range(1, 6):
        await streams.enqueue(req(f"d{i}"))
    await streams.enqueue(req("h1", priority="high"))
    await streams.cancel("d2")
    assert (await streams.get("d3"))["position"] == 3  # h1, d1, d3
    assert (await streams.get("d5"))["position"] == 5
    await streams.cancel("h1")
    assert (await streams.get("d1"))["position"] == 1
    assert (await streams.get("d5"))["position"] == 4
    assert (await streams.enqueue(req("d6")))["position"] == 5
    counts = await views.counts(streams)
    assert counts["by_priority"]["queued"] == {"high": 0, "default": 5, "low": 0}
    # delivery skips the holes and the positions stay exact as the head moves
    assert await claim_ids(streams, 2) == ["d1", "d3"]
    assert (await streams.get("d4"))["position"] == 1
    await streams.cancel("d5")  # a hole above the head
    assert (await streams.get("d6"))["position"] == 2
    assert (await streams.enqueue(req("d7")))["position"] == 3
    assert (await views.counts(streams))["states"]["queued"] == 3
    assert await claim_ids(streams) == ["d4", "d6", "d7"]
    assert (await views.counts(streams))["states"]["queued"] == 0
    assert (await streams.enqueue(req("d8")))["position"] == 1


async def test_cancelling_the_newest_task_keeps_positions_exact(streams: Queue) -> None:
    for i in range(1, 4):
        await streams.enqueue(req(f"n{i}"))
    await streams.cancel("n3")
    assert await claim_ids(streams) == ["n1", "n2"]
    assert (await views.counts(streams))["states"]["queued"] == 0
    assert (await streams.enqueue(req("n4")))["position"] == 1
    assert (await streams.get("n4"))["position"] == 1


# --- claim --------------------------------------------------------------------------


async def test_claim_order_high_default_low_fifo(streams: Queue) -> None:
    order: list[tuple[str, Any]] = [("L1", "low"), ("D1", "default"), ("H1", "high")]
    order += [("L2", "low"), ("H2", "high"), ("D2", "default"), ("H3", True), ("D3", False)]
    for eval_id, priority in order:
        await streams.enqueue(req(eval_id, priority=priority))
    claimed = await streams.claim("c1", 10, 30)
    assert [t.eval_id for t in claimed.tasks] == ["H1", "H2", "H3", "D1", "D2", "D3", "L1", "L2"]
    assert [t.priority.value for t in claimed.tasks] == ["high"] * 3 + ["default"] * 3 + ["low"] * 2
    assert all(t.attempt == 1 for t in claimed.tasks)
    assert claimed.recreated is False or claimed.recreated is True  # first use may create groups
    assert claimed.wake_in is not None and 29 < claimed.wake_in <= 30


async def test_claim_takes_only_count(streams: Queue) -> None:
    for i in range(3):
        await streams.enqueue(req(f"d{i}"))
        await streams.enqueue(req(f"l{i}", priority="low"))
    await streams.enqueue(req("h0", priority="high"))
    assert await claim_ids(streams, 2) == ["h0", "d0"]
    assert await claim_ids(streams, 1) == ["d1"]
    assert await claim_ids(streams, 3) == ["d2", "l0", "l1"]
    # a high task that arrives now goes before the remaining low one
    await streams.enqueue(req("h1", priority="high"))
    assert await claim_ids(streams, 1) == ["h1"]
    assert await claim_ids(streams, 5) == ["l2"]
    assert await claim_ids(streams, 5) == []
    assert (await views.counts(streams))["states"]["processing"] == 8


async def test_claim_marks_processing(streams: Queue) -> None:
    await streams.enqueue(req("p1"))
    before = await server_ms(raw(streams))
    task = await claim_one(streams, lease=10)
    record = await streams.get("p1")
    assert record["status"] == "processing"
    assert record["attempts"] == 1
    assert record["started_at"] is not None
    assert "position" not in record
    deadline = await raw(streams).zscore(streams.keys.leases, "p1")
    assert before + 10_000 <= deadline <= before + 10_000 + 1000
    fields = await raw(streams).hgetall(streams.keys.task("p1"))
    assert fields[b"entry"] == task.entry.encode()
    assert fields[b"worker"] == b"c1"


async def test_consumer_group_and_consumer_visible_to_operators(streams: Queue) -> None:
    await streams.enqueue(req("x1"))
    await streams.claim("host-a:123", 5, 30)
    key = streams.keys.stream("default")
    groups = await raw(streams).xinfo_groups(key)
    assert [g["name"] for g in groups] == [GROUP.encode()]
    assert groups[0]["pending"] == 1
    consumers = await raw(streams).xinfo_consumers(key, GROUP)
    assert [c["name"] for c in consumers] == [b"host-a:123"]
    [entry] = await raw(streams).xpending_range(key, GROUP, "-", "+", 10)
    assert entry["consumer"] == b"host-a:123"
    assert entry["times_delivered"] == 1
    for other in (streams.keys.stream("high"), streams.keys.stream("low")):
        assert [g["name"] for g in await raw(streams).xinfo_groups(other)] == [GROUP.encode()]
    merged = await views.consumers(streams)
    assert [(c["name"], c["pending"]) for c in merged] == [("host-a:123", 1)]


async def test_claim_recreates_a_destroyed_group(streams: Queue) -> None:
    await streams.ensure_groups()
    await streams.enqueue(req("g1"))
    await streams.enqueue(req("g2", priority="low"))
    for key in streams.keys.streams:
        assert await raw(streams).xgroup_destroy(key, GROUP) == 1
    claimed = await streams.claim("c1", 5, 30)
    assert claimed.recreated is True
    assert [t.eval_id for t in claimed.tasks] == ["g1", "g2"]
    assert (await streams.claim("c1", 5, 30)).recreated is False
    for key in streams.keys.streams:
        assert [g["name"] for g in await raw(streams).xinfo_groups(key)] == [GROUP.encode()]


async def test_claim_recreates_a_destroyed_group_with_a_lapsed_lease(streams: Queue) -> None:
    await streams.ensure_groups()
    await streams.enqueue(req("held"))
    first = await claim_one(streams, "dead", lease=0.05)
    for key in streams.keys.streams:
        await raw(streams).xgroup_destroy(key, GROUP)
    await wait_lease_lapsed(streams, "held")
    claimed = await streams.claim("alive", 5, 30)
    assert claimed.recreated is True
    assert [(t.eval_id, t.entry, t.attempt) for t in claimed.tasks] == [("held", first.entry, 2)]


async def test_renew_survives_a_destroyed_group(streams: Queue) -> None:
    await streams.ensure_groups()
    await streams.enqueue(req("held"))
    task = await claim_one(streams, "c1", lease=30)
    for key in streams.keys.streams:
        await raw(streams).xgroup_destroy(key, GROUP)
    assert await streams.renew("c1", [task], 30) in ([], ["held"])


async def test_claim_on_a_fresh_queue(streams: Queue) -> None:
    claimed = await streams.claim("c1", 5, 30)
    assert claimed.tasks == []
    assert claimed.wake_in is None
    await streams.ensure_groups()
    await streams.ensure_groups()  # idempotent
    assert (await streams.claim("c1", 5, 30)).recreated is False


# --- fencing and leases -------------------------------------------------------------


async def test_stale_tokens_are_refused(streams: Queue) -> None:
    await streams.enqueue(req("f1"))
    task = await claim_one(streams)
    assert task.attempt == 1
    wrong_attempt = Task(task.eval_id, task.entry, 2, task.priority, task.payload)
    wrong_entry = Task(task.eval_id, "1-0", 1, task.priority, task.payload)
    for stale in (wrong_attempt, wrong_entry):
        with pytest.raises(Conflict, match="stale"):
            await streams.complete("f1", {"x": 1}, stale)
        with pytest.raises(Conflict, match="stale"):
            await streams.fail("f1", "boom", task=stale)
        assert await streams.renew("c1", [stale], 30) == ["f1"]
    assert (await streams.get("f1"))["status"] == "processing"
    await streams.complete("f1", {"x": 1}, task)
    assert (await streams.get("f1"))["result"] == {"x": 1}


async def test_an_older_delivery_cannot_settle_the_newer_one(streams: Queue) -> None:
    await streams.enqueue(req("f2"))
    first = await claim_one(streams, "c1", lease=0.05)
    await wait_lease_lapsed(streams, "f2")
    with pytest.raises(Conflict, match="lease expired"):
        await streams.complete("f2", {"late": True}, first)
    assert await streams.renew("c1", [first], 30) == ["f2"]
    second = await claim_one(streams, "c2")
    assert (second.eval_id, second.entry, second.attempt) == ("f2", first.entry, 2)
    assert (await streams.get("f2"))["attempts"] == 2
    for call in (
        streams.complete("f2", {"late": True}, first),
        streams.fail("f2", "late", task=first),
    ):
        with pytest.raises(Conflict, match="stale"):
            await call
    assert await streams.renew("c1", [first], 30) == ["f2"]
    [entry] = await raw(streams).xpending_range(streams.keys.stream("default"), GROUP, "-", "+", 10)
    assert entry["consumer"] == b"c2"
    assert entry["times_delivered"] == 2
    await streams.complete("f2", {"on_time": True}, second)
    assert (await streams.get("f2"))["result"] == {"on_time": True}


async def test_unfenced_calls_accepted_while_lease_is_live(streams: Queue) -> None:
    await streams.enqueue(req("u1"))
    await claim_one(streams)
    await streams.complete("u1", {"pull": "worker"})
    assert (await streams.get("u1"))["status"] == "completed"
    await streams.enqueue(req("u2"))
    await claim_one(streams, lease=0.05)
    await wait_lease_lapsed(streams, "u2")
    with pytest.raises(Conflict, match="lease expired"):
        await streams.complete("u2", {})


async def test_renew_extends_and_releases_leases(streams: Queue) -> None:
    await streams.enqueue(req("r1"))
    await streams.enqueue(req("r2"))
    tasks = (await streams.claim("c1", 2, 0.3)).tasks
    before = await server_ms(raw(streams))
    assert await streams.renew("c1", tasks, 20) == []
    for task in tasks:
        deadline = await raw(streams).zscore(streams.keys.leases, task.eval_id)
        assert before + 20_000 <= deadline <= before + 21_000
    assert await streams.renew("c1", [], 20) == []
    # lease 0 hands the task back: the next claim takes it over as attempt 2
    assert await streams.renew("c1", tasks[:1], 0) == []
    again = await claim_one(streams, "c2")
    assert (again.eval_id, again.attempt) == ("r1", 2)
    assert await streams.renew("c1", tasks[:1], 20) == ["r1"]
    assert await streams.renew("c1", tasks[1:], 20) == []


async def test_renew_reports_finished_and_unknown_tasks(streams: Queue) -> None:
    await streams.enqueue(req("r3"))
    task = await claim_one(streams)
    await streams.complete("r3", {}, task)
    ghost = Task("ghost", "1-0", 1, Priority.DEFAULT, {})
    assert await streams.renew("c1", [task, ghost], 20) == ["r3", "ghost"]


async def test_expired_lease_is_reclaimed_by_another_consumer(streams: Queue) -> None:
    await streams.enqueue(req("e1"))
    await streams.enqueue(req("e2"))
    first = await claim_one(streams, "dead", lease=0.05)
    await wait_lease_lapsed(streams, "e1")
    claimed = await streams.claim("alive", 5, 30)
    # the lapsed one first, then new work
    assert [(t.eval_id, t.attempt) for t in claimed.tasks] == [("e1", 2), ("e2", 1)]
    assert claimed.tasks[0].entry == first.entry
    assert claimed.tasks[0].payload == {"code": "print(1)"}
    record = await streams.get("e1")
    assert (record["status"], record["attempts"]) == ("processing", 2)
    consumers = await raw(streams).xinfo_consumers(streams.keys.stream("default"), GROUP)
    assert {c["name"]: c["pending"] for c in consumers} == {b"dead": 0, b"alive": 2}


async def test_poison_guard_buries_a_task_whose_lease_keeps_lapsing(
    make_streams: Callable[..., Queue], subscriber: Callable[[str], Any]
) -> None:
    streams = make_streams(lease_max_lapses=1)
    failed = await subscriber("evaluation:failed")
    await streams.enqueue(req("poison", metadata={"m": 1}))
    await claim_one(streams, "c1", lease=0.05)
    await wait_lease_lapsed(streams, "poison")
    second = await claim_one(streams, "c2", lease=0.05)
    assert second.attempt == 2
    await wait_lease_lapsed(streams, "poison")
    assert (await streams.claim("c3", 5, 30)).tasks == []
    record = await streams.get("poison")
    assert record["status"] == "failed"
    assert "lapsed 2 times" in record["error"]
    assert record["attempts"] == 2
    [(_, dead)] = await raw(streams).xrange(streams.keys.dlq)
    assert dead[b"id"] == b"poison"
    assert dead[b"attempts"] == b"2"
    assert orjson.loads(dead[b"payload"]) == {"code": "print(1)", "metadata": {"m": 1}}
    assert await stream_lengths(streams) == [0, 0, 0]
    assert await pending(streams) == 0
    assert await raw(streams).zcard(streams.keys.leases) == 0
    message = await failed.message_for("poison")
    assert message["result"]["status"] == "failed"
    assert "lapsed" in message["result"]["output"]
    counts = await views.counts(streams)
    assert counts["dlq"] == 1
    assert counts["states"]["processing"] == 0


# --- complete -----------------------------------------------------------------------


async def test_complete(streams: Queue, subscriber: Callable[[str], Any]) -> None:
    completed = await subscriber("evaluation:completed")
    await streams.enqueue(req("c1", priority="high"))
    task = await claim_one(streams)
    result = {"status": "success", "output": "1\n", "exit_code": 0}
    await streams.complete("c1", result, task)
    record = await streams.get("c1")
    assert record["status"] == "completed"
    assert record["result"] == result
    assert record["completed_at"] is not None and record["error"] is None
    ttl = await raw(streams).ttl(streams.keys.task("c1"))
    assert streams.settings.result_ttl - 5 <= ttl <= streams.settings.result_ttl
    assert await stream_lengths(streams) == [0, 0, 0]
    assert await pending(streams, "high") == 0
    assert await raw(streams).zscore(streams.keys.leases, "c1") is None
    assert await completed.message_for("c1") == {"eval_id": "c1", "result": result}
    counts = await views.counts(streams)
    assert counts["totals"]["completed"] == 1
    assert counts["states"]["processing"] == 0
    with pytest.raises(Conflict, match="completed"):
        await streams.complete("c1", result, task)


async def test_complete_refusals(streams: Queue) -> None:
    with pytest.raises(NotFound):
        await streams.complete("nobody", {})
    await streams.enqueue(req("q1"))
    with pytest.raises(Conflict, match="queued"):
        await streams.complete("q1", {})
    await streams.enqueue(req("s1", delay=60))
    with pytest.raises(Conflict, match="scheduled"):
        await streams.complete("s1", {})


async def test_complete_with_a_non_object_result(streams: Queue) -> None:
    await streams.enqueue(req("c2"))
    task = await claim_one(streams)
    await streams.complete("c2", "plain text", task)
    assert (await streams.get("c2"))["result"] == "plain text"


# --- fail ---------------------------------------------------------------------------


def due_of(answer: dict[str, Any]) -> int:
    moment = datetime.fromisoformat(answer["retry_at"].replace("Z", "+00:00"))
    return round(moment.timestamp() * 1000)


async def test_fail_with_retry_backs_off_then_requeues(streams: Queue) -> None:
    await streams.enqueue(req("r1"))
    task = await claim_one(streams)
    before = await server_ms(raw(streams))
    answer = await streams.fail("r1", "boom", task=task, policy=FAST)
    after = await server_ms(raw(streams))
    assert answer["status"] == "retrying"
    assert before + 200 <= due_of(answer) <= after + 200
    record = await streams.get("r1")
    assert (record["status"], record["error"]) == ("retrying", "boom")
    assert record["run_at"] == answer["retry_at"]
    assert await raw(streams).zscore(streams.keys.scheduled, "r1") == due_of(answer)
    assert await stream_lengths(streams) == [0, 0, 0]
    assert await pending(streams) == 0
    counts = await views.counts(streams)
    assert counts["by_priority"]["retrying"]["default"] == 1
    assert counts["totals"]["retried"] == 1

    async def redelivered() -> list[Task]:
        return (await streams.claim("c1", 5, 30)).tasks

    [again] = await wait_for(redelivered, timeout=5)
    assert await server_ms(raw(streams)) >= due_of(answer)
    assert (again.eval_id, again.attempt) == ("r1", 2)
    assert again.entry != task.entry
    assert again.payload == {"code": "print(1)"}
    assert (await views.counts(streams))["states"]["retrying"] == 0
    # retry 2 waits base * exp
    before = await server_ms(raw(streams))
    second = await streams.fail("r1", "boom again", task=again, policy=FAST)
    assert before + 400 <= due_of(second) <= await server_ms(raw(streams)) + 400


async def test_retried_task_is_queued_at_its_priority(streams: Queue) -> None:
    await streams.enqueue(req("hi", priority="high"))
    task = await claim_one(streams)
    await streams.fail("hi", "x", task=task, policy=RetryPolicy(3, 0.01, 2, 1, False))
    await streams.enqueue(req("d1"))

    async def requeued() -> bool:
        await streams.claim("c1", 0, 30)  # promotes without taking anything
        return bool((await streams.get("hi"))["status"] == "queued")

    await wait_for(requeued, timeout=5)
    assert (await streams.get("hi"))["position"] == 1
    assert (await streams.get("d1"))["position"] == 2
    assert await claim_ids(streams) == ["hi", "d1"]


async def test_fail_delay_is_capped_and_jittered(streams: Queue) -> None:
    for i, policy in enumerate(
        [RetryPolicy(3, 10.0, 2.0, 4.0, False), RetryPolicy(3, 10.0, 2.0, 300.0, True)]
    ):
        await streams.enqueue(req(f"j{i}"))
        task = await claim_one(streams)
        before = await server_ms(raw(streams))
        answer = await streams.fail(task.eval_id, "x", task=task, policy=policy)
        delay = due_of(answer) - before
        if policy.jitter:
            assert 5000 - 50 <= delay <= 10_000 + 50
        else:
            assert 4000 - 50 <= delay <= 4000 + 50


async def test_fail_without_retry_goes_to_the_dlq(
    streams: Queue, subscriber: Callable[[str], Any]
) -> None:
    failed = await subscriber("evaluation:failed")
    await streams.enqueue(req("dead", priority="low", metadata={"u": "x"}))
    task = await claim_one(streams)
    answer = await streams.fail(
        "dead", "SyntaxError", retry=False, task=task, detail={"traceback": "tb"}, exit_code=1
    )
    assert answer == {"eval_id": "dead", "status": "failed", "queue": streams.keys.queue}
    record = await streams.get("dead")
    assert (record["status"], record["error"]) == ("failed", "SyntaxError")
    assert record["completed_at"] is not None
    ttl = await raw(streams).ttl(streams.keys.task("dead"))
    assert streams.settings.failure_ttl - 5 <= ttl <= streams.settings.failure_ttl
    [(_, dead)] = await raw(streams).xrange(streams.keys.dlq)
    assert dead[b"id"] == b"dead"
    assert dead[b"error"] == b"SyntaxError"
    assert dead[b"attempts"] == b"1"
    assert dead[b"prio"] == b"low"
    assert orjson.loads(dead[b"payload"]) == {"code": "print(1)", "metadata": {"u": "x"}}
    assert orjson.loads(dead[b"detail"]) == {"traceback": "tb"}
    assert await stream_lengths(streams) == [0, 0, 0]
    assert await pending(streams, "low") == 0
    assert await failed.message_for("dead") == {
        "eval_id": "dead",
        "result": {"status": "failed", "output": "SyntaxError", "exit_code": 1},
    }
    counts = await views.counts(streams)
    assert (counts["dlq"], counts["totals"]["failed"]) == (1, 1)
    with pytest.raises(Conflict, match="failed"):
        await streams.fail("dead", "again", task=task)


async def test_fail_refusals(streams: Queue) -> None:
    with pytest.raises(NotFound):
        await streams.fail("nobody", "x")
    await streams.enqueue(req("q1"))
    with pytest.raises(Conflict, match="queued"):
        await streams.fail("q1", "x")


async def test_max_retries_from_the_policy(streams: Queue) -> None:
    policy = RetryPolicy(2, 0.01, 1.0, 1.0, False)
    await streams.enqueue(req("m1"))
    statuses = []
    for attempt in (1, 2, 3):

        async def delivered() -> list[Task]:
            return (await streams.claim("c1", 1, 30)).tasks

        [task] = await wait_for(delivered, timeout=5)
        assert task.attempt == attempt
        statuses.append((await streams.fail("m1", "x", task=task, policy=policy))["status"])
    assert statuses == ["retrying", "retrying", "failed"]
    [(_, dead)] = await raw(streams).xrange(streams.keys.dlq)
    assert dead[b"attempts"] == b"3"


async def test_max_retries_per_task_overrides_the_policy(streams: Queue) -> None:
    await streams.enqueue(req("none", max_retries=0))
    task = await claim_one(streams)
    answer = await streams.fail("none", "x", task=task, policy=RetryPolicy(5, 0.01, 1, 1, False))
    assert answer["status"] == "failed"

    await streams.enqueue(req("one", max_retries=1))
    policy = RetryPolicy(0, 0.01, 1.0, 1.0, False)
    task = await claim_one(streams)
    assert (await streams.fail("one", "x", task=task, policy=policy))["status"] == "retrying"

    async def delivered() -> list[Task]:
        return (await streams.claim("c1", 1, 30)).tasks

    [task] = await wait_for(delivered, timeout=5)
    assert task.payload["max_retries"] == 1
    assert (await streams.fail("one", "x", task=task, policy=policy))["status"] == "failed"


async def test_default_policy_comes_from_settings(make_streams: Callable[..., Queue]) -> None:
    streams = make_streams(retry=RetryPolicy(0, 0.01, 1.0, 1.0, False))
    await streams.enqueue(req("d1"))
    task = await claim_one(streams)
    assert (await streams.fail("d1", "x", task=task))["status"] == "failed"


# --- cancel -------------------------------------------------------------------------


async def test_cancel_queued(streams: Queue) -> None:
    await streams.enqueue(req("c1"))
    assert await streams.cancel("c1") == {
        "eval_id": "c1",
        "status": "cancelled",
        "queue": streams.keys.queue,
    }
    record = await streams.get("c1")
    assert record["status"] == "cancelled"
    assert record["completed_at"] is not None
    assert await stream_lengths(streams) == [0, 0, 0]
    ttl = await raw(streams).ttl(streams.keys.task("c1"))
    assert 0 < ttl <= streams.settings.result_ttl
    assert await claim_ids(streams) == []
    assert (await views.counts(streams))["totals"]["cancelled"] == 1


async def test_cancel_scheduled_and_retrying(streams: Queue) -> None:
    await streams.enqueue(req("s1", delay=0.3))
    await streams.cancel("s1")
    assert await raw(streams).zscore(streams.keys.scheduled, "s1") is None
    await streams.enqueue(req("r1"))
    task = await claim_one(streams)
    await streams.fail("r1", "x", task=task, policy=RetryPolicy(3, 300, 2, 300, False))
    assert (await streams.get("r1"))["status"] == "retrying"
    await streams.cancel("r1")
    assert await raw(streams).zcard(streams.keys.scheduled) == 0
    counts = await views.counts(streams)
    assert counts["states"]["scheduled"] == 0
    assert counts["states"]["retrying"] == 0
    assert counts["totals"]["cancelled"] == 2
    assert (await streams.get("s1"))["status"] == "cancelled"
    assert (await streams.get("r1"))["status"] == "cancelled"
    # nothing comes back once the scheduled time has passed
    due = await server_ms(raw(streams)) + 350

    async def past_due() -> bool:
        return await server_ms(raw(streams)) > due

    await wait_for(past_due, timeout=5)
    assert await claim_ids(streams) == []


async def test_cancel_processing_needs_terminate(
    streams: Queue, subscriber: Callable[[str], Any]
) -> None:
    await streams.enqueue(req("p1"))
    task = await claim_one(streams)
    with pytest.raises(Conflict, match="processing"):
        await streams.cancel("p1")
    assert (await streams.get("p1"))["status"] == "processing"
    cancels = await subscriber(streams.keys.cancel_channel)
    cancels.pubsub.ignore_subscribe_messages = False
    assert (await streams.cancel("p1", terminate=True))["status"] == "cancelled"
    message = await cancels.pubsub.get_message(timeout=2)
    assert message is not None and message["data"] == b"p1"
    assert await stream_lengths(streams) == [0, 0, 0]
    assert await pending(streams) == 0
    assert await raw(streams).zcard(streams.keys.leases) == 0
    # the holder finds out when it reports
    with pytest.raises(Conflict, match="cancelled"):
        await streams.complete("p1", {}, task)
    assert await streams.renew("c1", [task], 30) == ["p1"]


async def test_cancel_finished_or_unknown(streams: Queue) -> None:
    await streams.enqueue(req("f1"))
    task = await claim_one(streams)
    await streams.complete("f1", {}, task)
    for terminate in (False, True):
        with pytest.raises(Conflict, match="completed"):
            await streams.cancel("f1", terminate=terminate)
    await streams.enqueue(req("f2"))
    await streams.cancel("f2")
    with pytest.raises(Conflict, match="cancelled"):
        await streams.cancel("f2")
    await streams.enqueue(req("f3"))
    task = await claim_one(streams)
    await streams.fail("f3", "x", retry=False, task=task)
    with pytest.raises(Conflict, match="failed"):
        await streams.cancel("f3", terminate=True)
    with pytest.raises(NotFound):
        await streams.cancel("ghost")


async def test_get_unknown(streams: Queue) -> None:
    with pytest.raises(NotFound):
        await streams.get("nothing")


# --- promote, wait_for_work ---------------------------------------------------------


async def test_promote(streams: Queue) -> None:
    assert await streams.promote() is None
    await streams.enqueue(req("p-soon", delay=0.1, priority="low"))
    await streams.enqueue(req("p-later", delay=60))
    wait = await streams.promote()
    assert wait is not None and 0 <= wait <= 0.1

    async def promoted() -> bool:
        await streams.promote()
        return bool((await streams.get("p-soon"))["status"] == "queued")

    await wait_for(promoted, timeout=5)
    wait = await streams.promote()
    assert wait is not None and 59 < wait <= 60
    assert (await streams.get("p-soon"))["position"] == 1
    counts = await views.counts(streams)
    assert counts["by_priority"]["scheduled"] == {"high": 0, "default": 1, "low": 0}
    assert counts["by_priority"]["queued"]["low"] == 1
    assert await claim_ids(streams) == ["p-soon"]


async def test_wait_for_work(streams: Queue) -> None:
    await streams.ensure_groups()
    idle = await streams.claim("c1", 1, 30)
    assert idle.tasks == [] and len(idle.tails) == 3
    loop = asyncio.get_running_loop()
    started = loop.time()
    await streams.wait_for_work(0.1, idle.tails)
    assert 0.08 <= loop.time() - started < 2
    await streams.wait_for_work(0, idle.tails)
    waiter = asyncio.ensure_future(streams.wait_for_work(5, idle.tails))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    started = loop.time()
    await streams.enqueue(req("wake", priority="low"))
    await asyncio.wait_for(waiter, 2)
    assert loop.time() - started < 1


async def test_wait_for_work_sees_an_entry_added_right_after_the_claim(streams: Queue) -> None:
    """The tails come from the claim itself: nothing added after it can be missed."""
    await streams.ensure_groups()
    idle = await streams.claim("c1", 1, 30)
    await streams.enqueue(req("between"))
    started = asyncio.get_running_loop().time()
    await streams.wait_for_work(3, idle.tails)
    assert asyncio.get_running_loop().time() - started < 0.5
