"""The OpenAPI document's building blocks: shared schemas, parameters, error answers.

Imports: nothing from app (web/openapi.py assembles the document).
"""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
EVAL_ID_PATTERN = "^[A-Za-z0-9._:-]{1,128}$"
QUEUE_PATTERN = "^[A-Za-z0-9._-]{1,64}$"
TASK_ID = {
    "name": "eval_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": EVAL_ID_PATTERN},
}
QUEUE = {
    "name": "queue",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": QUEUE_PATTERN},
    "description": "QUEUE_NAME or a named queue; another name: 404, an impossible one: 422",
}
HINT_QUEUE = {
    "name": "queue",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "pattern": QUEUE_PATTERN},
    "description": "optional: the task's named queue (as GET /tasks/next answered it); "
    "saves a round trip, the task is found without it",
}
IN_QUEUE = {
    "name": "queue",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "pattern": QUEUE_PATTERN},
    "description": "a named queue (default: QUEUE_NAME); one never used: 404",
}

TASK_IN: dict[str, Any] = {
    "type": "object",
    "required": ["code"],
    "properties": {
        "eval_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        "code": {"type": "string", "minLength": 1},
        "language": {"type": "string", "default": "python"},
        "priority": {
            "oneOf": [{"type": "boolean"}, {"enum": ["high", "default", "low"]}],
            "default": "default",
        },
        "timeout": {"type": "number", "description": "seconds; default TASK_TIMEOUT"},
        "max_retries": {"type": "integer", "minimum": 0},
        "retry_intervals": {
            "type": "array",
            "items": {"type": "number", "minimum": 0},
            "description": "seconds before retry 1, 2, …; the last repeats (RQ's Retry)",
        },
        "delay": {"type": "number", "description": "seconds from now"},
        "run_at": {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]},
        "metadata": {"type": "object"},
        "queue": {
            "type": "string",
            "pattern": "^[A-Za-z0-9._-]{1,64}$",
            "description": "a named queue (default: QUEUE_NAME): its own streams, counts, DLQ "
            "and executor pool (QUEUE_EXECUTORS); eval_ids are unique across queues",
        },
        "depends_on": {
            "type": "array",
            "items": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
            "minItems": 1,
            "maxItems": 100,
            "uniqueItems": True,
            "description": "eval_ids of existing tasks that must complete first; the task is"
            " `deferred` until then, and cancelled when one fails or is cancelled. Unknown"
            " parents or the task's own eval_id: 422",
        },
        "allow_failure": {
            "type": "boolean",
            "default": False,
            "description": "run once every parent finished, whatever its outcome",
        },
        "callback_url": {
            "type": "string",
            "format": "uri",
            "maxLength": 2048,
            "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
            "description": "POSTed {eval_id, status, result | error, attempts, completed_at} "
            "once the task is completed, failed, cancelled or expired; retried under "
            "NETWORK_RETRY_*, "
            "at-least-once. http/https with a host; a host outside CALLBACK_ALLOWED_HOSTS "
            "(when set) is refused with 422",
        },
        "tenant": {
            "type": "string",
            "pattern": "^[A-Za-z0-9._:-]{1,64}$",
            "default": "default",
            "description": "fair share: within one priority, tenants with waiting tasks share "
            "the free slots by weight (TENANT_WEIGHTS, default 1), FIFO within a tenant "
            "(docs/flow-control.md)",
        },
        "traceparent": {
            "type": "string",
            "description": "this task's W3C trace context, instead of the request's "
            "`traceparent` header (a batch item's own, say); an invalid one is ignored",
        },
        "tracestate": {"type": "string", "description": "goes with this task's traceparent"},
        "dedup_key": {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "description": "deduplication within the queue: while the key's holder answers "
            "(see `dedup`), a request makes no task and is answered 200 with the holder",
        },
        "dedup": {
            "enum": ["active", "throttle", "debounce"],
            "default": "active",
            "description": "active: while the holder is queued, scheduled, retrying, deferred "
            "or processing; throttle: for dedup_ttl s after the holder was accepted; "
            "debounce: the scheduled holder takes the newest payload and runs dedup_ttl s "
            "after the newest request (no delay, run_at or depends_on with it)",
        },
        "dedup_ttl": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": "seconds; required with throttle and debounce, ignored with active",
        },
        "expires": {
            "type": "number",
            "exclusiveMinimum": 0,
            "description": "seconds from now (the Redis clock): not started by then, the task "
            "is `expired` and never runs; not with expires_at",
        },
        "expires_at": {
            "oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
            "description": "epoch seconds or ISO-8601; as `expires`, at a given time",
        },
    },
    "example": {"code": "print(6*7)", "priority": "high", "metadata": {"user": "ana"}},
}
DEDUPLICATED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "eval_id": {"type": "string", "description": "the task holding the dedup_key"},
        "status": {
            "type": ["string", "null"],
            "description": "its state (null once its record expired, throttle only)",
        },
        "deduplicated": {"const": True},
    },
    "example": {"eval_id": "a1", "status": "queued", "deduplicated": True},
}
ENQUEUED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "eval_id": {"type": "string"},
        "status": {"enum": ["queued", "scheduled", "deferred", "cancelled"]},
        "priority": {"enum": ["high", "default", "low"]},
        "position": {"type": "integer"},
        "error": {
            "type": "string",
            "description": "cancelled: a parent already failed or was cancelled",
        },
    },
    "example": {"eval_id": "a1", "status": "queued", "priority": "high", "position": 1},
}
TASK_OUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "eval_id": {"type": "string"},
        "status": {
            "enum": [
                "queued",
                "scheduled",
                "deferred",
                "processing",
                "retrying",
                "completed",
                "failed",
                "cancelled",
                "expired",
            ]
        },
        "priority": {"enum": ["high", "default", "low"]},
        "position": {
            "type": "integer",
            "description": "queued only; 1 = next; under fair share the expected start order "
            "(docs/flow-control.md)",
        },
        "tenant": {"type": "string", "description": "`default` when none was given"},
        "attempts": {"type": "integer"},
        "created_at": {"type": ["string", "null"], "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "completed_at": {"type": ["string", "null"], "format": "date-time"},
        "result": {},
        "error": {"type": ["string", "null"]},
        "run_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time"},
        "queue": {"type": "string"},
        "depends_on": {"type": "array", "items": {"type": "string"}},
        "allow_failure": {"type": "boolean"},
        "progress": {
            "type": ["object", "null"],
            "description": "the last report of POST /tasks/{eval_id}/progress (null: none)",
            "properties": {
                "progress": {"type": "number", "minimum": 0, "maximum": 100},
                "message": {"type": "string"},
                "data": {},
                "attempt": {"type": "integer", "description": "the attempt that reported"},
                "at": {"type": "string", "format": "date-time"},
            },
        },
        "eta": {
            "type": "string",
            "format": "date-time",
            "description": "queued only, once the queue has a pace: the estimated start",
        },
        "worker": {"type": "string", "description": "GET /tasks?state=processing: holder"},
        "elapsed_ms": {"type": "integer", "description": "GET /tasks?state=processing"},
        "due_at": {"type": "string", "format": "date-time", "description": "scheduled/retrying"},
        "waiting_on": {"type": "integer", "description": "deferred: unfinished parents"},
        "metadata": {"type": "object", "description": "in listings, while the task waits or runs"},
        "callback": {
            "type": "object",
            "description": "finished tasks with a callback only: pending until every target "
            "was delivered (2xx) or given up on",
            "properties": {
                "status": {"enum": ["pending", "delivered", "failed", "skipped"]},
                "attempts": {"type": "integer", "description": "POSTs to the busiest target"},
                "error": {"type": "string", "description": "failed targets and why"},
            },
            "required": ["status"],
        },
    },
}
DELIVERY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "eval_id": {"type": "string"},
        "code": {"type": "string"},
        "language": {"type": "string"},
        "attempt": {"type": "integer"},
        "metadata": {"type": "object"},
        "status": {"const": "processing"},
        "priority": {"type": "string"},
        "timeout": {"type": ["number", "null"]},
        "lease": {"type": "string", "description": "send back with complete/fail to fence"},
        "progress_url": {"type": "string", "description": "POST progress reports here"},
        "lease_timeout": {
            "type": "number",
            "description": "seconds the lease lasts unless renewed (TASK_TIMEOUT)",
        },
        "traceparent": {"type": "string", "description": "the W3C trace context kept with it"},
        "tracestate": {"type": "string"},
    },
}
OBJECT = {"type": "object"}


