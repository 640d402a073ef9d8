"""The Starlette application: lifespan wiring, legacy /tasks API, health and status, middleware.

Handlers parse (query parameters through `params`), call one `Streams` (or
`consumers.pull`) operation, and render. Domain errors become HTTP statuses in one table,
`ERROR_STATUS`; anything else is a bug: 500 JSON, logged with its traceback.

Imports: consumers, streams, executors, models, errors, settings, params, drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import orjson
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import eas_http, fsck, live, metrics, openapi, params
from app.callbacks import start_sender
from app.consumers import ConsumerPool, Workers, pull
from app.drain import Drain
from app.eas import EasHub
from app.errors import (
    BadRequest,
    Conflict,
    Invalid,
    NotFound,
    PayloadTooLarge,
    TaskstreamError,
    Unauthorized,
    Unavailable,
    WritesRefused,
)
from app.executors import ExecutorPool
from app.models import (
    Priority,
    Task,
    TaskRequest,
    callback_host,
    check_eval_id,
    check_queue,
    parse_json,
)
from app.settings import Settings
from app.streams import Arrivals, Streams, connect, consumer_name

log = structlog.get_logger()

ERROR_STATUS: dict[type[TaskstreamError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    Invalid: 422,
    Unavailable: 503,
}
PUBLIC_PATHS = frozenset(
    {
        "/health",
        "/livez",
        "/readyz",
        "/docs",
        "/redoc",
        "/openapi.json",
        "/openapi.yaml",
        "/dashboard",  # a page without data: its API calls carry the key
    }
)
STATIC_PREFIX = "/static/"  # the dashboard's scripts and styles
EAS_PREFIX = "/api/predict/"  # EAS_TOKEN guards these instead (app/eas_http.py)
MAX_WAIT = 30.0
MAX_BATCH = 1000
MAX_DLQ_PAGE = 1000
MAX_DLQ_OFFSET = 1_000_000
MAX_DAYS = 36500.0
PROBE_TIMEOUT = 2.0  # /health and /readyz answer 503 rather than hang on a stalled Redis


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, message: str) -> JSON:
    return JSON({"error": message}, status_code=status)


def _status_of(exc: Exception) -> int:
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 500


async def on_domain_error(request: Request, exc: Exception) -> Response:
    status = _status_of(exc)
    return error_response(status, str(exc) if status != 500 else "internal error")


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail))


async def on_bug(request: Request, exc: Exception) -> Response:
    """Anything no table names is a bug: JSON like every error (uvicorn logs the traceback)."""
    return error_response(500, "internal error")


# --- middleware (pure ASGI: no per-request task or body buffering) -----------------------


class Guard:
    """API key check and MAX_BODY_BYTES limit, before any handler runs."""

    def __init__(self, app: ASGIApp, api_keys: tuple[str, ...], max_body: int) -> None:
        self.app = app
        self.api_keys = tuple(k.encode() for k in api_keys)
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        guarded = (
            self.api_keys
            and path not in PUBLIC_PATHS
            and not path.startswith((EAS_PREFIX, STATIC_PREFIX))
        )
        if guarded and not self._authorized(dict(scope["headers"])):
            await error_response(401, "missing or wrong API key")(scope, receive, send)
            return
        length = _content_length(scope["headers"])
        if length is not None and length > self.max_body:
            message = f"body larger than {self.max_body} bytes"
            await error_response(413, message)(scope, receive, send)
            return
        # A declared length within the limit needs no counting; otherwise count as it comes.
        limited = receive if length is not None else self._limited(receive)
        await self.app(scope, limited, send)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        offered = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            offered = offered or auth[7:].strip()
        return any(hmac.compare_digest(offered, key) for key in self.api_keys)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise PayloadTooLarge(f"body larger than {self.max_body} bytes")
            return message

        return limited


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


# --- helpers ------------------------------------------------------------------------


def _streams(request: Request) -> Streams:
    streams: Streams = request.state.streams
    return streams


async def _queue_streams(request: Request, hint: bool = False) -> Streams:
    """The legacy queue named by `?queue=` (default: the default queue). One no task ever
    named (and not in QUEUE_EXECUTORS) is 404, so a typo creates nothing; as the hint of a
    by-id call (`hint`), the default queue instead, and the script routes the call (a right
    hint saves a named queue's task that second round trip)."""
    default = _streams(request)
    name = request.query_params.get("queue") or None
    if name and name != default.keys.queue:
        check_queue(name)  # 422 for a name no queue can have
    found = await default.known_queue(name)
    if found is None and not hint:
        raise NotFound(f"no such queue: {name}")
    return found or default


async def _json_body(request: Request) -> Any:
    return parse_json(await request.body())


def _eval_id(request: Request) -> str:
    return check_eval_id(request.path_params["eval_id"])


async def _hangup(request: Request) -> None:
    """Returns when the client disconnects (a GET has no body to read first)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _object(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise Invalid("body must be a JSON object")
    return data


def _delivery(eval_id: str, body: dict[str, Any]) -> Task | None:
    """A pull worker may send back its delivery token (`lease` + `attempt`) for fencing."""
    lease, attempt = body.get("lease"), body.get("attempt")
    if lease is None and attempt is None:
        return None
    if not isinstance(lease, str) or isinstance(attempt, bool) or not isinstance(attempt, int):
        raise Invalid("lease must be a string and attempt an integer, given together")
    return Task(eval_id, lease, attempt, Priority.DEFAULT)


# --- legacy /tasks API --------------------------------------------------------------


def check_callback(req: TaskRequest, settings: Settings) -> None:
    """A callback_url must name a host CALLBACK_ALLOWED_HOSTS allows (when it is set)."""
    if req.callback_url is not None:
        host = callback_host(req.callback_url)
        if not settings.callback_host_allowed(host):
            raise Invalid(f"callback_url host {host!r} is not in CALLBACK_ALLOWED_HOSTS")


async def enqueue(streams: Streams, body: bytes) -> dict[str, Any]:
    """POST /tasks, shared by the Starlette route and the `HotPath` shortcut."""
    req = TaskRequest.parse(parse_json(body))
    check_callback(req, streams.settings)
    if req.queue is not None:
        streams = streams.for_queue(req.queue)
    answer = await streams.enqueue(req)
    metrics.of(streams).count_enqueued(streams.keys.queue, req.priority)
    return answer


async def create_task(request: Request) -> Response:
    return JSON(await enqueue(_streams(request), await request.body()), status_code=201)


class HotPath:
    """`POST /tasks` straight on ASGI, the busiest route: Starlette's routing, request and
    response objects were a quarter of its CPU in the profile. Same handler, same errors."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/tasks":
            await self.app(scope, receive, send)
            return
        try:
            status, answer = 201, await enqueue(scope["state"]["streams"], await _body(receive))
        except TaskstreamError as exc:
            status, answer = _status_of(exc), {"error": str(exc)}
        content = orjson.dumps(answer)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(content)),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def create_batch(request: Request) -> Response:
    body = _object(await _json_body(request))
    items = body.get("tasks")
    if not isinstance(items, list) or not items:
        raise Invalid("tasks must be a non-empty list")
    if len(items) > MAX_BATCH:
        raise Invalid(f"at most {MAX_BATCH} tasks per batch")
    reqs = []
    for index, item in enumerate(items):
        try:
            reqs.append(TaskRequest.parse(item))
            check_callback(reqs[-1], request.state.settings)
        except Invalid as exc:
            raise Invalid(f"tasks[{index}]: {exc}") from exc
    streams = _streams(request)
    answers = await streams.enqueue_many(reqs)
    stats = metrics.of(streams)
    for req, answer in zip(reqs, answers, strict=True):
        if "error" not in answer:
            stats.count_enqueued(req.queue or streams.keys.queue, req.priority)
    return JSON({"tasks": answers}, status_code=201)


