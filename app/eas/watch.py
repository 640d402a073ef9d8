"""`_watch_=true` subscribers: items delivered over a WebSocket, at most a window unacked.

Items are claimed from the queue's consumer group like any consumer's, leased and renewed
while the socket lives; commits (here with `auto_commit`, or `PUT _indexes_` from anywhere)
free window slots; on hang-up the uncommitted items are released at once so other
watchers get them. The route (web/eas.py) runs `Watch.run` against the socket's hang-up.

Imports: eas.items, eas.store, eas.hub (typing), runtime.aio, models, errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.eas.items import Item, task_item
from app.eas.store import EasQueue
from app.errors import Unavailable
from app.models import Task
from app.runtime.aio import first_completed

if TYPE_CHECKING:
    from app.eas.hub import EasHub

RENEW_TICK = 0.5  # how often a watcher with uncommitted items looks for remote commits
Send = Callable[[bytes], Awaitable[None]]


@dataclass
class Watch:
    """One subscriber: at most `window` delivered-but-uncommitted items (module docstring)."""

    queue: EasQueue
    hub: EasHub
    consumer: str
    window: int
    auto_commit: bool = False
    index_only: bool = False
    held: dict[str, Task] = field(default_factory=dict)

    async def run(self, send: Send) -> None:
        """Deliver until cancelled (the socket closed) or `send` fails; then release."""
        try:
            async with self.queue.arrivals.waiting(lambda item: True) as arrived:
                await self._deliver_loop(send, arrived)
        finally:
            if self.held:
                with contextlib.suppress(Unavailable):
                    held = list(self.held.values())
                    await asyncio.shield(self.queue.queue.renew(self.consumer, held, 0))

    async def _deliver_loop(self, send: Send, arrived: asyncio.Event) -> None:
        queue, lease = self.queue.queue, self.queue.settings.lease_timeout
        wake = self.hub.wake_event(self.queue)
        renewed = time.monotonic()
        while True:
            wake.clear()
            arrived.clear()
            if len(self.held) < self.window:
                free = self.window - len(self.held)
                claimed = await queue.claim(self.consumer, free, lease)
                if claimed.tasks:
                    await self._send(send, claimed.tasks)
                    continue
            await first_completed(wake.wait(), arrived.wait(), timeout=RENEW_TICK)
            if self.held and (wake.is_set() or time.monotonic() - renewed >= RENEW_TICK):
                renewed = time.monotonic()
                lost = await queue.renew(self.consumer, list(self.held.values()), lease)
                for eval_id in lost:
                    self.held.pop(eval_id, None)

    async def _items(self, tasks: list[Task]) -> list[Item]:
        """The claimed tasks' items; an answer-less failure's (empty) is its error frame."""
        empty = [t.eval_id for t in tasks if not t.payload.get("stored")]
        frames = (
            dict(zip(empty, await self.queue.error_frames(empty), strict=True)) if empty else {}
        )
        return [
            Item.decode(int(t.eval_id), frames[t.eval_id]) if t.eval_id in frames else task_item(t)
            for t in tasks
        ]

    async def _send(self, send: Send, tasks: list[Task]) -> None:
        for task, item in zip(tasks, await self._items(tasks), strict=True):
            self.held[task.eval_id] = task
            await send(item.proto(self.index_only).SerializeToString())
        if self.auto_commit:
            queue = self.queue.queue
            await asyncio.gather(*(queue.complete(t.eval_id, None, t) for t in tasks))
            for task in tasks:
                self.held.pop(task.eval_id, None)
