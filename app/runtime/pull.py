"""Pull workers' long-poll: one task for `GET /tasks/next`, waiting up to `wait` s.

A task claimed in the moment the client hangs up is released at once (its lease expired
now) instead of waiting out a lease nobody holds. Limits hold pull workers too
(docs/flow-control.md): under RATE_LIMITS the poll sleeps until the next start is allowed;
at a QUEUE_MAX_IN_FLIGHT cap it looks again every HELD_RECHECK seconds.

Imports: engine (typing), runtime.aio, models.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from app.models import Task
from app.runtime.aio import first_completed, won

HELD_RECHECK = 0.5  # s between claims of a long-poll held at a QUEUE_MAX_IN_FLIGHT cap

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
        if claimed.held:  # a limit, not an empty queue: wait for the limit, not for entries
            limit = claimed.wake_in if claimed.held == "rate" else HELD_RECHECK
            await asyncio.sleep(min(remaining, HELD_RECHECK if limit is None else limit))
            continue
        await queue.wait_for_work(wake, claimed.tails)