async def next_task(request: Request) -> Response:
    wait = params.number(request.query_params, "wait", 0.0, 0.0, MAX_WAIT)
    settings: Settings = request.state.settings
    gone = _hangup(request) if wait > 0 else None
    streams = await _queue_streams(request)
    task = await pull(streams, request.state.consumer, wait, settings.task_timeout, gone)
    if task is None:
        return Response(status_code=204)
    return JSON({**task.view(), "queue": streams.keys.queue})


async def get_task(request: Request) -> Response:
    return JSON(await (await _queue_streams(request, hint=True)).get(_eval_id(request)))


async def complete_task(request: Request) -> Response:
    eval_id = _eval_id(request)
    body = _object(await _json_body(request))
    streams = await _queue_streams(request, hint=True)
    queue = await streams.complete(eval_id, body.get("result"), _delivery(eval_id, body))
    metrics.of(streams).count_settled(queue, metrics.UNKNOWN, "completed")
    return JSON({"eval_id": eval_id, "status": "completed", "queue": queue})


async def fail_task(request: Request) -> Response:
    eval_id = _eval_id(request)
    body = _object(await _json_body(request))
    error = body.get("error", "failed")
    retry = body.get("retry", True)
    if not isinstance(error, str) or not isinstance(retry, bool):
        raise Invalid("error must be a string and retry a boolean")
    detail = {"traceback": body["traceback"]} if body.get("traceback") else None
    streams = await _queue_streams(request, hint=True)
    answer = await streams.fail(
        eval_id, error, retry=retry, task=_delivery(eval_id, body), detail=detail
    )
    metrics.of(streams).count_settled(answer["queue"], metrics.UNKNOWN, answer["status"])
    return JSON(answer)


