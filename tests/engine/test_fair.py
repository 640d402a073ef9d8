"""Fair share per tenant within a priority (engine/lua/_lib.lua's waiting side, _fair.lua,
claim.lua), against the real Redis server: the weighted split, the noisy neighbour, FIFO
within a tenant, strict priority across levels, positions as the expected start order,
and every transition of a tenant's task (cancel, lease takeover, retry, re-drive,
dependants), checked with raw Redis reads too.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from app.engine import admin, detail, history, listing, pace, views
from app.engine.engine import Engine
from app.engine.fsck import Audit
from app.engine.keys import GROUP, PARKED
from app.engine.listing import Page
from app.engine.queue import Queue
from app.flow_settings import Flow
from app.models import Priority
from app.settings import RetryPolicy
from tests.engine.conftest import claim_ids, claim_one, raw, req

FAST = RetryPolicy(3, 0.05, 1.0, 0.05, False)


async def enqueue_many(q: Queue, prefix: str, n: int, **fields: Any) -> None:
    """`n` tasks `<prefix><i>`, issued together (one pipelined write per loop turn)."""
    await asyncio.gather(*(q.enqueue(req(f"{prefix}{i}", **fields)) for i in range(n)))


async def drain_order(q: Queue, n: int, batch: int = 1) -> list[str]:
    """The next `n` starts, claimed `batch` at a time and completed at once."""
    order: list[str] = []
    while len(order) < n:
        claimed = await q.claim("c1", min(batch, n - len(order)), 30)
        assert claimed.tasks, f"only {len(order)} of {n} started"
        for task in claimed.tasks:
            order.append(task.eval_id)
            await q.complete(task.eval_id, None, task)
    return order


async def test_a_tenants_task_waits_parked_and_leaves_nothing_behind(streams: Queue) -> None:
    answer = await streams.enqueue(req("t1", tenant="acme"))
    assert answer["position"] == 1
    k, r = streams.keys, raw(streams)
    tenants_stream = k.tenant_streams[1]
    assert await r.xlen(k.stream(Priority.DEFAULT)) == 0
    assert await r.xlen(tenants_stream) == 1
    summary = await r.xpending(tenants_stream, GROUP)
    assert [(c["name"], c["pending"]) for c in summary["consumers"]] == [(PARKED.encode(), 1)]
    assert await r.zrange(k.waiting[1], 0, -1) == [b"acme|000000000000001|t1"]
    assert (await streams.get("t1"))["tenant"] == "acme"
    counts = await views.counts(streams)
    assert counts["by_priority"]["queued"]["default"] == 1
    assert counts["by_priority"]["processing"]["default"] == 0

    task = await claim_one(streams)
    assert task.eval_id == "t1" and task.entry == (await r.xrange(tenants_stream))[0][0].decode()
    counts = await views.counts(streams)
    assert counts["by_priority"]["queued"]["default"] == 0
    assert counts["by_priority"]["processing"]["default"] == 1
    assert [c["name"] for c in await views.consumers(streams)] == ["c1"]  # no `~waiting`
    await streams.complete("t1", {"ok": True}, task)
    assert not await r.exists(tenants_stream, k.waiting[1])  # an empty tenant stream goes
    assert (await streams.get("t1"))["status"] == "completed"


async def test_weights_split_the_starts(make_streams: Callable[..., Queue]) -> None:
    q = make_streams(flow=Flow({"a": 3.0}))
    await enqueue_many(q, "a", 400, tenant="a")
    await enqueue_many(q, "b", 400, tenant="b")
    order = await drain_order(q, 400, batch=4)
    share = Counter(e[0] for e in order)
    assert share["a"] == 300 and share["b"] == 100, share


async def test_a_noisy_neighbour_does_not_hold_back_a_newcomer(streams: Queue) -> None:
    await enqueue_many(streams, "a", 3000, tenant="a")
    await drain_order(streams, 5)
    await enqueue_many(streams, "b", 10, tenant="b")
    order = await drain_order(streams, 20)
    assert order.index("b0") <= 1
    assert [e for e in order if e[0] == "b"] == [f"b{i}" for i in range(10)]  # FIFO
    assert Counter(e[0] for e in order) == {"a": 10, "b": 10}  # then they alternate


async def test_tenant_default_takes_its_share(streams: Queue) -> None:
    await enqueue_many(streams, "a", 20, tenant="a")
    await enqueue_many(streams, "d", 20)  # no tenant: tenant `default`
    await enqueue_many(streams, "x", 5, tenant="default")  # the same tenant, named
    order = await drain_order(streams, 20, batch=2)
    assert Counter(e[0] for e in order)["a"] == 10
    assert [e for e in order if e[0] == "d"] == [f"d{i}" for i in range(10)]


async def test_strict_priority_stays_across_levels(streams: Queue) -> None:
    await enqueue_many(streams, "a", 5, tenant="a")
    await enqueue_many(streams, "l", 3, tenant="b", priority="low")
    await streams.enqueue(req("h0", priority="high"))
    await streams.enqueue(req("h1", priority="high", tenant="b"))
    order = await drain_order(streams, 10, batch=3)
    assert set(order[:2]) == {"h0", "h1"}
    assert order[2:7] == [f"a{i}" for i in range(5)]
    assert order[7:] == ["l0", "l1", "l2"]


async def test_positions_are_the_expected_start_order(make_streams: Callable[..., Queue]) -> None:
    q = make_streams(flow=Flow({"a": 2.0}))
    await q.enqueue(req("h0", priority="high", tenant="z"))
    await enqueue_many(q, "a", 12, tenant="a")
    await enqueue_many(q, "b", 6, tenant="b")
    await enqueue_many(q, "d", 4)
    ids = ["h0", *(f"a{i}" for i in range(12)), *(f"b{i}" for i in range(6))]
    ids += [f"d{i}" for i in range(4)]
    positions = {i: (await q.get(i))["position"] for i in ids}
    order = await drain_order(q, len(ids))
    assert {eval_id: order.index(eval_id) + 1 for eval_id in ids} == positions


async def test_enqueue_answers_the_position_under_fair_share(streams: Queue) -> None:
    await enqueue_many(streams, "a", 10, tenant="a")
    answer = await streams.enqueue(req("b0", tenant="b"))
    assert answer["position"] == 2  # a0, then b0
    answer = await streams.enqueue(req("d0"))
    assert answer["position"] == 3  # a0 and b0 (their names sort before `default`'s), d0
    assert await drain_order(streams, 4) == ["a0", "b0", "d0", "a1"]


async def test_cancel_a_tenants_queued_task(streams: Queue) -> None:
    await enqueue_many(streams, "a", 3, tenant="a")
    await streams.cancel("a1")
    k, r = streams.keys, raw(streams)
    assert await r.zcard(k.waiting[1]) == 2
    assert int(await r.hget(k.counters, "tq:default")) == 2
    assert (await streams.get("a2"))["position"] == 2
    assert await drain_order(streams, 2) == ["a0", "a2"]
    assert not (await streams.claim("c1", 5, 30)).tasks
    assert not await r.exists(k.tenant_streams[1])


async def test_a_lapsed_lease_is_taken_over(streams: Queue) -> None:
    await streams.enqueue(req("t1", tenant="acme"))
    first = await claim_one(streams, "c1", lease=0.05)
    await asyncio.sleep(0.1)
    second = await claim_one(streams, "c2")
    assert (second.eval_id, second.attempt, second.entry) == ("t1", 2, first.entry)
    assert await streams.renew("c2", [second], 30) == []
    assert await streams.renew("c1", [first], 30) == ["t1"]  # fenced off
    await streams.complete("t1", None, second)
    assert (await streams.get("t1"))["status"] == "completed"


async def test_a_retried_task_waits_under_its_tenant_again(streams: Queue) -> None:
    await streams.enqueue(req("t1", tenant="acme"))
    task = await claim_one(streams)
    assert (await streams.fail("t1", "boom", policy=FAST, task=task))["status"] == "retrying"
    await asyncio.sleep(0.1)
    await streams.promote()
    assert await raw(streams).zrange(streams.keys.waiting[1], 0, -1) == [b"acme|000000000000002|t1"]
    again = await claim_one(streams)
    assert (again.eval_id, again.attempt) == ("t1", 2)


async def test_a_dead_letter_keeps_its_tenant(streams: Queue) -> None:
    await streams.enqueue(req("t1", tenant="acme"))
    task = await claim_one(streams)
    await streams.fail("t1", "no", retry=False, task=task)
    await admin.dlq_retry(streams, "t1")
    record = await streams.get("t1")
    assert (record["status"], record["tenant"]) == ("queued", "acme")
    assert await raw(streams).zcard(streams.keys.waiting[1]) == 1


async def test_a_released_dependant_waits_under_its_tenant(streams: Queue) -> None:
    await streams.enqueue(req("p"))
    assert (await streams.enqueue(req("c", tenant="acme", depends_on=["p"])))[
        "status"
    ] == "deferred"
    parent = await claim_one(streams)
    await streams.complete("p", None, parent)
    # scheduled due at once (complete declares no fair-share key); the claim queues it
    assert (await streams.get("c"))["status"] == "scheduled"
    assert await claim_ids(streams) == ["c"]
    assert await raw(streams).hget(streams.keys.task("c"), "tenant") == b"acme"


async def test_fsck_finds_the_structures_consistent(client: Any, settings: Any) -> None:
    engine = Engine(client, settings)
    q = engine.default
    await enqueue_many(q, "a", 4, tenant="a")
    await q.enqueue(req("s", tenant="b", delay=600))
    await claim_ids(q, 2)
    report = await Audit(engine, repair=False).run()
    assert report.consistent, report.view()


async def test_unused_fair_share_costs_no_command(streams: Queue) -> None:
    """No tenant anywhere: enqueue, claim and complete run none of fair share's commands."""
    r = raw(streams)
    await streams.enqueue(req("warm"))
    await r.config_resetstat()
    await enqueue_many(streams, "d", 20)
    await drain_order(streams, 21, batch=4)
    used = {name.removeprefix("cmdstat_") for name in (await r.info("commandstats"))}
    assert not used & {"zlexcount", "zrangebylex", "xclaim", "xlen", "zcard", "get", "set"}


