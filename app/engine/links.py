"""Storing a task across hash tags: the id directory and dependencies between queues.

Each legacy queue has its own hash tag (engine/keys.py), so no script may touch two
queues. What spans them is done here, in steps that are each one script and each safe to
repeat or undo:

- **The id directory.** A task of a named queue first claims its eval_id in the home tag
  (`directory.lua`: a pointer at the default queue's record key of the id, the registry
  entry, and where its parents are); then the named queue's `enqueue.lua` stores it. A
  refused enqueue drops the pointer it made (`unpoint.lua`); a pointer whose task's record
  is gone is stale, and is replaced by a new claim. A task of the default queue needs no
  claim: its own record is its directory entry.
- **Dependencies across queues.** A task whose parents include tasks of other queues is
  linked to them first (`link.lua` in each parent's queue: every check, then an `x:` mark
  on each unfinished parent); then stored, deferred with a `w:` mark per unfinished remote
  parent; then each such parent is read once more, and one that ended meanwhile is applied
  at once (its relay may have arrived before the task existed). A refused task unlinks.
  When a marked parent ends, its queue's finishing script appends a relay entry to that
  queue's callbacks stream; the runtime's callback sender hands it to `relay` (below),
  which runs `relay.lua` in the dependant's queue. Relays are at-least-once (a consumer
  group, taken over when a sender dies) and idempotent (only the first takes the `w:`
  mark). Dependencies within one queue are decided in the finishing script itself.

Cost: a default-queue task without parents in other queues is one script, as before; a
named-queue task two (the claim, then the enqueue); each queue crossed by a dependency
adds a link, and the stored task's parents are read once more.

Imports: client, partitions, models (and orjson); queue and engine only for typing.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from app.engine import partitions
from app.engine.client import text
from app.models import TaskRequest

if TYPE_CHECKING:
    from app.engine.engine import Engine
    from app.engine.queue import Queue

MAX_DEPENDANTS = 10000  # deferred children per parent (enqueue.lua): its release is one script
STALE_AFTER_MS = 60_000  # a pointer without its record is stale once this old (unpoint.lua)
REFUSED = ("unknown", "crowded")  # refusals after which a new pointer is dropped
TERMINAL = ("completed", "failed", "cancelled", "expired")


async def enqueue(queue: Queue, req: TaskRequest) -> Sequence[Any]:
    """enqueue.lua's reply for `req` in `queue`, after the directory and the links."""
    if queue.whole.parts[1:]:
        return await _into_partition(queue, req)
    if not queue.keys.q:
        return await _into_default(queue, req)
    claim = await _claim(queue, req)
    if text(claim[0]) != "ok":
        return claim
    where = [text(w) for w in claim[3]]
    remote = {p: w for p, w in zip(req.depends_on, where, strict=True) if w != queue.keys.q}
    reply = await (_across(queue, req, remote) if remote else _store(queue, req, req.depends_on))
    if text(reply[0]) in REFUSED and int(claim[1]):  # (a duplicate: the queue has the id)
        await unpoint(queue.engine, queue.keys.q, {req.eval_id: text(claim[2])})
    return reply


async def _into_default(queue: Queue, req: TaskRequest) -> Sequence[Any]:
    """One script, unless the id's pointer is stale or parents are in other queues."""
    reply = await _store(queue, req, req.depends_on)
    stale = text(reply[0]) == "duplicate" and len(reply) == 3
    if stale and await _drop_if_stale(queue.engine, req.eval_id, text(reply[1]), text(reply[2])):
        reply = await _store(queue, req, req.depends_on)
    if text(reply[0]) == "elsewhere":
        remote = {text(pid): text(q) for pid, q in reply[1]}
        reply = await _across(queue, req, remote)
    return reply


