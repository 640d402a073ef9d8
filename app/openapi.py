"""The OpenAPI 3.1 document of every route, and the offline /docs and /redoc pages.

The Swagger UI 5 and ReDoc assets come inlined from the `offapi` package: the pages load
nothing from other hosts. Imports: nothing from app (http.py checks the spec covers its routes).
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
import yaml
from offapi import OpenAPITemplate

from app import __version__

ERROR = {"$ref": "#/components/schemas/Error"}
TASK_ID = {"name": "eval_id", "in": "path", "required": True, "schema": {"type": "string"}}

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
        "delay": {"type": "number", "description": "seconds from now"},
        "run_at": {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]},
        "metadata": {"type": "object"},
    },
    "example": {"code": "print(6*7)", "priority": "high", "metadata": {"user": "ana"}},
}
ENQUEUED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "eval_id": {"type": "string"},
        "status": {"enum": ["queued", "scheduled"]},
        "priority": {"enum": ["high", "default", "low"]},
        "position": {"type": "integer"},
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


def _query(name: str, kind: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {"type": kind}, "description": description}


def _errors(*codes: int) -> dict[int, dict[str, Any]]:
    return {code: _json(ERROR, "error") for code in codes}


def paths() -> dict[str, dict[str, Any]]:
    cancel = _op(
        "Cancel a task",
        {200: _json(OBJECT), **_errors(404, 409, 422)},
        params=[TASK_ID, _query("terminate", "boolean", "abort a running execution")],
    )
    return {
        "/tasks": {
            "post": _op(
                "Enqueue a task", {201: _json(ENQUEUED), **_errors(400, 409, 413, 422)}, TASK_IN
            ),
            "delete": _op("Clear every task, queue and the DLQ", {200: _json(OBJECT)}),
        },
        "/tasks/batch": {
            "post": _op(
                "Enqueue several tasks (atomic per task)",
                {201: _json(OBJECT), **_errors(400, 413, 422)},
                {"type": "object", "properties": {"tasks": {"type": "array", "items": TASK_IN}}},
            )
        },
        "/tasks/next": {
            "get": _op(
                "Take the next task (pull worker)",
                {200: _json(DELIVERY), 204: {"description": "no task within wait"}},
                params=[_query("wait", "number", "long-poll seconds, 0-30")],
            )
        },
        "/tasks/{eval_id}": {
            "get": _op("Task status", {200: _json(TASK_OUT), **_errors(404)}, params=[TASK_ID])
        },
        "/tasks/{eval_id}/complete": {
            "post": _op(
                "Report a result",
                {200: _json(OBJECT), **_errors(404, 409)},
                {"type": "object", "properties": {"result": {}, "lease": {}, "attempt": {}}},
                [TASK_ID],
            )
        },
        "/tasks/{eval_id}/fail": {
            "post": _op(
                "Report a failure",
                {200: _json(OBJECT), **_errors(404, 409)},
                {
                    "type": "object",
                    "properties": {
                        "error": {"type": "string"},
                        "retry": {"type": "boolean", "default": True},
                        "traceback": {"type": "string"},
                    },
                },
                [TASK_ID],
            )
        },
        "/tasks/{eval_id}/cancel": {"post": cancel},
        "/api/eval/{eval_id}/cancel": {"post": cancel},
        "/dlq": {
            "get": _op(
                "List dead letters, newest first",
                {200: _json(OBJECT)},
                params=[_query("limit", "integer", ""), _query("offset", "integer", "")],
            ),
            "delete": _op(
                "Purge dead letters",
                {200: _json(OBJECT)},
                params=[_query("older_than_days", "number", "only those older")],
            ),
        },
        "/dlq/{eval_id}/retry": {
            "post": _op(
                "Re-queue a dead letter",
                {200: _json(OBJECT), **_errors(404, 409)},
                params=[TASK_ID],
            )
        },
        "/dlq/{eval_id}": {
            "delete": _op(
                "Delete a dead letter", {200: _json(OBJECT), **_errors(404)}, params=[TASK_ID]
            )
        },
        "/health": {"get": _op("Health", {200: _json(OBJECT), **_errors(503)})},
        "/livez": {"get": _op("Liveness", {200: _json(OBJECT)})},
        "/readyz": {
            "get": _op("Readiness (Redis reachable)", {200: _json(OBJECT), **_errors(503)})
        },
        "/status": {"get": _op("Counts, consumers, executors", {200: _json(OBJECT)})},
        "/openapi.json": {"get": _op("This document (JSON)", {200: _json(OBJECT)})},
        "/openapi.yaml": {"get": _op("This document (YAML)", {200: {"description": "YAML"}})},
        "/docs": {"get": _op("Swagger UI", {200: {"description": "HTML"}})},
        "/redoc": {"get": _op("ReDoc", {200: {"description": "HTML"}})},
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
