"""The OpenAPI 3.1 document of every route, and the offline /docs and /redoc pages.

The Swagger UI 5 and ReDoc assets come inlined from the `offapi` package: the pages load
nothing from other hosts. Every status a route can answer is declared (tests/web/test_fuzz.py
runs schemathesis over the document against a live service): 401 on every route behind
API_KEY, 503 on every route that needs Redis, 400/413/422 where a body or parameter is read.
The building blocks (schemas, parameters, errors) are in web/openapi_schemas.py.
Imports: web.openapi_schemas, web.openapi_pages, web.openapi_schedules (and offapi, yaml;
web/app.py checks the spec covers its routes).
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
import yaml
from offapi import OpenAPITemplate

from app import __version__
from app.web import openapi_pages
from app.web.openapi_schedules import schedule_paths
from app.web.openapi_schemas import (
    BODY,
    DEDUPLICATED,
    DELIVERY,
    ENQUEUED,
    ERROR,
    GUARDED,
    HINT_QUEUE,
    IN_QUEUE,
    LIST_PARAMS,
    OBJECT,
    PROGRESS_IN,
    QUEUE,
    SERVICE_QUEUE,
    TASK_ID,
    TASK_IN,
    TASK_OUT,
    TASK_PAGE,
    TRACE_HEADERS,
    error_responses,
    json_content,
    operation,
    query_param,
)


def paths() -> dict[str, dict[str, Any]]:
    cancel = operation(
        "Cancel a task",
        {200: json_content(OBJECT), **error_responses(*GUARDED, 404, 409, 422)},
        params=[
            TASK_ID,
            query_param("terminate", "boolean", "abort a running execution"),
            HINT_QUEUE,
        ],
    )
    return {
        "/tasks": {
            "post": operation(
                "Enqueue a task",
                {
                    200: json_content(DEDUPLICATED, "deduplicated: no task made"),
                    201: json_content(ENQUEUED),
                    **error_responses(*GUARDED, *BODY, 409),
                },
                TASK_IN,
                TRACE_HEADERS,
            ),
            "delete": operation(
                "Clear every task, queue and the DLQ",
                {200: json_content(OBJECT), **error_responses(*GUARDED)},
            ),
            "get": operation(
                "List the tasks in a state, a page at a time (docs/api.md: each state's "
                "order and page cost)",
                {200: json_content(TASK_PAGE), **error_responses(*GUARDED, 404, 422)},
                params=LIST_PARAMS,
            ),
        },
        "/tasks/batch": {
            "post": operation(
                "Enqueue several tasks (atomic per task)",
                {201: json_content(OBJECT), **error_responses(*GUARDED, *BODY)},
                {"type": "object", "properties": {"tasks": {"type": "array", "items": TASK_IN}}},
                TRACE_HEADERS,
            )
        },
        "/tasks/next": {
            "get": operation(
                "Take the next task (pull worker)",
                {
                    200: json_content(DELIVERY),
                    204: {"description": "no task within wait"},
                    **error_responses(*GUARDED, 404, 422),
                },
                params=[
                    query_param("wait", "number", "long-poll seconds, 0-30", minimum=0, maximum=30),
                    IN_QUEUE,
                ],
            )
        },
        "/tasks/{eval_id}": {
            "get": operation(
                "Task status",
                {200: json_content(TASK_OUT), **error_responses(*GUARDED, 404, 422)},
                params=[TASK_ID, HINT_QUEUE],
            )
        },
        "/tasks/{eval_id}/complete": {
            "post": operation(
                "Report a result",
                {200: json_content(OBJECT), **error_responses(*GUARDED, *BODY, 404, 409)},
                {"type": "object", "properties": {"result": {}, "lease": {}, "attempt": {}}},
                [TASK_ID, HINT_QUEUE],
            )
        },
        "/tasks/{eval_id}/fail": {
            "post": operation(
                "Report a failure",
                {200: json_content(OBJECT), **error_responses(*GUARDED, *BODY, 404, 409)},
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
        "/tasks/{eval_id}/progress": {
            "post": operation(
                "Report the progress of a running task (fenced like complete)",
                {200: json_content(OBJECT), **error_responses(*GUARDED, *BODY, 404, 409)},
                PROGRESS_IN,
                [TASK_ID, HINT_QUEUE],
            )
        },
        "/tasks/{eval_id}/renew": {
            "post": operation(
                "Keep a pulled task's lease (TASK_TIMEOUT s from now again)",
                {200: json_content(OBJECT), **error_responses(*GUARDED, *BODY, 404, 409)},
                {
                    "type": "object",
                    "required": ["lease", "attempt"],
                    "properties": {"lease": {"type": "string"}, "attempt": {"type": "integer"}},
                },
                [TASK_ID, HINT_QUEUE],
            )
        },
        "/tasks/{eval_id}/cancel": {"post": cancel},
        "/api/eval/{eval_id}/cancel": {"post": cancel},
        "/dlq": {
            "get": operation(
                "List dead letters, newest first",
                {200: json_content(OBJECT), **error_responses(*GUARDED, 404, 422)},
                params=[
                    query_param(
                        "limit", "integer", "page size (default 50)", minimum=1, maximum=1000
                    ),
                    query_param(
                        "offset", "integer", "skip the newest N", minimum=0, maximum=1_000_000
                    ),
                    IN_QUEUE,
                ],
            ),
            "delete": operation(
                "Purge dead letters",
                {200: json_content(OBJECT), **error_responses(*GUARDED, 404, 422)},
                params=[
                    query_param(
                        "older_than_days", "number", "only those older", minimum=0, maximum=36500
                    ),
                    IN_QUEUE,
                ],
            ),
        },
        "/dlq/{eval_id}/retry": {
            "post": operation(
                "Re-queue a dead letter",
                {200: json_content(OBJECT), **error_responses(*GUARDED, 404, 409, 422)},
                params=[TASK_ID, IN_QUEUE],
            )
        },
        "/dlq/{eval_id}": {
            "delete": operation(
                "Delete a dead letter",
                {200: json_content(OBJECT), **error_responses(*GUARDED, 404, 422)},
                params=[TASK_ID, IN_QUEUE],
            )
        },
        "/health": {
            "get": operation(
                "Health: Redis reachable and taking writes (503 `redis`: `unavailable` or "
                "`refusing writes`)",
                {200: json_content(OBJECT), **error_responses(503)},
            )
        },
        "/livez": {
            "get": operation("Liveness: 200 until the process exits", {200: json_content(OBJECT)})
        },
        "/readyz": {
            "get": operation(
                "Readiness: 503 while draining after SIGTERM or while Redis is unreachable",
                {200: json_content(OBJECT), **error_responses(503)},
            )
        },
        "/status": {
            "get": operation(
                "Counts, consumers, executors",
                {200: json_content(OBJECT), **error_responses(*GUARDED)},
            )
        },
        "/metrics": {
            "get": operation(
                "Prometheus metrics (text format 0.0.4)",
                {
                    200: {
                        "description": "counters and histograms of this process, gauges "
                        "read from Redis now (left out, with taskstream_redis_up 0, when "
                        "Redis is unreachable)",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **error_responses(401),
                },
            )
        },
        "/openapi.json": {"get": operation("This document (JSON)", {200: json_content(OBJECT)})},
        "/openapi.yaml": {"get": operation("This document (YAML)", {200: {"description": "YAML"}})},
        "/docs": {"get": operation("Swagger UI", {200: {"description": "HTML"}})},
        "/redoc": {"get": operation("ReDoc", {200: {"description": "HTML"}})},
        "/events": {
            "get": operation(
                "Every state change, live, as server-sent events (Last-Event-ID resumes)",
                {
                    200: {
                        "description": "text/event-stream: `id` = events stream id, `event` ="
                        " the new state, `data` = {eval_id, state, attempt, queue, at}",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **error_responses(*GUARDED, 404, 422),
                },
                params=[
                    query_param(
                        "last_event_id",
                        "string",
                        "resume after this id (or the header); 0 = everything still kept",
                    ),
                    IN_QUEUE,
                ],
            )
        },
        "/queues/{queue}/pause": {
            "post": operation(
                "Pause a queue: nothing is handed out (consumers, GET /tasks/next) until resumed",
                {200: json_content(OBJECT), **error_responses(*GUARDED, 404, 422)},
                params=[QUEUE],
            )
        },
        "/queues/{queue}/resume": {
            "post": operation(
                "Resume a paused queue",
                {200: json_content(OBJECT), **error_responses(*GUARDED, 404, 422)},
                params=[QUEUE],
            )
        },
        "/stats": {
            "get": operation(
                "State changes per minute (the dashboard's plots)",
                {200: json_content(OBJECT), **error_responses(*GUARDED, 404, 422)},
                params=[
                    query_param(
                        "minutes", "integer", "1-2880, default 60", minimum=1, maximum=2880
                    ),
                    SERVICE_QUEUE,
                ],
            )
        },
        "/dashboard": {
            "get": operation("Live dashboard (HTML, no build step)", {200: {"description": "HTML"}})
        },
        **openapi_pages.paths(),
        "/api/predict/{service}": eas_paths(sink=False),
        "/api/predict/{service}/sink": eas_paths(sink=True),
        **schedule_paths(),
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
        query_param("_index_", "integer", "first index to read (default 0)", minimum=0),
        query_param(
            "_length_", "integer", "items to read, 1-1000 (default 1)", minimum=1, maximum=1000
        ),
        query_param("_timeout_", "string", "long-poll, e.g. 5s or 500ms (at most 60 s)"),
        query_param("_auto_delete_", "boolean", "delete what is read (default true)"),
        query_param("_raw_", "boolean", "answer the first item's body as it was put"),
        query_param("requestId", "string", "the item with this request id"),
        query_param("_attrs_", "boolean", "answer the queue's attributes instead"),
        query_param(
            "_watch_",
            "boolean",
            "WebSocket only: subscribe (_window_, _auto_commit_, "
            "_index_only_; X-EAS-QueueService-Redis-Uid/-Gid name the consumer)",
        ),
    ]
    if sink:
        read_params.append(
            query_param("request_id", "string", "imitation: JSON status of a request")
        )
    get_responses: dict[int, dict[str, Any]] = {
        200: FRAMES,
        204: {"description": "nothing"},
        **error_responses(*EAS_ERRORS),
    }
    if sink:
        get_responses[202] = json_content(SINK_STATUS, "imitation: not final yet")
        get_responses[404] = json_content(
            ERROR, "unknown service name, or imitation: unknown request_id"
        )
    indexes = query_param("_indexes_", "string", "comma-separated indexes")
    put_params = [
        SERVICE,
        AUTH,
        query_param("tag", "string", "any parameter not starting with _ is a tag"),
        *TRACE_HEADERS,
    ]
    if not sink:
        put_params.append(query_param("_priority_", "boolean", "queue ahead of normal requests"))
    return {
        "post": {
            **operation(
                f"Put an item into the {where} (index = request id)",
                {
                    200: {
                        "description": "the index; header X-Eas-Queueservice-Request-Id",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **error_responses(*EAS_ERRORS, 413),
                },
                params=put_params,
            ),
            "requestBody": {"content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
        },
        "get": operation(
            f"Read the {where} by index or request id", get_responses, params=read_params
        ),
        "put": operation(
            f"Commit (acknowledge) items of the {where}",
            {200: json_content(OBJECT), **error_responses(*EAS_ERRORS)},
            params=[SERVICE, AUTH, indexes],
        ),
        "delete": operation(
            f"Delete items of the {where}, or truncate below _index_ with _trunc_=true",
            {200: json_content(OBJECT), **error_responses(*EAS_ERRORS)},
            params=[
                SERVICE,
                AUTH,
                indexes,
                query_param("_index_", "integer", "with _trunc_", minimum=0),
                query_param("_trunc_", "boolean", "delete every item below _index_"),
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
