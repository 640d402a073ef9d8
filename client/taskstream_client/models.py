"""What the service answers, as typed records; and the options of a task, as TypedDicts.

Each record is a frozen dataclass built from the JSON by `from_json`, keeping the whole
document in `raw`, so a field a newer service adds is never lost. Times are `datetime`s
(UTC, from the service's ISO-8601). States and priorities are `str` enums, so a record's
`status` compares equal to `State.COMPLETED` and to `"completed"` alike.

Imports: stdlib only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, Required, TypedDict


class State(StrEnum):
    """A task's states (CONTRACT.md, "Task states" and "Flow control")."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    DEFERRED = "deferred"
    PROCESSING = "processing"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


TERMINAL = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED, State.EXPIRED})


class Priority(StrEnum):
    HIGH = "high"
    DEFAULT = "default"
    LOW = "low"


Moment = datetime | float | str  # an absolute time: a datetime, epoch seconds, or ISO-8601
Seconds = float | timedelta


class TaskOptions(TypedDict, total=False):
    """Every field of a task but `code` (CONTRACT.md, "Legacy queue API", "Flow control"
    and "Observability"; docs/api.md); the service validates them (422 names the field)."""

    eval_id: str
    language: str
    priority: Priority | Literal["high", "default", "low"] | bool
    timeout: Seconds
    max_retries: int
    retry_intervals: Sequence[Seconds]
    delay: Seconds  # from the Redis clock at enqueue ...
    run_at: Moment  # ... or an absolute time (not both)
    queue: str
    metadata: Mapping[str, Any]
    depends_on: Sequence[str]
    allow_failure: bool
    callback_url: str
    tenant: str
    dedup_key: str
    dedup: Literal["active", "throttle", "debounce"]
    dedup_ttl: Seconds
    expires: Seconds  # not started within this long → expired ...
    expires_at: Moment  # ... or by this time
    traceparent: str  # W3C trace context kept with the task
    tracestate: str


class TaskSpec(TaskOptions, total=False):
    """One task of `enqueue_batch`."""

    code: Required[str]


class Token(TypedDict, total=False):
    """The delivery token of a pull-worker call made with an eval_id rather than the
    `Delivery` (which carries them): fences the call to that attempt."""

    lease: str
    attempt: int
    queue: str


class TaskFilters(TypedDict, total=False):
    """`GET /tasks?state=…` filters: `q` matches an eval_id prefix or a metadata value."""

    queue: str
    tenant: str
    q: str
    limit: int
    cursor: str


class ScheduleSpec(TypedDict, total=False):
    """A schedule's fields for `create_schedule` / `update_schedule` (besides `name`)."""

    cron: str  # 5 fields ...
    every: Seconds  # ... or a fixed interval
    timezone: str
    task: TaskSpec  # a POST /tasks body without eval_id
    paused: bool


# --- JSON → values -------------------------------------------------------------------


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


# --- records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """A task's last progress report (`POST /tasks/{id}/progress`)."""

    progress: float
    message: str | None = None
    data: Any = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: Any) -> Progress | None:
        if isinstance(body, int | float) and not isinstance(body, bool):
            return cls(float(body))
        if not isinstance(body, dict):
            return None
        progress = _number(body.get("progress")) or 0.0
        return cls(progress, _str(body.get("message")), body.get("data"), dict(body))


@dataclass(frozen=True)
class TaskRecord:
    """`GET /tasks/{eval_id}`: a task's state, result and history."""

    eval_id: str
    status: str  # a State; a str so that a state a newer service adds still reads
    queue: str | None = None
    priority: str = Priority.DEFAULT
    attempts: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    result: Any = None
    error: str | None = None
    position: int | None = None  # queued only: 1 = next
    run_at: datetime | None = None
    eta: datetime | None = None  # queued: the estimated start, once the queue has a pace
    depends_on: tuple[str, ...] = ()
    tenant: str | None = None
    progress: Progress | None = None
    callback: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        """Terminal: completed, failed, cancelled or expired; it will not change again."""
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, body: Any) -> TaskRecord:
        body = _dict(body)
        callback = body.get("callback")
        return cls(
            eval_id=str(body.get("eval_id", "")),
            status=str(body.get("status", "")),
            queue=_str(body.get("queue")),
            priority=_str(body.get("priority")) or Priority.DEFAULT,
            attempts=_int(body.get("attempts")),
            created_at=_moment(body.get("created_at")),
            started_at=_moment(body.get("started_at")),
            completed_at=_moment(body.get("completed_at")),
            result=body.get("result"),
            error=_str(body.get("error")),
            position=body.get("position") if isinstance(body.get("position"), int) else None,
            run_at=_moment(body.get("run_at")),
            eta=_moment(body.get("eta")),
            depends_on=tuple(str(p) for p in body.get("depends_on") or ()),
            tenant=_str(body.get("tenant")),
            progress=Progress.from_json(body.get("progress")),
            callback=callback if isinstance(callback, dict) else None,
            raw=body,
        )


@dataclass(frozen=True)
class Enqueued:
    """The answer to an enqueue (one item of a batch's answer): the task as stored, or,
    in a batch, the refusal of this one item (`error` and `code`, the HTTP status)."""

    eval_id: str
    status: str | None = None  # queued, scheduled, deferred, or cancelled (a failed parent)
    priority: str | None = None
    position: int | None = None
    deduplicated: bool = False  # the eval_id is that of the task that already existed
    error: str | None = None
    code: int | None = None  # a batch item refused: 409 duplicate, 422 unknown parent
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """The task exists (stored now, or deduplicated onto an existing one)."""
        return self.code is None

    @classmethod
    def from_json(cls, body: Any) -> Enqueued:
        body = _dict(body)
        code = body.get("code")
        return cls(
            eval_id=str(body.get("eval_id", "")),
            status=_str(body.get("status")),
            priority=_str(body.get("priority")),
            position=body.get("position") if isinstance(body.get("position"), int) else None,
            deduplicated=body.get("deduplicated") is True,
            error=_str(body.get("error")),
            code=code if isinstance(code, int) else None,
            raw=body,
        )


