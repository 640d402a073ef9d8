"""Progress reports of running tasks (issue 15, item 6): `POST /tasks/{eval_id}/progress`.

A report is `{"progress": 0-100, "message"?, "data"?}`; it is fenced like a completion
(the delivery's `attempt` and, from a pull worker, its `lease`), so a worker that lost its
task (its lease lapsed and another took it over) is refused with 409 and writes nothing.
`progress.lua` keeps the last report on the task record, appends a `progress` event, and
renews a pulled task's lease when the report carries its lease token (see the script).
`GET /tasks/{eval_id}` shows the last report as `progress` (engine/records.py), with the Redis time
it arrived and the attempt it belongs to: a retried task keeps its previous attempt's
report until the new attempt reports.

Imports: client, keys, queue, errors (and orjson).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import orjson

from app.engine.client import text, translate_errors
from app.engine.keys import GROUP
from app.engine.queue import Queue, refusal
from app.errors import Invalid

MAX_MESSAGE = 1000  # characters of `message`
MAX_REPORT = 16 * 1024  # bytes of one encoded report (it lives on the record until it expires)


@dataclass(frozen=True)
class Report:
    """A validated progress report and the delivery token it was sent with."""

    progress: float
    message: str | None = None
    data: Any = None
    attempt: int | None = None
    lease: str | None = None  # the stream entry id GET /tasks/next handed out

    @classmethod
    def parse(cls, body: object) -> Report:
        """Validate a request body; Invalid (422) names what is wrong."""
        if not isinstance(body, dict):
            raise Invalid("body must be a JSON object")
        value = body.get("progress")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid("progress must be a number from 0 to 100")
        if not (math.isfinite(value) and 0 <= value <= 100):
            raise Invalid("progress must be a number from 0 to 100")
        message = body.get("message")
        if message is not None and (not isinstance(message, str) or len(message) > MAX_MESSAGE):
            raise Invalid(f"message must be a string of at most {MAX_MESSAGE} characters")
        attempt, lease = body.get("attempt"), body.get("lease")
        if attempt is not None and (
            isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1
        ):
            raise Invalid("attempt must be a positive integer")
        if lease is not None and not isinstance(lease, str):
            raise Invalid("lease must be a string")
        number = int(value) if float(value).is_integer() else float(value)
        report = cls(number, message, body.get("data"), attempt, lease)
        if len(report.encoded()) > MAX_REPORT:
            raise Invalid(f"the report must encode to at most {MAX_REPORT} bytes")
        return report

    def encoded(self) -> bytes:
        """The JSON object kept on the record (progress.lua adds `at` and `attempt`)."""
        kept: dict[str, Any] = {"progress": self.progress}
        if self.message is not None:
            kept["message"] = self.message
        if self.data is not None:
            kept["data"] = self.data
        return orjson.dumps(kept)


@translate_errors
async def report(queue: Queue, eval_id: str, sent: Report) -> dict[str, Any]:
    """Record `sent` for the running task `eval_id` (any legacy queue: routed by id);
    NotFound when unknown, Conflict when not processing or for a stale delivery."""
    entry = sent.lease or ""
    attempt = "" if sent.attempt is None else str(sent.attempt)
    # A lease token comes only from GET /tasks/next: a pulled task, whose lease is
    # TASK_TIMEOUT long (web/tasks.py claims it so), renewed from now.
    renew_ms = int(queue.settings.task_timeout * 1000) if sent.lease else 0
    argv: list[Any] = [eval_id, entry, attempt, sent.encoded(), str(sent.progress)]
    argv += [queue.settings.events_maxlen, renew_ms, GROUP]

    def send(q: Queue) -> Awaitable[Any]:
        k = q.keys
        keys = [k.task(eval_id), k.leases, k.events, *k.streams]
        return q.scripts.run("progress", keys, [*argv, k.q])

    owner, reply = await queue._by_id(eval_id, send)  # the by-id router of the engine (queue.py)
    if text(reply[0]) != "ok":
        raise refusal(reply)
    return {
        "eval_id": eval_id,
        "status": "processing",
        "progress": sent.progress,
        "queue": owner.keys.queue,
    }
