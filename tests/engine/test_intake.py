"""Enqueues stored in batches (engine/intake.py, enqueue_batch.lua): a batch answers each task
exactly as `enqueue.lua` answers it when the tasks are sent one after the other, and leaves
Redis in the same state."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from redis.exceptions import ResponseError

from app.engine import intake, views
from app.engine.engine import Engine
from app.engine.queue import Queue
from app.errors import Conflict
from app.flow_settings import Flow
from app.models import TaskRequest
from app.settings import Settings
from tests.engine.conftest import claim_ids, raw, req
from tests.engine.test_settle import count_calls

# stream entry ids, then epoch ms (creation, due times): they differ between the runs
TIMES = re.compile(rb"\d{13}-\d+|\d{13}")


def _norm(value: Any, prefix: bytes) -> Any:
    """A value with the queue's key prefix and every epoch-ms time replaced."""
    if isinstance(value, bytes):
        return TIMES.sub(b"T", value.replace(prefix, b"P:"))
    if isinstance(value, float) and value > 1e12:
        return "T"
    if isinstance(value, list | tuple):
        return [_norm(v, prefix) for v in value]
    if isinstance(value, dict):
        return {_norm(k, prefix): _norm(v, prefix) for k, v in value.items()}
    return value


async def dump(queue: Queue) -> dict[Any, Any]:
    """Every key of the queue's hash tag and its content, normalised (see `_norm`); the
    per-minute stats summed per state (a run may straddle a minute)."""
    r, prefix = raw(queue), queue.keys.task_prefix[: -len("task:")].encode()
    state: dict[Any, Any] = {}
    async for key in r.scan_iter(match=prefix.decode() + "*"):
        kind = (await r.type(key)).decode()
        if key == queue.keys.stats.encode():
            sums: Counter[str] = Counter()
            for field, count in (await r.hgetall(key)).items():
                if b":" in field:
                    sums[field.split(b":")[1].decode()] += int(count)
            content: Any = dict(sums)
        elif kind == "hash":
            content = await r.hgetall(key)
        elif kind == "stream":
            content = [list(e) for e in await r.xrange(key)]
            groups = await r.xinfo_groups(key)
            content.append(sorted((g["name"], g["pending"]) for g in groups))
        elif kind == "zset":
            content = await r.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            content = sorted(await r.smembers(key))
        else:
            content = await r.get(key)
        state[_norm(key, prefix)] = (kind, _norm(content, prefix))
    return state


async def prepare(queue: Queue) -> None:
    """The same history in each queue: tasks waiting at every priority, some delivered (the
    default level's head moves), one cancelled while queued (a hole), a tenant's task (fair
    share at `low`), dedup_key holders (active, debounce), a known eval_id."""
    for i, prio in enumerate(["high", "default", "default", "low", "default", "high"]):
        await queue.enqueue(req(f"old{i}", priority=prio))
    assert await claim_ids(queue, 3) == ["old0", "old5", "old1"]
    await queue.cancel("old2")
    await queue.enqueue(req("fair0", priority="low", tenant="acme"))
    await queue.enqueue(req("held", dedup_key="k-active"))
    await queue.enqueue(req("bounce", dedup_key="k-bounce", dedup="debounce", dedup_ttl=60))


def scenario() -> list[TaskRequest]:
    """A batch that reaches every branch of enqueue_task but parents."""
    later = time.time() + 3600
    return [
        req("a1"),
        req("a2", priority="high"),
        req("a3", priority="low"),
        req("a1", priority="high"),  # twice in the batch: a duplicate
        req("old3"),  # known before
        req("s1", run_at=later),  # scheduled
        req("s2", delay=30, priority="low"),
        req("p1", run_at=1_000_000),  # due long ago: queued
        req("x1", expires=600),
        req("x2", expires_at=later, run_at=later - 60),
        req("d1", dedup_key="k-active"),  # held by `held`: deduplicated
        req("d2", dedup_key="k-new"),
        req("d3", dedup_key="k-new"),  # held by d2, created just before it in the batch
        req("d4", dedup_key="k-bounce", dedup="debounce", dedup_ttl=90, code="newer"),
        req("d5", dedup_key="k-throttle", dedup="throttle", dedup_ttl=60),
        req("d6", dedup_key="k-throttle", dedup="throttle", dedup_ttl=60),
        req("t1", tenant="acme"),
        req("t2", tenant="zeta", priority="low"),
        req("t3", priority="low"),  # tenant `default` at a level under fair share
        req("t4", tenant="acme"),
        req("c1", callback_url="http://127.0.0.1:9/done"),
        req("a4"),
    ]


def two_queues(
    client: Any, make_settings: Callable[..., Settings], **overrides: Any
) -> tuple[Queue, Queue]:
    def one() -> Queue:
        return Engine(client, make_settings(queue=uuid.uuid4().hex, **overrides)).default

    return one(), one()


