"""Completions settled in batches: one `complete_batch.lua` call per queue and event-loop turn.

A consumer pool finishes tasks one at a time, but many in the same event-loop turn (their
executor answers arrive together). Each used to cost a `complete.lua` call of its own; now
the completions a queue is asked for in one turn wait for the end of that turn and go out
as one script call (issue 14: the script call, TIME, the lease ZREM, XACK / XDEL, the
counters and, under QUEUE_MAX_IN_FLIGHT, the 'release' of the freed slots are paid once per
batch; the fence, the record, the event and the PUBLISH on `evaluation:completed` stay per
task). A tenant's task (fair share) is settled in the batch too: the call declares the
queue's tenant streams. Each caller still gets its own answer: the script's reply for its
task, exactly what `complete.lua` would have answered (`Queue.complete_soon` turns it into
the same result or exception).

Imports: keys; queue only for typing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.engine.keys import GROUP

if TYPE_CHECKING:
    from app.engine.queue import Queue
    from app.models import Task

MAX_BATCH = 200  # tasks per script call: bounds its time (≈ 10 µs each) and its unpack()


@dataclass(eq=False)
class _Pending:
    eval_id: str
    result: bytes  # JSON
    task: Task | None  # the delivery (fencing token); None: whoever holds it
    answer: bytes  # for the task's reply queue (numbered queues), b"" none
    future: asyncio.Future[Any]


def fail_waiting(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
    """A batch's call failed: each caller still waiting gets the failure (cancelled when the
    call was). Shared by the batched completions and enqueues (engine/intake.py)."""
    for future in futures:
        if future.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)


class Completions:
    """The completions of one queue that wait for the end of the event-loop turn."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._pending: list[_Pending] = []
        self._jobs: set[asyncio.Task[None]] = set()

    async def complete(self, eval_id: str, result: bytes, task: Task | None, answer: bytes) -> Any:
        """complete_batch.lua's reply for this task (as complete.lua's); `Unavailable` when
        Redis is away."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append(_Pending(eval_id, result, task, answer, future))
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        for start in range(0, len(batch), MAX_BATCH):
            job = asyncio.create_task(self._send(batch[start : start + MAX_BATCH]))
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

    async def _send(self, batch: list[_Pending]) -> None:
        k, s = self.queue.keys, self.queue.settings
        keys = [k.leases, k.events, k.counters, *k.streams, *k.tenant_streams]
        keys += [k.task(p.eval_id) for p in batch]
        keys += k.effects
        argv: list[Any] = [s.result_ttl, GROUP, s.events_maxlen, k.q, self.queue.release_channel]
        argv.append(len(batch))
        for p in batch:
            entry, attempt = (p.task.entry, p.task.attempt) if p.task else ("", "")
            argv += [p.eval_id, entry, attempt, p.result, p.answer]
        try:
            replies = await self.queue.scripts.run("complete_batch", keys, argv)
        except BaseException as exc:
            fail_waiting([p.future for p in batch], exc)
            if not isinstance(exc, Exception):
                raise
            return
        for p, reply in zip(batch, replies, strict=True):
            if not p.future.done():
                p.future.set_result(reply)
