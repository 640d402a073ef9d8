"""Partitioned queues (engine/partitions.py) on one server: placement by hash, claims across
partitions (exactly once, priority order within a partition, the inversion bound across
them), positions, by-id calls without a queue name, dependencies across partitions,
growing N on a live queue. The same flows run on the cluster in tests/test_cluster.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from app.engine import flow, links
from app.engine.client import text
from app.engine.engine import Engine
from app.engine.fsck import Audit
from app.engine.partitions import place
from app.engine.queue import Queue
from app.errors import Conflict, Invalid
from app.flow_settings import Flow
from app.models import Task
from app.settings import Settings
from tests.engine.conftest import req


@pytest.fixture
def make_engine(client: Any, make_settings: Callable[..., Settings]) -> Callable[..., Engine]:
    def make(parts: int = 4, named: str | None = None) -> Engine:
        settings = make_settings()
        name = named or settings.queue
        return Engine(client, make_settings(queue_partitions={name: parts}))

    return make


async def drain(queue: Queue, count: int = 10, consumer: str = "c1") -> list[Any]:
    """Claim, renew and complete everything; the tasks in the order claimed."""
    done: list[Any] = []
    while (claimed := await queue.claim(consumer, count, 30)).tasks:
        assert await queue.renew(consumer, claimed.tasks, 30) == []  # each in its partition
        for task in claimed.tasks:
            await queue.complete(task.eval_id, 1, task)
        done += claimed.tasks
    return done


async def test_one_partition_is_the_unpartitioned_layout(make_engine):
    engine = make_engine(parts=1)
    queue = engine.default
    assert queue.parts == (queue,) and queue.spread is None
    await queue.enqueue(req("a"))
    assert await queue.redis.exists(f"ts:{{{engine.settings.queue}}}:task:a")


async def test_tasks_spread_and_all_complete_exactly_once(make_engine):
    engine = make_engine(parts=4)
    queue = engine.default
    ids = [f"t{i}" for i in range(200)]
    for eval_id in ids:
        await queue.enqueue(req(eval_id))
    per_part = [0] * 4
    for eval_id in ids:
        per_part[place(eval_id, 4)] += 1
        part = queue.parts[place(eval_id, 4)]
        assert await queue.redis.exists(part.keys.task(eval_id))
    assert all(n > 20 for n in per_part), per_part
    done = await drain(queue, count=7)
    assert sorted(t.eval_id for t in done) == sorted(ids)
    for eval_id in ids[:5]:
        assert (await queue.get(eval_id))["status"] == "completed"


async def test_fifo_within_each_partition_and_priority_within_it(make_engine):
    engine = make_engine(parts=3)
    queue = engine.default
    for i in range(30):
        await queue.enqueue(req(f"low{i}", priority="low"))
    for i in range(30):
        await queue.enqueue(req(f"high{i}", priority="high"))
    done = await drain(queue, count=1)
    for part in range(3):
        mine = [t.eval_id for t in done if place(t.eval_id, 3) == part]
        highs = [x for x in mine if x.startswith("high")]
        assert mine[: len(highs)] == highs  # every high before any low of its partition
        assert highs == sorted(highs, key=lambda x: int(x[4:]))


async def test_inversion_across_partitions_is_bounded(make_engine):
    """Lows everywhere, then one high task: a consumer taking `count` at a time starts at
    most (2N - 1) x count lows before it (docs/operations.md, *Partitioned queues*)."""
    parts, count = 4, 3
    engine = make_engine(parts=parts)
    queue = engine.default
    worst = 0
    for trial in range(4):
        for i in range(60):
            await queue.enqueue(req(f"r{trial}low{i}", priority="low"))
        # a consumer that has been claiming for a while (its hints are warm)
        for _ in range(parts):
            claimed = await queue.claim("c1", count, 30)
            for task in claimed.tasks:
                await queue.complete(task.eval_id, 1, task)
        await queue.enqueue(req(f"r{trial}high", priority="high"))
        lows = 0
        while True:
            claimed = await queue.claim("c1", count, 30)
            ids = [t.eval_id for t in claimed.tasks]
            for task in claimed.tasks:
                await queue.complete(task.eval_id, 1, task)
            if f"r{trial}high" in ids:
                lows += ids.index(f"r{trial}high")
                break
            lows += len(ids)
        worst = max(worst, lows)
        await drain(queue)
    assert worst <= (2 * parts - 1) * count, worst


async def test_position_sums_the_partitions(make_engine):
    engine = make_engine(parts=4)
    queue = engine.default
    for i in range(40):
        await queue.enqueue(req(f"d{i}"))
    await queue.enqueue(req("h", priority="high"))
    assert (await queue.get("h"))["position"] == 1
    last = (await queue.get("d39"))["position"]
    assert 35 <= last <= 41, last  # an estimate across partitions: about 40 ahead of none


async def test_by_id_calls_without_a_queue_name_find_the_partition(make_engine):
    engine = make_engine(parts=4, named="orders")
    orders = engine.queue("orders")
    assert len(orders.parts) == 4
    await orders.enqueue(req("o1", queue="orders"))
    assert (await engine.default.get("o1"))["queue"] == "orders"
    assert (await engine.default.cancel("o1"))["status"] == "cancelled"
    assert (await orders.get("o1"))["status"] == "cancelled"
    with pytest.raises(Exception, match="no such task"):
        await engine.default.get("nothing")


async def test_an_id_is_unique_within_a_partitioned_queue(make_engine):
    engine = make_engine(parts=4)
    await engine.default.enqueue(req("same"))
    with pytest.raises(Exception, match="already exists"):
        await engine.default.enqueue(req("same"))


async def test_dependencies_across_partitions(make_engine, client):
    engine = make_engine(parts=4)
    queue = engine.default
    parents = [f"p{i}" for i in range(8)]  # over several partitions
    assert len({place(p, 4) for p in parents}) > 1
    for p in parents:
        await queue.enqueue(req(p))
    answer = await queue.enqueue(req("child", depends_on=parents))
    assert answer["status"] == "deferred"
    done = await drain(queue)
    assert sorted(t.eval_id for t in done) == sorted(parents)
    relays = await _relay_all(engine)
    assert relays > 0
    assert (await queue.get("child"))["status"] == "queued"
    assert [t.eval_id for t in await drain(queue)] == ["child"]


async def _relay_all(engine: Engine) -> int:
    """Apply the relay entries of every partition's callbacks stream, as the callback
    sender does (runtime/callbacks.py)."""
    applied = 0
    for part in engine.default.parts:
        redis: Any = part.redis
        for _, fields in await redis.xrange(part.keys.callbacks):
            decoded = {text(k): text(v) for k, v in fields.items()}
            if "relay" in decoded:
                await links.relay(engine, decoded)
                applied += 1
    return applied


async def test_growing_partitions_live_loses_no_task(client, make_settings):
    """2 -> 4: tasks stored under 2 are still claimed and found by id by a process
    configured with 4 that also claims the old count (QUEUE_PARTITIONS history)."""
    base = make_settings()
    old = Engine(client, make_settings(queue_partitions={base.queue: 2}))
    ids = [f"g{i}" for i in range(40)]
    for eval_id in ids:
        await old.default.enqueue(req(eval_id))
    await old.default.ensure_groups()
    new = Engine(client, make_settings(queue_partitions={base.queue: 4}))
    await new.default.ensure_groups()  # at start: reads the count history {2, 4}
    assert new.default.counts == (4, 2)
    moved = [i for i in ids if place(i, 2) != place(i, 4)]
    assert moved
    for eval_id in moved[:3]:
        assert (await new.default.get(eval_id))["status"] == "queued"
    for i in range(40):
        await new.default.enqueue(req(f"n{i}"))
    done = await drain(new.default)
    assert sorted(t.eval_id for t in done) == sorted([*ids, *(f"n{i}" for i in range(40))])


async def test_fsck_finds_a_busy_partitioned_queue_consistent(make_engine):
    """Every partition is audited (its records, streams, leases, counters) and a queue with
    tasks queued, running, finished and deferred across partitions has no orphans."""
    engine = make_engine(parts=3)
    queue = engine.default
    for i in range(30):
        await queue.enqueue(req(f"f{i}", priority=("high", "default", "low")[i % 3]))
    await queue.enqueue(req("kid", depends_on=["f0", "f1", "f2"]))
    claimed = await queue.claim("c1", 10, 30)
    for task in claimed.tasks[:5]:
        await queue.complete(task.eval_id, 1, task)
    report = await Audit(engine, repair=False).run()
    assert report.consistent, report.orphans
    assert report.queues == [engine.settings.queue]
    assert report.checked >= 31


async def test_a_process_with_the_old_count_finds_tasks_placed_by_the_new_one(
    client, make_settings
):
    """During a rolling change, a process still on 2 partitions looks up an id the new
    count placed elsewhere: its miss re-reads the history and finds it."""
    base = make_settings()
    old = Engine(client, make_settings(queue_partitions={base.queue: 2}))
    await old.default.ensure_groups()
    new = Engine(client, make_settings(queue_partitions={base.queue: 4}))
    await new.default.ensure_groups()
    moved = next(f"m{i}" for i in range(100) if place(f"m{i}", 4) >= 2)
    await new.default.enqueue(req(moved))
    assert (await old.default.get(moved))["status"] == "queued"
    assert old.default.counts == (2, 4)
    claimed = await old.default.claim("c1", 10, 30)  # it now claims from 4 partitions too
    assert [t.eval_id for t in claimed.tasks] == [moved]


async def test_a_task_rebuilt_from_its_lease_renews_in_its_partition(make_engine):
    """A pull worker's renewal rebuilds the Task from (eval_id, lease, attempt): no
    partition known, so the id's placement finds it."""
    engine = make_engine(parts=4)
    queue = engine.default
    for i in range(12):
        await queue.enqueue(req(f"r{i}"))
    claimed = (await queue.claim("c1", 12, 30)).tasks
    assert len({t.part for t in claimed}) > 1
    rebuilt = [Task(t.eval_id, t.entry, t.attempt, t.priority) for t in claimed]
    assert await queue.renew("c1", rebuilt, 30) == []
    for task in rebuilt:
        await queue.complete(task.eval_id, 1, task)
    assert (await queue.get("r0"))["status"] == "completed"


