"""The client's errors: one tree, mapped from the service's status codes in one table.

    TaskstreamError          .status (None: no answer), .error (the service's {"error"})
     ├── Invalid             422 a field, path or query parameter refused
     │    └── BadRequest     400 malformed JSON
     ├── Unauthorized        401 missing or wrong API key
     ├── NotFound            404 unknown task, queue, dead letter or schedule
     ├── Conflict            409 the task's state does not allow it, a duplicate eval_id,
     │                           a stale lease, a schedule name taken
     ├── PayloadTooLarge     413 body over MAX_BODY_BYTES
     ├── Unavailable         503 Redis unreachable or refusing writes: retry later
     │    └── ConnectionFailed   no answer at all (refused, reset, timed out)
     ├── ServerError         500 or any other status the service does not document
     ├── WaitTimeout         wait() ran out of time (also a TimeoutError)
     └── TaskFailed          result(): the task ended failed, cancelled or expired

The names are the service's own (app/errors.py), so a message reads the same on both
sides. Imports: httpx only.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from taskstream_client.models import TaskRecord


class TaskstreamError(Exception):
    """Base of every error the client raises; `error` is the service's message."""

    def __init__(self, error: str, status: int | None = None) -> None:
        super().__init__(f"{status}: {error}" if status is not None else error)
        self.error = error
        self.status = status


class Invalid(TaskstreamError):
    """422: the request is well-formed but its content is refused."""


class BadRequest(Invalid):
    """400: the body is not JSON (or a PAI-EAS parameter is bad)."""


class Unauthorized(TaskstreamError):
    """401: the API key is missing or wrong."""


class NotFound(TaskstreamError):
    """404: no such task, queue, dead letter or schedule."""


class Conflict(TaskstreamError):
    """409: the state does not allow it (or a duplicate eval_id, a stale lease)."""


class PayloadTooLarge(TaskstreamError):
    """413: the body is larger than the service's MAX_BODY_BYTES."""


class Unavailable(TaskstreamError):
    """503: Redis is unreachable or refuses writes; nothing was written, retry later."""


class ConnectionFailed(Unavailable):
    """The service gave no answer (connection refused or reset, a timeout)."""


class ServerError(TaskstreamError):
    """500 (a bug in the service) or a status the API does not document."""


class WaitTimeout(TaskstreamError, TimeoutError):
    """`wait()` / `result()` ran out of time before the task ended."""


class TaskFailed(TaskstreamError):
    """`result()`: the task ended without a result (failed, cancelled or expired)."""

    def __init__(self, record: TaskRecord) -> None:
        super().__init__(f"task {record.eval_id} {record.status}: {record.error}")
        self.record = record


STATUS_ERRORS: dict[int, type[TaskstreamError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: Invalid,
    503: Unavailable,
}


def error_from(response: httpx.Response) -> TaskstreamError:
    """The error for an answer the call does not accept, with the service's message."""
    cls = STATUS_ERRORS.get(response.status_code, ServerError)
    return cls(message_of(response.content) or response.reason_phrase, response.status_code)


def message_of(body: bytes) -> str:
    """`{"error": ...}` of a JSON error; else the start of the body (a proxy's page)."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    return body[:200].decode(errors="replace")