# --- listing, oldest waiting (engine/listing.py, engine/history.py) under fair share -------


async def listed(q: Queue, state: str, **given: Any) -> list[dict[str, Any]]:
    """Every page of a listing, 3 tasks a page, through its cursors."""
    tasks: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = Page.parse(state, 3, given.get("tenant"), given.get("q"), cursor)
        answer = await listing.list_tasks(q, page)
        tasks += answer["tasks"]
        cursor = answer["next_cursor"]
        if cursor is None:
            return tasks


async def test_queued_listing_shows_tenants_tasks_with_their_positions(streams: Queue) -> None:
    await streams.enqueue(req("h0", priority="high", tenant="z"))
    await enqueue_many(streams, "a", 4, tenant="a")
    await enqueue_many(streams, "d", 2)
    await enqueue_many(streams, "b", 2, tenant="b")
    tasks = await listed(streams, "queued")
    assert [t["eval_id"] for t in tasks] == ["h0", "d0", "d1", "a0", "a1", "a2", "a3", "b0", "b1"]
    for task in tasks:  # the positions GET /tasks/{id} gives
        assert task["position"] == (await streams.get(task["eval_id"]))["position"]
    assert sorted(t["position"] for t in tasks) == list(range(1, 10))
    only_b = await listed(streams, "queued", tenant="b")
    assert [t["eval_id"] for t in only_b] == ["b0", "b1"]
    only_default = await listed(streams, "queued", tenant="default")
    assert [t["eval_id"] for t in only_default] == ["d0", "d1"]


