"""`Client`: the synchronous client. Each method builds its `Call` (calls.py) and sends it
over one `httpx.Client`; `AsyncClient` (async_client.py) has the same methods.

Imports: calls, config, errors, models, templates, waiting (and httpx).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

import httpx

from taskstream_client import calls
from taskstream_client.config import DEFAULT_TIMEOUT, http_options
from taskstream_client.errors import ConnectionFailed, TaskFailed
from taskstream_client.models import (
    DeadLetters,
    Delivery,
    Enqueued,
    Schedule,
    ScheduleSpec,
    Settled,
    State,
    TaskFilters,
    TaskOptions,
    TaskPage,
    TaskRecord,
    TaskSpec,
    Token,
)
from taskstream_client.templates import TaskTemplate
from taskstream_client.waiting import Waiter

T = TypeVar("T")
Target = calls.Target


class Client:
    """The taskstream API over HTTP. `base_url` defaults to `TASKSTREAM_URL` (else
    http://127.0.0.1:8081), `api_key` to `TASKSTREAM_API_KEY`; `timeout` (s) bounds each
    request (a long-poll adds its wait). Close it, or use it as a context manager."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        **httpx_options: Any,
    ) -> None:
        options = http_options(base_url, api_key, timeout, headers)
        self.http = httpx.Client(**options, **httpx_options)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def send(self, call: calls.Call[T]) -> T:
        """Send one call and parse its answer (or raise the error its status maps to)."""
        timeout = httpx.USE_CLIENT_DEFAULT if call.timeout is None else call.timeout
        try:
            response = self.http.request(
                call.method, call.path, params=call.params, json=call.json, timeout=timeout
            )
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from exc
        return call.answer(response)

    # --- tasks -----------------------------------------------------------------------

    def enqueue(self, code: str, **options: Unpack[TaskOptions]) -> Enqueued:
        """Submit one task (every field of the contract is a keyword)."""
        return self.send(calls.enqueue(code, options))

    def enqueue_batch(self, tasks: Sequence[TaskSpec]) -> list[Enqueued]:
        """Submit up to 1000 tasks in one request, each stored atomically."""
        return self.send(calls.enqueue_batch(tasks))

    def get(self, eval_id: str, *, queue: str | None = None) -> TaskRecord:
        return self.send(calls.get(eval_id, queue))

    def list_tasks(self, state: str, **filters: Unpack[TaskFilters]) -> TaskPage:
        """A page of the tasks in `state` (filters: queue, tenant, q, limit, cursor)."""
        return self.send(calls.list_tasks(state, **filters))

    def cancel(self, eval_id: str, *, terminate: bool = False, queue: str | None = None) -> Settled:
        return self.send(calls.cancel(eval_id, terminate, queue))

    def clear(self) -> int:
        """Admin: remove every task, queue and dead letter (`DELETE /tasks`)."""
        return self.send(calls.clear())

    def task(self, **defaults: Unpack[TaskOptions]) -> TaskTemplate[Enqueued]:
        """A template: `t = client.task(queue="eval", priority="high"); t.delay(code)`."""
        return TaskTemplate(self.enqueue, defaults)

    def queue(self, name: str, **defaults: Unpack[TaskOptions]) -> TaskTemplate[Enqueued]:
        """RQ's shape: `client.queue("emails").enqueue(code)`."""
        return TaskTemplate(self.enqueue, {**defaults, "queue": name})

    # --- results ---------------------------------------------------------------------

    def wait(
        self, eval_id: str, timeout: float | None = None, *, queue: str | None = None
    ) -> TaskRecord:
        """The task's record once it is done (completed, failed, cancelled, expired),
        following its queue's event stream (waiting.py); WaitTimeout after `timeout` s."""
        waiter = Waiter(eval_id, timeout)
        record = self.get(eval_id, queue=queue)
        while not record.done:
            waiter.check()
            waiter.queue = record.queue
            record = self._follow(waiter) or self.get(eval_id, queue=record.queue)
        return record

    def result(
        self, eval_id: str, timeout: float | None = None, *, queue: str | None = None
    ) -> Any:
        """Celery's `AsyncResult.get()`: the result once completed; TaskFailed otherwise."""
        record = self.wait(eval_id, timeout, queue=queue)
        if record.status != State.COMPLETED:
            raise TaskFailed(record)
        return record.result

    def _follow(self, waiter: Waiter) -> TaskRecord | None:
        """One connection to the event stream: the record when it shows the task done
        after the headers; None once the task's end was announced or the deadline passed
        (the caller reads the record), or after a pause when the stream failed."""
        try:
            with self.http.stream(
                "GET",
                "/events",
                params=waiter.params(),
                headers=waiter.headers(),
                timeout=waiter.read_timeout(),
            ) as response:
                if not waiter.streamable(response):
                    waiter.refused(response.status_code, response.read())
                else:
                    record = self.get(waiter.eval_id, queue=waiter.queue)
                    if record.done:
                        return record
                    for line in response.iter_lines():
                        if waiter.line(line):
                            return None
        except httpx.TransportError:
            pass
        time.sleep(waiter.backoff())
        return None

    # --- pull workers ----------------------------------------------------------------

    def next(self, wait: float = 0.0, *, queue: str | None = None) -> Delivery | None:
        """Take a task (`processing` now, leased to you), long-polling up to `wait` s
        (0-30); None when none came."""
        return self.send(calls.next_task(wait, queue))

    def complete(self, task: Target, result: Any, **token: Unpack[Token]) -> Settled:
        """Report a result; `task` is the Delivery (its lease fences the call) or an id."""
        return self.send(calls.complete(task, result, **token))

    def fail(
        self,
        task: Target,
        error: str,
        *,
        retry: bool = True,
        traceback: str | None = None,
        **token: Unpack[Token],
    ) -> Settled:
        """Report a failed attempt: retried under the task's policy unless `retry=False`."""
        return self.send(calls.fail(task, error, retry, traceback, **token))

    def renew(self, task: Target, **token: Unpack[Token]) -> Settled:
        """Keep the lease (`lease_timeout` s from now again); Conflict once it is lost."""
        return self.send(calls.renew(task, **token))

    def progress(
        self,
        task: Target,
        value: float,
        message: str | None = None,
        data: Any = None,
        **token: Unpack[Token],
    ) -> None:
        """Report progress (0-100) of a processing task."""
        return self.send(calls.progress(task, value, message, data, **token))

    # --- dead-letter queue -------------------------------------------------------------

    def dlq(
        self, *, limit: int | None = None, offset: int | None = None, queue: str | None = None
    ) -> DeadLetters:
        return self.send(calls.dlq(limit, offset, queue))

    def dlq_retry(self, eval_id: str, *, queue: str | None = None) -> Settled:
        """Re-drive a dead letter: queued again, attempts from 1."""
        return self.send(calls.dlq_retry(eval_id, queue))

    def dlq_purge(self, *, older_than_days: float | None = None, queue: str | None = None) -> int:
        return self.send(calls.dlq_purge(older_than_days, queue))

    def dlq_delete(self, eval_id: str, *, queue: str | None = None) -> int:
        return self.send(calls.dlq_delete(eval_id, queue))

    # --- schedules ------------------------------------------------------------------------

    def create_schedule(self, name: str, **spec: Unpack[ScheduleSpec]) -> Schedule:
        return self.send(calls.create_schedule(name, spec))

    def schedules(self) -> list[Schedule]:
        return self.send(calls.schedules())

    def schedule(self, name: str) -> Schedule:
        return self.send(calls.schedule(name))

    def update_schedule(self, name: str, **spec: Unpack[ScheduleSpec]) -> Schedule:
        return self.send(calls.update_schedule(name, spec))

    def delete_schedule(self, name: str) -> None:
        return self.send(calls.delete_schedule(name))

    def pause_schedule(self, name: str) -> None:
        return self.send(calls.pause_schedule(name))

    def resume_schedule(self, name: str) -> None:
        return self.send(calls.resume_schedule(name))

    # --- operators ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self.send(calls.health())

    def status(self) -> dict[str, Any]:
        return self.send(calls.status())
