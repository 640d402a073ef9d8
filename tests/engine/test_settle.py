"""Completions settled in batches (engine/settle.py, complete_batch.lua): each task of a
batch ends exactly as `complete` ends it, and each caller gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from app.engine import settle, views
from app.engine.engine import Engine
from app.engine.queue import Queue
from app.errors import Conflict, NotFound
from app.models import Task
from app.settings import Settings
from tests.engine.conftest import claim_one, raw, req, stream_lengths
from tests.engine.test_queue import pending
from tests.engine.test_queue import subscriber as subscriber  # the fixture


async def claimed(streams: Queue, n: int, prefix: str = "b", **fields: Any) -> list[Task]:
    for i in range(n):
        await streams.enqueue(req(f"{prefix}{i}", **fields))
    got = await streams.claim("c1", n, 30)
    assert len(got.tasks) == n
    return got.tasks


def count_calls(streams: Queue, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the scripts `streams` runs from now on."""
    names: list[str] = []
    run = streams.scripts.run

    async def counted(name: str, keys: Any, args: Any) -> Any:
        names.append(name)
        return await run(name, keys, args)

    monkeypatch.setattr(streams.scripts, "run", counted)
    return names


async def test_a_turn_of_completions_is_one_script_call(
    streams: Queue, subscriber: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    completed = await subscriber("evaluation:completed")
    tasks = await claimed(streams, 30)
    calls = count_calls(streams, monkeypatch)
    results = [{"status": "success", "output": str(i), "exit_code": 0} for i in range(30)]
    names = await asyncio.gather(
        *(streams.complete_soon(t.eval_id, r, t) for t, r in zip(tasks, results, strict=True))
    )
    assert calls == ["complete_batch"]
    assert names == [streams.keys.queue] * 30
    for task, result in zip(tasks, results, strict=True):
        record = await streams.get(task.eval_id)
        assert (record["status"], record["result"]) == ("completed", result)
        assert record["completed_at"] is not None and record["error"] is None
        ttl = await raw(streams).ttl(streams.keys.task(task.eval_id))
        assert streams.settings.result_ttl - 5 <= ttl <= streams.settings.result_ttl
        assert await completed.message_for(task.eval_id) == {
            "eval_id": task.eval_id,
            "result": result,
        }
    assert await stream_lengths(streams) == [0, 0, 0]
    assert await pending(streams) == 0
    assert await raw(streams).zcard(streams.keys.leases) == 0
    counts = await views.counts(streams)
    assert counts["totals"]["completed"] == 30
    assert counts["states"]["processing"] == 0
    events = await raw(streams).xrange(streams.keys.events)
    done = [e for _, e in events if e[b"state"] == b"completed"]
    assert sorted(e[b"id"].decode() for e in done) == sorted(t.eval_id for t in tasks)
    assert {e[b"attempt"] for e in done} == {b"1"}
    stats = await raw(streams).hgetall(streams.keys.stats)
    assert sum(int(v) for f, v in stats.items() if f.endswith(b":completed")) == 30


async def test_each_task_of_a_batch_is_fenced_on_its_own(streams: Queue) -> None:
    tasks = await claimed(streams, 4, priority="high")
    await streams.enqueue(req("waiting"))
    stale = Task(tasks[1].eval_id, tasks[1].entry, tasks[1].attempt + 1, tasks[1].priority)
    await raw(streams).zadd(streams.keys.leases, {tasks[2].eval_id: 1})  # lapsed
    answers = await asyncio.gather(
        streams.complete_soon(tasks[0].eval_id, {"ok": 0}, tasks[0]),
        streams.complete_soon(stale.eval_id, {"ok": 1}, stale),
        streams.complete_soon(tasks[2].eval_id, {"ok": 2}, tasks[2]),
        streams.complete_soon("nobody", {}, tasks[3]),
        streams.complete_soon("waiting", {}),
        streams.complete_soon(tasks[0].eval_id, {"again": True}, tasks[0]),
        streams.complete_soon(tasks[3].eval_id, {"ok": 3}, tasks[3]),
        return_exceptions=True,
    )
    assert answers[0] == answers[6] == streams.keys.queue
    assert isinstance(answers[1], Conflict) and "stale" in str(answers[1])
    assert isinstance(answers[2], Conflict) and "lease expired" in str(answers[2])
    assert isinstance(answers[3], NotFound)
    assert isinstance(answers[4], Conflict) and "queued" in str(answers[4])
    assert isinstance(answers[5], Conflict) and "completed" in str(answers[5])
    states = [(await streams.get(t.eval_id))["status"] for t in tasks]
    assert states == ["completed", "processing", "processing", "completed"]
    assert (await streams.get(tasks[0].eval_id))["result"] == {"ok": 0}
    assert await pending(streams, "high") == 2
    assert await raw(streams).xlen(streams.keys.stream("high")) == 2
    assert (await views.counts(streams))["totals"]["completed"] == 2


async def test_a_batch_larger_than_the_cap_is_split(
    streams: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settle, "MAX_BATCH", 3)
    tasks = await claimed(streams, 8)
    await asyncio.gather(*(streams.complete_soon(t.eval_id, {}, t) for t in tasks))
    assert (await views.counts(streams))["totals"]["completed"] == 8
    assert await stream_lengths(streams) == [0, 0, 0]


async def test_dependants_and_callbacks_of_a_batch(streams: Queue) -> None:
    await streams.enqueue(req("parent"))
    await streams.enqueue(req("plain"))
    await streams.enqueue(req("child", depends_on=["parent"]))
    got = await streams.claim("c1", 2, 30)
    await asyncio.gather(*(streams.complete_soon(t.eval_id, {}, t) for t in got.tasks))
    assert (await streams.get("child"))["status"] == "queued"
    assert (await claim_one(streams)).eval_id == "child"


async def test_a_task_of_a_named_queue_is_found_from_the_default_queue(
    client: Any, make_settings: Callable[..., Settings]
) -> None:
    engine = Engine(client, make_settings())
    named = engine.queue("side")
    await named.enqueue(req("n1", queue="side"))
    task = await claim_one(named)
    assert await engine.default.complete_soon("n1", {"ok": True}, task) == "side"
    assert (await named.get("n1"))["status"] == "completed"


async def test_a_tenants_task_in_a_turn_is_completed_on_its_own_stream(
    streams: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fair share keeps a tenant's entry in a tenant stream, which the batch does not ack:
    the batch hands such a task back and `complete` settles it."""
    plain = await claimed(streams, 3, "p")
    fair = await claimed(streams, 3, "t", tenant="acme")
    calls = count_calls(streams, monkeypatch)
    await asyncio.gather(*(streams.complete_soon(t.eval_id, 1, t) for t in [*plain, *fair]))
    assert calls.count("complete_batch") == 1 and calls.count("complete") == 3
    for task in [*plain, *fair]:
        assert (await streams.get(task.eval_id))["status"] == "completed"
    assert await stream_lengths(streams) == [0, 0, 0]
    tenant_lengths = [await raw(streams).exists(k) for k in streams.keys.tenant_streams]
    assert tenant_lengths == [0, 0, 0]  # emptied, so deleted
