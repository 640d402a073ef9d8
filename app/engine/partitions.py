"""Partitioned queues (QUEUE_PARTITIONS): one legacy queue spread over N hash tags.

A partitioned queue is N `Queue`s (engine/keys.py `QueueKeys.partition`): partition 0 is
the queue's own tag, partition i > 0 the tag `{<tag>#i}`, so on a Redis Cluster the
partitions land on different masters. Each partition is a whole queue of its own (records,
streams, schedule, leases, callbacks): every script runs in exactly one partition, as
before. What spans them is here (docs/operations.md, *Partitioned queues*):

- **Placement** by `crc32(eval_id) % N` (`place`): a by-id call computes its partition, no
  lookup; eval_ids are unique within the queue because an id has one partition.
- **Claims** (`Spread.claim`): the partitions are visited in turn, each asked for what is
  still free, until the claim is full. The order puts first the partitions whose last
  claim reported the highest waiting priority (claim.lua's hint, a few counter reads in
  the same script), ties broken by a rotating start, so none starves; a hint older than
  N claims counts as "maybe high" again. Strict priority holds within a partition; across
  partitions a higher-priority task is passed by while its stale hint is believed (N - 1
  claims) and until the rotation puts it first (N more): at most (2N - 1) x count
  lower-priority starts (tests/engine/test_partitions.py asserts it, bench/partitions.py
  measures it).
- **Idle waits** block on every partition's streams at once (one XREAD each, on its own
  node), the first to wake wins.
- **Positions** (`position`): exact in the task's own partition, plus, from every other
  partition, its queued tasks of higher priority and as many of its own priority as are
  ahead of the task in its partition (partitions drain at about the same pace): an
  estimate, documented as such.
- **Finding a task without a queue name**: the id directory (engine/links.py) knows the
  default queue and unpartitioned named queues; `elsewhere` then asks the partition each
  partitioned queue would hold the id in (one EXISTS each, concurrent), only for ids
  the directory does not know (a miss), so unpartitioned deployments pay nothing.

Imports: client, keys, models; queue and engine only for typing.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from app.engine.client import text, translate_errors
from app.models import PRIORITY_ORDER

if TYPE_CHECKING:
    from app.engine.engine import Engine
    from app.engine.queue import Queue

NONE = len(PRIORITY_ORDER)  # the hint rank of a partition with nothing waiting
WIDTH = 2 * len(PRIORITY_ORDER)  # tails per partition: priority, then tenant streams
RANK = {p.value: i for i, p in enumerate(PRIORITY_ORDER)}


def _padded(tails: Sequence[bytes]) -> list[bytes]:
    """One partition's tails as `Spread.claim` flattens them: WIDTH, b'' where none."""
    return [*tails, *[b""] * (WIDTH - len(tails))]


def place(eval_id: str, count: int) -> int:
    """The partition of `eval_id` among `count`: stable across processes and restarts."""
    return zlib.crc32(eval_id.encode()) % count


