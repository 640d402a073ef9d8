"""The OpenAPI 3.1 document of every route, and the offline /docs and /redoc pages.

The Swagger UI 5 and ReDoc assets come inlined from the `offapi` package: the pages load
nothing from other hosts. Every status a route can answer is declared (tests/test_fuzz.py
runs schemathesis over the document against a live service): 401 on every route behind
API_KEY, 503 on every route that needs Redis, 400/413/422 where a body or parameter is read.
Imports: nothing from app (http.py checks the spec covers its routes).
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
import yaml
from offapi import OpenAPITemplate

from app import __version__

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
            "once the task is completed, failed or cancelled; retried under NETWORK_RETRY_*, "
            "at-least-once. http/https with a host; a host outside CALLBACK_ALLOWED_HOSTS "
            "(when set) is refused with 422",
        },
    },
    "example": {"code": "print(6*7)", "priority": "high", "metadata": {"user": "ana"}},
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
            ]
        },
        "priority": {"enum": ["high", "default", "low"]},
        "position": {"type": "integer", "description": "queued only; 1 = next"},
        "attempts": {"type": "integer"},
        "created_at": {"type": ["string", "null"], "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "completed_at": {"type": ["string", "null"], "format": "date-time"},
        "result": {},
        "error": {"type": ["string", "null"]},
        "run_at": {"type": "string", "format": "date-time"},
        "queue": {"type": "string"},
        "depends_on": {"type": "array", "items": {"type": "string"}},
        "allow_failure": {"type": "boolean"},
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
    },
}
OBJECT = {"type": "object"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(
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


def _query(name: str, kind: str, description: str, **bounds: float | str) -> dict[str, Any]:
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


def _errors(*codes: int) -> dict[int, dict[str, Any]]:
    return {code: _json(ERROR, ERROR_MEANING[code]) for code in codes}


# The errors every guarded route that reads Redis can answer.
GUARDED = (401, 503)
BODY = (400, 413, 422)  # a JSON body read


def paths() -> dict[str, dict[str, Any]]:
    cancel = _op(
        "Cancel a task",
        {200: _json(OBJECT), **_errors(*GUARDED, 404, 409, 422)},
        params=[TASK_ID, _query("terminate", "boolean", "abort a running execution"), HINT_QUEUE],
    )
    return {
        "/tasks": {
            "post": _op(
                "Enqueue a task", {201: _json(ENQUEUED), **_errors(*GUARDED, *BODY, 409)}, TASK_IN
            ),
            "delete": _op(
                "Clear every task, queue and the DLQ", {200: _json(OBJECT), **_errors(*GUARDED)}
            ),
        },
        "/tasks/batch": {
            "post": _op(
                "Enqueue several tasks (atomic per task)",
                {201: _json(OBJECT), **_errors(*GUARDED, *BODY)},
                {"type": "object", "properties": {"tasks": {"type": "array", "items": TASK_IN}}},
            )
        },
        "/tasks/next": {
            "get": _op(
                "Take the next task (pull worker)",
                {
                    200: _json(DELIVERY),
                    204: {"description": "no task within wait"},
                    **_errors(*GUARDED, 404, 422),
                },
                params=[
                    _query("wait", "number", "long-poll seconds, 0-30", minimum=0, maximum=30),
                    IN_QUEUE,
                ],
            )
        },
        "/tasks/{eval_id}": {
            "get": _op(
                "Task status",
                {200: _json(TASK_OUT), **_errors(*GUARDED, 404, 422)},
                params=[TASK_ID, HINT_QUEUE],
            )
        },
        "/tasks/{eval_id}/complete": {
            "post": _op(
                "Report a result",
                {200: _json(OBJECT), **_errors(*GUARDED, *BODY, 404, 409)},
                {"type": "object", "properties": {"result": {}, "lease": {}, "attempt": {}}},
                [TASK_ID, HINT_QUEUE],
            )
        },
        "/tasks/{eval_id}/fail": {
            "post": _op(
                "Report a failure",
                {200: _json(OBJECT), **_errors(*GUARDED, *BODY, 404, 409)},
                {
                    "type": "object",
                    "properties": {
                        "error": {"type": "string"},
                        "retry": {"type": "boolean", "default": True},
                        "traceback": {"type": "string"},
                    },
                },
                [TASK_ID, HINT_QUEUE],
            )
        },
        "/tasks/{eval_id}/cancel": {"post": cancel},
        "/api/eval/{eval_id}/cancel": {"post": cancel},
        "/dlq": {
            "get": _op(
                "List dead letters, newest first",
                {200: _json(OBJECT), **_errors(*GUARDED, 404, 422)},
                params=[
                    _query("limit", "integer", "page size (default 50)", minimum=1, maximum=1000),
                    _query("offset", "integer", "skip the newest N", minimum=0, maximum=1_000_000),
                    IN_QUEUE,
                ],
            ),
            "delete": _op(
                "Purge dead letters",
                {200: _json(OBJECT), **_errors(*GUARDED, 404, 422)},
                params=[
                    _query(
                        "older_than_days", "number", "only those older", minimum=0, maximum=36500
                    ),
                    IN_QUEUE,
                ],
            ),
        },
        "/dlq/{eval_id}/retry": {
            "post": _op(
                "Re-queue a dead letter",
                {200: _json(OBJECT), **_errors(*GUARDED, 404, 409, 422)},
                params=[TASK_ID, IN_QUEUE],
            )
        },
        "/dlq/{eval_id}": {
            "delete": _op(
                "Delete a dead letter",
                {200: _json(OBJECT), **_errors(*GUARDED, 404, 422)},
                params=[TASK_ID, IN_QUEUE],
            )
        },
        "/health": {
            "get": _op(
                "Health: Redis reachable and taking writes (503 `redis`: `unavailable` or "
                "`refusing writes`)",
                {200: _json(OBJECT), **_errors(503)},
            )
        },
        "/livez": {"get": _op("Liveness: 200 until the process exits", {200: _json(OBJECT)})},
        "/readyz": {
            "get": _op(
                "Readiness: 503 while draining after SIGTERM or while Redis is unreachable",
                {200: _json(OBJECT), **_errors(503)},
            )
        },
        "/status": {
            "get": _op("Counts, consumers, executors", {200: _json(OBJECT), **_errors(*GUARDED)})
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (text format 0.0.4)",
                {
                    200: {
                        "description": "counters and histograms of this process, gauges "
                        "read from Redis now (left out, with taskstream_redis_up 0, when "
                        "Redis is unreachable)",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401),
                },
            )
        },
        "/openapi.json": {"get": _op("This document (JSON)", {200: _json(OBJECT)})},
        "/openapi.yaml": {"get": _op("This document (YAML)", {200: {"description": "YAML"}})},
        "/docs": {"get": _op("Swagger UI", {200: {"description": "HTML"}})},
        "/redoc": {"get": _op("ReDoc", {200: {"description": "HTML"}})},
        "/events": {
            "get": _op(
                "Every state change, live, as server-sent events (Last-Event-ID resumes)",
                {
                    200: {
                        "description": "text/event-stream: `id` = events stream id, `event` ="
                        " the new state, `data` = {eval_id, state, attempt, queue, at}",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(*GUARDED, 404, 422),
                },
                params=[
                    _query(
                        "last_event_id",
                        "string",
                        "resume after this id (or the header); 0 = everything still kept",
                    ),
                    IN_QUEUE,
                ],
            )
        },
        "/queues/{queue}/pause": {
            "post": _op(
                "Pause a queue: nothing is handed out (consumers, GET /tasks/next) until resumed",
                {200: _json(OBJECT), **_errors(*GUARDED, 404, 422)},
                params=[QUEUE],
            )
        },
        "/queues/{queue}/resume": {
            "post": _op(
                "Resume a paused queue",
                {200: _json(OBJECT), **_errors(*GUARDED, 404, 422)},
                params=[QUEUE],
            )
        },
        "/stats": {
            "get": _op(
                "State changes per minute (the dashboard's plots)",
                {200: _json(OBJECT), **_errors(*GUARDED, 404, 422)},
                params=[
                    _query("minutes", "integer", "1-120, default 60", minimum=1, maximum=120),
                    _query("queue", "string", "default: the legacy queue; or `svc`, `svc/sink`"),
                ],
            )
        },
        "/dashboard": {
            "get": _op("Live dashboard (HTML, no build step)", {200: {"description": "HTML"}})
        },
        "/api/predict/{service}": eas_paths(sink=False),
        "/api/predict/{service}/sink": eas_paths(sink=True),
    }


SERVICE = {
    "name": "service",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^(?!\.+$)[A-Za-z0-9._-]{1,64}$"},
    "description": "1-64 of A-Z a-z 0-9 . _ -, not only dots (percent-decoded); else 422",
}
AUTH = {
    "name": "Authorization",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "pattern": "[^ ]"},
    "description": "an EAS_TOKEN, raw or as `Bearer TOKEN`",
}
FRAMES: dict[str, Any] = {
    "description": "DataFrameListProto: protobuf when `Accept: application/vnd.google.protobuf`, "
    "else its proto3 JSON form (data base64, index a string)",
    "content": {
        "application/vnd.google.protobuf": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {
            "schema": OBJECT,
            "example": {"index": [{"index": "1", "tags": {"requestId": "1"}, "data": "aGk="}]},
        },
        "*/*": {"schema": {"type": "string", "format": "binary"}},  # _raw_: as it was put
    },
}
SINK_STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "request_id": {"type": "string"},
        "status": {"enum": ["PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE"]},
        "service_name": {"type": "string"},
        "message": {"type": "string"},
        "result": {"type": "object"},
        "error_info": {"type": "string"},
    },
    "example": {
        "request_id": "7",
        "status": "SUCCESS",
        "service_name": "svc1",
        "message": "completed at 2026-11-23T21:00:00.000Z",
        "result": {"status": "success", "target_status_code": 200, "body": "{...}"},
    },
}


# PAI-EAS routes: bad parameters are 400, as the real service answers; a bad service name
# is 404 or 422 (CONTRACT, "Reliability details").
EAS_ERRORS = (400, 401, 404, 422, 503)


def eas_paths(sink: bool) -> dict[str, Any]:
    """The PAI-EAS queue protocol (and, on the sink, the imitation's JSON status)."""
    where = "sink" if sink else "input queue"
    read_params = [
        SERVICE,
        AUTH,
        _query("_index_", "integer", "first index to read (default 0)", minimum=0),
        _query("_length_", "integer", "items to read, 1-1000 (default 1)", minimum=1, maximum=1000),
        _query("_timeout_", "string", "long-poll, e.g. 5s or 500ms (at most 60 s)"),
        _query("_auto_delete_", "boolean", "delete what is read (default true)"),
        _query("_raw_", "boolean", "answer the first item's body as it was put"),
        _query("requestId", "string", "the item with this request id"),
        _query("_attrs_", "boolean", "answer the queue's attributes instead"),
        _query(
            "_watch_",
            "boolean",
            "WebSocket only: subscribe (_window_, _auto_commit_, "
            "_index_only_; X-EAS-QueueService-Redis-Uid/-Gid name the consumer)",
        ),
    ]
    if sink:
        read_params.append(_query("request_id", "string", "imitation: JSON status of a request"))
    get_responses: dict[int, dict[str, Any]] = {
        200: FRAMES,
        204: {"description": "nothing"},
        **_errors(*EAS_ERRORS),
    }
    if sink:
        get_responses[202] = _json(SINK_STATUS, "imitation: not final yet")
        get_responses[404] = _json(ERROR, "unknown service name, or imitation: unknown request_id")
    indexes = _query("_indexes_", "string", "comma-separated indexes")
    put_params = [
        SERVICE,
        AUTH,
        _query("tag", "string", "any parameter not starting with _ is a tag"),
    ]
    if not sink:
        put_params.append(_query("_priority_", "boolean", "queue ahead of normal requests"))
    return {
        "post": {
            **_op(
                f"Put an item into the {where} (index = request id)",
                {
                    200: {
                        "description": "the index; header X-Eas-Queueservice-Request-Id",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(*EAS_ERRORS, 413),
                },
                params=put_params,
            ),
            "requestBody": {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
        },
        "get": _op(f"Read the {where} by index or request id", get_responses, params=read_params),
        "put": _op(
            f"Commit (acknowledge) items of the {where}",
            {200: _json(OBJECT), **_errors(*EAS_ERRORS)},
            params=[SERVICE, AUTH, indexes],
        ),
        "delete": _op(
            f"Delete items of the {where}, or truncate below _index_ with _trunc_=true",
            {200: _json(OBJECT), **_errors(*EAS_ERRORS)},
            params=[
                SERVICE,
                AUTH,
                indexes,
                _query("_index_", "integer", "with _trunc_", minimum=0),
                _query("_trunc_", "boolean", "delete every item below _index_"),
            ],
        ),
    }


@functools.cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskstream",
            "version": __version__,
            "description": "Durable task queue on Redis Streams.",
        },
        "paths": paths(),
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}},
                    "example": {"error": "no such task: a1"},
                }
            },
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{}, {"apiKey": []}, {"bearer": []}],
    }


@functools.cache
def as_json() -> bytes:
    return orjson.dumps(document())


@functools.cache
def as_yaml() -> bytes:
    return yaml.safe_dump(document(), sort_keys=False).encode()


@functools.cache
def swagger_page() -> str:
    return str(OpenAPITemplate.SWAGGER.value.format(spec_url="/openapi.json"))


@functools.cache
def redoc_page() -> str:
    return str(OpenAPITemplate.REDOC.value.format(spec_url="/openapi.json"))
