"""What the engine tells about the transitions it makes: the `Observer` protocol.

The engine calls its observer right after each successful transition it was asked for
(enqueue, complete, fail, cancel, re-drive, and the expiries a claim or promoter finds),
with the queue's name and the task's real priority, read from the script's reply, and after
each claim a limit held back. The runtime's `Metrics` implements it; the default observer
does nothing (the command line counts nothing).

Imports: nothing of app.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def enqueued(self, queue: str, priority: str, n: int = 1) -> None:
        """`n` tasks accepted into `queue` at `priority`."""

    def settled(self, queue: str, priority: str, status: str) -> None:
        """A task of `queue` became `status`: completed, retrying, failed, cancelled or
        expired."""

    def redriven(self, queue: str, priority: str) -> None:
        """A dead letter of `queue` was queued again."""

    def throttled(self, queue: str, limit: str) -> None:
        """A claim of `queue` handed out fewer tasks than asked: `limit` (rate, in_flight)
        held them back."""


class NoObserver:
    """Counts nothing."""

    def enqueued(self, queue: str, priority: str, n: int = 1) -> None:
        pass

    def settled(self, queue: str, priority: str, status: str) -> None:
        pass

    def redriven(self, queue: str, priority: str) -> None:
        pass

    def throttled(self, queue: str, limit: str) -> None:
        pass