@dataclass(frozen=True)
class Delivery:
    """A task handed to a pull worker by `GET /tasks/next`: `processing` now, leased.
    (`lease`, `attempt`) is its fencing token: complete, fail, renew and progress send it."""

    eval_id: str
    code: str
    attempt: int
    lease: str
    language: str = "python"
    metadata: dict[str, Any] = field(default_factory=dict)
    priority: str = Priority.DEFAULT
    queue: str | None = None
    timeout: float | None = None
    max_retries: int | None = None
    lease_timeout: float | None = None  # seconds the lease lasts unless renewed
    traceparent: str | None = None
    tracestate: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: Any) -> Delivery:
        body = _dict(body)
        max_retries = body.get("max_retries")
        return cls(
            eval_id=str(body.get("eval_id", "")),
            code=str(body.get("code", "")),
            attempt=_int(body.get("attempt"), 1),
            lease=str(body.get("lease", "")),
            language=_str(body.get("language")) or "python",
            metadata=_dict(body.get("metadata")),
            priority=_str(body.get("priority")) or Priority.DEFAULT,
            queue=_str(body.get("queue")),
            timeout=_number(body.get("timeout")),
            max_retries=max_retries if isinstance(max_retries, int) else None,
            lease_timeout=_number(body.get("lease_timeout")),
            traceparent=_str(body.get("traceparent")),
            tracestate=_str(body.get("tracestate")),
            raw=body,
        )


@dataclass(frozen=True)
class Settled:
    """The answer to complete, fail, cancel, renew or a DLQ re-drive: the task's new
    state (`retry_at` when a failure is retried; `lease_timeout` after a renewal)."""

    eval_id: str
    status: str
    queue: str | None = None
    retry_at: datetime | None = None
    lease_timeout: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: Any, eval_id: str = "") -> Settled:
        body = _dict(body)
        return cls(
            eval_id=str(body.get("eval_id", eval_id)),
            status=str(body.get("status", "")),
            queue=_str(body.get("queue")),
            retry_at=_moment(body.get("retry_at")),
            lease_timeout=_number(body.get("lease_timeout")),
            raw=body,
        )


@dataclass(frozen=True)
class DeadLetter:
    """One `GET /dlq` entry: a task that failed for good, with its payload as submitted."""

    eval_id: str
    error: str
    attempts: int
    failed_at: datetime | None
    task: dict[str, Any]
    traceback: str | None = None
    detail: Any = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: Any) -> DeadLetter:
        body = _dict(body)
        return cls(
            eval_id=str(body.get("eval_id", "")),
            error=str(body.get("error", "")),
            attempts=_int(body.get("attempts")),
            failed_at=_moment(body.get("failed_at")),
            task=_dict(body.get("task")),
            traceback=_str(body.get("traceback")),
            detail=body.get("detail"),
            raw=body,
        )


@dataclass(frozen=True)
class DeadLetters:
    """A page of the dead-letter queue, newest first; `count` is the queue's total."""

    count: int
    tasks: list[DeadLetter]

    @classmethod
    def from_json(cls, body: Any) -> DeadLetters:
        body = _dict(body)
        items = body.get("tasks") or []
        return cls(_int(body.get("count")), [DeadLetter.from_json(item) for item in items])


@dataclass(frozen=True)
class TaskPage:
    """A page of `GET /tasks?state=…`; `next_cursor` is None on the last page."""

    tasks: list[TaskRecord]
    next_cursor: str | None

    @classmethod
    def from_json(cls, body: Any) -> TaskPage:
        body = _dict(body)
        cursor = body.get("next_cursor")
        items = body.get("tasks") or []
        cursor = str(cursor) if cursor not in (None, "", 0, "0") else None
        return cls([TaskRecord.from_json(item) for item in items], cursor)


@dataclass(frozen=True)
class Schedule:
    """A cron or interval schedule (`/schedules`): each tick enqueues `task` as
    `<name>:<tick epoch seconds>`."""

    name: str
    task: dict[str, Any]
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    paused: bool = False
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: Any) -> Schedule:
        body = _dict(body)
        return cls(
            name=str(body.get("name", "")),
            task=_dict(body.get("task")),
            cron=_str(body.get("cron")),
            every=_number(body.get("every")),
            timezone=_str(body.get("timezone")) or "UTC",
            paused=body.get("paused") is True,
            next_run_at=_moment(body.get("next_run_at")),
            last_run_at=_moment(body.get("last_run_at")),
            raw=body,
        )


@dataclass(frozen=True)
class Event:
    """One state change from `GET /events` (server-sent events): `id` resumes the stream."""

    id: str
    state: str
    eval_id: str
    attempt: int | None
    queue: str | None
    at: datetime | None

    @classmethod
    def from_json(cls, event_id: str, body: Any) -> Event:
        body = _dict(body)
        at = _number(body.get("at"))
        attempt = body.get("attempt")
        return cls(
            id=event_id,
            state=str(body.get("state", "")),
            eval_id=str(body.get("eval_id", "")),
            attempt=attempt if isinstance(attempt, int) else None,
            queue=_str(body.get("queue")),
            at=datetime.fromtimestamp(at / 1000, tz=UTC) if at is not None else None,
        )
