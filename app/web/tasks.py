"""The legacy task API: `/tasks` (create, batch, pull, get, complete, fail, cancel, clear).

Handlers parse (bodies with models, query parameters with params), call one engine
operation (or the runtime's `pull`), and answer `JSON`. A pull worker keeps its task's
lease with `renew` (TASK_TIMEOUT s again from each call). The engine counts the transitions.
Enqueues keep a W3C trace context with each task (runtime/tracing.py): the task's own
`traceparent` field, else the request's header, else a new trace; with a tracer, the
context of the `send` span made around the enqueue.

Imports: engine, runtime (pull, tracing; otel for typing), web.params, web.responses,
models, errors, settings (and starlette).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.engine import admin, listing, pace, progress
from app.engine.engine import Engine
from app.engine.queue import Queue
from app.errors import Conflict, Invalid
from app.models import Priority, Task, TaskRequest, callback_host, check_eval_id, parse_json
from app.runtime import tracing
from app.runtime.consumers import progress_url
from app.runtime.pull import pull
from app.settings import Settings
from app.web import params
from app.web.responses import JSON

if TYPE_CHECKING:
    from app.runtime.otel import Otel

Headers = Iterable[tuple[bytes, bytes]]  # an ASGI scope's raw headers

MAX_WAIT = 30.0
MAX_BATCH = 1000


async def json_body(request: Request) -> Any:
    return parse_json(await request.body())


def eval_id_of(request: Request) -> str:
    return check_eval_id(request.path_params["eval_id"])


def json_object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise Invalid("body must be a JSON object")
    return data


async def _hangup(request: Request) -> None:
    """Returns when the client disconnects (a GET has no body to read first)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _delivery(eval_id: str, body: dict[str, Any]) -> Task | None:
    """A pull worker may send back its delivery token (`lease` + `attempt`) for fencing."""
    lease, attempt = body.get("lease"), body.get("attempt")
    if lease is None and attempt is None:
        return None
    if not isinstance(lease, str) or isinstance(attempt, bool) or not isinstance(attempt, int):
        raise Invalid("lease must be a string and attempt an integer, given together")
    return Task(eval_id, lease, attempt, Priority.DEFAULT)


def check_callback(req: TaskRequest, settings: Settings) -> None:
    """A callback_url must name a host CALLBACK_ALLOWED_HOSTS allows (when it is set)."""
    if req.callback_url is not None:
        host = callback_host(req.callback_url)
        if not settings.callback_host_allowed(host):
            raise Invalid(f"callback_url host {host!r} is not in CALLBACK_ALLOWED_HOSTS")


async def enqueue(
    engine: Engine, tracer: Otel | None, body: bytes, headers: Headers
) -> dict[str, Any]:
    """POST /tasks, shared by the Starlette route and the `HotPath` shortcut."""
    data = parse_json(body)
    req = TaskRequest.parse(data)
    check_callback(req, engine.settings)
    queue = engine.queue(req.queue)
    context = tracing.from_fields(data) or tracing.from_headers(headers)
    if tracer is None:
        req.payload.update((context or tracing.new_context()).fields())
        return await queue.enqueue(req)
    name = queue.keys.queue
    with tracer.send(name, context, req.eval_id, req.priority.value) as sending:
        req.payload.update(sending.context.fields())
        return await queue.enqueue(req)


def enqueued_status(answer: dict[str, Any]) -> int:
    """201 for a task created; 200 for a request its dedup_key's holder answered."""
    return 200 if answer.get("deduplicated") else 201


async def create_task(request: Request) -> Response:
    state = request.state
    answer = await enqueue(
        state.engine, state.tracer, await request.body(), request.scope["headers"]
    )
    return JSON(answer, status_code=enqueued_status(answer))


def _batch_items(
    body: dict[str, Any], settings: Settings
) -> list[tuple[TaskRequest, tracing.TraceContext | None]]:
    """Each task of a batch, validated, with its own trace context (None: the request's)."""
    items = body.get("tasks")
    if not isinstance(items, list) or not items:
        raise Invalid("tasks must be a non-empty list")
    if len(items) > MAX_BATCH:
        raise Invalid(f"at most {MAX_BATCH} tasks per batch")
    parsed = []
    for index, item in enumerate(items):
        try:
            req = TaskRequest.parse(item)
            check_callback(req, settings)
        except Invalid as exc:
            raise Invalid(f"tasks[{index}]: {exc}") from exc
        parsed.append((req, tracing.from_fields(item)))
    return parsed


async def create_batch(request: Request) -> Response:
    engine: Engine = request.state.engine
    tracer: Otel | None = request.state.tracer
    items = _batch_items(json_object(await json_body(request)), engine.settings)
    context = tracing.from_headers(request.scope["headers"])
    reqs = [req for req, _ in items]
    if tracer is None:
        for req, own in items:
            req.payload.update((own or context or tracing.new_context()).fields())
        return JSON({"tasks": await engine.enqueue_many(reqs)}, status_code=201)
    queues = [engine.queue(req.queue).keys.queue for req in reqs]
    with tracer.batch(context, queues) as batch:
        for (req, own), queue in zip(items, queues, strict=True):
            req.payload.update(batch.create(queue, req.eval_id, own).fields())
        answers = await engine.enqueue_many(reqs)
        batch.refused(sum("error" in answer for answer in answers))
    return JSON({"tasks": answers}, status_code=201)


