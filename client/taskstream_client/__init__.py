"""taskstream-client: a typed client and a pull worker for the taskstream task queue.

    from taskstream_client import Client
    with Client("http://127.0.0.1:8081", api_key="...") as client:
        task = client.enqueue("print(6 * 7)", priority="high")
        record = client.wait(task.eval_id, timeout=60)

`Client` (sync) and `AsyncClient` (asyncio) have the same methods; `Worker` runs a Python
function per pulled task. The package depends on httpx alone and never imports the
service. Documentation: docs/client.md in the taskstream repository.
"""

from taskstream_client.async_client import AsyncClient
from taskstream_client.client import Client
from taskstream_client.errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    Invalid,
    NotFound,
    PayloadTooLarge,
    ServerError,
    TaskFailed,
    TaskstreamError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from taskstream_client.models import (
    TERMINAL,
    DeadLetter,
    DeadLetters,
    Delivery,
    Enqueued,
    Event,
    Priority,
    Progress,
    Schedule,
    ScheduleSpec,
    Settled,
    State,
    TaskFilters,
    TaskOptions,
    TaskPage,
    TaskRecord,
    TaskSpec,
    Token,
)
from taskstream_client.templates import TaskTemplate
from taskstream_client.worker import Job, Reject, Worker

__version__ = "0.1.0"

__all__ = [
    "TERMINAL",
    "AsyncClient",
    "BadRequest",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "DeadLetter",
    "DeadLetters",
    "Delivery",
    "Enqueued",
    "Event",
    "Invalid",
    "Job",
    "NotFound",
    "PayloadTooLarge",
    "Priority",
    "Progress",
    "Reject",
    "Schedule",
    "ScheduleSpec",
    "ServerError",
    "Settled",
    "State",
    "TaskFailed",
    "TaskFilters",
    "TaskOptions",
    "TaskPage",
    "TaskRecord",
    "TaskSpec",
    "TaskTemplate",
    "TaskstreamError",
    "Token",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "Worker",
]
