"""A burst worker's stop condition: every queue it consumes is drained.

Drained: nothing queued, running or waiting out a retry in the priorities it takes —
like RQ's `rq worker --burst`; scheduled tasks (a future `run_at`) and deferred ones do not
hold it — twice in a row with no change between the looks (a task settled elsewhere, or a
child released across queues, shows as a change), and the callbacks and relays this
worker holds, or nobody has read yet (in any queue's callbacks stream), are done.

Imports: engine (views), runtime.runtime (typing), models, errors (and structlog).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from app.engine.views import counts_of
from app.errors import Unavailable
from app.models import PRIORITY_ORDER

if TYPE_CHECKING:
    from app.runtime.consumers import ConsumerPool
    from app.runtime.runtime import Runtime

log = structlog.get_logger()

POLL = 0.2  # seconds between two looks at the queues' counts


async def until_drained(runtime: Runtime) -> None:
    """Return once the runtime's queues are drained (see the module docstring)."""
    pools, sender = list(runtime.workers.pools.values()), runtime.sender
    previous: list[Any] | None = None
    while True:
        await asyncio.sleep(POLL)
        try:
            looks = await _look(pools)
            drained = all(empty for empty, _ in looks)
            counters = [seen for _, seen in looks]
            settled = drained and counters == previous and not (sender and sender.held)
            if settled and not (sender and await sender.outstanding()):
                return
            previous = counters if drained else None
        except Unavailable as exc:
            log.warning("worker_redis_unavailable", error=str(exc))
            previous = None


async def _look(pools: list[ConsumerPool]) -> list[tuple[bool, Any]]:
    """Per pool (nothing queued, running or retrying in its priorities; the counters seen),
    read in one go (two round trips however many queues)."""
    all_counts = await counts_of(pools[0].queue.redis, [p.queue.keys for p in pools])
    waiting = ("queued", "processing", "retrying")
    looks = []
    for pool, counts in zip(pools, all_counts, strict=True):
        taken = pool.priorities or tuple(p.value for p in PRIORITY_ORDER)
        by_state = counts["by_priority"]
        busy = any(by_state[state].get(prio, 0) for state in waiting for prio in taken)
        looks.append((not busy and not pool.running, (counts["totals"], by_state)))
    return looks
