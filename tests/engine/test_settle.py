"""Completions settled in batches (engine/settle.py, complete_batch.lua): each task of a
batch ends exactly as `complete` ends it, and each caller gets its own answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from app.engine import settle, views
from app.engine.client import subscribed
from app.engine.engine import Engine
from app.engine.keys import GROUP
from app.engine.queue import Queue
from app.errors import Conflict, NotFound
from app.flow_settings import Flow
from app.models import Task
from app.settings import Settings
from tests.conftest import wait_for
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


async def test_a_tenants_task_is_settled_in_the_batch_on_its_tenant_stream(
    streams: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fair share keeps a tenant's entry in its priority's tenant stream: the batch acks and
    deletes it there, and deletes the tenant stream once it is empty."""
    plain = await claimed(streams, 3, "p")
    fair = await claimed(streams, 3, "t", tenant="acme")
    calls = count_calls(streams, monkeypatch)
    await asyncio.gather(*(streams.complete_soon(t.eval_id, 1, t) for t in [*plain, *fair]))
    assert calls == ["complete_batch"]
    for task in [*plain, *fair]:
        assert (await streams.get(task.eval_id))["status"] == "completed"
    assert await stream_lengths(streams) == [0, 0, 0]
    tenant_streams = [await raw(streams).exists(k) for k in streams.keys.tenant_streams]
    assert tenant_streams == [0, 0, 0]  # emptied, so deleted
    assert (await views.counts(streams))["totals"]["completed"] == 6


async def test_a_tenant_stream_with_waiting_entries_is_kept(streams: Queue) -> None:
    running = await claimed(streams, 2, "r", tenant="acme")
    await streams.enqueue(req("later", tenant="acme"))
    await asyncio.gather(*(streams.complete_soon(t.eval_id, 1, t) for t in running))
    k_stream = streams.keys.tenant_streams[1]
    assert await raw(streams).xlen(k_stream) == 1
    summary = await raw(streams).xpending(k_stream, GROUP)
    assert summary["pending"] == 1  # only the parked entry of `later`
    assert (await claim_one(streams)).eval_id == "later"


# --- a batch against complete: the same end state, tenants and a cap included ---------------

TIMES = {b"created", b"started", b"finished", b"run_at", b"entry"}  # differ from run to run


async def scenario(q: Queue, settle_all: Callable[[list[Task]], Any]) -> list[str]:
    """Plain tasks, tenants' tasks at two priorities, a callback, a tenant's dependant, a
    stale delivery and a tenant's task left waiting; every claimed task settled by
    `settle_all` (the stale one refused). Returns the eval_ids."""
    fields: dict[str, dict[str, Any]] = {
        "p0": {},
        "p1": {"priority": "high"},
        "a0": {"tenant": "a"},
        "a1": {"tenant": "a", "callback_url": "http://127.0.0.1:9/hook"},
        "b0": {"tenant": "b"},
        "b1": {"tenant": "b", "priority": "low"},
        "c0": {"tenant": "c", "priority": "high"},
    }
    for eval_id, extra in fields.items():
        await q.enqueue(req(eval_id, **extra))
    await q.enqueue(req("kid", tenant="b", depends_on=["a0"]))
    tasks = (await q.claim("c1", 20, 30)).tasks
    assert sorted(t.eval_id for t in tasks) == sorted(fields)
    await q.enqueue(req("w0", tenant="a"))  # waits: its tenant stream stays
    stale = next(t for t in tasks if t.eval_id == "c0")
    tasks = [t for t in tasks if t is not stale]
    stale = Task(stale.eval_id, stale.entry, stale.attempt + 1, stale.priority)
    answers = await settle_all([*tasks, stale])
    assert answers[:-1] == [q.keys.queue] * len(tasks)
    assert isinstance(answers[-1], Conflict) and "stale" in str(answers[-1])
    return [*fields, "kid", "w0"]


async def snapshot(q: Queue, ids: list[str]) -> dict[str, Any]:
    """What a settle leaves in Redis, without times and entry ids (and key names)."""
    r, k = raw(q), q.keys
    records = {}
    for eval_id in ids:
        record = await r.hgetall(k.task(eval_id))
        records[eval_id] = {f: v for f, v in record.items() if f not in TIMES}
        records[eval_id][b"ttl"] = await r.ttl(k.task(eval_id)) > 0
    shape: dict[str, Any] = {"records": records}
    for key in (*k.streams, *k.tenant_streams):
        name = key.removeprefix(k.prefix)
        exists = await r.exists(key)
        pending = (await r.xpending(key, GROUP))["pending"] if exists else None
        shape[name] = (exists, await r.xlen(key), pending)
    for key in (*k.waiting, *k.vtimes, k.scheduled):
        shape[key.removeprefix(k.prefix)] = await r.zrange(key, 0, -1, withscores=True)
    shape["scheduled"] = [m for m, _ in shape["scheduled"]]  # its score: a time
    shape["leases"] = await r.zrange(k.leases, 0, -1)
    shape["counters"] = await r.hgetall(k.counters)
    events = [(e[b"id"], e[b"state"], e[b"attempt"]) for _, e in await r.xrange(k.events)]
    shape["events"] = sorted(events)
    stats = Counter[bytes]()  # per state (a run may cross a minute)
    for f, v in (await r.hgetall(k.stats)).items():
        if b":" in f:
            stats[f.split(b":")[1]] += int(v)
    shape["stats"] = stats
    shape["callbacks"] = [
        {f: v for f, v in e.items() if f != b"finished"} for _, e in await r.xrange(k.callbacks)
    ]
    return shape


