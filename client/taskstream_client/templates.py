"""`TaskTemplate`: task options bound once, for the Celery and RQ habits.

Celery users call `evaluate_code.delay(...)`, RQ users `queue.enqueue(...)`. In taskstream
the work is not a Python function of the producer's code base: a task carries `code`
(and `language`) that an executor or a pull worker runs. A template is just the options
(queue, priority, retries, …) fixed once, so each call gives only the code and what
differs. It works for both clients: with `AsyncClient` its calls return awaitables.

Imports: models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, Unpack

from taskstream_client.models import TaskOptions

R = TypeVar("R")


class TaskTemplate(Generic[R]):
    """Options bound once: `delay(code, **overrides)` (alias `enqueue`) submits a task."""

    def __init__(self, enqueue: Callable[..., R], defaults: TaskOptions) -> None:
        self._enqueue = enqueue
        self.defaults = defaults

    def delay(self, code: str, **overrides: Unpack[TaskOptions]) -> R:
        """Submit `code` with the template's options, `overrides` winning."""
        options: dict[str, Any] = {**self.defaults, **overrides}
        return self._enqueue(code, **options)

    enqueue = delay  # RQ's name

    def options(self, **overrides: Unpack[TaskOptions]) -> TaskTemplate[R]:
        """Another template with some options changed (Celery's `.s(...).set(...)`)."""
        merged: TaskOptions = {**self.defaults, **overrides}
        return TaskTemplate(self._enqueue, merged)
