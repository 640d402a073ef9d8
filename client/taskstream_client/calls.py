"""The request/response layer both clients share: one `Call` per API operation.

A builder turns a method's arguments into a `Call` (method, path, query, JSON body, the
statuses it accepts, and the parser of its answer); `Client` and `AsyncClient` only send
it over their transport and hand the response to `Call.answer`, which parses an accepted
status and raises the error tree's exception for any other. So each operation's logic is
written once, here, and both clients are one line per method.

Imports: models, errors (and httpx, for the response type).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from taskstream_client.errors import error_from
from taskstream_client.models import (
    DeadLetters,
    Delivery,
    Enqueued,
    Schedule,
    ScheduleSpec,
    Settled,
    TaskOptions,
    TaskPage,
    TaskRecord,
    TaskSpec,
)

T = TypeVar("T")

LONG_POLL_SLACK = 10.0  # s beyond `wait` before a long-poll counts as timed out


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP exchange of the API: what to send, and how to read the answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    accept: frozenset[int] = frozenset({200})
    timeout: float | None = None  # None: the client's

    def answer(self, response: httpx.Response) -> T:
        """The parsed answer, or the error its status maps to."""
        if response.status_code not in self.accept:
            raise error_from(response)
        return self.parse(response)


# --- encoding ------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Python values as the API takes them: seconds for a timedelta, epoch seconds for a
    datetime (a naive one is local time, as `datetime.timestamp` reads it)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds  # `every` takes whole seconds
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def task_body(code: str, options: TaskOptions | Mapping[str, Any]) -> dict[str, Any]:
    """A `POST /tasks` body (fields left None are left out: the service's defaults)."""
    body = {key: jsonable(value) for key, value in options.items() if value is not None}
    body["code"] = code
    return body


def _query(**values: Any) -> dict[str, str]:
    """Query parameters, without the unset ones; booleans as the service reads them."""
    query = {}
    for key, value in values.items():
        if value is None:
            continue
        query[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return query


def _task_path(eval_id: str, action: str = "") -> str:
    return f"/tasks/{quote(eval_id, safe='')}{action}"


def _fence(lease: str | None, attempt: int | None) -> dict[str, Any]:
    """The delivery token, when the caller has it (a pull worker does)."""
    if lease is None and attempt is None:
        return {}
    return {"lease": lease, "attempt": attempt}


# --- parsers ---------------------------------------------------------------------------


def _body(response: httpx.Response) -> Any:
    return response.json()


def _nothing(response: httpx.Response) -> None:
    return None


def _settled(response: httpx.Response) -> Settled:
    return Settled.from_json(response.json())


def _record(response: httpx.Response) -> TaskRecord:
    return TaskRecord.from_json(response.json())


def _enqueued(response: httpx.Response) -> Enqueued:
    return Enqueued.from_json(response.json())


def _batch(response: httpx.Response) -> list[Enqueued]:
    return [Enqueued.from_json(item) for item in response.json().get("tasks", [])]


def _delivery(response: httpx.Response) -> Delivery | None:
    return None if response.status_code == 204 else Delivery.from_json(response.json())


def _counted(key: str) -> Callable[[httpx.Response], int]:
    return lambda response: int(response.json().get(key, 0))


def _schedule(response: httpx.Response) -> Schedule:
    return Schedule.from_json(response.json())


def _schedules(response: httpx.Response) -> list[Schedule]:
    return [Schedule.from_json(item) for item in response.json().get("schedules", [])]


# --- the legacy queue API ---------------------------------------------------------------


def enqueue(code: str, options: TaskOptions) -> Call[Enqueued]:
    """201 stored; 200 when deduplicated onto an existing task (`deduplicated: true`)."""
    body = task_body(code, options)
    return Call("POST", "/tasks", _enqueued, json=body, accept=frozenset({200, 201}))


def enqueue_batch(tasks: Sequence[TaskSpec]) -> Call[list[Enqueued]]:
    """One answer per task, in order; an item refused alone carries `error` and `code`."""
    items = [
        task_body(spec["code"], {k: v for k, v in spec.items() if k != "code"}) for spec in tasks
    ]
    return Call("POST", "/tasks/batch", _batch, json={"tasks": items}, accept=frozenset({200, 201}))


def get(eval_id: str, queue: str | None = None) -> Call[TaskRecord]:
    return Call("GET", _task_path(eval_id), _record, params=_query(queue=queue))


def list_tasks(
    state: str,
    queue: str | None = None,
    tenant: str | None = None,
    q: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[TaskPage]:
    params = _query(state=state, queue=queue, tenant=tenant, q=q, limit=limit, cursor=cursor)
    return Call("GET", "/tasks", lambda r: TaskPage.from_json(r.json()), params=params)


def cancel(eval_id: str, terminate: bool = False, queue: str | None = None) -> Call[Settled]:
    params = _query(terminate=terminate or None, queue=queue)
    return Call("POST", _task_path(eval_id, "/cancel"), _settled, params=params)


def clear() -> Call[int]:
    return Call("DELETE", "/tasks", _counted("cleared"))


# --- pull workers ------------------------------------------------------------------------


def next_task(wait: float = 0.0, queue: str | None = None) -> Call[Delivery | None]:
    """Long-poll up to `wait` s (0-30): the task, leased to the caller, or None."""
    params = _query(wait=wait or None, queue=queue)
    return Call(
        "GET",
        "/tasks/next",
        _delivery,
        params=params,
        accept=frozenset({200, 204}),
        timeout=wait + LONG_POLL_SLACK,
    )


Target = Delivery | str  # a pulled task (its token and queue go along) or an eval_id


def _target(
    task: Target, lease: str | None, attempt: int | None, queue: str | None
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(path's eval_id, fencing fields, query) of a by-id pull-worker call."""
    if isinstance(task, Delivery):
        return task.eval_id, _fence(task.lease, task.attempt), _query(queue=task.queue)
    return task, _fence(lease, attempt), _query(queue=queue)


def complete(
    task: Target,
    result: Any,
    lease: str | None = None,
    attempt: int | None = None,
    queue: str | None = None,
) -> Call[Settled]:
    eval_id, fence, params = _target(task, lease, attempt, queue)
    body = {"result": jsonable(result), **fence}
    return Call("POST", _task_path(eval_id, "/complete"), _settled, params=params, json=body)


def fail(
    task: Target,
    error: str,
    retry: bool = True,
    traceback: str | None = None,
    lease: str | None = None,
    attempt: int | None = None,
    queue: str | None = None,
) -> Call[Settled]:
    """`retrying` (with `retry_at`) while retries remain and `retry`; else `failed`."""
    eval_id, fence, params = _target(task, lease, attempt, queue)
    body: dict[str, Any] = {"error": error, "retry": retry, **fence}
    if traceback:
        body["traceback"] = traceback
    return Call("POST", _task_path(eval_id, "/fail"), _settled, params=params, json=body)


def renew(
    task: Target, lease: str | None = None, attempt: int | None = None, queue: str | None = None
) -> Call[Settled]:
    """The lease again for `lease_timeout` s; 409 once it lapsed or the task was cancelled."""
    eval_id, fence, params = _target(task, lease, attempt, queue)
    return Call("POST", _task_path(eval_id, "/renew"), _settled, params=params, json=fence)


def progress(
    task: Target,
    value: float,
    message: str | None = None,
    data: Any = None,
    lease: str | None = None,
    attempt: int | None = None,
    queue: str | None = None,
) -> Call[None]:
    """A progress report (0-100) on a processing task; 409 for a stale attempt or lease."""
    eval_id, fence, params = _target(task, lease, attempt, queue)
    body: dict[str, Any] = {"progress": value, **fence}
    if message is not None:
        body["message"] = message
    if data is not None:
        body["data"] = jsonable(data)
    return Call("POST", _task_path(eval_id, "/progress"), _nothing, params=params, json=body)


# --- the dead-letter queue ---------------------------------------------------------------


def dlq(
    limit: int | None = None, offset: int | None = None, queue: str | None = None
) -> Call[DeadLetters]:
    params = _query(limit=limit, offset=offset, queue=queue)
    return Call("GET", "/dlq", lambda r: DeadLetters.from_json(r.json()), params=params)


def dlq_retry(eval_id: str, queue: str | None = None) -> Call[Settled]:
    """Queued again with a fresh attempt count; 409 when a live task has its eval_id."""
    path = f"/dlq/{quote(eval_id, safe='')}/retry"
    return Call("POST", path, _settled, params=_query(queue=queue))


def dlq_purge(older_than_days: float | None = None, queue: str | None = None) -> Call[int]:
    params = _query(older_than_days=older_than_days, queue=queue)
    return Call("DELETE", "/dlq", _counted("removed"), params=params)


def dlq_delete(eval_id: str, queue: str | None = None) -> Call[int]:
    path = f"/dlq/{quote(eval_id, safe='')}"
    return Call("DELETE", path, _counted("removed"), params=_query(queue=queue))


# --- schedules ------------------------------------------------------------------------------


def _schedule_path(name: str, action: str = "") -> str:
    return f"/schedules/{quote(name, safe='')}{action}"


def _schedule_body(spec: ScheduleSpec | Mapping[str, Any]) -> dict[str, Any]:
    body = {key: jsonable(value) for key, value in spec.items() if value is not None}
    if isinstance(spec.get("task"), Mapping):
        task = dict(spec["task"])
        body["task"] = task_body(task.pop("code"), task) if "code" in task else jsonable(task)
    return body


def create_schedule(name: str, spec: ScheduleSpec) -> Call[Schedule]:
    body = {"name": name, **_schedule_body(spec)}
    return Call("POST", "/schedules", _schedule, json=body, accept=frozenset({200, 201}))


def schedules() -> Call[list[Schedule]]:
    return Call("GET", "/schedules", _schedules)


def schedule(name: str) -> Call[Schedule]:
    return Call("GET", _schedule_path(name), _schedule)


def update_schedule(name: str, spec: ScheduleSpec) -> Call[Schedule]:
    body = {"name": name, **_schedule_body(spec)}
    return Call("PUT", _schedule_path(name), _schedule, json=body)


def delete_schedule(name: str) -> Call[None]:
    return Call("DELETE", _schedule_path(name), _nothing)


def pause_schedule(name: str) -> Call[None]:
    return Call("POST", _schedule_path(name, "/pause"), _nothing)


def resume_schedule(name: str) -> Call[None]:
    return Call("POST", _schedule_path(name, "/resume"), _nothing)


# --- operators ---------------------------------------------------------------------------------


def health() -> Call[dict[str, Any]]:
    """`GET /health` as a document; 503 (unhealthy) raises `Unavailable`."""
    return Call("GET", "/health", _body)


def status() -> Call[dict[str, Any]]:
    return Call("GET", "/status", _body)
