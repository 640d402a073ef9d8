"""History of state changes per queue: per minute for 48 h, per hour for 90 days.

The scripts count every state change but `processing` per minute in the queue's `stats`
hash (`<epoch minute>:<state>` fields, event() in lua/_lib.lua, kept `MINUTE_TTL`: one
declared key, engine/keys.py); that costs each task nothing more than the per-minute
plots always did. The hourly
housekeeping (admin.cleanup_queue, one process per queue and interval) rolls every
finished hour up into `<events>:h:<epoch hour>` (lua/rollup.lua, kept `HOUR_TTL`), and
`<events>:h:rolled` remembers the last hour rolled (so after its first run the
housekeeping of a queue rolls one hour per run). An hour not rolled yet (the current
one, or the housekeeping did not run) is summed from its minutes when read, so a series
never has a hole while the minutes are kept.

Also the oldest waiting task of each priority stream (lua/oldest.lua), for the
`taskstream_oldest_waiting_seconds` gauge, /status and the dashboard.

Imports: client, keys, queue, models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from app.engine.client import text, translate_errors
from app.engine.keys import GROUP
from app.engine.queue import Queue
from app.models import PRIORITY_ORDER

MINUTE_TTL = 48 * 3600  # STATS_MINUTES of the stats hash in event() (lua/_lib.lua)
HOUR_TTL = 90 * 86400
MAX_MINUTES = MINUTE_TTL // 60  # 2880
MAX_HOURS = HOUR_TTL // 3600  # 2160
RESOLUTIONS = {"minute": (60, MAX_MINUTES), "hour": (3600, MAX_HOURS)}  # step s, points kept
SHOWN = ("completed", "failed", "retrying")  # always in a point, 0 when none
# The states event() counts (STATS_STATES in lua/_lib.lua): a range of minutes is read by
# field (HMGET), not by reading the whole 48 h hash.
STATES: tuple[str, ...] = ("queued", "scheduled", "retrying", "deferred", "completed")
STATES += ("failed", "cancelled", "expired")


def hour_key(queue: Queue, hour: int) -> str:
    return f"{queue.keys.events}:h:{hour}"


def rolled_key(queue: Queue) -> str:
    return f"{queue.keys.events}:h:rolled"


async def _now_s(queue: Queue) -> int:
    """The Redis clock, in whole seconds (every service time comes from it)."""
    now_s, _ = await queue.redis.time()
    return int(now_s)


async def _all(calls: Sequence[Awaitable[Any]]) -> list[Any]:
    """Script calls issued together (one pipelined write); the first failure is raised once
    every call has ended, so none is left unretrieved."""
    replies = await asyncio.gather(*calls, return_exceptions=True)
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return replies


# --- reading ---------------------------------------------------------------------------------


@translate_errors
async def series(queue: Queue, resolution: str, points: int) -> list[dict[str, int]]:
    """The last `points` minutes or hours up to now (oldest first), each `{"at": epoch s of
    its start, state: changes, ...}` with at least `SHOWN`."""
    step, _ = RESOLUTIONS[resolution]
    now = await _now_s(queue)
    last = now // step
    first = last - points + 1
    if resolution == "minute":
        rows = await _minutes(queue, range(first, last + 1))
    else:  # each partition of a partitioned queue rolls up its own hours: summed here
        per_part = await asyncio.gather(*(_hours(part, first, last) for part in queue.parts))
        rows = [_summed(hour) for hour in zip(*per_part, strict=True)]
    return [
        {"at": (first + i) * step, **dict.fromkeys(SHOWN, 0), **row} for i, row in enumerate(rows)
    ]


async def _stats(queue: Queue) -> dict[int, dict[str, int]]:
    """The whole stats hash as {epoch minute: {state: count}} (for the unrolled hours)."""
    found: dict[int, dict[str, int]] = {}
    for field, value in (await queue.redis.hgetall(queue.keys.stats)).items():
        minute, _, state = text(field).partition(":")
        if state:
            found.setdefault(int(minute), {})[state] = int(value)
    return found


async def minute_counts(queue: Queue, minutes: range) -> list[dict[str, int]]:
    """{state: count} of each minute of `minutes` (epoch minutes), one HMGET (per
    partition of a partitioned queue, concurrently, summed)."""
    fields = [f"{m}:{st}" for m in minutes for st in STATES]
    rows: list[dict[str, int]] = [{} for _ in minutes]
    if not fields:
        return rows
    per_part = await asyncio.gather(*(p.redis.hmget(p.keys.stats, fields) for p in queue.parts))
    for values in per_part:
        for i, value in enumerate(values):
            if value is not None:
                row, state = rows[i // len(STATES)], STATES[i % len(STATES)]
                row[state] = row.get(state, 0) + int(value)
    return rows


async def _minutes(queue: Queue, minutes: range) -> list[dict[str, int]]:
    return await minute_counts(queue, minutes)


async def _hours(queue: Queue, first: int, last: int) -> list[dict[str, int]]:
    """Rolled hours from their hash; the others (after the marker, within the minutes'
    48 h) summed from the stats hash: two round trips."""
    rolled = await queue.redis.get(rolled_key(queue))
    done = max(int(rolled) if rolled is not None else -1, last - MINUTE_TTL // 3600 - 1)
    pipe = queue.redis.pipeline(transaction=False)
    for hour in range(first, min(done, last) + 1):
        pipe.hgetall(hour_key(queue, hour))
    replies = iter(await pipe.execute())
    stats = await _stats(queue) if done < last else {}
    rows = []
    for hour in range(first, last + 1):
        if hour <= done:
            rows.append(_counts(next(replies)))
            continue
        minutes = range(hour * 60, hour * 60 + 60)
        rows.append(_summed(stats.get(m, {}) for m in minutes))
    return rows


def _counts(row: dict[Any, Any]) -> dict[str, int]:
    return {text(k): int(v) for k, v in row.items()}


def _summed(rows: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for row in rows:
        for state, n in row.items():
            total[state] = total.get(state, 0) + n
    return total


# --- the hourly roll-up ----------------------------------------------------------------------


@translate_errors
async def rollup(queue: Queue) -> int:
    """Roll up every finished hour not rolled yet whose minutes are still kept; the number
    of those hours that had state changes. Run by the housekeeping under the queue's
    cleanup lock."""
    now = await _now_s(queue)
    current = now // 3600
    rolled = await queue.redis.get(rolled_key(queue))
    start = current - MINUTE_TTL // 3600
    if rolled is not None:
        start = max(start, int(rolled) + 1)
    hours = range(start, current)
    changes = await _all([_roll(queue, hour) for hour in hours])
    return sum(1 for n in changes if n)


async def _roll(queue: Queue, hour: int) -> int:
    keys = [hour_key(queue, hour), rolled_key(queue), queue.keys.stats]
    return int(await queue.scripts.run("rollup", keys, [hour, HOUR_TTL]))


# --- the oldest waiting task -----------------------------------------------------------------


@translate_errors
async def oldest_waiting(queues: Sequence[Queue]) -> list[dict[str, dict[str, Any]]]:
    """Per queue, per priority: `{"seconds": age of its oldest waiting task by the Redis
    clock (0 when none waits), "eval_id": that task or None}`. One script call per queue,
    all sent in one write (the script runner pipelines calls of one event-loop turn). A
    partitioned queue: one call per partition, the oldest of them per priority."""
    parts = [part for q in queues for part in q.parts]
    calls = [
        p.scripts.run("oldest", [*p.keys.streams, *p.keys.tenant_streams], [GROUP]) for p in parts
    ]
    ages = iter([_ages(reply) for reply in await _all(calls)])
    return [_oldest([next(ages) for _ in q.parts]) for q in queues]


def _oldest(per_part: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per priority, the oldest waiting task over a queue's partitions."""
    return {
        prio: max((ages[prio] for ages in per_part), key=lambda age: age["seconds"])
        for prio in per_part[0]
    }


def _ages(reply: list[Any]) -> dict[str, dict[str, Any]]:
    now_ms, *per_priority = reply
    ages: dict[str, dict[str, Any]] = {}
    for prio, found in zip(PRIORITY_ORDER, per_priority, strict=True):
        if not found:
            ages[prio.value] = {"seconds": 0.0, "eval_id": None}
            continue
        entry_ms = int(text(found[0]).split("-")[0])
        seconds = max(0, int(now_ms) - entry_ms) / 1000
        ages[prio.value] = {"seconds": seconds, "eval_id": text(found[1]) or None}
    return ages
