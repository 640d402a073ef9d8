"""`AsyncClient`: the asynchronous client (asyncio), with `Client`'s methods, awaitable.
Each method builds its `Call` (calls.py) and sends it over one `httpx.AsyncClient`.

Imports: calls, config, errors, models, templates, waiting (and httpx).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
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


class AsyncClient:
    """The taskstream API over HTTP, for asyncio. `base_url` defaults to `TASKSTREAM_URL`
    (else http://127.0.0.1:8081), `api_key` to `TASKSTREAM_API_KEY`; `timeout` (s) bounds
    each request (a long-poll adds its wait). Close it (`aclose`), or use it as an async
    context manager."""

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
        self.http = httpx.AsyncClient(**options, **httpx_options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def send(self, call: calls.Call[T]) -> T:
        """Send one call and parse its answer (or raise the error its status maps to)."""
        timeout = httpx.USE_CLIENT_DEFAULT if call.timeout is None else call.timeout
        try:
            response = await self.http.request(
                call.method, call.path, params=call.params, json=call.json, timeout=timeout
            )
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from exc
        return call.answer(response)

    # --- tasks -----------------------------------------------------------------------

    async def enqueue(self, code: str, **options: Unpack[TaskOptions]) -> Enqueued:
        """Submit one task (every field of the contract is a keyword)."""
        return await self.send(calls.enqueue(code, options))

    async def enqueue_batch(self, tasks: Sequence[TaskSpec]) -> list[Enqueued]:
        """Submit up to 1000 tasks in one request, each stored atomically."""
        return await self.send(calls.enqueue_batch(tasks))

    async def get(self, eval_id: str, *, queue: str | None = None) -> TaskRecord:
        return await self.send(calls.get(eval_id, queue))

    async def list_tasks(self, state: str, **filters: Unpack[TaskFilters]) -> TaskPage:
        """A page of the tasks in `state` (filters: queue, tenant, q, limit, cursor)."""
        return await self.send(calls.list_tasks(state, **filters))

    async def cancel(
        self, eval_id: str, *, terminate: bool = False, queue: str | None = None
    ) -> Settled:
        return await self.send(calls.cancel(eval_id, terminate, queue))

    async def clear(self) -> int:
        """Admin: remove every task, queue and dead letter (`DELETE /tasks`)."""
        return await self.send(calls.clear())

    def task(self, **defaults: Unpack[TaskOptions]) -> TaskTemplate[Awaitable[Enqueued]]:
        """A template: `t = client.task(queue="eval", priority="high"); t.delay(code)`."""
        return TaskTemplate(self.enqueue, defaults)

    def queue(
        self, name: str, **defaults: Unpack[TaskOptions]
    ) -> TaskTemplate[Awaitable[Enqueued]]:
        """RQ's shape: `client.queue("emails").enqueue(code)`."""
        return TaskTemplate(self.enqueue, {**defaults, "queue": name})

    # --- results ---------------------------------------------------------------------

    async def wait(
        self, eval_id: str, timeout: float | None = None, *, queue: str | None = None
    ) -> TaskRecord:
        """The task's record once it is done (completed, failed, cancelled, expired),
        following its queue's event stream (waiting.py); WaitTimeout after `timeout` s."""
        waiter = Waiter(eval_id, timeout)
        record = await self.get(eval_id, queue=queue)
        while not record.done:
            waiter.check()
            waiter.queue = record.queue
            record = await self._follow(waiter) or await self.get(eval_id, queue=record.queue)
        return record

    async def result(
        self, eval_id: str, timeout: float | None = None, *, queue: str | None = None
    ) -> Any:
        """Celery's `AsyncResult.get()`: the result once completed; TaskFailed otherwise."""
        record = await self.wait(eval_id, timeout, queue=queue)
        if record.status != State.COMPLETED:
            raise TaskFailed(record)
        return record.result

    async def _follow(self, waiter: Waiter) -> TaskRecord | None:
        """One connection to the event stream: the record when it shows the task done
        after the headers; None once the task's end was announced or the deadline passed
        (the caller reads the record), or after a pause when the stream failed."""
        try:
            async with self.http.stream(
                "GET",
                "/events",
                params=waiter.params(),
                headers=waiter.headers(),
                timeout=waiter.read_timeout(),
            ) as response:
                if not waiter.streamable(response):
                    waiter.refused(response.status_code, await response.aread())
                else:
                    record = await self.get(waiter.eval_id, queue=waiter.queue)
                    if record.done:
                        return record
                    async for line in response.aiter_lines():
                        if waiter.line(line):
                            return None
        except httpx.TransportError:
            pass
        await asyncio.sleep(waiter.backoff())
        return None

    # --- pull workers ----------------------------------------------------------------

    async def next(self, wait: float = 0.0, *, queue: str | None = None) -> Delivery | None:
        """Take a task (`processing` now, leased to you), long-polling up to `wait` s
        (0-30); None when none came."""
        return await self.send(calls.next_task(wait, queue))

    async def complete(self, task: Target, result: Any, **token: Unpack[Token]) -> Settled:
        """Report a result; `task` is the Delivery (its lease fences the call) or an id."""
        return await self.send(calls.complete(task, result, **token))

    async def fail(
        self,
        task: Target,
        error: str,
        *,
        retry: bool = True,
        traceback: str | None = None,
        **token: Unpack[Token],
    ) -> Settled:
        """Report a failed attempt: retried under the task's policy unless `retry=False`."""
        return await self.send(calls.fail(task, error, retry, traceback, **token))

    async def renew(self, task: Target, **token: Unpack[Token]) -> Settled:
        """Keep the lease (`lease_timeout` s from now again); Conflict once it is lost."""
        return await self.send(calls.renew(task, **token))

    async def progress(
        self,
        task: Target,
        value: float,
        message: str | None = None,
        data: Any = None,
        **token: Unpack[Token],
    ) -> None:
        """Report progress (0-100) of a processing task."""
        return await self.send(calls.progress(task, value, message, data, **token))

    # --- dead-letter queue -------------------------------------------------------------

    async def dlq(
        self, *, limit: int | None = None, offset: int | None = None, queue: str | None = None
    ) -> DeadLetters:
        return await self.send(calls.dlq(limit, offset, queue))

    async def dlq_retry(self, eval_id: str, *, queue: str | None = None) -> Settled:
        """Re-drive a dead letter: queued again, attempts from 1."""
        return await self.send(calls.dlq_retry(eval_id, queue))

    async def dlq_purge(
        self, *, older_than_days: float | None = None, queue: str | None = None
    ) -> int:
        return await self.send(calls.dlq_purge(older_than_days, queue))

    async def dlq_delete(self, eval_id: str, *, queue: str | None = None) -> int:
        return await self.send(calls.dlq_delete(eval_id, queue))

    # --- schedules ------------------------------------------------------------------------

    async def create_schedule(self, name: str, **spec: Unpack[ScheduleSpec]) -> Schedule:
        return await self.send(calls.create_schedule(name, spec))

    async def schedules(self) -> list[Schedule]:
        return await self.send(calls.schedules())

    async def schedule(self, name: str) -> Schedule:
        return await self.send(calls.schedule(name))

    async def update_schedule(self, name: str, **spec: Unpack[ScheduleSpec]) -> Schedule:
        return await self.send(calls.update_schedule(name, spec))

    async def delete_schedule(self, name: str) -> None:
        return await self.send(calls.delete_schedule(name))

    async def pause_schedule(self, name: str) -> None:
        return await self.send(calls.pause_schedule(name))

    async def resume_schedule(self, name: str) -> None:
        return await self.send(calls.resume_schedule(name))

    # --- operators ------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        return await self.send(calls.health())

    async def status(self) -> dict[str, Any]:
        return await self.send(calls.status())