async def _into_partition(queue: Queue, req: TaskRequest) -> Sequence[Any]:
    """A partition of a partitioned queue (engine/partitions.py): no directory claim (the
    id's partition is its hash), so one script; parents are located first (the directory,
    then the partitioned queues), and those in other partitions or queues linked as
    dependencies across queues are. While the queue has several partition counts (a count
    change, engine/partitions.py `history`), the id is first looked for where the other
    counts place it (one EXISTS each), so it stays unique in the queue. A `dedup_key` is
    refused: its index lives on one partition's tag while the task is placed by eval_id,
    so two holders could be stored (docs/operations.md, partitions' limits)."""
    if req.dedup is not None:
        return ["unpartitionable"]
    others = [q for q in queue.candidates(req.eval_id) if q is not queue]
    if others:
        held = await asyncio.gather(*(q.redis.exists(q.keys.task(req.eval_id)) for q in others))
        if any(held):
            return ["duplicate"]
    if not req.depends_on:
        return await _store(queue, req, ())
    found = await asyncio.gather(*(partitions.locate(queue.engine, p) for p in req.depends_on))
    where = dict(zip(req.depends_on, found, strict=True))
    unknown = [p for p, q in where.items() if q is None]
    if unknown:
        return ["unknown", unknown]
    remote = {p: q.keys.route for p, q in where.items() if q is not None and q is not queue}
    if remote:
        return await _across(queue, req, remote)
    return await _store(queue, req, req.depends_on)


async def _store(
    queue: Queue, req: TaskRequest, local: Sequence[str], links: str = ""
) -> Sequence[Any]:
    """enqueue.lua's reply: a task without parents is stored with the other enqueues of its
    queue in this event-loop turn (engine/intake.py), one with parents alone."""
    if not req.depends_on:
        return await queue.intake.enqueue(req)
    keys, argv = queue.enqueue_args(req, local, links)
    reply: Sequence[Any] = await queue.scripts.run("enqueue", keys, argv)
    return reply


# --- the id directory ------------------------------------------------------------------------


async def _claim(queue: Queue, req: TaskRequest) -> Sequence[Any]:
    """directory.lua for `req`, once more after a stale pointer was dropped."""
    for _ in range(2):
        k = queue.keys
        keys = [k.directory(req.eval_id), k.registry, *(k.directory(p) for p in req.depends_on)]
        reply: Sequence[Any] = await queue.scripts.run("directory", keys, [k.q, *req.depends_on])
        if text(reply[0]) != "duplicate" or not text(reply[1]):
            return reply
        if not await _drop_if_stale(queue.engine, req.eval_id, text(reply[1]), text(reply[2])):
            return reply
    return reply


async def _drop_if_stale(engine: Engine, eval_id: str, name: str, at: str) -> bool:
    """Drop the pointer of `eval_id` to queue `name` (stamped `at`) when that queue has no
    record of it (expired, or never stored); True when it was dropped."""
    if await engine.client.exists(engine.queue(name).keys.task(eval_id)):
        return False
    return await unpoint(engine, name, {eval_id: at}, STALE_AFTER_MS) > 0


async def unpoint(engine: Engine, name: str, stamps: Mapping[str, str], age_ms: int = 0) -> int:
    """unpoint.lua: drop the pointers of these eval_ids to queue `name` that are at least
    `age_ms` old (see the script for the stamps); the number dropped."""
    if not stamps:
        return 0
    keys = [engine.keys.directory(eval_id) for eval_id in stamps]
    return int(await engine.scripts.run("unpoint", keys, [name, age_ms, *stamps.values()]))


SWEEP_BATCH = 500  # expiring members per expired.lua call


async def sweep(queue: Queue) -> int:
    """Drop the directory's pointers to the tasks of named queue `queue` whose records
    expired (its `expiring` zset; the housekeeping calls this); the number dropped."""
    k, dropped = queue.keys, 0
    while True:
        gone = await queue.scripts.run("expired", [k.expiring], [k.task_prefix, SWEEP_BATCH])
        stamps = {text(eval_id): f"<{int(float(text(score)))}" for eval_id, score in gone}
        dropped += await unpoint(queue.engine, k.q, stamps)
        if len(gone) < SWEEP_BATCH:
            return dropped


# --- dependencies across queues --------------------------------------------------------------


