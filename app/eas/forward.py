"""Forwarding: a service's input items POSTed to its target, the answers classified.

The forwarding consumer pool of a service is an ordinary runtime `ConsumerPool` on the
input queue, whose executor pool has one "executor", the target URL, and `ForwardCall` as
its call strategy. Targets have no health protocol: the pool is unchecked, and a target
that is down shows as network errors, retried under the network policy. A target's answer
(2xx or not) is the sink item, given to the engine as the task's `answer`. Every forward
carries the item's W3C trace context (`traceparent`, `tracestate`; the process span's when
spans are exported), as executor requests do.

Imports: runtime (executors, wire, tracing), eas.items, models.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from app.eas.items import Item, task_item
from app.models import Outcome, Task
from app.runtime.executors import Execution, Executor
from app.runtime.tracing import headers_of
from app.runtime.wire import ConnectFailed, WireError

REQUEST_ID_HEADER = "X-Eas-Queueservice-Request-Id"


def classify_answer(request_id: str, status: int, body: bytes) -> Execution:
    """A target's answer: 2xx SUCCESS, 4xx FAILURE without retry, else retry. The body
    becomes the sink item, tagged with the request id and the status code."""
    answer = Item(0, body, {"requestId": request_id, "status": str(status)}).encode()
    try:
        text: str | None = body.decode()
        encoded = None
    except UnicodeDecodeError:
        text, encoded = None, base64.b64encode(body).decode()
    result: dict[str, Any] = {"status": "success", "target_status_code": status}
    result["body"] = text if text is not None else encoded
    if encoded is not None:
        result["body_encoding"] = "base64"
    if 200 <= status < 300:
        return Execution(Outcome.SUCCESS, result, status_code=status, answer=answer)
    result["status"] = "error"
    error = f"target answered {status}"
    if 400 <= status < 500:
        return Execution(Outcome.PERMANENT, result, error, status, answer=answer)
    return Execution(Outcome.RETRYABLE, result, error, status, answer=answer)


class ForwardCall:
    """The executor pool's call strategy of a service: POST the item to the target."""

    peer = "target"

    async def __call__(self, executor: Executor, task: Task, timeout: float) -> Execution:
        item = task_item(task)
        headers = {REQUEST_ID_HEADER: task.eval_id, **headers_of(task.payload)}
        content_type = item.content_type or "application/octet-stream"
        try:
            async with asyncio.timeout(timeout):
                answer = await executor.origin.request("POST", "", item.data, content_type, headers)
        except TimeoutError:
            return Execution(Outcome.RETRYABLE, error=f"target timed out after {timeout:g}s")
        except ConnectFailed:
            raise  # the pool answers "target unreachable"
        except WireError as exc:
            return Execution(Outcome.NETWORK, error=f"target connection failed: {exc}")
        return classify_answer(task.eval_id, answer.status, answer.body)
