"""Task vocabulary: states, priorities, validation of submitted tasks, record rendering.

Imports: errors, settings, flow_settings (and stdlib, orjson).
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import orjson

from app.errors import BadRequest, Invalid
from app.flow_settings import TENANT_RE
from app.settings import NAMED_QUEUE_RE

EVAL_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_DELAY_SECONDS = 366 * 86400
MAX_RUN_AT = 1e11  # epoch seconds, year 5138: rejects milliseconds given as seconds
MAX_INTERVALS = 100
MAX_PARENTS = 100  # depends_on: parents per task
RESERVED_IDS = frozenset({"next", "batch"})  # GET /tasks/next, POST /tasks/batch
MAX_URL_LENGTH = 2048
MAX_DEDUP_KEY = 128
DEDUP_MODES = ("active", "throttle", "debounce")
TRACE_FIELDS = ("traceparent", "tracestate")  # kept in a payload (runtime/tracing.py)
DEFAULT_TENANT = "default"  # a task without a tenant is this tenant's (docs/flow-control.md)


class State(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    DEFERRED = "deferred"  # waiting for the tasks it depends on
    PROCESSING = "processing"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # not started before its `expires` time; never run


TERMINAL = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED, State.EXPIRED})
WAITING = frozenset({State.QUEUED, State.SCHEDULED, State.RETRYING})
CANCELLABLE = WAITING | {State.DEFERRED}


class Priority(StrEnum):
    HIGH = "high"
    DEFAULT = "default"
    LOW = "low"


# Claim order: a free slot takes high, else default, else low.
PRIORITY_ORDER = (Priority.HIGH, Priority.DEFAULT, Priority.LOW)


class Outcome(StrEnum):
    """How an execution attempt ended, as the executor protocol classifies it."""

    SUCCESS = "success"
    PERMANENT = "permanent"  # 4xx: fail now, no retry
    RETRYABLE = "retryable"  # 5xx, 408, 429, task timeout: default retry policy
    NETWORK = "network"  # connection error: network retry policy


def new_eval_id() -> str:
    """A random id: 22 URL-safe characters, shorter than a UUID, same entropy class."""
    return secrets.token_urlsafe(16)


def check_eval_id(value: object) -> str:
    if not isinstance(value, str) or not EVAL_ID_RE.fullmatch(value):
        raise Invalid("eval_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return value


def check_queue(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not NAMED_QUEUE_RE.fullmatch(value):
        raise Invalid("queue must be 1-64 characters of A-Z a-z 0-9 . _ -")
    if value in Priority.__members__.values():  # CONSUME would read it as a priority
        raise Invalid(f"queue must not be a priority name: {value!r}")
    return value


def check_tenant(value: object) -> str | None:
    """`tenant`: 1-64 of A-Z a-z 0-9 . _ : -; None for no tenant or `default` (the same)."""
    if value is None or value == DEFAULT_TENANT:
        return None
    if not isinstance(value, str) or not TENANT_RE.fullmatch(value):
        raise Invalid("tenant must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    return value


def parse_priority(value: object) -> Priority:
    if value is True:
        return Priority.HIGH
    if value is False or value is None:
        return Priority.DEFAULT
    if isinstance(value, str) and value.lower() in Priority.__members__.values():
        return Priority(value.lower())
    raise Invalid("priority must be true, false, 'high', 'default' or 'low'")


def parse_json(body: bytes) -> Any:
    """Decode a JSON request body; malformed JSON is a 400."""
    try:
        return orjson.loads(body or b"null")
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from exc


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(f"{key} must be a number")
    if not low <= value <= high:
        raise Invalid(f"{key} must be between {low:g} and {high:g}")
    return float(value)


def _moment(data: dict[str, Any], key: str) -> float | None:
    """An absolute time given as epoch seconds or an ISO-8601 string (`run_at`,
    `expires_at`), in epoch seconds; None when absent."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Invalid(f"{key} must be epoch seconds or an ISO-8601 time") from None
        moment = parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp()
        if not 0 <= moment <= MAX_RUN_AT:
            raise Invalid(f"{key} is out of range")
        return moment
    return _number(data, key, 0, MAX_RUN_AT) or 0.0


def _start(data: dict[str, Any]) -> tuple[float | None, float | None]:
    """(`delay` s, `run_at` epoch s): at most one is set. Neither is turned into the other
    here: a delay counts from the Redis server's clock and a run_at is compared with it, in
    enqueue.lua, so a replica whose clock is off schedules like the others."""
    if data.get("delay") is not None and data.get("run_at") is not None:
        raise Invalid("give delay or run_at, not both")
    delay = _number(data, "delay", 0, MAX_DELAY_SECONDS)
    if delay is not None:
        return (delay or None), None
    return None, _moment(data, "run_at")


