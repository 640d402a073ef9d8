"""The one JSON response, the one error table, and the exception handlers.

Every JSON answer of the service is a `JSON` (routes, the `HotPath` shortcut, the PAI-EAS
routes, the live views, middleware refusals). Domain errors become HTTP statuses in one
table, `ERROR_STATUS` (by class, along the MRO: `BadRequest` is 400, other `Invalid` 422);
anything else is a bug: 500 JSON, logged with its traceback by uvicorn.

Imports: errors (and starlette, orjson).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

from app.errors import (
    BadRequest,
    Conflict,
    Invalid,
    NotFound,
    PayloadTooLarge,
    TaskstreamError,
    Unauthorized,
    Unavailable,
)

ERROR_STATUS: dict[type[TaskstreamError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    Invalid: 422,
    Unavailable: 503,
}


class JSON(Response):
    """A JSON answer, encoded by orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def send_json(send: Send, status: int, content: Any) -> None:
    """Send what `JSON(content, status)` sends, without building the response object: for
    `HotPath` (web/middleware.py), where the object was a few µs per request (issue 14).
    Same bytes and headers (tests/web/test_responses.py compares them)."""
    body = orjson.dumps(content)
    headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_response(status: int, message: str) -> JSON:
    return JSON({"error": message}, status_code=status)


def status_of(exc: Exception) -> int:
    """The HTTP status of an error: the table's entry for its class or a base, else 500."""
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


def error_content(exc: Exception) -> tuple[int, dict[str, str]]:
    """The status and body of the answer to an error (a bug's message is not shown)."""
    status = status_of(exc)
    return status, {"error": str(exc) if status != 500 else "internal error"}


def error_of(exc: Exception) -> JSON:
    """The answer to an error, as `error_content` says."""
    status, content = error_content(exc)
    return JSON(content, status_code=status)


async def on_domain_error(request: Request, exc: Exception) -> Response:
    return error_of(exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail))


async def on_bug(request: Request, exc: Exception) -> Response:
    """Anything no table names is a bug: JSON like every error (uvicorn logs the traceback)."""
    return error_response(500, "internal error")


HANDLERS = {TaskstreamError: on_domain_error, HTTPException: on_http_error, Exception: on_bug}