async def test_an_id_stays_unique_while_the_count_changes(client, make_settings):
    """During 2 -> 4, an id stored by a process on 2 is refused by one on 4 although 4
    places it in another partition (the other counts' partitions are looked at first)."""
    base = make_settings()
    old = Engine(client, make_settings(queue_partitions={base.queue: 2}))
    await old.default.ensure_groups()
    new = Engine(client, make_settings(queue_partitions={base.queue: 4}))
    await new.default.ensure_groups()
    moved = next(f"u{i}" for i in range(100) if place(f"u{i}", 4) != place(f"u{i}", 2))
    await old.default.enqueue(req(moved))
    with pytest.raises(Conflict, match="already exists"):
        await new.default.enqueue(req(moved))
    answers = await new.enqueue_many([req(moved)])
    assert answers[0]["code"] == 409, answers
    done = await drain(new.default)
    assert [t.eval_id for t in done] == [moved]


async def test_no_partition_starves_among_tasks_of_one_priority(make_engine):
    """Every partition full of default tasks, claims of one: the rotating start serves
    each partition within every N consecutive claims (docs/operations.md, *Claims*)."""
    parts = 4
    engine = make_engine(parts=parts)
    queue = engine.default
    for i in range(parts * 30):
        await queue.enqueue(req(f"s{i}"))
    served = []
    for _ in range(parts * 6):
        (task,) = (await queue.claim("c1", 1, 30)).tasks
        served.append(task.part)
        await queue.complete(task.eval_id, 1, task)
    for start in range(0, len(served) - parts + 1):
        assert set(served[start : start + parts]) == set(range(parts)), served