@dataclass(frozen=True)
class Expiry:
    """`expires` (s after the Redis clock at enqueue) or `expires_at` (epoch s): a task not
    started by then becomes `expired` (engine/lua/_lib.lua, expire)."""

    after: float | None = None
    at: float | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Expiry:
        if data.get("expires") is not None and data.get("expires_at") is not None:
            raise Invalid("give expires or expires_at, not both")
        # An expiry before the run time (or already past) is accepted: the task expires
        # then, as Celery revokes a task whose `expires` comes before its `eta`.
        return cls(_number(data, "expires", 0.001, MAX_DELAY_SECONDS), _moment(data, "expires_at"))

    def arg(self) -> str | None:
        """enqueue.lua's expiry: '+<ms>' after the Redis clock, '<ms>' epoch; None: none."""
        if self.after is not None:
            return f"+{math.ceil(self.after * 1000)}"
        return None if self.at is None else str(int(self.at * 1000))


@dataclass(frozen=True)
class Dedup:
    """`dedup_key` with its `dedup` mode and `dedup_ttl` (s): see docs/api.md."""

    key: str
    mode: str = "active"
    ttl: float | None = None

    @property
    def ttl_ms(self) -> int:
        return math.ceil((self.ttl or 0) * 1000)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Dedup | None:
        key, mode = data.get("dedup_key"), data.get("dedup")
        if key is None:
            if mode is not None or data.get("dedup_ttl") is not None:
                raise Invalid("dedup and dedup_ttl need a dedup_key")
            return None
        if not isinstance(key, str) or not 0 < len(key) <= MAX_DEDUP_KEY:
            raise Invalid(f"dedup_key must be a string of 1-{MAX_DEDUP_KEY} characters")
        mode = "active" if mode is None else mode
        if mode not in DEDUP_MODES:
            raise Invalid(f"dedup must be one of {', '.join(DEDUP_MODES)}")
        ttl = _number(data, "dedup_ttl", 0.001, MAX_DELAY_SECONDS)
        if ttl is None and mode != "active":
            raise Invalid(f"dedup_ttl is required with {mode}")
        if mode == "active":
            ttl = None  # an active key is held by its task's life, not by time
        if mode == "debounce" and any(
            data.get(name) is not None for name in ("delay", "run_at", "depends_on")
        ):
            raise Invalid("debounce sets the run time itself: no delay, run_at or depends_on")
        return cls(key, mode, ttl)


def _intervals(value: object) -> list[float] | None:
    """`retry_intervals`: seconds before retry 1, 2, …; the last one repeats (RQ's Retry)."""
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_INTERVALS:
        raise Invalid(f"retry_intervals must be a list of 1-{MAX_INTERVALS} numbers of seconds")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise Invalid("retry_intervals must be a list of numbers of seconds")
        if not 0 <= item <= MAX_DELAY_SECONDS:
            raise Invalid(f"retry_intervals must be between 0 and {MAX_DELAY_SECONDS} seconds")
    return [float(item) for item in value]


def _depends_on(value: object, eval_id: str) -> tuple[str, ...]:
    """`depends_on`: 1-100 distinct eval_ids of existing tasks (checked by the enqueue script)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PARENTS:
        raise Invalid(f"depends_on must be a list of 1-{MAX_PARENTS} eval_ids")
    parents = tuple(check_eval_id(item) for item in value)
    if len(set(parents)) != len(parents):
        raise Invalid("depends_on must not repeat an eval_id")
    if eval_id in parents:
        raise Invalid(f"depends_on: a task cannot depend on itself (cycle: {eval_id})")
    return parents


def _payload(data: dict[str, Any]) -> dict[str, Any]:
    """What executors receive; defaults are left out, since it is most of a queued task's memory."""
    code = data.get("code")
    if not isinstance(code, str) or not code:
        raise Invalid("code must be a non-empty string")
    language = data.get("language", "python")
    if not isinstance(language, str) or not 0 < len(language) <= 64:
        raise Invalid("language must be a string of 1-64 characters")
    metadata = data.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise Invalid("metadata must be an object")
    max_retries = _number(data, "max_retries", 0, 1000)
    if max_retries is not None and max_retries != int(max_retries):
        raise Invalid("max_retries must be an integer")
    optional = {
        "retry_intervals": _intervals(data.get("retry_intervals")),
        "language": language if language != "python" else None,
        "metadata": metadata or None,
        "timeout": _number(data, "timeout", 0.001, 86400),
        "max_retries": int(max_retries) if max_retries is not None else None,
    }
    return {"code": code, **{k: v for k, v in optional.items() if v is not None}}


