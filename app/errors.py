"""Domain errors. No HTTP and no Redis here; `web/responses.py` maps each class to a status.

    TaskstreamError
     ├── Invalid           bad input (422, or 400 for malformed JSON)
     │    └── BadRequest
     ├── NotFound          unknown task (404)
     ├── Conflict          state does not allow it, duplicate id, stale lease (409)
     ├── PayloadTooLarge   body over MAX_BODY_BYTES (413)
     ├── Unauthorized      missing or wrong credentials (401)
     └── Unavailable       Redis unreachable, loading, or busy (503)
          └── WritesRefused  Redis answers but refuses writes: OOM, NOREPLICAS, READONLY,
                             MISCONF (503)

Imports: stdlib only.
"""


class TaskstreamError(Exception):
    """Base of every error the service reports to a client."""


class Invalid(TaskstreamError):
    """The request is well-formed but its content is not acceptable."""


class BadRequest(Invalid):
    """The request cannot be parsed (malformed JSON, wrong content)."""


class NotFound(TaskstreamError):
    """No such task."""


class Conflict(TaskstreamError):
    """The task's current state does not allow the operation."""


class PayloadTooLarge(TaskstreamError):
    """The request body is larger than MAX_BODY_BYTES."""


class Unauthorized(TaskstreamError):
    """Credentials are missing or wrong."""


class Unavailable(TaskstreamError):
    """A dependency (Redis) cannot be reached; retry later."""


class WritesRefused(Unavailable):
    """Redis answers but refuses writes (out of memory, no replicas, read-only, disk error);
    `/health` reports it apart from an unreachable Redis."""
