"""The schedules' store (engine/schedules.py) on a real Redis: the due read by the Redis
clock, the compare-and-set advance, the keys the docs name, and the validation of a
definition."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine.engine import Engine
from app.engine.schedules import Schedule, ScheduleKeys, ScheduleStore
from app.errors import Conflict, Invalid, NotFound
from app.settings import Settings
from tests.conftest import ROOT


@pytest.fixture
def store(client: Any, settings: Settings) -> ScheduleStore:
    return ScheduleStore(Engine(client, settings))


def schedule(name: str = "s", **fields: Any) -> Schedule:
    data = {"name": name, "every": 3600, "task": {"code": "x"}, **fields}
    return Schedule.parse(data)[0]


async def set_tick(client: Any, store: ScheduleStore, name: str, tick: int) -> None:
    """Make a schedule due at `tick` (as if no replica had run since then)."""
    await client.zadd(store.keys.due, {name: tick})


async def test_due_reads_by_the_redis_clock(client: Any, store: ScheduleStore):
    await store.create(schedule("later"), None)
    await store.create(schedule("now"), None)
    await store.create(schedule("off"), True)
    now = await store.now()
    await set_tick(client, store, "now", now - 5)
    turn = await store.due(10)
    assert [d.schedule.name for d in turn.due] == ["now"]
    assert turn.due[0].tick == now - 5
    assert abs(turn.now - now) <= 1
    assert turn.earliest == (now // 3600 + 1) * 3600  # "later"'s next tick
    assert (turn.total, turn.active) == (3, 2)


async def test_due_is_bounded(client: Any, store: ScheduleStore):
    now = await store.now()
    for i in range(5):
        await store.create(schedule(f"s{i}"), None)
        await set_tick(client, store, f"s{i}", now - 10 + i)
    turn = await store.due(3)
    assert [d.schedule.name for d in turn.due] == ["s0", "s1", "s2"]


async def test_a_due_entry_without_its_definition_is_dropped(client: Any, store: ScheduleStore):
    await client.zadd(store.keys.due, {"ghost": 1})
    assert (await store.due(10)).due == []
    assert await client.zscore(store.keys.due, "ghost") is None


async def test_advance_is_a_compare_and_set(client: Any, store: ScheduleStore):
    await store.create(schedule(), None)
    await set_tick(client, store, "s", 100)
    due = (await store.due(10)).due[0]
    assert await store.advance(due, 100, 3600)
    assert not await store.advance(due, 100, 3600)  # a second replica with the same read
    shown = await store.get("s")
    assert shown["last_eval_id"] == "s:100"
    assert shown["next_run_at"] == "1970-01-01T01:00:00.000Z"


async def test_advance_leaves_a_changed_paused_or_deleted_schedule_alone(
    client: Any, store: ScheduleStore
):
    for name in ("changed", "paused", "deleted"):
        await store.create(schedule(name), None)
        await set_tick(client, store, name, 100)
    read = {d.schedule.name: d for d in (await store.due(10)).due}
    await store.replace(schedule("changed", every=60), None)
    await set_tick(client, store, "changed", 100)  # even at the same tick
    await store.pause("paused")
    await store.delete("deleted")
    for name in ("changed", "paused", "deleted"):
        assert not await store.advance(read[name], 100, 200)
    assert (await store.get("paused"))["paused"] is True
    assert (await store.get("changed"))["every"] == 60
    assert await client.zscore(store.keys.due, "deleted") is None
    assert await client.hget(store.keys.last, "changed") is None


async def test_advance_without_a_next_tick_leaves_the_due_set(client: Any, store: ScheduleStore):
    await store.create(schedule(), None)
    await set_tick(client, store, "s", 100)
    due = (await store.due(10)).due[0]
    assert await store.advance(due, 100, None)
    assert await client.zscore(store.keys.due, "s") is None


async def test_operations_answer_conflict_and_not_found(store: ScheduleStore):
    await store.create(schedule(), None)
    with pytest.raises(Conflict):
        await store.create(schedule(), None)
    for call in (store.get, store.pause, store.resume, store.delete):
        with pytest.raises(NotFound):
            await call("absent")
    with pytest.raises(NotFound):
        await store.replace(schedule("absent"), None)


async def test_resume_starts_from_the_next_tick(client: Any, store: ScheduleStore):
    await store.create(schedule(every=60), True)
    now = await store.now()
    resumed = await store.resume("s")
    assert resumed["paused"] is False
    assert int(await client.zscore(store.keys.due, "s")) == (now // 60 + 1) * 60


async def test_keys_are_the_documented_ones(client: Any, store: ScheduleStore, queue: str):
    await store.create(schedule(), None)
    await set_tick(client, store, "s", 100)
    await store.advance((await store.due(10)).due[0], 100, 3600)
    keys = ScheduleKeys.of(store.engine.keys)
    assert keys.definitions == f"ts:{{{queue}}}:schedules"
    docs = (ROOT / "docs" / "schedules.md").read_text()
    for key, kind in ((keys.definitions, "hash"), (keys.due, "zset"), (keys.last, "hash")):
        assert (await client.type(key)).decode() == kind
        assert f"`{key.replace(queue, '<QUEUE_NAME>')}`" in docs
    assert f"`{keys.channel.replace(queue, '<QUEUE_NAME>')}`" in docs


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "object"),
        ({"every": 5, "task": {"code": "x"}}, "name"),
        ({"name": "s", "every": 5}, "task"),
        ({"name": "s", "every": 5, "task": {"code": "x", "run_at": "soon"}}, "task: run_at"),
        ({"name": "s", "every": 5, "task": {"code": "x", "queue": "high"}}, "task: queue"),
    ],
)
def test_parse_refuses(data: Any, message: str):
    with pytest.raises(Invalid, match=message):
        Schedule.parse(data)


def test_parse_takes_the_name_from_the_path():
    parsed, paused = Schedule.parse({"every": 5, "task": {"code": "x"}}, "from-path")
    assert parsed.name == "from-path" and paused is None
    with pytest.raises(Invalid, match="path"):
        Schedule.parse({"name": "other", "every": 5, "task": {"code": "x"}}, "from-path")


def test_each_tick_makes_the_eval_id_name_colon_tick():
    parsed = schedule("nightly.report_v2-eu")
    assert parsed.request(1_800_000_000).eval_id == "nightly.report_v2-eu:1800000000"
