"""History of state changes (engine/history.py): minutes kept 48 h, hours rolled up by the
housekeeping and kept 90 days, hours not rolled yet summed from their minutes; and the
oldest waiting task per priority stream."""

from __future__ import annotations

from app.engine import admin, history
from app.engine.history import SHOWN
from app.engine.queue import Queue
from app.models import Task
from tests.conftest import wait_for
from tests.engine.conftest import claim_one, raw, req, server_ms

# --- the oldest waiting task -------------------------------------------------------------


async def oldest(streams: Queue) -> dict[str, dict[str, object]]:
    return (await history.oldest_waiting([streams]))[0]


async def test_nothing_waits_in_an_empty_queue(streams: Queue) -> None:
    none = {"seconds": 0.0, "eval_id": None}
    assert await oldest(streams) == {"high": none, "default": none, "low": none}


async def test_the_oldest_waiting_is_the_first_undelivered_entry(streams: Queue) -> None:
    for eval_id in ("d1", "d2", "d3"):
        await streams.enqueue(req(eval_id))
    await streams.enqueue(req("h1", priority="high"))
    assert (await oldest(streams))["default"]["eval_id"] == "d1"
    assert (await oldest(streams))["high"]["eval_id"] == "h1"
    assert (await claim_one(streams)).eval_id == "h1"  # strict priority: high first
    assert (await oldest(streams))["high"] == {"seconds": 0.0, "eval_id": None}
    assert (await claim_one(streams)).eval_id == "d1"
    assert (await oldest(streams))["default"]["eval_id"] == "d2"
    await streams.cancel("d2")  # cancelled while queued: its entry is deleted
    assert (await oldest(streams))["default"]["eval_id"] == "d3"


async def test_the_age_is_the_wait_by_the_redis_clock(streams: Queue) -> None:
    await streams.enqueue(req("w1", priority="low"))
    entry = (await raw(streams).xrange(streams.keys.stream("low")))[0][0].decode()
    entry_ms = int(entry.split("-")[0])

    async def waited() -> float:
        seconds = (await oldest(streams))["low"]["seconds"]
        assert isinstance(seconds, float)
        return seconds if seconds >= 0.05 else 0.0

    seconds = await wait_for(waited)
    after = await server_ms(raw(streams))
    assert 0.05 <= seconds <= (after - entry_ms) / 1000


async def test_a_queue_whose_group_is_gone_counts_every_entry(streams: Queue) -> None:
    """No consumer group yet (a stream written before any claim, or recreated): nothing was
    delivered, so the first entry is the oldest waiting."""
    await streams.enqueue(req("g1"))
    await raw(streams).xgroup_destroy(streams.keys.stream("default"), "workers")
    assert (await oldest(streams))["default"]["eval_id"] == "g1"


# --- minutes -------------------------------------------------------------------------------


async def test_minutes_count_what_settled_and_are_kept_48_hours(streams: Queue) -> None:
    for eval_id in ("m1", "m2", "m3"):
        await streams.enqueue(req(eval_id))
    task = await claim_one(streams)
    await streams.complete(task.eval_id, {"ok": 1}, task)
    task = await claim_one(streams)
    await streams.fail(task.eval_id, "boom", task=task)  # retried
    task = await claim_one(streams)
    await streams.fail(task.eval_id, "boom", task=task, retry=False)

    async def settled() -> list[dict[str, int]]:
        points = await history.series(streams, "minute", 2)
        done = sum(p["completed"] for p in points) == 1
        return points if done else []

    points = await settled()
    assert [p["at"] % 60 for p in points] == [0, 0]
    assert points[1]["at"] - points[0]["at"] == 60
    total = {s: sum(p.get(s, 0) for p in points) for s in ("queued", "failed", "retrying")}
    assert total == {"queued": 3, "failed": 1, "retrying": 1}
    # one declared stats hash (no key per minute): kept by trimming fields, not by TTL
    fields = await raw(streams).hkeys(streams.keys.stats)
    assert b"minute" in fields and all(f == b"minute" or b":" in f for f in fields)


async def test_minutes_older_than_48_hours_are_trimmed(streams: Queue) -> None:
    """The first count of a new minute drops the minutes aged out of the 48 h kept."""
    client = raw(streams)
    now_min = await server_ms(client) // 60_000
    old, kept = now_min - history.MAX_MINUTES - 5, now_min - history.MAX_MINUTES + 60
    await client.hset(
        streams.keys.stats,
        mapping={f"{old}:completed": 3, f"{kept}:failed": 2, "minute": now_min - 90},
    )
    await streams.enqueue(req("t"))
    fields = await client.hkeys(streams.keys.stats)
    assert f"{old}:completed".encode() not in fields
    assert f"{kept}:failed".encode() in fields


