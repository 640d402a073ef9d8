"""Upgrading a deployment stored under the previous key layout, where every named queue
shared the default queue's hash tag: its keys under `ts:{Q}:q:<name>:`, its task records
in the default queue's key space (with a `q` field), dependants in `ts:{Q}:deps:<parent>`
sets, one callbacks stream for every queue. Nothing of it is lost: `migrate` moves it to
the current layout (engine/keys.py), in steps that are each one script (engine/lua/
upgrade.lua) and each idempotent, logging what it moved per queue:

1. each named queue's structures (streams with their groups and pending entries,
   counters, leases, schedule, DLQ and its index, events, holes, pause flag, expiries, dedup
   hash and throttle windows, deferred zset, pace samples) are renamed
   to its own tag;
2. its task records follow (their TTLs kept), each leaving a pointer in the id directory
   at its old key;
3. the `deps:` sets become marks on the parents' records, across queues where parent and
   dependant are now in different queues;
4. callbacks waiting in the shared stream move to their queue's stream.

It runs at the start of every process (`Runtime.start`), before any consumer, under a
lock; once done (or at once, for a deployment with nothing stored yet) the home tag's
`layout` key says so, and a start costs one GET. Stop the
processes of the previous version first: they would keep writing the old layout. The
old layout exists on one server only (taskstream could not use a Redis Cluster before),
and the steps rename keys across hash tags, so a cluster is only marked.

Imports: client, keys, engine (and structlog).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import structlog

from app.engine.client import is_cluster, scan_page, text, translate_errors
from app.engine.engine import Engine
from app.engine.keys import CALLBACK_GROUP, QueueKeys

log = structlog.get_logger()

LAYOUT = "2"  # the layout with a hash tag per named queue (the `layout` key's value)
BATCH = 500
LOCK_MS = 600_000  # an upgrade lock left by a dead process lapses after this


def old_keys(default: str, name: str) -> list[str]:
    """The structure keys of named queue `name` under the previous layout."""
    p = f"ts:{{{default}}}:q:{name}:"
    parts = ["counters", "leases", "scheduled", "dlq", "dlq:index", "events", "paused"]
    parts += ["expiries", "dedup", "dedup:ttl", "deferred", "pace"]  # issue 15, listing, ETA
    prios = ("high", "default", "low")
    return [
        p + s for s in (*parts, *(f"stream:{x}" for x in prios), *(f"holes:{x}" for x in prios))
    ]


def new_keys(keys: QueueKeys) -> list[str]:
    """The same structures in the current layout (order of `old_keys`)."""
    k = keys
    return [
        k.counters,
        k.leases,
        k.scheduled,
        k.dlq,
        k.dlq_index,
        k.events,
        k.paused,
        k.expiries,
        k.dedup,
        k.dedup_ttl,
        k.deferred,
        k.pace,
        *k.streams,
        *k.holes,
    ]


@translate_errors
async def migrate(engine: Engine) -> dict[str, int] | None:
    """Bring the deployment to the current layout (see the module docstring); what was
    moved, or None when it was already there (or another process did it meanwhile)."""
    marker, lock = engine.keys.shared("layout"), engine.keys.shared("upgrade-lock")
    redis: Any = engine.client
    if text(await redis.get(marker) or b"") == LAYOUT:
        return None
    fresh = not await redis.exists(engine.keys.counters, engine.keys.registry)
    if fresh or is_cluster(redis):  # nothing stored yet, or nothing of the old layout
        await redis.set(marker, LAYOUT)
        return None
    while not await redis.set(lock, "1", nx=True, px=LOCK_MS):
        await asyncio.sleep(0.2)  # another process migrates: wait for it
        if text(await redis.get(marker) or b"") == LAYOUT:
            return None
    try:
        done = await _migrate(engine)
        await redis.set(marker, LAYOUT)
    finally:
        await redis.delete(lock)
    if any(done.values()):
        log.info("layout_upgraded", **done)
    return done


async def _migrate(engine: Engine) -> dict[str, int]:
    names = sorted({*engine.settings.queue_executors, *await engine.named_queues()})
    names = [n for n in names if n != engine.settings.queue]
    done = {"structures": 0, "records": 0, "dependants": 0, "callbacks": 0}
    for name in names:
        done["structures"] += await _structures(engine, name)
    done["records"] = await _records(engine, set(names))
    done["dependants"] = await _dependants(engine)
    done["callbacks"] = await _callbacks(engine)
    return done


async def _structures(engine: Engine, name: str) -> int:
    keys = engine.queue(name).keys
    old = old_keys(engine.settings.queue, name)
    moved, conflicts = await engine.scripts.run("upgrade", [*old, *new_keys(keys)], ["queue"])
    if conflicts:
        log.error(
            "layout_upgrade_conflict",
            queue=name,
            kept=[text(k) for k in conflicts],
            detail="both layouts hold these keys: the old ones were left for an operator",
        )
    if int(moved):
        log.info("layout_queue_moved", queue=name, keys=int(moved))
    return int(moved)


async def _scan(engine: Engine, pattern: str) -> list[list[str]]:
    """Pages of the keys matching `pattern`, listed first (the steps rename keys)."""
    pages, cursor = [], "0"
    while True:
        cursor, keys = await scan_page(engine.client, cursor, pattern, BATCH)
        if keys:
            pages.append([text(k) for k in keys])
        if cursor == "0":
            return pages


async def _records(engine: Engine, names: set[str]) -> int:
    """Records of named queues, from the default queue's key space to their own."""
    home, moved = engine.keys, 0
    redis: Any = engine.client
    for page in await _scan(engine, home.task_prefix + "*"):
        pipe = redis.pipeline(transaction=False)
        for key in page:
            pipe.hmget(key, "state", "q")
        by_queue: defaultdict[str, list[str]] = defaultdict(list)
        for key, (state, q) in zip(page, await pipe.execute(), strict=True):
            if state is not None and q is not None and text(q) in names:
                by_queue[text(q)].append(key.removeprefix(home.task_prefix))
        for name, ids in by_queue.items():
            k = engine.queue(name).keys
            pairs = [key for i in ids for key in (home.task(i), k.task(i))]
            moved += int(
                await engine.scripts.run("upgrade", [k.expiring, *pairs], ["records", name, *ids])
            )
    return moved


