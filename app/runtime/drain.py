"""The not-ready phase of a graceful stop, shared by the server (`cli.serve.Server`, which
owns the signals) and the web app (whose lifespan owns the runtime).

After the first SIGTERM/SIGINT the process is draining: `/readyz` answers 503 at once, so a
load balancer stops sending it traffic while the listener stays open and every request
is still answered; the consumers stop claiming and running tasks get SHUTDOWN_GRACE to
finish. After SHUTDOWN_DELAY the server closes the listener and shuts down as usual.

Imports: stdlib only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any


class Drain:
    """Draining state of one process: begun by a signal, read by `/readyz`; stops the
    consumers once, in the background, and lets the lifespan wait for that."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._began = 0.0
        self._stop: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._job: asyncio.Task[None] | None = None

    @property
    def draining(self) -> bool:
        return self.reason is not None

    def elapsed(self) -> float:
        """Seconds since draining began (0 before)."""
        return time.monotonic() - self._began if self.draining else 0.0

    def begin(self, reason: str) -> None:
        """Mark the process draining. Flags only: safe in a signal handler."""
        if not self.draining:
            self._began = time.monotonic()
            self.reason = reason

    def attach(self, stop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Register how to stop the consumers (the lifespan, once they run)."""
        self._stop = stop

    def kick(self) -> bool:
        """On the event loop, once draining: start stopping the consumers (True: now)."""
        if self.draining and self._job is None and self._stop is not None:
            self._job = asyncio.create_task(self._stop())
            return True
        return False

    async def stopped(self) -> None:
        """Stop the consumers (or wait for the stop a drain began)."""
        if self._job is None and self._stop is not None:
            self._job = asyncio.create_task(self._stop())
        if self._job is not None:
            await self._job