async def test_an_idle_series_is_all_zeros(streams: Queue) -> None:
    points = await history.series(streams, "minute", 5)
    assert len(points) == 5
    assert all(p == {"at": p["at"], "completed": 0, "failed": 0, "retrying": 0} for p in points)


# --- hours ---------------------------------------------------------------------------------


async def fill_minutes(streams: Queue, hour: int, per_minute: dict[str, int]) -> None:
    """Minute fields of a past hour in the stats hash, as event() in _lib.lua writes them."""
    client = raw(streams)
    for minute in range(hour * 60, hour * 60 + 60, 10):  # every tenth minute
        for state, n in per_minute.items():
            await client.hincrby(streams.keys.stats, f"{minute}:{state}", n)


async def current_hour(streams: Queue) -> int:
    return await server_ms(raw(streams)) // 3_600_000


async def test_hours_are_rolled_up_once_and_read_the_same_before_and_after(
    streams: Queue,
) -> None:
    hour = await current_hour(streams)
    await fill_minutes(streams, hour - 3, {"completed": 5, "failed": 1})
    await fill_minutes(streams, hour - 1, {"completed": 2, "retrying": 3})
    before = await history.series(streams, "hour", 4)  # nothing rolled: from the minutes
    assert [p["at"] // 3600 for p in before] == [hour - 3, hour - 2, hour - 1, hour]
    assert before[0] == {"at": (hour - 3) * 3600, "completed": 30, "failed": 6, "retrying": 0}
    assert before[2] == {"at": (hour - 1) * 3600, "completed": 12, "failed": 0, "retrying": 18}
    assert before[1]["completed"] == before[3]["completed"] == 0

    assert await history.rollup(streams) == 2  # the hours with changes, of the 48 kept
    assert await history.rollup(streams) == 0  # each once
    client = raw(streams)
    assert await client.hgetall(history.hour_key(streams, hour - 3)) == {
        b"completed": b"30",
        b"failed": b"6",
    }
    assert not await client.exists(history.hour_key(streams, hour - 2))  # an idle hour
    assert int(await client.get(history.rolled_key(streams))) == hour - 1
    ttl = await client.ttl(history.hour_key(streams, hour - 3))
    assert 89 * 86400 < ttl <= history.HOUR_TTL

    # the hours are now read from their hash: the minutes may go
    fields = [f"{m}:{st}" for m in range((hour - 3) * 60, (hour - 3) * 60 + 60) for st in SHOWN]
    await client.hdel(streams.keys.stats, *fields)
    assert await history.series(streams, "hour", 4) == before


async def test_an_idle_queue_gets_only_the_marker(streams: Queue) -> None:
    """So the next housekeeping rolls only the hour that ended since."""
    hour = await current_hour(streams)
    assert await history.rollup(streams) == 0
    assert int(await raw(streams).get(history.rolled_key(streams))) == hour - 1
    hours = [history.hour_key(streams, h) for h in range(hour - 48, hour)]
    assert not await raw(streams).exists(*hours)


async def test_the_housekeeping_rolls_up(streams: Queue) -> None:
    hour = await current_hour(streams)
    await fill_minutes(streams, hour - 2, {"completed": 1})
    done = await admin.cleanup_queue(streams)
    assert done is not None and done["hours_rolled"] == 1
    assert await raw(streams).hget(history.hour_key(streams, hour - 2), "completed") == b"6"


async def test_a_task_lifecycle_shows_in_the_current_hour(streams: Queue) -> None:
    await streams.enqueue(req("h-1"))
    task: Task = await claim_one(streams)
    await streams.complete(task.eval_id, None, task)
    points = await history.series(streams, "hour", 1)
    assert points[0]["completed"] == 1 and points[0]["queued"] == 1


async def test_hours_older_than_the_minutes_are_read_from_their_hash_only(streams: Queue):
    """Past 48 h only hour hashes count (a minute hash there would be a stray), so a 90-day
    series reads at most 49 hours of minutes."""
    hour = await current_hour(streams)
    await fill_minutes(streams, hour - 60, {"completed": 1})
    await raw(streams).hset(history.hour_key(streams, hour - 70), "failed", 4)
    points = await history.series(streams, "hour", history.MAX_HOURS)
    assert len(points) == history.MAX_HOURS
    by_hour = {p["at"] // 3600: p for p in points}
    assert by_hour[hour - 60]["completed"] == 0
    assert by_hour[hour - 70]["failed"] == 4
