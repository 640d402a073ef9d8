"""Operator actions on queues: clear, the dead-letter queue, pause, hourly housekeeping.

`clear` and `cleanup` act on the deployment's legacy queues (the default queue and every
named queue used): eval_ids are unique across them (the id directory, engine/keys.py), so
they are cleared together. Finished records are reachable from no structure; they are
found by SCAN (an admin operation, never on a hot path) and unlinked in batches.

Imports: client, keys, links, queue, engine, history, records, models, errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from app.engine import history, links
from app.engine.client import (
    Redis,
    consumer_name,
    is_cluster,
    publish,
    scan_page,
    text,
    translate_errors,
)
from app.engine.engine import Engine
from app.engine.keys import GROUP
from app.engine.queue import Queue
from app.engine.records import render_dead
from app.errors import Conflict, NotFound
from app.models import State

PURGE_BATCH = 500  # dead letters per dlq_purge.lua call
UNLINK_BATCH = 500
SWEEPS = 50  # promote batches per queue and housekeeping run (a safety net, not the promoter)


async def _used(engine: Engine) -> list[Queue]:
    """The default queue and every named queue a task ever used (the registry) or
    QUEUE_PARTITIONS names, each partition of a partitioned queue on its own."""
    names = {*await engine.named_queues(), *engine.settings.queue_partitions}
    names.discard(engine.settings.queue)
    queues = [engine.default, *(engine.queue(name) for name in sorted(names))]
    return [part for queue in queues for part in queue.parts]


@translate_errors
async def clear(engine: Engine) -> int:
    """Remove every task, queue entry and DLQ entry of every legacy queue, their callbacks
    and relays, and the id directory's pointers; the number of task records removed."""
    removed = 0
    for queue in await _used(engine):
        k = queue.keys
        keys = [*k.streams, k.counters, k.leases, k.scheduled, k.dlq, *k.holes, k.dlq_index]
        keys += [k.deferred, k.pace, k.expiries, k.dedup, k.dedup_ttl, k.expiring, *k.fair]
        keys.append(k.rate)
        removed += int(await queue.scripts.run("clear", keys, [GROUP, k.task_prefix]))
        await engine.client.xtrim(k.callbacks, maxlen=0)  # of cleared tasks: dropped
        removed += await _unlink_matching(engine.client, f"{k.task_prefix}*")
    return removed


async def _unlink_matching(client: Redis, pattern: str) -> int:
    """UNLINK the keys matching `pattern`, found by SCAN on every primary; the number of
    task records among them (the id directory's pointers, `{q, at}`, are not counted)."""
    removed, cursor = 0, "0"
    while True:
        cursor, keys = await scan_page(client, cursor, pattern, UNLINK_BATCH)
        if keys:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hexists(key, "state")
            tasks = sum(1 for found in await pipe.execute() if found)
            await client.unlink(*keys)
            removed += tasks
        if cursor == "0":
            return removed


@translate_errors
async def set_paused(queue: Queue, paused: bool) -> None:
    """Pause: claims hand out nothing (in-process consumers and `GET /tasks/next`),
    running tasks finish. Resume wakes idle consumers everywhere at once. Every partition
    of a partitioned queue."""
    for part in queue.parts:
        await _set_paused(part, paused)


async def _set_paused(queue: Queue, paused: bool) -> None:
    k = queue.keys
    if paused:
        await queue.redis.set(k.paused, "1")
    elif is_cluster(queue.redis):  # a cluster pipeline takes no PUBLISH: two round trips
        await queue.scripts.prepare()
        await queue.redis.delete(k.paused)
        await publish(queue.redis, k.schedule_channel, "release", queue.scripts.sharded_pubsub)
    else:
        pipe = queue.redis.pipeline(transaction=True)
        pipe.delete(k.paused)
        pipe.publish(k.schedule_channel, "release")
        await pipe.execute()


# --- the dead-letter queue ------------------------------------------------------------------