def capped(make_streams: Callable[..., Queue], name: str) -> Queue:
    return make_streams(queue=name, flow=Flow(max_in_flight={name: 100}))


async def test_a_batch_leaves_what_complete_leaves_with_tenants_and_a_cap(
    make_streams: Callable[..., Queue], queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_by_one, batched = capped(make_streams, queue), capped(make_streams, queue + "b")
    assert one_by_one.release_channel and batched.release_channel

    async def each(tasks: list[Task]) -> list[Any]:
        answers: list[Any] = []
        for t in tasks:
            try:
                answers.append(await one_by_one.complete(t.eval_id, {"n": t.eval_id}, t))
            except Conflict as exc:
                answers.append(exc)
        return answers

    async def together(tasks: list[Task]) -> list[Any]:
        calls = count_calls(batched, monkeypatch)
        answers = await asyncio.gather(
            *(batched.complete_soon(t.eval_id, {"n": t.eval_id}, t) for t in tasks),
            return_exceptions=True,
        )
        assert calls == ["complete_batch"]
        return answers

    ids = await scenario(one_by_one, each)
    assert await scenario(batched, together) == ids
    expected, got = await snapshot(one_by_one, ids), await snapshot(batched, ids)
    assert got == expected
    assert got["records"]["kid"][b"state"] == b"scheduled"  # a tenant's dependant: due now
    assert got["records"]["c0"][b"state"] == b"processing"  # the stale delivery refused
    assert [m.split(b"|")[::2] for m, _ in got["tenants:default:waiting"]] == [[b"a", b"w0"]]
    assert got["stream:high:tenants"] == (1, 1, 1)  # c0's entry, still delivered
    assert got["stream:low:tenants"] == (0, 0, None)  # emptied, deleted
    assert got["leases"] == [b"c0"]
    assert [e[b"id"] for e in got["callbacks"]] == [b"a1"]


async def releases(q: Queue, act: Callable[[], Any]) -> list[str]:
    """The messages on `q`'s wake channel while `act` runs (SPUBLISH on a cluster of Redis
    >= 7, as the scripts): markers published before it (until one is heard: subscribed)
    and after it (one server orders them) bound the window."""
    channel = q.keys.schedule_channel
    await q.scripts.prepare()
    heard = subscribed(q.redis, [channel], q.scripts.sharded_pubsub)
    got: list[str] = []

    async def collect() -> None:
        async for _, data in heard:
            got.append(data)

    async def said(marker: str) -> bool:
        if marker not in got:
            await q.redis.execute_command(q.scripts.publish, channel, marker)
        return marker in got

    job = asyncio.create_task(collect())
    try:
        await wait_for(lambda: said("ready"), timeout=5, interval=0.05)
        await act()
        await q.redis.execute_command(q.scripts.publish, channel, "end")
        await wait_for(lambda: asyncio.sleep(0, "end" in got), timeout=5)
    finally:
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
    return [m for m in got if m not in ("ready", "end")]


async def test_a_capped_queue_settles_in_one_call_and_tells_release_once(
    make_streams: Callable[..., Queue], queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_streams(flow=Flow(max_in_flight={queue: 3}))
    for i in range(5):
        await q.enqueue(req(f"t{i}", **({"tenant": "a"} if i % 2 else {})))
    first = await q.claim("c1", 5, 30)
    assert (len(first.tasks), first.held) == (3, "in_flight")
    calls = count_calls(q, monkeypatch)

    async def settle_all() -> None:
        await asyncio.gather(*(q.complete_soon(t.eval_id, {}, t) for t in first.tasks))

    assert await releases(q, settle_all) == ["release"]
    assert calls == ["complete_batch"]
    assert await raw(q).zcard(q.keys.leases) == 0
    second = await q.claim("c2", 5, 30)
    assert (len(second.tasks), second.held) == (2, "")
    stale = Task(second.tasks[0].eval_id, second.tasks[0].entry, 9, second.tasks[0].priority)

    async def refused() -> None:
        with pytest.raises(Conflict):
            await q.complete_soon(stale.eval_id, {}, stale)

    assert await releases(q, refused) == []  # nothing settled, no slot freed
