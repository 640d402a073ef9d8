"""The scheduler (runtime/scheduler.py) on a real Redis: the tick it fires, exactly once
with two schedulers racing, a replica that died between the enqueue and the advance,
missed ticks, pause, a refused task, the pub/sub wake-up, and its metrics.

Short `every` intervals (1 s) keep these to seconds; waits poll the Redis clock."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest
from prometheus_client import generate_latest

from app.engine.client import connect
from app.engine.engine import Engine
from app.engine.schedules import Schedule, ScheduleStore
from app.errors import NotFound
from app.runtime.metrics import Metrics
from app.runtime.scheduler import Scheduler
from app.settings import Settings
from tests.conftest import wait_for

EVERY_SECOND = {"every": 1, "task": {"code": "print(1)"}}


@pytest.fixture
async def make_scheduler(
    redis_url: str, settings: Settings
) -> AsyncIterator[Callable[..., Scheduler]]:
    """Schedulers on engines of their own (clients of their own), as replicas have;
    started ones are stopped at the end."""
    made: list[Scheduler] = []

    def make(start: bool = False) -> Scheduler:
        scheduler = Scheduler(Engine(connect(redis_url), settings), Metrics())
        if start:
            scheduler.start()
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        await scheduler.stop()
        await scheduler.engine.close()


@pytest.fixture
def store(client: Any, settings: Settings) -> ScheduleStore:
    return ScheduleStore(Engine(client, settings))


async def create(store: ScheduleStore, name: str = "s", **fields: Any) -> dict[str, Any]:
    parsed, paused = Schedule.parse({"name": name, **EVERY_SECOND, **fields})
    return await store.create(parsed, paused)


async def fired_ticks(store: ScheduleStore, name: str, ticks: range) -> list[int]:
    """The ticks in `ticks` whose task `<name>:<tick>` exists."""
    found = []
    for tick in ticks:
        try:
            await store.engine.default.get(f"{name}:{tick}")
        except NotFound:
            continue
        found.append(tick)
    return found


async def due_tick(store: ScheduleStore, name: str = "s") -> int:
    """The schedule's next tick in the due set (it must be there)."""
    score = await store.engine.client.zscore(store.keys.due, name)
    assert score is not None
    return int(score)


async def clock_past(store: ScheduleStore, tick: int) -> None:
    """Wait until the Redis clock is past `tick`."""

    async def past() -> bool:
        return await store.now() > tick

    await wait_for(past, timeout=10, interval=0.05)


async def test_a_turn_fires_the_due_tick_and_advances(store: ScheduleStore, make_scheduler):
    scheduler = make_scheduler()
    created = await create(store)
    first = await store.now() + 1
    assert created["next_run_at"] is not None
    await clock_past(store, first - 1)
    shown = await wait_for(lambda: _fired(scheduler, store))
    tick = int(shown["last_eval_id"].split(":")[1])
    assert tick >= first and scheduler.fired_here == 1
    assert (await store.engine.default.get(f"s:{tick}"))["status"] == "queued"
    assert await due_tick(store) == tick + 1


async def _fired(scheduler: Scheduler, store: ScheduleStore) -> dict[str, Any] | None:
    """A turn; the schedule once it fired a tick."""
    await scheduler.turn()
    shown = await store.get("s")
    return shown if shown["last_eval_id"] else None


async def test_two_schedulers_fire_each_tick_once(store: ScheduleStore, make_scheduler):
    one, two = make_scheduler(start=True), make_scheduler(start=True)
    await create(store)
    start = await store.now()
    await clock_past(store, start + 5)
    await one.stop()
    await two.stop()
    end = await store.now()
    ticks = await fired_ticks(store, "s", range(start + 1, end + 1))
    assert ticks == list(range(start + 1, ticks[-1] + 1))  # none skipped
    assert len(ticks) >= 4
    # each tick was enqueued by exactly one of them (the other found its eval_id there); a
    # stop() may cancel a turn whose enqueue Redis had already applied, so its tick is
    # there without being counted by the scheduler that sent it
    assert len(ticks) - 1 <= one.fired_here + two.fired_here <= len(ticks)


