"""The OpenAPI paths of the dashboard's data and pages: the history, a task's detail (the
task page), and the browser's HTML pages. Kept apart from web/openapi.py, which merges them.

Imports: web.openapi_schemas.
"""

from __future__ import annotations

from typing import Any

from app.web.openapi_schemas import (
    GUARDED,
    SERVICE_QUEUE,
    TASK_ID,
    error_responses,
    json_content,
    operation,
    query_param,
)

HISTORY: dict[str, Any] = {
    "type": "object",
    "required": ["queue", "resolution", "step", "points"],
    "properties": {
        "queue": {"type": "string"},
        "resolution": {"enum": ["minute", "hour"]},
        "step": {"type": "integer", "description": "seconds per point: 60 or 3600"},
        "points": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["at", "completed", "failed", "retrying"],
                "additionalProperties": {"type": "integer"},
                "description": "`at`: epoch s of the point's start; then state changes by new "
                "state (completed, failed, retrying = retries scheduled, queued, cancelled, "
                "scheduled, deferred, expired, ...)",
            },
        },
    },
    "example": {
        "queue": "taskstream",
        "resolution": "hour",
        "step": 3600,
        "points": [{"at": 1767225600, "completed": 5120, "failed": 3, "retrying": 12}],
    },
}
DETAIL: dict[str, Any] = {
    "type": "object",
    "required": ["eval_id", "queue", "state", "timeline", "timeline_complete"],
    "properties": {
        "eval_id": {"type": "string"},
        "queue": {"type": "string"},
        "state": {"type": "string"},
        "payload": {
            "type": ["object", "null"],
            "description": "code, language, metadata, ...; null once completed or cancelled",
        },
        "worker": {"type": ["string", "null"], "description": "holder of the last delivery"},
        "lease_expires_at": {"type": ["string", "null"], "description": "while processing"},
        "dead_letter": {
            "type": ["object", "null"],
            "description": "a failed task's error, traceback or detail, failed_at",
        },
        "timeline": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "state": {"type": "string"},
                    "attempt": {"type": ["integer", "null"]},
                    "at": {"type": "string"},
                    "id": {"type": "string"},
                },
            },
        },
        "timeline_complete": {
            "type": "boolean",
            "description": "false when the capped events stream no longer reaches back to "
            "the task's creation",
        },
    },
}
HTML = {200: {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}


def paths() -> dict[str, dict[str, Any]]:
    return {
        "/stats/history": {
            "get": operation(
                "History: state changes per minute (kept 48 h) or per hour (kept 90 days), "
                "oldest first; each point {at, completed, failed, retrying, ...}",
                {200: json_content(HISTORY), **error_responses(*GUARDED, 404, 422)},
                params=[
                    query_param(
                        "resolution", "string", "minute (default) or hour", enum=["minute", "hour"]
                    ),
                    query_param(
                        "points",
                        "integer",
                        "how many minutes (1-2880, default 60) or hours (1-2160, default 48) "
                        "back from now, the current one included",
                        minimum=1,
                        maximum=2880,
                    ),
                    SERVICE_QUEUE,
                ],
            )
        },
        "/tasks/{eval_id}/detail": {
            "get": operation(
                "What the dashboard's task page shows beyond the record: payload, holder, "
                "dead letter, and the timeline from the events stream",
                {200: json_content(DETAIL), **error_responses(*GUARDED, 404, 422)},
                params=[TASK_ID],
            )
        },
        "/dashboard/tasks": {
            "get": operation("Dashboard: the task browser (HTML, no data; open)", HTML)
        },
        "/dashboard/tasks/{eval_id}": {
            "get": operation(
                "Dashboard: a task's page (HTML, no data; open)",
                {**HTML, **error_responses(422)},
                params=[TASK_ID],
            )
        },
        "/dashboard/history": {
            "get": operation("Dashboard: the history plots (HTML, no data; open)", HTML)
        },
    }
