"""Read-only views of queues for operators: counts, consumers, events, per-minute stats.

Nothing here changes a task. Counts are O(priorities + consumers) per queue, and the
functions over several queues read them all in a fixed number of round trips, however many
queues there are. `health` adds one tiny write (a probe key of this process, expiring), so
a Redis that refuses writes is reported although every read works.

Imports: client, keys, queue, engine, history, models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.engine import history
from app.engine.client import Redis, consumer_name, raise_translated, text, translate_errors
from app.engine.engine import Engine
from app.engine.keys import GROUP, PARKED, QueueKeys
from app.engine.queue import Queue
from app.models import PRIORITY_ORDER, State

PROBE_TTL_MS = 60_000  # the /health write probe's key (one per process) expires after this


@translate_errors
async def counts(queue: Queue) -> dict[str, Any]:
    """Counts per state and priority, totals, DLQ size and the pause flag (summed over the
    partitions of a partitioned queue)."""
    return combined(await counts_of(queue.redis, [p.keys for p in queue.parts]))


@translate_errors
async def health(queue: Queue) -> dict[str, Any]:
    """`counts`, plus a probe write (this process's probe key, expiring), so a Redis that
    refuses writes raises `WritesRefused`, in the same round trip."""
    probe = queue.keys.shared(f"probe:{consumer_name()}")
    return combined(await counts_of(queue.redis, [p.keys for p in queue.parts], probe))


@translate_errors
async def consumers(queue: Queue) -> list[dict[str, Any]]:
    """XINFO CONSUMERS of every priority stream (of every partition), merged by name."""
    return merged_consumers(await consumers_of(queue.redis, [p.keys for p in queue.parts]))


async def queues_overview(engine: Engine) -> dict[str, dict[str, Any]]:
    """Counts, consumers and oldest waiting tasks of every named legacy queue
    (QUEUE_EXECUTORS, or used; a partitioned one's partitions summed), in four round trips
    however many there are."""
    queues = (await engine.legacy_queues())[1:]
    keys = [p.keys for q in queues for p in q.parts]
    all_counts = await counts_of(engine.client, keys)
    all_consumers = await consumers_of(engine.client, keys)
    all_ages = await history.oldest_waiting(queues)
    found: dict[str, dict[str, Any]] = {}
    at = 0
    for q, ages in zip(queues, all_ages, strict=True):
        n = len(q.parts)
        who = merged_consumers(all_consumers[at : at + n])
        counted = combined(all_counts[at : at + n])
        found[q.keys.queue] = {**counted, "consumers": who, "oldest_waiting": ages}
        at += n
    return found


def combined(per_part: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The counts of a queue's partitions as one: numbers summed, paused if any is."""
    if len(per_part) == 1:
        return per_part[0]

    def add(a: Any, b: Any) -> Any:
        if isinstance(a, dict):
            return {k: add(a.get(k, 0), b.get(k, 0)) for k in dict.fromkeys([*a, *b])}
        if isinstance(a, bool):
            return a or b
        return a + b

    total = per_part[0]
    for more in per_part[1:]:
        total = add(total, more)
    return total


def merged_consumers(per_part: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per consumer name over a queue's partitions: pending summed, least idle."""
    if len(per_part) == 1:
        return per_part[0]
    rows: dict[str, dict[str, Any]] = {}
    for part in per_part:
        for row in part:
            had = rows.setdefault(row["name"], {**row, "pending": 0, "priorities": []})
            had["pending"] += row["pending"]
            idle = [i for i in (had["idle_ms"], row["idle_ms"]) if i is not None]
            had["idle_ms"] = min(idle) if idle else None
            taken = {*had["priorities"], *row.get("priorities", [])}
            had["priorities"] = [p.value for p in PRIORITY_ORDER if p.value in taken]
    return list(rows.values())


@translate_errors
async def counts_of(
    client: Redis, queues: Sequence[QueueKeys], probe: str | None = None
) -> list[dict[str, Any]]:
    """`counts` of several queues in two round trips, however many queues. With `probe` (a
    key name), one tiny write rides along in the first: a Redis that refuses writes raises
    `WritesRefused` although every read works."""
    pipe = client.pipeline(transaction=False)
    for k in queues:
        pipe.hgetall(k.counters)
        pipe.xlen(k.dlq)
        pipe.exists(k.paused)
        for key in (*k.streams, *k.tenant_streams):
            pipe.xpending(key, GROUP)
    if probe is not None:
        pipe.set(probe, b"1", px=PROBE_TTL_MS)
    first = await pipe.execute(raise_on_error=False)
    if probe is not None and isinstance(wrote := first.pop(), Exception):
        raise_translated(wrote)
    per = 3 + 2 * len(PRIORITY_ORDER)
    rows = [first[i * per : (i + 1) * per] for i in range(len(queues))]
    pipe = client.pipeline(transaction=False)
    counters_of = []
    for k, (counters_raw, *_) in zip(queues, rows, strict=True):
        counters = {text(a): int(b) for a, b in counters_raw.items()}
        counters_of.append(counters)
        for prio, key in zip(PRIORITY_ORDER, k.holes, strict=True):
            pipe.zcount(key, f"({counters.get(f'head:{prio.value}', 0)}", "+inf")
    holes = await pipe.execute()
    answers = []
    for i, (counters, (_, dlq, paused, *pending)) in enumerate(zip(counters_of, rows, strict=True)):
        queue_holes = holes[i * len(PRIORITY_ORDER) : (i + 1) * len(PRIORITY_ORDER)]
        summary = _summarise(counters, int(dlq), queue_holes, pending)
        answers.append({**summary, "paused": bool(paused)})
    return answers


@translate_errors
async def consumers_of(client: Redis, queues: Sequence[QueueKeys]) -> list[list[dict[str, Any]]]:
    """XINFO CONSUMERS of every priority stream (and tenant stream) of several queues in one
    round trip, merged per queue by consumer name."""
    pipe = client.pipeline(transaction=False)
    for k in queues:
        for key in (*k.streams, *k.tenant_streams):
            pipe.xinfo_consumers(key, GROUP)
    replies = await pipe.execute(raise_on_error=False)
    per = 2 * len(PRIORITY_ORDER)
    return [_merged(replies[i * per : (i + 1) * per]) for i in range(len(queues))]


def _merged(per_priority: list[Any]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for prio, rows in zip((*PRIORITY_ORDER, *PRIORITY_ORDER), per_priority, strict=True):
        if isinstance(rows, Exception):
            continue  # no group yet
        for row in rows:
            name = text(row["name"])
            if name == PARKED:
                continue  # fair share's waiting tasks, not a consumer (engine/lua/_lib.lua)
            entry = merged.setdefault(name, {"name": name, "pending": 0, "idle_ms": None})
            entry["pending"] += int(row["pending"])
            idle = int(row["idle"])
            entry["idle_ms"] = idle if entry["idle_ms"] is None else min(idle, entry["idle_ms"])
            if prio.value not in (seen := entry.setdefault("priorities", [])):
                seen.append(prio.value)
    return list(merged.values())


def _in_flight(reply: Any) -> int:
    """Pending count from XPENDING's summary form (an error when the group is missing),
    but for the entries parked by fair share (tasks still waiting)."""
    if isinstance(reply, Exception) or not reply:
        return 0
    parked = sum(
        int(row["pending"]) for row in reply.get("consumers") or () if text(row["name"]) == PARKED
    )
    return int(reply["pending"]) - parked


def _summarise(
    counters: dict[str, int], dlq: int, holes: list[int], pending: list[Any]
) -> dict[str, Any]:
    """Counts by state and priority: queued ones from the counters (tenant `default`'s in
    the priority stream, the others' `tq:<prio>`), processing ones from XPENDING of the
    priority and tenant streams."""
    tenants_pending = pending[len(PRIORITY_ORDER) :]
    waiting = (State.QUEUED, State.PROCESSING, State.SCHEDULED, State.RETRYING, State.DEFERRED)
    by_state: dict[str, dict[str, int]] = {s.value: {} for s in waiting}
    rows = zip(PRIORITY_ORDER, holes, pending, tenants_pending, strict=False)
    for prio, prio_holes, prio_pending, tenant_pending in rows:
        p = prio.value
        head = counters.get(f"head:{p}", 0)
        queued = counters.get(f"seq:{p}", 0) - head - int(prio_holes) + counters.get(f"tq:{p}", 0)
        by_state["queued"][p] = queued
        by_state["processing"][p] = _in_flight(prio_pending) + _in_flight(tenant_pending)
        by_state["scheduled"][p] = counters.get(f"scheduled:{p}", 0)
        by_state["retrying"][p] = counters.get(f"retrying:{p}", 0)
        by_state["deferred"][p] = counters.get(f"deferred:{p}", 0)
    totals = {
        name.removeprefix("total:"): value
        for name, value in counters.items()
        if name.startswith("total:")
    }
    return {
        "states": {state: sum(v.values()) for state, v in by_state.items()},
        "by_priority": by_state,
        "dlq": dlq,
        "totals": totals,
    }


# --- the events stream ----------------------------------------------------------------------


@translate_errors
async def events_after(
    queue: Queue, start: str, count: int
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Entries of the events stream after id `start` ("$": none yet, from its tail)."""
    if start == "$":
        return []
    found: Any = await queue.redis.xrange(queue.keys.events, f"({start}", "+", count=count)
    return list(found)


@translate_errors
async def events_tail(queue: Queue) -> str:
    """The id of the events stream's last entry ("0-0": none)."""
    last: Any = await queue.redis.xrevrange(queue.keys.events, "+", "-", count=1)
    return text(last[0][0]) if last else "0-0"


@translate_errors
async def minute_stats(queue: Queue, minutes: int) -> list[dict[str, int]]:
    """State changes per minute over the last `minutes` (oldest first), from the
    per-minute counts the scripts keep in the queue's stats hash (`<minute>:<state>`, 48 h;
    event() in engine/lua/_lib.lua); summed over the partitions of a partitioned queue."""
    now_s, _ = await queue.redis.time()  # (a cluster pipeline takes no TIME)
    first = int(now_s) // 60 - minutes + 1
    counts = await history.minute_counts(queue, range(first, first + minutes))
    return [{"minute": (first + i) * 60, **row} for i, row in enumerate(counts)]