async def test_a_replica_dead_between_enqueue_and_advance(store: ScheduleStore, make_scheduler):
    """Its task is there, the tick still due: the next turn only advances."""
    await create(store, every=3600)
    tick = (await store.now()) - 1
    await store.engine.client.zadd(store.keys.due, {"s": tick})
    parsed = Schedule.parse({"name": "s", "every": 3600, "task": {"code": "print(1)"}})[0]
    await store.engine.default.enqueue(parsed.request(tick))  # the dead replica's enqueue
    scheduler = make_scheduler()
    await scheduler.turn()
    assert scheduler.fired_here == 0
    shown = await store.get("s")
    assert shown["last_eval_id"] == f"s:{tick}"
    assert shown["next_run_at"] is not None and shown["paused"] is False
    assert await due_tick(store) > tick


async def test_missed_ticks_fire_once_for_the_latest(store: ScheduleStore, make_scheduler):
    await create(store)
    first = await store.now() + 1  # the schedule's next tick
    await clock_past(store, first + 3)  # no scheduler runs: four ticks or more go by
    scheduler = make_scheduler()
    await scheduler.turn()
    now = await store.now()
    fired = await fired_ticks(store, "s", range(first, now + 1))
    assert len(fired) == 1 and fired[0] >= first + 3
    assert scheduler.fired_here == 1
    assert await due_tick(store) > fired[0]


async def test_a_paused_schedule_does_not_fire(store: ScheduleStore, make_scheduler):
    await create(store, paused=True)
    start = await store.now()
    scheduler = make_scheduler(start=True)
    await clock_past(store, start + 2)
    await scheduler.turn()
    assert await fired_ticks(store, "s", range(start, start + 4)) == []
    resumed = await store.resume("s")
    tick = int(datetime.fromisoformat(resumed["next_run_at"]).timestamp())
    assert tick > start + 2  # from the next tick after now: the paused ones are not fired
    await wait_for(lambda: fired_ticks(store, "s", range(tick, tick + 1)), timeout=5)


async def test_a_refused_task_spends_its_tick(store: ScheduleStore, make_scheduler):
    """A parent that does not exist: the enqueue refuses the task; the schedule goes on."""
    await create(store, every=3600, task={"code": "x", "depends_on": ["no-such-parent"]})
    tick = (await store.now()) - 1
    await store.engine.client.zadd(store.keys.due, {"s": tick})
    scheduler = make_scheduler()
    await scheduler.turn()
    assert scheduler.fired_here == 0
    assert await fired_ticks(store, "s", range(tick, tick + 1)) == []
    assert (await store.get("s"))["last_eval_id"] == f"s:{tick}"


async def test_a_change_wakes_a_sleeping_scheduler(store: ScheduleStore, make_scheduler):
    """With nothing due the loop sleeps MAX_SLEEP (5 s); a new schedule wakes it at once."""
    scheduler = make_scheduler(start=True)
    await wait_for(lambda: _turned(scheduler))
    created = time.monotonic()
    await create(store)
    first = await store.now() + 1
    await wait_for(lambda: fired_ticks(store, "s", range(first, first + 1)), timeout=5)
    assert time.monotonic() - created < 3.0


async def _turned(scheduler: Scheduler) -> bool:
    return scheduler.stats.turn is not None


async def test_metrics(store: ScheduleStore, make_scheduler):
    scheduler = make_scheduler()
    metrics = Metrics()
    metrics.registry.register(scheduler.stats)
    await create(store)
    await create(store, "off", paused=True)
    await wait_for(lambda: _fired(scheduler, store))
    text = generate_latest(metrics.registry).decode()
    assert 'taskstream_schedule_fired_total{schedule="s"} 1.0' in text
    assert (
        f'taskstream_schedule_late_seconds_count{{queue="{store.engine.keys.queue}"}} 1.0' in text
    )
    assert 'taskstream_schedules{state="active"} 1.0' in text
    assert 'taskstream_schedules{state="paused"} 1.0' in text
    assert "taskstream_schedule_next_run_timestamp_seconds " in text