def _callback_url(value: object) -> str | None:
    """`callback_url`: an absolute http(s) URL with a host, at most 2048 characters."""
    if value is None:
        return None
    message = f"callback_url must be an http or https URL of at most {MAX_URL_LENGTH} characters"
    if not isinstance(value, str) or not 0 < len(value) <= MAX_URL_LENGTH:
        raise Invalid(message)
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        raise Invalid(f"{message}, without spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        raise Invalid(message)
    try:
        parts.port  # noqa: B018 - property access validates the port
    except ValueError:
        raise Invalid("callback_url has a bad port") from None
    if not parts.hostname:
        raise Invalid("callback_url has no host")
    return value


def callback_host(url: str) -> str:
    """The host name of a validated callback_url (lower case)."""
    return urlsplit(url).hostname or ""


@dataclass(frozen=True)
class TaskRequest:
    """A validated submission; `payload` is what executors and pull workers receive."""

    eval_id: str
    priority: Priority
    payload: dict[str, Any]
    run_at: float | None = None  # epoch seconds as the client gave it (past: run now)
    depends_on: tuple[str, ...] = ()  # parents that must complete first
    allow_failure: bool = False  # run once every parent finished, whatever its outcome
    queue: str | None = None  # a named queue; None = the default queue
    callback_url: str | None = None  # POSTed the outcome once terminal (runtime/callbacks.py)
    delay: float | None = None  # seconds after the Redis server's clock at enqueue
    dedup: Dedup | None = None  # deduplication (dedup_key, dedup, dedup_ttl)
    expiry: Expiry = Expiry()  # expires / expires_at
    tenant: str | None = None  # fair share within its priority; None: tenant `default`

    @classmethod
    def parse(cls, data: object) -> TaskRequest:
        """Validate one task from `POST /tasks`; raise Invalid with a message for the client."""
        if not isinstance(data, dict):
            raise Invalid("a task must be a JSON object")
        eval_id = data.get("eval_id")
        eval_id = new_eval_id() if eval_id is None else check_eval_id(eval_id)
        if eval_id in RESERVED_IDS:
            raise Invalid(f"eval_id {eval_id!r} is reserved (it names a route)")
        priority = parse_priority(data.get("priority"))
        depends_on = _depends_on(data.get("depends_on"), eval_id)
        allow_failure = data.get("allow_failure", False)
        if not isinstance(allow_failure, bool):
            raise Invalid("allow_failure must be a boolean")
        payload, (delay, run_at) = _payload(data), _start(data)
        expiry, dedup = Expiry.parse(data), Dedup.parse(data)
        queue = check_queue(data.get("queue"))
        callback_url = _callback_url(data.get("callback_url"))
        return cls(
            eval_id,
            priority,
            payload,
            run_at,
            depends_on,
            allow_failure,
            queue,
            callback_url,
            delay=delay,
            dedup=dedup,
            expiry=expiry,
            tenant=check_tenant(data.get("tenant")),
        )

    def encoded_payload(self) -> bytes:
        return orjson.dumps(self.payload)


@dataclass
class Task:
    """One delivery of a task to a consumer: (entry, attempt) is its fencing token."""

    eval_id: str
    entry: str
    attempt: int
    priority: Priority
    payload: dict[str, Any] = field(default_factory=dict)
    waited_ms: int | None = None  # queue wait before this delivery (from the claim)
    progress_url: str | None = None  # where the executor may POST progress (runtime/consumers)
    part: int | None = None  # the partition it was claimed from (QUEUE_PARTITIONS); None: unknown

    @property
    def timeout(self) -> float | None:
        value = self.payload.get("timeout")
        return float(value) if value is not None else None

    @property
    def max_retries(self) -> int | None:
        value = self.payload.get("max_retries")
        return int(value) if value is not None else None

    @property
    def idempotency_key(self) -> str:
        """`Idempotency-Key` of this attempt's executor request: `<eval_id>:<attempt>`. Only
        the same request re-sent within the attempt (runtime/wire.py) repeats it."""
        return f"{self.eval_id}:{self.attempt}"

    def executor_body(self) -> dict[str, Any]:
        """The JSON the executor protocol sends to `POST {executor}/execute`."""
        body = {
            "eval_id": self.eval_id,
            "code": self.payload.get("code", ""),
            "language": self.payload.get("language", "python"),
            "attempt": self.attempt,
            "metadata": self.payload.get("metadata", {}),
        }
        if self.progress_url is not None:
            body["progress_url"] = self.progress_url
        return body

    def view(self) -> dict[str, Any]:
        """What a pull worker gets from `GET /tasks/next` (with the W3C trace context kept
        with the task, runtime/tracing.py, so the worker can continue the trace)."""
        view = {
            **self.executor_body(),
            "status": State.PROCESSING.value,
            "priority": self.priority.value,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "lease": self.entry,
        }
        for name in TRACE_FIELDS:
            if name in self.payload:
                view[name] = self.payload[name]
        return view


def iso_ms(value: bytes | str | None) -> str | None:
    """Render a stored epoch-milliseconds value as ISO-8601 UTC."""
    if not value:
        return None
    moment = datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decode_json(value: bytes | None) -> Any:
    return orjson.loads(value) if value else None