async def _across(queue: Queue, req: TaskRequest, remote: dict[str, str]) -> Sequence[Any]:
    """Store `req` whose parents `remote` (eval_id -> queue name, '' = the default queue)
    are tasks of other queues: link, store, then apply what ended meanwhile."""
    engine = queue.engine
    by_queue: defaultdict[str, list[str]] = defaultdict(list)
    for pid, name in remote.items():
        by_queue[name].append(pid)
    parents = {name: engine.queue(name or None) for name in by_queue}
    replies = await asyncio.gather(
        *(_link(parents[n], ids, req, queue) for n, ids in by_queue.items())
    )
    states: dict[str, str] = {}
    refused: Sequence[Any] | None = None
    for ids, reply in zip(by_queue.values(), replies, strict=True):
        if text(reply[0]) == "linked":
            states.update(zip(ids, (text(s) for s in reply[1]), strict=True))
        else:
            refused = refused or reply
    if refused is not None:
        await _unlink(parents, by_queue, req.eval_id, states)
        return refused
    local = [p for p in req.depends_on if p not in remote]
    links = orjson.dumps([[pid, states.get(pid, "")] for pid in req.depends_on]).decode()
    reply = await _store(queue, req, local, links)
    if text(reply[0]) != "deferred":
        await _unlink(parents, by_queue, req.eval_id, states)
        return reply
    pending = {pid: remote[pid] for pid, state in states.items() if state == "pending"}
    return await _catch_up(queue, req, pending, reply)


async def _link(parent_queue: Queue, ids: list[str], req: TaskRequest, child: Queue) -> Any:
    k = parent_queue.keys
    argv = ["link", req.eval_id, child.keys.route, MAX_DEPENDANTS, *ids]
    return await parent_queue.scripts.run("link", [k.task(i) for i in ids], argv)


async def _unlink(
    parents: dict[str, Queue], by_queue: dict[str, list[str]], eval_id: str, states: dict[str, str]
) -> None:
    """Undo the links made for `eval_id` (those answered `pending`)."""
    for name, ids in by_queue.items():
        linked = [i for i in ids if states.get(i) == "pending"]
        if linked:
            k = parents[name].keys
            argv = ["unlink", eval_id, "", MAX_DEPENDANTS, *linked]
            await parents[name].scripts.run("link", [k.task(i) for i in linked], argv)


async def _catch_up(
    queue: Queue, req: TaskRequest, pending: dict[str, str], reply: Sequence[Any]
) -> Sequence[Any]:
    """Parents that were linked unfinished may have ended before the task was stored (their
    relay then found no mark to take): apply those now. The answer stays `deferred` unless
    one of them cancelled the task."""
    engine = queue.engine
    for pid, name in pending.items():
        found = await engine.client.hget(engine.queue(name or None).keys.task(pid), "state")
        state = text(found) if found is not None else ""
        if state in TERMINAL or not state:
            verdict = await apply(queue, req.eval_id, pid, state or "cancelled")
            if verdict == "cancelled":
                return ["cancelled", f"dependency {pid} {state or 'is gone'}"]
    return reply


async def apply(queue: Queue, eval_id: str, parent: str, state: str, ttl: Any = None) -> str:
    """relay.lua: parent `parent` (of another queue) of the task `eval_id` of `queue` ended
    `state`; 'cancelled' | 'released' | 'waiting' | 'skipped'."""
    k, s = queue.keys, queue.settings
    keys = [k.task(eval_id), k.counters, k.scheduled, k.events, *k.streams, *k.effects]
    argv = [eval_id, parent, state, s.events_maxlen, ttl or s.result_ttl]
    return text(await queue.scripts.run("relay", keys, argv))


async def relay(engine: Engine, fields: Mapping[str, str]) -> str:
    """A relay entry of a callbacks stream (see the module docstring), applied to the
    dependant in its queue."""
    queue = engine.queue(fields.get("relay") or None)
    parent, state = fields.get("id", ""), fields.get("status", "")
    return await apply(queue, fields.get("child", ""), parent, state, fields.get("ttl"))
