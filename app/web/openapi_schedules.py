"""The OpenAPI paths of `/schedules` (web/schedules.py), assembled into the document by
web/openapi.py.

Imports: web.openapi_schemas.
"""

from __future__ import annotations

from typing import Any

from app.web.openapi_schemas import (
    BODY,
    GUARDED,
    TASK_IN,
    error_responses,
    json_content,
    operation,
)

NAME_PATTERN = r"^(?!\.+$)[A-Za-z0-9._-]{1,64}$"
NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the schedule's name; one no schedule can have (1-64 of A-Z a-z 0-9 . _ -, "
    "not only dots) is unknown: 404",
}
TASK = {
    **{k: v for k, v in TASK_IN.items() if k != "example"},
    "properties": {k: v for k, v in TASK_IN["properties"].items() if k != "eval_id"},
    "description": "a POST /tasks body without eval_id (each tick's is `<name>:<tick>`)",
    "example": {"code": "print('nightly')", "priority": "low"},
}
TIMEZONE = {
    "type": "string",
    "default": "UTC",
    "description": "IANA time zone of a cron expression (DST as Debian cron: docs/schedules.md)",
}
SCHEDULE_IN: dict[str, Any] = {
    "type": "object",
    "required": ["name", "task"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "cron": {
            "type": "string",
            "description": "5 fields: minute hour day-of-month month day-of-week (or `every`)",
        },
        "every": {
            "type": "integer",
            "minimum": 1,
            "maximum": 366 * 86400,
            "description": "seconds; ticks at the multiples of it since the Unix epoch",
        },
        "timezone": TIMEZONE,
        "task": TASK,
        "paused": {"type": "boolean", "default": False},
    },
    "example": {
        "name": "nightly-report",
        "cron": "30 2 * * *",
        "timezone": "Europe/Paris",
        "task": {"code": "print('report')"},
    },
}
TIME = {"type": ["string", "null"], "format": "date-time"}
SCHEDULE_OUT: dict[str, Any] = {
    "type": "object",
    "required": ["name", "timezone", "task", "paused", "next_run_at", "last_run_at"],
    "properties": {
        "name": {"type": "string"},
        "cron": {"type": "string"},
        "every": {"type": "integer"},
        "timezone": {"type": "string"},
        "task": {"type": "object"},
        "paused": {"type": "boolean"},
        "next_run_at": {**TIME, "description": "the next tick; null while paused"},
        "last_run_at": {**TIME, "description": "the last tick fired; null before the first"},
        "last_eval_id": {"type": ["string", "null"], "description": "its task: <name>:<tick>"},
    },
}
SCHEDULES = {
    "type": "object",
    "required": ["schedules"],
    "properties": {"schedules": {"type": "array", "items": SCHEDULE_OUT}},
}
DELETED = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "deleted": {"const": True}},
}


def schedule_paths() -> dict[str, dict[str, Any]]:
    """`/schedules` and `/schedules/{name}[/pause|/resume]`."""
    one = json_content(SCHEDULE_OUT)
    return {
        "/schedules": {
            "post": operation(
                "Create a cron schedule: one task per tick across all replicas",
                {201: json_content(SCHEDULE_OUT), **error_responses(*GUARDED, *BODY, 409)},
                SCHEDULE_IN,
            ),
            "get": operation(
                "List the schedules, by name",
                {200: json_content(SCHEDULES), **error_responses(*GUARDED)},
            ),
        },
        "/schedules/{name}": {
            "get": operation(
                "One schedule", {200: one, **error_responses(*GUARDED, 404)}, params=[NAME]
            ),
            "put": operation(
                "Replace a schedule's definition (its ticks start over from now; without "
                "`paused` it keeps its state)",
                {200: one, **error_responses(*GUARDED, *BODY, 404)},
                {**SCHEDULE_IN, "required": ["task"]},
                [NAME],
            ),
            "delete": operation(
                "Delete a schedule (tasks it made stay)",
                {200: json_content(DELETED), **error_responses(*GUARDED, 404)},
                params=[NAME],
            ),
        },
        "/schedules/{name}/pause": {
            "post": operation(
                "Pause a schedule: no tick fires until resumed",
                {200: one, **error_responses(*GUARDED, 404)},
                params=[NAME],
            )
        },
        "/schedules/{name}/resume": {
            "post": operation(
                "Resume a schedule from its next tick (ticks missed while paused do not fire)",
                {200: one, **error_responses(*GUARDED, 404)},
                params=[NAME],
            )
        },
    }