async def test_processing_listing_leaves_out_waiting_tenants_tasks(streams: Queue) -> None:
    await enqueue_many(streams, "a", 5, tenant="a")
    await streams.enqueue(req("d0"))
    await claim_ids(streams, 2)
    tasks = await listed(streams, "processing")
    assert sorted(t["eval_id"] for t in tasks) == ["a0", "d0"]


async def test_oldest_waiting_counts_tenants_tasks(streams: Queue) -> None:
    await streams.enqueue(req("a0", tenant="a"))
    await asyncio.sleep(0.05)
    await streams.enqueue(req("d0"))
    ages = (await history.oldest_waiting([streams]))[0]
    assert ages["default"]["eval_id"] == "a0" and ages["default"]["seconds"] >= 0.04
    await claim_ids(streams, 1)
    assert (await history.oldest_waiting([streams]))[0]["default"]["eval_id"] == "d0"


async def test_tenants_starts_make_the_pace_of_etas(
    streams: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pace, "MIN_SPAN", 0.05)
    monkeypatch.setattr(pace, "SAMPLE_EVERY", 0.01)
    await enqueue_many(streams, "a", 6, tenant="a")
    assert await pace.pace_of(streams) is None  # the first sample
    await claim_ids(streams, 3)
    await asyncio.sleep(0.06)
    found = await pace.pace_of(streams)
    assert found is not None and found.starts > 0  # the tenant's starts count
    records: list[dict[str, Any]] = [await streams.get("a5")]
    await pace.add_etas(streams, records)
    assert records[0]["position"] == 3 and records[0]["eta"]