async def test_a_dedup_key_is_refused_and_nothing_is_stored(make_engine):
    """The dedup index and the task cannot share one script across partitions: refused."""
    engine = make_engine(parts=4)
    queue = engine.default
    with pytest.raises(Invalid, match="dedup_key is not supported on a partitioned queue"):
        await queue.enqueue(req("d1", dedup_key="k"))
    assert not any([await part.redis.exists(part.keys.task("d1")) for part in queue.parts])
    answers = await engine.enqueue_many([req("d2", dedup_key="k"), req("d3")])
    assert answers[0]["code"] == 422 and answers[1]["status"] == "queued"
    assert not any([await part.redis.exists(part.keys.task("d2")) for part in queue.parts])


async def test_fair_share_works_within_each_partition(client, make_settings):
    """TENANT_WEIGHTS on a partitioned queue: each partition keeps its tenants' streams,
    waiting orders and virtual times under its own tag and shares its starts by weight;
    claims over the whole queue keep the split; /status's flow view sums the partitions."""
    settings = make_settings(flow=Flow({"a": 3.0}))
    engine = Engine(
        client, make_settings(flow=Flow({"a": 3.0}), queue_partitions={settings.queue: 2})
    )
    queue = engine.default
    for tenant in ("a", "b"):
        for i in range(200):
            await queue.enqueue(req(f"{tenant}{i}", tenant=tenant))
    parts = queue.parts
    for part in parts:  # each partition's fair-share keys, under its own tag
        assert part.keys.tenant_streams[1].startswith(part.keys.base)
        assert await client.exists(part.keys.tenant_streams[1], part.keys.waiting[1]) == 2
        assert {text(t) for t in await client.zrange(part.keys.vtimes[1], 0, -1)} == {"a", "b"}
    view = (await flow.flow_of(client, [queue]))[0]
    level = view["tenants"]["default"]
    assert level["tenant_tasks"] == 400
    assert {row["tenant"]: row["waiting"] for row in level["next"]} == {"a": 200, "b": 200}

    for part in parts:  # within one partition: 3 to 1
        started: list[str] = []
        while len(started) < 40:
            claimed, _ = await part.claim_one("c1", 4, 30)
            for task in claimed.tasks:
                started.append(task.eval_id)
                await part.complete(task.eval_id, None, task)
        share = Counter(e[0] for e in started)
        assert share == {"a": 30, "b": 10}, (part.keys.part, share)
    started = []
    while len(started) < 80:  # over the whole queue: the same split
        claimed = await queue.claim("c1", 4, 30)
        for task in claimed.tasks:
            started.append(task.eval_id)
            await queue.complete(task.eval_id, None, task)
    share = Counter(e[0] for e in started)
    assert share == {"a": 60, "b": 20}, share
    view = (await flow.flow_of(client, [queue]))[0]
    assert view["tenants"]["default"]["tenant_tasks"] == 400 - 160
    assert view["in_flight"] == 0 and view["limits"] == {"rate": None, "max_in_flight": None}


async def test_an_idle_wait_with_tenants_waiting_wakes_for_any_partition(make_engine):
    """Tenants' tasks waiting where this consumer does not take: each partition's claim
    reports six tails (priority and tenant streams) or three; the spread pads them to six
    each, and the wait still wakes for a new task of any partition."""
    engine = make_engine(parts=3)
    queue = engine.default
    for i in range(6):
        await queue.enqueue(req(f"t{i}", tenant="acme", priority="low"))
    claimed = await queue.claim("c1", 4, 30, ["high"])
    assert claimed.tasks == [] and claimed.held == ""
    assert len(claimed.tails) == 6 * len(queue.parts)
    holding = {place(f"t{i}", 3) for i in range(6)}
    for i in range(3):
        mine = claimed.tails[6 * i : 6 * i + 6]
        assert all(mine[:3]) and all(mine[3:]) == (i in holding), (i, mine)
    wait = asyncio.ensure_future(queue.wait_for_work(10, claimed.tails, ["high"]))
    await asyncio.sleep(0.05)
    assert not wait.done()
    await queue.enqueue(req("h", priority="high"))
    await asyncio.wait_for(wait, 5)
    assert [t.eval_id for t in (await queue.claim("c1", 4, 30, ["high"])).tasks] == ["h"]
