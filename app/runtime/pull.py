"""Pull workers' long-poll: one task for `GET /tasks/next`, waiting up to `wait` s.

A task claimed in the moment the client hangs up is released at once (its lease expired
now) instead of waiting out a lease nobody holds.

Imports: engine (typing), runtime.aio, models.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from app.models import Task
from app.runtime.aio import first_completed, won

if TYPE_CHECKING:
    from app.engine.queue import Queue


async def pull(
    queue: Queue,
    consumer: str,
    wait: float,
    lease: float,
    gone: Coroutine[Any, Any, None] | None = None,
) -> Task | None:
    """One task for an external worker, long-polling up to `wait` s; `gone` completes when
    the client hangs up: the poll stops then (None)."""
    if gone is None:
        return await _poll(queue, consumer, wait, lease)
    poll, hangup = await first_completed(_poll(queue, consumer, wait, lease), gone)
    if not won(hangup):
        task: Task | None = poll.result()
        return task
    if won(poll) and poll.exception() is None and (taken := poll.result()) is not None:
        await queue.renew(consumer, [taken], 0)  # claimed as the client left: released
    return None


async def _poll(queue: Queue, consumer: str, wait: float, lease: float) -> Task | None:
    deadline = time.monotonic() + wait
    while True:
        claimed = await queue.claim(consumer, 1, lease)
        if claimed.tasks:
            return claimed.tasks[0]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        wake = remaining if claimed.wake_in is None else min(remaining, claimed.wake_in + 0.005)
        await queue.wait_for_work(wake, claimed.tails)