async def _dependants(engine: Engine) -> int:
    """`deps:<parent>` sets into marks on the parents' records."""
    home, marks = engine.keys, 0
    redis: Any = engine.client
    prefix = f"{home.base}deps:"
    for page in await _scan(engine, prefix + "*"):
        for key in page:
            parent = key.removeprefix(prefix)
            members = sorted(text(m) for m in await redis.smembers(key))
            where = await _queues_of(engine, [parent, *members])
            pk = engine.queue(where[parent] or None).keys
            keys = [key, pk.task(parent)]
            argv: list[Any] = ["deps", parent, pk.queue]
            for cid in members:
                ck = engine.queue(where[cid] or None).keys
                keys.append(ck.task(cid))
                argv += [cid, ck.queue]
            marks += int(await engine.scripts.run("upgrade", keys, argv))
    return marks


async def _queues_of(engine: Engine, ids: list[str]) -> dict[str, str]:
    """Each task's queue now ('' = the default queue), from the id directory."""
    pipe: Any = engine.client.pipeline(transaction=False)
    for eval_id in ids:
        pipe.hmget(engine.keys.directory(eval_id), "state", "q")
    found = await pipe.execute()
    return {
        i: "" if state is not None or q is None else text(q)
        for i, (state, q) in zip(ids, found, strict=True)
    }


async def _callbacks(engine: Engine) -> int:
    """Entries of named queues in the shared callbacks stream, to their queue's stream."""
    old, moved, start = engine.keys.callbacks, 0, "-"
    redis: Any = engine.client
    while True:
        entries = await redis.xrange(old, start, "+", count=BATCH)
        streams: list[str] = [old]
        argv: list[Any] = ["callbacks", CALLBACK_GROUP]
        for entry, fields in entries:
            name = text(fields.get(b"queue", b""))
            if name and name != engine.settings.queue:
                stream = engine.queue(name).keys.callbacks
                if stream not in streams:
                    streams.append(stream)
                argv += [text(entry), streams.index(stream) + 1]
        if len(argv) > 2:
            moved += int(await engine.scripts.run("upgrade", streams, argv))
        if len(entries) < BATCH:
            return moved
        start = f"({text(entries[-1][0])}"