async def test_a_tenants_task_in_depth_has_its_payload(streams: Queue) -> None:
    await streams.enqueue(req("t1", tenant="acme", metadata={"team": "red"}))
    found = await detail.detail(streams.engine, "t1")
    assert found["payload"]["metadata"] == {"team": "red"}
    await claim_one(streams, consumer="host:42")
    found = await detail.detail(streams.engine, "t1")
    assert found["payload"]["metadata"] == {"team": "red"} and found["worker"] == "host:42"


async def test_a_tenants_task_expires_from_its_waiting_order(streams: Queue) -> None:
    k, r = streams.keys, raw(streams)
    await streams.enqueue(req("x1", tenant="a", expires=0.05))
    await streams.enqueue(req("x2", tenant="a", expires=0.05))
    await streams.enqueue(req("k1", tenant="a"))
    await streams.enqueue(req("y1", tenant="b", expires=0.05))
    await asyncio.sleep(0.1)
    await streams.promote()  # the sweep: every expired one, y1 included
    assert [(await streams.get(i))["status"] for i in ("x1", "x2", "y1")] == ["expired"] * 3
    assert await r.zrange(k.waiting[1], 0, -1) == [b"a|000000000000003|k1"]
    assert int(await r.hget(k.counters, "tq:default")) == 1
    await streams.enqueue(req("x3", tenant="a", expires=0.05))
    await asyncio.sleep(0.1)
    assert await claim_ids(streams, 2) == ["k1"]  # the claim meets x3 expired, after k1
    assert (await streams.get("x3"))["status"] == "expired"
    assert not await r.exists(k.waiting[1])  # k1 runs: its entry stays till it settles


async def test_a_tenants_task_is_deduplicated(streams: Queue) -> None:
    first = await streams.enqueue(req("d1", tenant="a", dedup_key="job-7"))
    again = await streams.enqueue(req("d2", tenant="a", dedup_key="job-7"))
    assert first["status"] == "queued" and again["deduplicated"] and again["eval_id"] == "d1"
    assert await claim_ids(streams, 5) == ["d1"]
