"""Enqueues stored in batches: one `enqueue_batch.lua` call per queue and event-loop turn.

Producers enqueue one task per request (`POST /tasks` from many clients), or many at once
(`POST /tasks/batch`, which enqueues its tasks concurrently). Each used to cost an
`enqueue.lua` call of its own; now the enqueues a queue (a partition, when partitioned) is
asked for in one event-loop turn wait for the end of that turn and go out as one script
call; while a batch is at Redis the next one gathers, and batches go out one at a time in
the order asked (so a duplicate eval_id is always the later request). Issue 14: the script
call, its library closures, TIME, the position reads, `total:enqueued` and the per-minute
stats are paid once per batch; the duplicate check, the record, the stream entry and the
event stay per task. Each caller still gets its own
answer: the script's reply for its task, exactly what `enqueue.lua` would have answered had
the tasks been sent one after the other in the order they were asked for. A turn with one
task sends `enqueue.lua` itself.

Enqueues answered to a client (`answering()`) and the others (the scheduler's ticks, a
command line run with `answering(False)`) are batched apart, and each batch is sent as its
callers would have been: under DURABILITY=replica|fsync an answered batch ends with the
durability check (engine/scripts.py), and every caller of a batch it fails gets
`Unavailable`, as each of their own calls would have.

Tasks with parents (depends_on) take `enqueue.lua` alone (engine/links.py): their checks
read the parents' records, which a batch would have to declare per task.

Cost (redis-server instructions per enqueued task under callgrind, 200-byte `code`): 242k
with one `enqueue.lua` call each before; 107k in batches of 10, 88k in batches of 200. A
task alone in its turn (the path of an idle queue) costs what the old single-task script
did (252k, docs/benchmarks.md): Redis runs a script's whole chunk each time, so the
shared body makes no table or closure a lone task does not need (see _enqueue.lua).

Imports: client, scripts, settle (and redis); queue and models only for typing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from app.engine.client import raise_translated
from app.engine.scripts import ANSWERING, answering
from app.engine.settle import fail_waiting

if TYPE_CHECKING:
    from app.engine.queue import Queue
    from app.models import TaskRequest

MAX_BATCH = 200  # tasks per script call: bounds its time (≈ 15 µs each)


@dataclass(eq=False)
class _Pending:
    req: TaskRequest
    future: asyncio.Future[Any]


class Intake:
    """The enqueues of one queue (partition) that wait for the end of the event-loop turn."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._pending: dict[bool, list[_Pending]] = {}  # answering() -> in order asked
        # One sender per queue, one batch at Redis at a time, taken in the order asked:
        # two batches on two connections could run in either order (a later duplicate
        # eval_id would then take the task from the earlier request). What arrives while a
        # batch is out goes in the next one, so batches grow with the load.
        self._sender: asyncio.Task[None] | None = None

    async def enqueue(self, req: TaskRequest) -> Sequence[Any]:
        """enqueue.lua's reply for `req` (without parents); `Unavailable` when Redis is away
        or refuses the write."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.setdefault(ANSWERING.get(), []).append(_Pending(req, future))
        if self._sender is None:  # (it starts after this turn: the turn's enqueues join)
            self._sender = loop.create_task(self._send_all())
        try:
            reply: Sequence[Any] = await future
        except (RedisError, OSError) as exc:
            raise_translated(exc)
        return reply

    async def _send_all(self) -> None:
        """Send what waits, batch after batch, until nothing does."""
        try:
            while self._pending:
                groups, self._pending = self._pending, {}
                for answered, batch in groups.items():
                    for start in range(0, len(batch), MAX_BATCH):
                        await self._send(batch[start : start + MAX_BATCH], answered)
        finally:
            self._sender = None
            waiting, self._pending = self._pending, {}  # (left only when cancelled)
            for batch in waiting.values():
                for p in batch:
                    p.future.cancel()

    async def _send(self, batch: list[_Pending], answered: bool) -> None:
        try:
            with answering(answered):
                replies = await self._run(batch)
        except BaseException as exc:
            fail_waiting([p.future for p in batch], exc)
            if not isinstance(exc, Exception):
                raise
            return
        for p, reply in zip(batch, replies, strict=True):
            if p.future.done():
                continue
            if isinstance(reply, ResponseError):  # that task's error (enqueue_batch.lua)
                p.future.set_exception(reply)
            else:
                p.future.set_result(reply)

    async def _run(self, batch: list[_Pending]) -> list[Any]:
        """The replies of the batch's tasks: enqueue.lua's for a batch of one."""
        queue = self.queue
        if len(batch) == 1:
            return [await queue.scripts.run("enqueue", *queue.enqueue_args(batch[0].req))]
        keys, argv = queue.enqueue_batch_args([p.req for p in batch])
        replies: list[Any] = await queue.scripts.run("enqueue_batch", keys, argv)
        return replies