async def cancel_task(request: Request) -> Response:
    eval_id = _eval_id(request)
    streams = await _queue_streams(request, hint=True)
    answer = await streams.cancel(eval_id, params.flag(request.query_params, "terminate"))
    metrics.of(streams).count_settled(answer["queue"], metrics.UNKNOWN, "cancelled")
    return JSON(answer)


async def clear_tasks(request: Request) -> Response:
    return JSON({"cleared": await _streams(request).clear()})


# --- dead-letter queue -------------------------------------------------------------


async def list_dlq(request: Request) -> Response:
    limit = params.integer(request.query_params, "limit", 50, 1, MAX_DLQ_PAGE)
    offset = params.integer(request.query_params, "offset", 0, 0, MAX_DLQ_OFFSET)
    return JSON(await (await _queue_streams(request)).dlq_list(limit, offset))


async def retry_dlq(request: Request) -> Response:
    streams = await _queue_streams(request)
    answer = await streams.dlq_retry(_eval_id(request))
    metrics.of(streams).count_redriven(streams.keys.queue)
    return JSON(answer)


async def purge_dlq(request: Request) -> Response:
    older_than = None  # all
    if request.query_params.get("older_than_days"):
        days = params.number(request.query_params, "older_than_days", 0.0, 0.0, MAX_DAYS)
        older_than = days * 86400
    removed = await (await _queue_streams(request)).dlq_purge(older_than=older_than)
    return JSON({"removed": removed})


async def delete_dead(request: Request) -> Response:
    eval_id = _eval_id(request)
    if not await (await _queue_streams(request)).dlq_purge(eval_id=eval_id):
        raise NotFound(f"not in the dead-letter queue: {eval_id}")
    return JSON({"removed": 1})


# --- health and status --------------------------------------------------------------


async def health(request: Request) -> Response:
    """Healthy when Redis answers the counts and takes a tiny probe write (one round trip)."""
    executors: ExecutorPool = request.state.executors
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            counts = await _streams(request).health()
    except (Unavailable, TimeoutError) as exc:
        redis = "refusing writes" if isinstance(exc, WritesRefused) else "unavailable"
        body = {"status": "unhealthy", "redis": redis, "error": str(exc) or "timed out"}
        return JSON(body, status_code=503)
    return JSON(
        {
            "status": "healthy",
            "redis": "ok",
            "queue": _streams(request).keys.queue,
            **counts["states"],
            "dlq": counts["dlq"],
            "executors": {
                "total": len(executors.executors),
                "healthy": sum(e.healthy for e in executors.executors),
            },
        }
    )