@translate_errors
async def dlq_list(queue: Queue, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """Dead letters, newest first (a partitioned queue's merged by entry id, the time its
    partition dead-lettered it: each partition is read up to `offset + limit`)."""
    pipe = queue.redis.pipeline(transaction=False)
    for part in queue.parts:
        pipe.xlen(part.keys.dlq)
        pipe.xrevrange(part.keys.dlq, "+", "-", count=offset + limit)
    replies = await pipe.execute()
    count = sum(int(n) for n in replies[::2])
    entries = [e for found in replies[1::2] for e in found]
    if queue.parts[1:]:
        entries.sort(key=lambda e: tuple(int(x) for x in text(e[0]).split("-")), reverse=True)
    return {"count": count, "tasks": [render_dead(e) for e in entries[offset : offset + limit]]}


async def dlq_retry(queue: Queue, eval_id: str) -> dict[str, Any]:
    """Queue a dead letter again with a fresh attempt count (in the partition holding it)."""
    held = queue.candidates(eval_id) if queue.whole.parts[1:] else [queue]
    for part in held[:-1]:
        with suppress(NotFound):
            return await _dlq_retry(part, eval_id)
    return await _dlq_retry(held[-1], eval_id)


@translate_errors
async def _dlq_retry(queue: Queue, eval_id: str) -> dict[str, Any]:
    k = queue.keys
    keys = [k.task(eval_id), k.dlq, k.dlq_index, k.counters, k.events, *k.streams, k.stats]
    keys += k.fair
    argv = [eval_id, queue.settings.events_maxlen, k.q]
    reply = await queue.scripts.run("dlq_retry", keys, argv)
    if text(reply[0]) == "missing":
        raise NotFound(f"not in the dead-letter queue: {eval_id}")
    if text(reply[0]) == "state":
        raise Conflict(f"a live task uses this eval_id ({text(reply[1])})")
    if text(reply[0]) == "lost":
        raise Conflict("its payload was lost with its stream entry: nothing to run again")
    queue.observer.redriven(k.queue, text(reply[1]))
    return {"eval_id": eval_id, "status": State.QUEUED.value}


async def dlq_purge(
    queue: Queue, older_than: float | None = None, eval_id: str | None = None
) -> int:
    """Remove dead letters: one, those older than `older_than` seconds, or all (in every
    partition of a partitioned queue; one: in those that may hold it)."""
    if eval_id is not None and queue.whole.parts[1:]:
        held = queue.candidates(eval_id)
    else:
        held = list(queue.parts)
    return sum([await _dlq_purge(part, older_than, eval_id) for part in held])


@translate_errors
async def _dlq_purge(queue: Queue, older_than: float | None, eval_id: str | None) -> int:
    k = queue.keys
    if eval_id is not None:
        return int(await queue.scripts.run("dlq_purge", [k.dlq, k.dlq_index], ["one", eval_id, 1]))
    mode, cutoff = "all", "0"
    if older_than is not None:
        now_s, now_us = await queue.redis.time()
        cutoff_ms = int(now_s) * 1000 + int(now_us) // 1000 - int(older_than * 1000)
        if cutoff_ms <= 0:  # before the epoch: nothing is that old (and no stream id is)
            return 0
        cutoff, mode = str(cutoff_ms), "before"
    removed = 0
    while True:
        argv = [mode, cutoff, PURGE_BATCH]
        batch = int(await queue.scripts.run("dlq_purge", [k.dlq, k.dlq_index], argv))
        removed += batch
        if batch < PURGE_BATCH:
            return removed


# --- housekeeping ---------------------------------------------------------------------------


async def cleanup(engine: Engine, more: Sequence[Queue] = ()) -> dict[str, int] | None:
    """Hourly housekeeping of every legacy queue and of `more` (queues of a wing above):
    dead letters older than DLQ_MAX_AGE_DAYS purged, events streams trimmed, finished hours
    of state counters rolled up (engine/history.py), expiries and dedup windows swept (for
    queues no promoter serves). Each queue has a lock, so one process per interval does
    each; None when this one did none."""
    done: dict[str, int] | None = None
    for queue in [*await _used(engine), *more]:
        found = await cleanup_queue(queue)
        if found is not None:
            done = {k: (done or {}).get(k, 0) + v for k, v in found.items()}
    return done


@translate_errors
async def cleanup_queue(queue: Queue) -> dict[str, int] | None:
    """The housekeeping of one queue, when this process takes its lock (else None)."""
    s, k = queue.settings, queue.keys
    lock_ms = max(1, int(s.cleanup_interval * 900))  # expires a little before the next run
    if not await queue.redis.set(k.cleanup_lock, consumer_name(), nx=True, px=lock_ms):
        return None
    removed = await _dlq_purge(queue, s.dlq_max_age_days * 86400, None)  # this partition's
    trimmed = await queue.redis.xtrim(k.events, maxlen=s.events_maxlen, approximate=True)
    hours = await history.rollup(queue)
    for _ in range(SWEEPS):  # a promoter's pass: due tasks queued, expired ones settled
        if await queue.promote_one() != 0.0:
            break
    done = {"dlq_removed": removed, "events_trimmed": int(trimmed), "hours_rolled": hours}
    if k.q:  # a named queue: pointers of its expired records leave the id directory
        done["pointers_dropped"] = await links.sweep(queue)
    return done