@pytest.mark.parametrize("weights", [{}, {"acme": 3.0}])
async def test_a_batch_answers_and_writes_as_single_enqueues_one_after_the_other(
    client: Any, make_settings: Callable[..., Settings], weights: dict[str, float]
) -> None:
    single, batched = two_queues(client, make_settings, flow=Flow(weights))
    await prepare(single)
    await prepare(batched)
    reqs = scenario()
    one_by_one = [await single.scripts.run("enqueue", *single.enqueue_args(r)) for r in reqs]
    together = await batched.scripts.run("enqueue_batch", *batched.enqueue_batch_args(reqs))
    assert together == one_by_one
    positions = [int(r[1]) for r in one_by_one if r[0] == b"queued"]
    assert len(positions) == 13 and all(p > 0 for p in positions)
    assert await dump(batched) == await dump(single)


async def test_a_turn_of_enqueues_is_one_script_call(
    client: Any, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    single, batched = two_queues(client, make_settings)
    reqs = scenario()[:6]
    expected: list[Any] = []
    for r in reqs:
        try:
            expected.append(await single.enqueue(r))
        except Conflict as exc:
            expected.append(exc)
    calls = count_calls(batched, monkeypatch)
    answers = await asyncio.gather(*(batched.enqueue(r) for r in reqs), return_exceptions=True)
    assert calls == ["enqueue_batch"]
    assert [str(a) if isinstance(a, Exception) else a for a in answers] == [
        str(a) if isinstance(a, Exception) else a for a in expected
    ]
    assert isinstance(answers[3], Conflict)
    assert (await views.counts(batched))["totals"]["enqueued"] == 5
    stats = await raw(batched).hgetall(batched.keys.stats)
    per_state = Counter({f.split(b":")[1]: int(v) for f, v in stats.items() if b":" in f})
    assert per_state == {b"queued": 4, b"scheduled": 1}


async def test_a_lone_enqueue_and_a_task_with_parents_run_enqueue_lua(
    streams: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_calls(streams, monkeypatch)
    await streams.enqueue(req("parent"))
    await asyncio.gather(streams.enqueue(req("child", depends_on=["parent"])))
    assert calls == ["enqueue", "enqueue"]
    assert (await streams.get("child"))["status"] == "deferred"


async def test_a_batch_larger_than_the_cap_is_split(
    streams: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "MAX_BATCH", 3)
    calls = count_calls(streams, monkeypatch)
    answers = await asyncio.gather(*(streams.enqueue(req(f"t{i}")) for i in range(7)))
    assert calls == ["enqueue_batch", "enqueue_batch", "enqueue"]
    assert [a["position"] for a in answers] == list(range(1, 8))


async def test_the_error_of_one_task_is_its_own(streams: Queue) -> None:
    """A task whose script call raises (a key of the wrong type) gets that error; the
    others of its batch are stored and answered as usual."""
    await raw(streams).hset(streams.keys.dedup, "k", "victim")
    await raw(streams).set(streams.keys.task("victim"), "not a hash")
    answers = await asyncio.gather(
        streams.enqueue(req("ok1")),
        streams.enqueue(req("bad", dedup_key="k")),
        streams.enqueue(req("ok2")),
        return_exceptions=True,
    )
    ok1, bad, ok2 = answers
    assert isinstance(ok1, dict) and isinstance(ok2, dict)
    assert ok1["position"] == 1 and ok2["position"] == 2
    assert isinstance(bad, ResponseError) and "WRONGTYPE" in str(bad)
    assert not await raw(streams).exists(streams.keys.task("bad"))
    assert (await views.counts(streams))["totals"]["enqueued"] == 2


async def test_a_partitioned_queue_sends_one_batch_per_partition(
    client: Any, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings()
    queue = Engine(client, make_settings(queue_partitions={settings.queue: 4})).default
    names = count_calls(queue, monkeypatch)  # (the partitions share the engine's Scripts)
    answers = await asyncio.gather(*(queue.enqueue(req(f"t{i}")) for i in range(40)))
    assert names == ["enqueue_batch"] * 4
    assert all(a["status"] == "queued" for a in answers)
    for part in queue.parts:
        assert await raw(part).xlen(part.keys.stream("default")) > 0


async def test_a_named_queue_batch_through_enqueue_many(
    client: Any, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /tasks/batch's engine call: a named queue's tasks each claim their eval_id in
    the id directory, then are stored in batches (the directory's replies are read one by
    one, so a slow read may split them over event-loop turns: fewer calls than tasks)."""
    engine = Engine(client, make_settings())
    side = engine.queue("side")
    calls = count_calls(side, monkeypatch)
    reqs = [req(f"n{i}", queue="side") for i in range(5)] + [req("n0", queue="side")]
    answers = await engine.enqueue_many(reqs)
    stores = calls.count("enqueue_batch") + calls.count("enqueue")
    assert "enqueue_batch" in calls and stores < len(reqs)
    assert [a["position"] for a in answers[:5]] == [1, 2, 3, 4, 5]
    assert answers[5]["code"] == 409
    assert await raw(side).hget(side.keys.task("n3"), "q") == b"side"
    assert (await engine.default.get("n3"))["status"] == "queued"  # through the directory