class Spread:
    """The claim order of one partitioned queue in this process: the last hint of each
    partition, when it was read, and the rotating start (see the module docstring)."""

    def __init__(self, parts: Sequence[Queue]) -> None:
        self.parts = list(parts)
        self.hints = [0] * len(parts)  # best waiting priority's rank; 0 until known
        self.seen = [0] * len(parts)  # the turn of the last claim in each partition
        self.turn = 0

    def order(self) -> list[int]:
        """Partitions by (hint rank, distance from the rotating start)."""
        n, turn = len(self.parts), self.turn
        self.turn += 1

        def rank(i: int) -> tuple[int, int]:
            fresh = turn - self.seen[i] < n
            return (self.hints[i] if fresh else 0, (i - turn) % n)

        return sorted(range(n), key=rank)

    async def claim(
        self, consumer: str, count: int, lease: float, priorities: Iterable[str]
    ) -> tuple[list[Any], float | None, bool, list[bytes], str]:
        """Up to `count` tasks over the partitions, the soonest wake time, whether a group
        was recreated, the tails of every partition (in partition order, WIDTH each, b''
        padding what a partition does not watch) when all were visited and the claim is
        still short, so the caller blocks (see `Claimed`), and the limit that held tasks
        back when it held every partition ('' otherwise: the caller blocks on the others'
        streams until the soonest wake time, which includes a held partition's)."""
        prios = list(priorities)
        tasks: list[Any] = []
        tails: dict[int, list[bytes]] = {}
        held: set[str] = set()
        wake: float | None = None
        recreated = False
        for i in self.order():
            got, hint = await self.parts[i].claim_one(consumer, count - len(tasks), lease, prios)
            self.hints[i], self.seen[i] = RANK.get(hint, NONE), self.turn
            tasks += got.tasks
            recreated = recreated or got.recreated
            if got.wake_in is not None:
                wake = got.wake_in if wake is None else min(wake, got.wake_in)
            if len(tasks) >= count:
                return tasks, wake, recreated, [], ""
            tails[i] = got.tails
            if got.held:
                held.add(got.held)
        if len(held) == 1 and not any(tails.values()):
            return tasks, wake, recreated, [], held.pop()
        flat = [tail for i in range(len(self.parts)) for tail in _padded(tails[i])]
        return tasks, wake, recreated, flat, ""

    async def wait_for_work(
        self, timeout: float, tails: Sequence[bytes], priorities: Iterable[str]
    ) -> None:
        """Block on every partition's streams (after its `tails`); the first to wake wins."""
        prios = list(priorities)
        waits = [
            asyncio.ensure_future(part.wait_one(timeout, mine, prios))
            for i, part in enumerate(self.parts)
            if any(mine := tails[WIDTH * i : WIDTH * i + WIDTH])
        ]
        if not waits:  # every partition held by a limit: its wake time
            await asyncio.sleep(timeout)
            return
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for job in done:
                job.result()  # Unavailable propagates
        finally:
            await _cancel(waits)

    async def renew(self, consumer: str, tasks: Sequence[Any], lease: float) -> list[str]:
        """Renew each partition's tasks in the partition they were claimed from (by their
        id's placement when not known: a task rebuilt from a pull worker's lease)."""
        grouped: dict[int, list[Any]] = {}
        for task in tasks:
            part = task.part
            if part is None or part >= len(self.parts):
                part = self.parts[0].placed(task.eval_id).keys.part
            grouped.setdefault(part, []).append(task)
        lost = await asyncio.gather(
            *(self.parts[i].renew_one(consumer, held, lease) for i, held in grouped.items())
        )
        return [eval_id for part in lost for eval_id in part]

    async def promote(self) -> float | None:
        """Promote due tasks in every partition; the soonest next due time."""
        waits = await asyncio.gather(*(part.promote_one() for part in self.parts))
        known = [w for w in waits if w is not None]
        return min(known) if known else None

    async def notifications(self) -> AsyncIterator[tuple[str, str]]:
        """Every partition's notifications, merged; ends as soon as one partition's fails."""
        merged: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        async def pump(part: Queue) -> None:
            async for item in part.own_notifications():
                await merged.put(item)

        pumps = [asyncio.ensure_future(pump(part)) for part in self.parts]
        try:
            while True:
                get = asyncio.ensure_future(merged.get())
                done, _ = await asyncio.wait([get, *pumps], return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    await _cancel([get])
                    for job in done:
                        job.result()
                    return
                yield get.result()
        finally:
            await _cancel(pumps)


async def _cancel(jobs: Sequence[asyncio.Future[Any]]) -> None:
    for job in jobs:
        job.cancel()
    for job in jobs:
        with suppress(BaseException):
            await job


async def position(queue: Queue, rec: dict[bytes, bytes], own: int) -> int:
    """A queued task's estimated position across the partitions of its queue (see the
    module docstring); `own`: its exact position in its own partition."""
    return estimate(await waiting(queue.whole), queue.keys.part, rec, own)


async def waiting(whole: Queue) -> list[list[int]]:
    """Per partition of `whole`, per priority (claim order): the sequence counters a
    position estimate needs, `[seq, head]` pairs flattened (one HMGET per partition,
    concurrently)."""
    fields = [f"{kind}:{p.value}" for p in PRIORITY_ORDER for kind in ("seq", "head")]
    rows = await asyncio.gather(*(p.redis.hmget(p.keys.counters, fields) for p in whole.parts))
    return [[int(v or 0) for v in row] for row in rows]


def estimate(rows: Sequence[Sequence[int]], part: int, rec: dict[bytes, bytes], own: int) -> int:
    """`position` from `waiting`'s rows: `own` in partition `part`, plus, from every other
    partition, its queued tasks of higher priority and as many of the task's own priority
    as are ahead of it in its partition."""
    rank = RANK[text(rec.get(b"prio", b"default"))]
    mine = int(text(rec.get(b"seq", b"0"))) - rows[part][2 * rank + 1]
    total = own
    for i, row in enumerate(rows):
        if i != part:
            counts = [row[2 * j] - row[2 * j + 1] for j in range(len(PRIORITY_ORDER))]
            total += sum(counts[:rank]) + min(counts[rank], max(mine - 1, 0))
    return total


async def elsewhere(engine: Engine, eval_id: str, tried: Queue) -> Queue | None:
    """The partition of a partitioned queue holding `eval_id` (not `tried`), or None: where
    each partition count of each queue's history would have placed it. A miss reads the
    histories again (a process started with another count meanwhile) and, if one grew,
    looks once more: misses only, so found tasks never pay it."""
    found = await _probe(engine, eval_id, tried)
    if found is None and await _refreshed(engine):
        found = await _probe(engine, eval_id, tried)
    return found


async def _probe(engine: Engine, eval_id: str, tried: Queue) -> Queue | None:
    found_in = [q.candidates(eval_id) for q in engine.spread_queues()]
    candidates = [q for qs in found_in for q in qs if q is not tried]
    found = await asyncio.gather(*(q.redis.exists(q.keys.task(eval_id)) for q in candidates))
    return next((q for q, hit in zip(candidates, found, strict=True) if hit), None)


async def _refreshed(engine: Engine) -> bool:
    """Re-read every partitioned queue's count history; True when one changed."""
    changed = False
    for queue in engine.spread_queues():
        before = queue.counts
        await history(queue)
        changed = changed or queue.counts != before
    return changed


@translate_errors
async def history(queue: Queue) -> None:
    """Read (and extend) the partition count history of `queue` in Redis (a set at
    `<prefix>partitions`), and spread the queue over the most partitions any count used,
    so tasks placed under an earlier count are still claimed and found (docs/operations.md,
    *Changing the partition count*). An unpartitioned queue without a history costs one
    SMEMBERS, at start only."""
    key = f"{queue.keys.prefix}partitions"
    count = queue.settings.queue_partitions.get(queue.keys.route, 1)
    known = {int(text(n)) for n in await queue.redis.smembers(key)}
    if count not in known and (count > 1 or known):
        await queue.redis.sadd(key, count)
    if known - {count}:
        counts = (count, *sorted(known - {count}, reverse=True))
        if counts != queue.counts:
            queue.engine.spread(queue, counts)


async def locate(engine: Engine, eval_id: str) -> Queue | None:
    """The queue (partition) holding `eval_id` anywhere in the deployment, or None: the
    id directory, then the partitioned queues (for parents of a partitioned queue's task)."""
    rec = await engine.client.hmget(engine.keys.directory(eval_id), ["state", "q"])
    if rec[0] is not None:
        return engine.default
    if rec[1] is not None:
        return engine.queue(text(rec[1]) or None)
    return await elsewhere(engine, eval_id, engine.default)