def json_content(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def operation(
    summary: str,
    responses: dict[int, dict[str, Any]],
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {str(code): spec for code, spec in responses.items()},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


# W3C trace context of an enqueue (docs/tracing.md): kept with the task, sent to executors.
TRACE_HEADERS: list[dict[str, Any]] = [
    {
        "name": "traceparent",
        "in": "header",
        "schema": {"type": "string"},
        "description": "W3C trace context kept with the task and sent with every executor "
        "request or forward; absent or invalid: a new trace (never an error)",
    },
    {"name": "tracestate", "in": "header", "schema": {"type": "string"}},
]


def query_param(name: str, kind: str, description: str, **bounds: object) -> dict[str, Any]:
    """A query parameter; `bounds` (minimum, maximum, pattern, …) as the parsers check them."""
    schema: dict[str, Any] = {"type": kind, **bounds}
    return {"name": name, "in": "query", "schema": schema, "description": description}


ERROR_MEANING = {
    400: "malformed JSON, or a bad PAI-EAS parameter",
    401: "missing or wrong API key (EAS_TOKEN on /api/predict)",
    404: "unknown task, queue or id",
    409: "the task's state does not allow it, or a duplicate eval_id",
    413: "body over MAX_BODY_BYTES",
    422: "invalid field, path or query parameter",
    503: "Redis unreachable, or refusing writes (out of memory, NOREPLICAS, READONLY, "
    "MISCONF): the message names the cause",
}


def error_responses(*codes: int) -> dict[int, dict[str, Any]]:
    return {code: json_content(ERROR, ERROR_MEANING[code]) for code in codes}


# The errors every guarded route that reads Redis can answer.
GUARDED = (401, 503)
BODY = (400, 413, 422)  # a JSON body read


# /stats and /stats/history read PAI-EAS queues too.
SERVICE_QUEUE = query_param(
    "queue", "string", "default: the legacy queue; a named queue; or `svc`, `svc/sink`"
)


# --- progress and listing (issue 15) ----------------------------------------------------------

STATES = [
    "queued",
    "scheduled",
    "deferred",
    "processing",
    "retrying",
    "completed",
    "failed",
    "cancelled",
]
PROGRESS_IN: dict[str, Any] = {
    "type": "object",
    "required": ["progress"],
    "properties": {
        "progress": {"type": "number", "minimum": 0, "maximum": 100},
        "message": {"type": "string", "maxLength": 1000},
        "data": {"description": "any JSON; the report encodes to at most 16 KiB"},
        "attempt": {"type": "integer", "minimum": 1, "description": "fences like complete"},
        "lease": {
            "type": "string",
            "description": "from GET /tasks/next: fences, and renews the lease (TASK_TIMEOUT)",
        },
    },
    "example": {"progress": 40, "message": "4 of 10 files", "attempt": 1},
}
TASK_PAGE: dict[str, Any] = {
    "type": "object",
    "required": ["tasks", "next_cursor"],
    "properties": {
        "tasks": {"type": "array", "items": TASK_OUT},
        "next_cursor": {
            "type": ["string", "null"],
            "description": "give as `cursor` for the next page; null: the end",
        },
    },
}
LIST_PARAMS: list[dict[str, Any]] = [
    {
        "name": "state",
        "in": "query",
        "required": True,
        "schema": {"enum": STATES},
        "description": "queued in position order; processing by priority; scheduled and "
        "retrying by due time; deferred by creation; finished ones newest first",
    },
    IN_QUEUE,
    query_param("tenant", "string", "the task's tenant (absent: default)", maxLength=64),
    query_param("q", "string", "an eval_id prefix or a metadata value", maxLength=256),
    query_param("limit", "integer", "page size, default 50", minimum=1, maximum=500),
    query_param("cursor", "string", "the next_cursor of the previous page"),
]
