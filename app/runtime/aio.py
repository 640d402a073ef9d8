"""Small asyncio helpers of the loops: backoff, a Redis watch, one race, one cancel.

`first_completed` is the one way to race awaitables here ("whichever comes first, and
cancel the rest"): consumers idling until new work or a released lease, a long-poll
against the client hanging up, a watcher waiting for new items or a commit, a burst
worker against a signal, a WebSocket delivery against its hang-up.

`backoff_delay` is the Python twin of fail.lua's formula (retry n waits
min(max, base * exp^(n-1)), or the policy's interval list, with jitter keeping half), for
what never passes through Lua: callback retries and Redis reconnects (`Backoff`). Task
retries are computed in Lua only.

Imports: settings (and structlog).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from app.settings import RetryPolicy

log = structlog.get_logger()


@dataclass
class Backoff:
    """Capped exponential wait for reconnecting to Redis: `first`, doubling, at most `cap`
    (`backoff_delay` without jitter); `reset` once Redis answers again."""

    first: float = 0.05
    cap: float = 5.0
    attempt: int = field(init=False, default=0)

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        self.attempt += 1
        policy = RetryPolicy(0, self.first, 2.0, self.cap, jitter=False)
        return backoff_delay(policy, self.attempt)

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_delay())


@dataclass
class RedisWatch:
    """A loop's view of Redis: logs it going away and coming back once each (events
    `<prefix>redis_unavailable` / `<prefix>redis_reconnected`) and paces the retries."""

    prefix: str = ""
    ok: bool = True
    backoff: Backoff = field(default_factory=Backoff)

    def back(self) -> None:
        if not self.ok:
            log.info(f"{self.prefix}redis_reconnected")
        self.ok = True
        self.backoff.reset()

    async def lost(self, exc: Exception) -> None:
        if self.ok:
            log.error(f"{self.prefix}redis_unavailable", error=str(exc))
        self.ok = False
        await self.backoff.sleep()


def backoff_delay(
    policy: RetryPolicy, retry: int, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number `retry` (1-based): fail.lua's formula."""
    if policy.intervals:
        raw = policy.intervals[min(retry, len(policy.intervals)) - 1]
    else:
        try:
            grown = policy.base_delay * policy.exponential_base ** (retry - 1)
        except OverflowError:  # Lua's numbers reach inf there: the cap wins, as here
            grown = math.inf
        raw = min(policy.max_delay, grown)
    if not policy.jitter:
        return raw
    # "equal jitter": keeps at least half the delay, so backoff still grows.
    return raw / 2 + rand() * raw / 2


async def first_completed(
    *aws: Awaitable[Any], timeout: float | None = None
) -> list[asyncio.Future[Any]]:
    """Run `aws` until the first completes (or `timeout` s pass), then cancel the others
    and wait until they ended. Returns the jobs in the order given: the winners are those
    `done() and not cancelled()`; their results (or exceptions) are there to read."""
    jobs: list[asyncio.Future[Any]] = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(jobs, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for job in jobs:
            if not job.done():
                await cancel(job)
        await asyncio.gather(*jobs, return_exceptions=True)  # nothing left unretrieved
    return jobs


def won(job: asyncio.Future[Any]) -> bool:
    """The job of a `first_completed` race finished on its own (not cancelled)."""
    return job.done() and not job.cancelled()


async def cancel(job: asyncio.Future[Any]) -> None:
    """Cancel `job` and wait until it ended. Cancelled again while it runs: on Python 3.11
    a cancel that lands just as an `asyncio.wait_for` inside redis-py (its socket writes)
    completes is swallowed (fixed in 3.12), and a `while True` loop would go on for good,
    hanging the shutdown."""
    while not job.done():
        job.cancel()
        await asyncio.wait({job}, timeout=0.2)
    await asyncio.gather(job, return_exceptions=True)