async def livez(request: Request) -> Response:
    return JSON({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Not ready while draining (after SIGTERM) or while Redis cannot be reached. A Redis
    that answers but refuses writes leaves it ready: every replica shares that Redis, so
    failing them all would turn a write outage into a total one (reads, and the writes'
    clear 503s, would be lost too); /health reports the refusal."""
    drain: Drain = request.state.drain
    if drain.reason is not None:
        return JSON({"status": "not ready", "error": drain.reason}, status_code=503)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await _streams(request).ping()
    except WritesRefused as exc:  # MISCONF refuses even PING
        return JSON({"status": "ready", "redis": "refusing writes", "error": str(exc)})
    except (Unavailable, TimeoutError) as exc:
        return JSON({"status": "not ready", "error": str(exc) or "timed out"}, status_code=503)
    return JSON({"status": "ready"})


async def status(request: Request) -> Response:
    streams = _streams(request)
    executors: ExecutorPool = request.state.executors
    pool: ConsumerPool = request.state.consumers
    workers: Workers = request.state.workers
    counts = await streams.counts()
    return JSON(
        {
            "queue": streams.keys.queue,
            **counts,
            "consumers": await streams.consumers(),
            "process": {
                "consumer": pool.consumer,
                "concurrency": request.state.settings.concurrency,
                "running": pool.views(),
                "consume": request.state.settings.consume.text,
                "consuming": workers.views(),
            },
            "executors": executors.views(),
            "queues": await named_overview(streams, workers),
            "eas": await request.state.eas.overview(),
            "fsck": await fsck.last_audit(streams),  # the last audit, by any process
        }
    )


async def named_overview(streams: Streams, workers: Workers) -> dict[str, Any]:
    """`queues_overview` with this process's executors of each queue it consumes."""
    overview = await streams.queues_overview()
    for name, row in overview.items():
        if name in workers.pools:
            row["executors"] = workers.pools[name].executors.views()
    return overview


async def openapi_json(request: Request) -> Response:
    return Response(openapi.as_json(), media_type="application/json")


async def openapi_yaml(request: Request) -> Response:
    return Response(openapi.as_yaml(), media_type="application/yaml")


async def docs(request: Request) -> Response:
    return HTMLResponse(openapi.swagger_page())


async def redoc(request: Request) -> Response:
    return HTMLResponse(openapi.redoc_page())


ROUTES = [
    # Served by HotPath in the running app; listed so the route table is complete.
    Route("/tasks", create_task, methods=["POST"]),
    Route("/tasks", clear_tasks, methods=["DELETE"]),
    Route("/tasks/batch", create_batch, methods=["POST"]),
    Route("/tasks/next", next_task, methods=["GET"]),
    Route("/tasks/{eval_id}", get_task, methods=["GET"]),
    Route("/tasks/{eval_id}/complete", complete_task, methods=["POST"]),
    Route("/tasks/{eval_id}/fail", fail_task, methods=["POST"]),
    Route("/tasks/{eval_id}/cancel", cancel_task, methods=["POST"]),
    Route("/api/eval/{eval_id}/cancel", cancel_task, methods=["POST"]),
    Route("/dlq", list_dlq, methods=["GET"]),
    Route("/dlq", purge_dlq, methods=["DELETE"]),
    Route("/dlq/{eval_id}/retry", retry_dlq, methods=["POST"]),
    Route("/dlq/{eval_id}", delete_dead, methods=["DELETE"]),
    Route("/health", health, methods=["GET"]),
    Route("/livez", livez, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/status", status, methods=["GET"]),
    Route("/metrics", metrics.endpoint, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/openapi.yaml", openapi_yaml, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Route("/redoc", redoc, methods=["GET"]),
    *eas_http.ROUTES,
    *live.ROUTES,
]


def create_app(
    settings: Settings,
    redis_url: str | None = None,
    executors: ExecutorPool | None = None,
    drain: Drain | None = None,
) -> Starlette:
    """Build the app; the lifespan opens Redis, the executor pool and the consumers.
    `drain`: the server's (see app/drain.py); a fresh one that never begins by default."""
    drain = drain or Drain()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        url = redis_url or settings.redis_url
        if not url:
            raise RuntimeError("no Redis URL: set REDIS_URL or let __main__ embed one")
        client = connect(url)
        streams = Streams(client, settings)
        with contextlib.suppress(Unavailable):
            await streams.ensure_groups()
        workers = Workers(streams, settings, consumer_name(), executors)
        await workers.start()
        consumers, pool = workers.default, workers.default.executors
        hub = EasHub(client, settings, streams.scripts, consumers.consumer)
        await hub.start()
        # Result callbacks: delivered by every process that consumes anything (CONSUME=
        # empty: the API only).
        sender = (
            None if settings.consume.nothing else await start_sender(streams, consumers.consumer)
        )
        # GET /events: one XREAD loop per queue's events stream, made on first use
        event_arrivals: dict[str, Arrivals] = {}
        if not settings.eas_tokens:
            log.warning("eas_token_unset", detail="any non-empty Authorization passes /api/predict")

        async def stop_consuming() -> None:
            """In-process consumers and PAI-EAS forwarders stop claiming; running tasks
            get SHUTDOWN_GRACE, then are aborted and released."""
            await asyncio.gather(
                hub.stop(settings.shutdown_grace), workers.stop(settings.shutdown_grace)
            )

        drain.attach(stop_consuming)
        log.info(
            "service_started",
            queue=settings.queue,
            consumer=consumers.consumer,
            executors=len(pool.executors),
            concurrency=settings.concurrency,
            consume=settings.consume.text,
            consumed=sorted(workers.pools),
        )
        try:
            yield {
                "settings": settings,
                "streams": streams,
                "executors": pool,
                "consumers": consumers,
                "workers": workers,
                "consumer": consumers.consumer,
                "eas": hub,
                "event_arrivals": event_arrivals,
                "callbacks": sender,
                "drain": drain,
            }
        finally:
            await asyncio.gather(*(a.close() for a in event_arrivals.values()))
            await drain.stopped()  # begun at the signal when the server drained first
            if sender:
                await sender.stop(settings.shutdown_grace)  # after the consumers' last outcomes
            await client.aclose()
            log.info("service_stopped")

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={
            TaskstreamError: on_domain_error,
            HTTPException: on_http_error,
            Exception: on_bug,
        },
    )
    app.add_middleware(HotPath)
    app.add_middleware(Guard, api_keys=settings.api_keys, max_body=settings.max_body_bytes)
    return app
