"""Waiting for new entries of some streams: one XREAD loop per process, many waiters.

Long-polls (PAI-EAS reads and watchers, status waits, `GET /events`) register a wait with
an `Arrivals` of the streams they care about; its loop wakes only the waits an entry can
satisfy. Waiting holds no Redis connection of its own.

Imports: client, errors (and redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from app.engine.client import Redis, text, translate_errors
from app.errors import Unavailable

Accept = Callable[[Any], bool]


@dataclass(eq=False)
class _Waiter:
    accept: Accept
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Arrivals:
    """New entries of some streams, read by one XREAD loop per process and handed to the
    long-polls waiting there. A write wakes only the waits it can satisfy (each says which
    entries it wants), and waiting holds no Redis connection of its own; the loop stops
    when nobody has waited for a while.

    A wait is registered, and the loop's start position taken, before the waiter's first
    look, so an entry added between that look and the wait is never missed."""

    IDLE_STOP = 30.0
    BLOCK_MS = 250  # also how long close() may wait: the loop is never cancelled mid-command

    def __init__(
        self, client: Redis, keys: Sequence[str], decode: Callable[[dict[bytes, bytes]], Any]
    ) -> None:
        self.client = client
        self.keys = list(keys)
        self.decode = decode  # once per entry; waiters judge the decoded entry
        self.waiters: set[_Waiter] = set()
        self._job: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closing = False
        self.positions: dict[str, Any] = {}  # stream key -> last entry id read

    @contextlib.asynccontextmanager
    async def waiting(self, accept: Accept) -> AsyncIterator[asyncio.Event]:
        waiter = _Waiter(accept)
        self.waiters.add(waiter)
        try:
            if self._job is None and not self._closing:
                self._ready = asyncio.get_running_loop().create_future()
                self._job = asyncio.create_task(self._run(self._ready), name="eas-arrivals")
            if self._ready is not None:
                await asyncio.shield(self._ready)
            yield waiter.event
        finally:
            self.waiters.discard(waiter)

    async def close(self) -> None:
        """Stop the loop at its next turn and wake every waiter."""
        self._closing = True
        for waiter in self.waiters:
            waiter.event.set()
        if self._job is not None:
            await asyncio.gather(self._job, return_exceptions=True)

    async def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            self.positions = last = await _tails(self.client, self.keys)
        except Unavailable as exc:
            self._job = None
            ready.set_exception(exc)
            return
        ready.set_result(None)
        idle_since = time.monotonic()
        while True:
            if self.waiters:
                idle_since = time.monotonic()
            if self._closing or time.monotonic() - idle_since > self.IDLE_STOP:
                self._job = None  # no await between this and the return: no wait is lost
                return
            try:
                found: Any = await self.client.xread(last, block=self.BLOCK_MS, count=1000)
            except (RedisError, OSError):
                for waiter in self.waiters:
                    waiter.event.set()  # they look again and meet the error themselves
                await asyncio.sleep(0.5)
                continue
            for key, entries in found or ():
                last[text(key)] = entries[-1][0]  # replies name keys in bytes
                for _, fields in entries:
                    self._wake(fields)

    def _wake(self, fields: dict[bytes, bytes]) -> None:
        waiting = [w for w in self.waiters if not w.event.is_set()]
        if not waiting:
            return
        entry = self.decode(fields)
        for waiter in waiting:
            if waiter.accept(entry):
                waiter.event.set()


@translate_errors
async def _tails(client: Redis, keys: Sequence[str]) -> dict[Any, Any]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.xrevrange(key, "+", "-", count=1)
    return {
        key: found[0][0] if found else b"0-0"
        for key, found in zip(keys, await pipe.execute(), strict=True)
    }