async def next_task(request: Request) -> Response:
    wait = params.number(request.query_params, "wait", 0.0, 0.0, MAX_WAIT)
    settings: Settings = request.state.settings
    gone = _hangup(request) if wait > 0 else None
    queue = await params.resolve_queue(request.state, request.query_params.get("queue"))
    task = await pull(queue, request.state.consumer, wait, settings.task_timeout, gone)
    if task is None:
        return Response(status_code=204)
    task.progress_url = progress_url(settings.base_url, task.eval_id, queue.keys.q)
    return JSON({**task.view(), "queue": queue.keys.queue, "lease_timeout": settings.task_timeout})


async def list_tasks(request: Request) -> Response:
    """One page of the tasks in a state (engine/listing.py)."""
    query = request.query_params
    limit = params.integer(query, "limit", 50, 1, listing.MAX_LIMIT)
    page = listing.Page.parse(
        query.get("state"), limit, query.get("tenant"), query.get("q"), query.get("cursor")
    )
    queue = await params.resolve_queue(request.state, query.get("queue"))
    answer = await listing.list_tasks(queue, page)
    await pace.add_etas(queue, answer["tasks"])  # queued ones (engine/pace.py)
    return JSON(answer)


async def _hinted(request: Request) -> Queue:
    """The queue `?queue=` hints at for a by-id call (see `params.resolve_queue`)."""
    return await params.resolve_queue(request.state, request.query_params.get("queue"), hint=True)


async def get_task(request: Request) -> Response:
    record = await (await _hinted(request)).get(eval_id_of(request))
    if "position" in record:  # queued: its ETA, once its queue has a pace
        await pace.add_etas(request.state.engine.queue(record["queue"]), [record])
    return JSON(record)


async def complete_task(request: Request) -> Response:
    eval_id = eval_id_of(request)
    body = json_object(await json_body(request))
    queue = await _hinted(request)
    name = await queue.complete(eval_id, body.get("result"), _delivery(eval_id, body))
    return JSON({"eval_id": eval_id, "status": "completed", "queue": name})


async def fail_task(request: Request) -> Response:
    eval_id = eval_id_of(request)
    body = json_object(await json_body(request))
    error = body.get("error", "failed")
    retry = body.get("retry", True)
    if not isinstance(error, str) or not isinstance(retry, bool):
        raise Invalid("error must be a string and retry a boolean")
    detail = {"traceback": body["traceback"]} if body.get("traceback") else None
    queue = await _hinted(request)
    task = _delivery(eval_id, body)
    return JSON(await queue.fail(eval_id, error, retry=retry, task=task, detail=detail))


async def report_progress(request: Request) -> Response:
    """A running task's progress (engine/progress.py), fenced like complete."""
    eval_id = eval_id_of(request)
    sent = progress.Report.parse(await json_body(request))
    return JSON(await progress.report(await _hinted(request), eval_id, sent))


async def renew_task(request: Request) -> Response:
    """A pull worker keeps its task: the lease runs TASK_TIMEOUT s from now again, fenced
    by the delivery token like complete and fail (409 once it lapsed or was handed on)."""
    eval_id = eval_id_of(request)
    task = _delivery(eval_id, json_object(await json_body(request)))
    if task is None:
        raise Invalid("lease and attempt are required")
    queue = await _hinted(request)
    if await queue.renew(request.state.consumer, [task], request.state.settings.task_timeout):
        queue = await _renew_elsewhere(request, queue, task)
    return JSON(
        {
            "eval_id": eval_id,
            "status": "processing",
            "queue": queue.keys.queue,
            "lease_timeout": request.state.settings.task_timeout,
        }
    )


async def _renew_elsewhere(request: Request, queue: Queue, task: Task) -> Queue:
    """A renewal refused by `queue`: the task lives in another queue (a missing or wrong
    `?queue=` hint: renewed there), or it is unknown (404) or no longer this delivery's (409).
    The record is read only on this path, so a renewal costs one script."""
    record = await queue.get(task.eval_id)  # NotFound when unknown, in any queue
    if record["queue"] != queue.keys.queue and record["status"] == "processing":
        engine: Engine = request.state.engine
        other = engine.queue(record["queue"])
        if not await other.renew(request.state.consumer, [task], engine.settings.task_timeout):
            return other
    raise Conflict(f"task is {record['status']}; the lease of attempt {task.attempt} is lost")


async def cancel_task(request: Request) -> Response:
    eval_id = eval_id_of(request)
    queue = await _hinted(request)
    return JSON(await queue.cancel(eval_id, params.flag(request.query_params, "terminate")))


async def clear_tasks(request: Request) -> Response:
    return JSON({"cleared": await admin.clear(request.state.engine)})


ROUTES = [
    # Served by HotPath in the running app; listed so the route table is complete.
    Route("/tasks", create_task, methods=["POST"]),
    Route("/tasks", clear_tasks, methods=["DELETE"]),
    Route("/tasks", list_tasks, methods=["GET"]),
    Route("/tasks/batch", create_batch, methods=["POST"]),
    Route("/tasks/next", next_task, methods=["GET"]),
    Route("/tasks/{eval_id}", get_task, methods=["GET"]),
    Route("/tasks/{eval_id}/complete", complete_task, methods=["POST"]),
    Route("/tasks/{eval_id}/fail", fail_task, methods=["POST"]),
    Route("/tasks/{eval_id}/progress", report_progress, methods=["POST"]),
    Route("/tasks/{eval_id}/renew", renew_task, methods=["POST"]),
    Route("/tasks/{eval_id}/cancel", cancel_task, methods=["POST"]),
    Route("/api/eval/{eval_id}/cancel", cancel_task, methods=["POST"]),
]
