"""HTTP and WebSocket routes of the PAI-EAS frontend: `/api/predict/{service}[/sink]`.

Two dialects on one path: the Flask+Celery imitation (`POST` a request, `GET /sink?
request_id=` its JSON status) and the real PAI-EAS queue protocol that the
`eas-prediction` SDK speaks (put, indexed reads, `_attrs_`, delete, commit, truncate,
`_watch_` over WebSocket). Every route needs `Authorization` (EAS_TOKEN).

The service and the queue (input or sink) of every route, HTTP and WebSocket, come from
one function, `requested`, which reads the raw path: a name is percent-decoded segment by
segment before it is checked, so an encoded `/` cannot move a request to another route,
and every other path under `/api/predict` is answered 404/422 by `Unrouted` instead of
the router's trailing-slash redirect.

Imports: eas, runtime.aio, runtime.tracing (runtime.otel for typing), web.auth,
web.params, web.responses, errors, models (and starlette).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import (
    BaseRoute,
    Match,
    Route,
    WebSocketRoute,
    request_response,
    websocket_session,
)
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.eas.forward import REQUEST_ID_HEADER
from app.eas.hub import EasHub
from app.eas.items import MAX_LENGTH, Item, frame_list, frames_document
from app.eas.store import EasQueue
from app.eas.watch import Watch
from app.errors import BadRequest, Invalid, NotFound, TaskstreamError
from app.models import Priority
from app.runtime import tracing
from app.runtime.aio import first_completed, won
from app.web import params
from app.web.auth import check_eas_token
from app.web.responses import JSON, error_of

if TYPE_CHECKING:
    from app.runtime.otel import Otel

log = structlog.get_logger()

PROTOBUF = "application/vnd.google.protobuf"
UID_HEADER = "x-eas-queueservice-redis-uid"
GID_HEADER = "x-eas-queueservice-redis-gid"
PREFIX = "/api/predict/"
ROUTED = re.compile(r"/api/predict/[^/]+(/sink)?")  # what the four routes below match


def _flag(query: Any, name: str, default: bool) -> bool:
    """A PAI-EAS flag: a bad value is 400, as the real service answers."""
    return params.flag(query, name, default, BadRequest)


def _tags(query: Any) -> dict[str, str]:
    """Tags are the query parameters that do not start with `_` (requestId included)."""
    return {k: v for k, v in query.items() if not k.startswith("_") and k != "request_id"}


def requested(scope: Scope) -> tuple[str, bool]:
    """(service, sink?) that a PAI-EAS path names, read from the raw (still encoded) path
    and decoded segment by segment: `a%2Fsink` is the bad name `a/sink`, not the sink of
    `a`; `%2e%2e` is the bad name `..`. NotFound (404) for a path of another shape,
    Invalid (422) for a bad name."""
    raw = scope.get("raw_path") or scope["path"].encode()
    path = raw.split(b"?", 1)[0].decode("latin-1")
    _, found, rest = path.partition(PREFIX)
    segments = rest.split("/") if found else []
    sink = len(segments) == 2 and unquote(segments[1]) == "sink"
    if not (len(segments) == 1 or sink):
        raise NotFound("a PAI-EAS path is /api/predict/{service} or /api/predict/{service}/sink")
    return params.service_name(unquote(segments[0])), sink


def _queue(request: Request | WebSocket) -> tuple[EasHub, EasQueue]:
    settings = request.state.settings
    check_eas_token(request.headers.get("authorization"), settings.eas_tokens)
    hub: EasHub = request.state.eas
    service, sink = requested(request.scope)
    return hub, hub.queue(service, sink)


# --- HTTP -------------------------------------------------------------------------------


async def put(request: Request, hub: EasHub, queue: EasQueue) -> Response:
    tags = _tags(request.query_params)
    priority = Priority.HIGH if _flag(request.query_params, "_priority_", False) else None
    if queue.sink and priority:
        raise BadRequest("_priority_ applies to input queues only")
    body = await request.body()
    item = Item(0, body, tags, request.headers.get("content-type", ""))
    await hub.register(queue.service)
    index = await _put(request, queue, item, priority or Priority.DEFAULT)
    hub.notify(queue)
    return Response(str(index), media_type="text/plain", headers={REQUEST_ID_HEADER: str(index)})


async def _put(request: Request, queue: EasQueue, item: Item, priority: Priority) -> int:
    """Put `item` with the request's trace context (else a new trace); with a tracer, inside
    a `send` span whose context the item keeps."""
    context = tracing.from_headers(request.scope["headers"])
    tracer: Otel | None = request.state.tracer
    if tracer is None:
        item.trace = context or tracing.new_context()
        return await queue.put(item, priority)
    with tracer.send(queue.name, context, priority=priority.value) as sending:
        item.trace = sending.context
        index = await queue.put(item, priority)
        sending.identify(str(index))
    return index


async def get(request: Request, hub: EasHub, queue: EasQueue) -> Response:
    query = request.query_params
    if queue.sink and "request_id" in query:
        return await sink_status(request, hub.service(queue.service).input)
    if _flag(query, "_attrs_", False):
        target = None if queue.sink else hub.service(queue.service).target
        return JSON(await queue.attributes(target))
    length = params.index(query.get("_length_"), "_length_", 1)
    if not 1 <= length <= MAX_LENGTH:
        raise BadRequest(f"_length_ must be between 1 and {MAX_LENGTH}")
    request_id = query.get("requestId", "")
    if request_id and not queue.sink and not (request_id.isascii() and request_id.isdigit()):
        return Response(status_code=204)  # an input item's request id is its index
    tags = {k: v for k, v in _tags(query).items() if k != "requestId"}
    items = await queue.read(
        params.index(query.get("_index_"), "_index_"),
        length,
        _flag(query, "_auto_delete_", True),
        params.duration(query.get("_timeout_")),
        request_id,
        tags,
    )
    if not items:
        return Response(status_code=204)
    if _flag(query, "_raw_", False):
        first = items[0]
        headers = {REQUEST_ID_HEADER: first.tags.get("requestId", str(first.index))}
        return Response(first.data, media_type=first.content_type or None, headers=headers)
    if PROTOBUF in request.headers.get("accept", ""):
        return Response(frame_list(items).SerializeToString(), media_type=PROTOBUF)
    return JSON(frames_document(items))


async def sink_status(request: Request, queue: EasQueue) -> Response:
    """The imitation's status document of an input item (`queue`): 202 while pending, 200
    once final, 404 unknown."""
    raw = request.query_params["request_id"]
    if not (raw.isascii() and raw.isdigit()):
        raise NotFound(f"unknown request_id: {raw}")
    timeout = params.duration(request.query_params.get("_timeout_"))
    try:
        document = await queue.wait_status(int(raw), timeout)
    except NotFound:
        raise NotFound(f"unknown request_id: {raw}") from None
    code = 200 if document["status"] in ("SUCCESS", "FAILURE") else 202
    return JSON(document, status_code=code)


async def commit(request: Request, hub: EasHub, queue: EasQueue) -> Response:
    indexes = params.indexes(request.query_params.get("_indexes_"))
    committed = await queue.remove("commit", indexes)
    hub.notify(queue)
    return JSON({"status": "ok", "committed": committed})


async def delete(request: Request, hub: EasHub, queue: EasQueue) -> Response:
    query = request.query_params
    if _flag(query, "_trunc_", False):
        below = params.index(query.get("_index_"), "_index_", -1)
        if below < 0:
            raise BadRequest("_trunc_ needs _index_: items below it are deleted")
        return JSON({"status": "ok", "deleted": await queue.truncate(below)})
    deleted = await queue.remove("delete", params.indexes(query.get("_indexes_")))
    hub.notify(queue)
    return JSON({"status": "ok", "deleted": deleted})


METHODS = {"POST": put, "GET": get, "PUT": commit, "DELETE": delete}


async def predict(request: Request) -> Response:
    """Both queues of a service, every method (the queue comes from the path)."""
    hub, queue = _queue(request)
    handler = METHODS.get(request.method)
    if handler is None:  # HEAD, which Starlette adds beside GET: a GET may delete items
        raise HTTPException(405)
    return await handler(request, hub, queue)


# --- WebSocket watch ----------------------------------------------------------------------


async def watch(websocket: WebSocket) -> None:
    """Both queues of a service: `_watch_` subscribes a consumer over the socket."""
    try:
        hub, queue = _queue(websocket)
    except (NotFound, Invalid) as exc:  # the path: a bad service name
        await _deny(websocket, exc)
        return
    except TaskstreamError as exc:
        await _refuse(websocket, exc)
        return
    try:
        subscriber = _subscriber(websocket, hub, queue)
    except TaskstreamError as exc:
        await _refuse(websocket, exc)
        return
    await _run_watch(websocket, hub, queue, subscriber)


async def _refuse(websocket: WebSocket, exc: TaskstreamError) -> None:
    log.info("eas_watch_refused", reason=str(exc))
    await websocket.close(code=1008, reason=str(exc)[:120])


async def _deny(websocket: WebSocket, exc: TaskstreamError) -> None:
    """Refuse the handshake with the HTTP status the same error has on HTTP, where the
    server can send one (the ASGI `websocket.http.response` extension, uvicorn's)."""
    if "websocket.http.response" not in websocket.scope.get("extensions", {}):
        await _refuse(websocket, exc)
        return
    log.info("eas_watch_refused", reason=str(exc))
    await websocket.send_denial_response(error_of(exc))  # 404 or 422, as on HTTP


def _subscriber(websocket: WebSocket, hub: EasHub, queue: EasQueue) -> Watch:
    """The watch the query asks for; BadRequest for a query it cannot serve."""
    query = websocket.query_params
    if not _flag(query, "_watch_", False):
        raise BadRequest("a WebSocket on this path must ask for _watch_=true")
    window = params.index(query.get("_window_"), "_window_", 1)
    if not 1 <= window <= MAX_LENGTH:
        raise BadRequest(f"_window_ must be between 1 and {MAX_LENGTH}")
    if {k for k in _tags(query)}:
        raise BadRequest("tag filters are not supported on _watch_")
    params.index(query.get("_index_"), "_index_")
    uid = websocket.headers.get(UID_HEADER) or "anonymous"
    gid = websocket.headers.get(GID_HEADER) or "eas"
    return Watch(
        queue,
        hub,
        f"{gid}:{uid}",
        window,
        auto_commit=_flag(query, "_auto_commit_", False),
        index_only=_flag(query, "_index_only_", False),
    )


async def _run_watch(websocket: WebSocket, hub: EasHub, queue: EasQueue, subscriber: Watch) -> None:
    await hub.register(queue.service)
    await websocket.accept()
    log.info(
        "eas_watch_started",
        queue=queue.name,
        consumer=subscriber.consumer,
        window=subscriber.window,
    )
    delivery, _ = await first_completed(
        subscriber.run(websocket.send_bytes), _until_closed(websocket)
    )
    if won(delivery) and delivery.exception():
        log.warning("eas_watch_ended", queue=queue.name, error=str(delivery.exception()))
    log.info("eas_watch_stopped", queue=queue.name, consumer=subscriber.consumer)


async def _until_closed(websocket: WebSocket) -> None:
    """Read (and drop) client messages until the client goes away."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return


class Unrouted(BaseRoute):
    """Every other path under /api/predict (`/api/predict/%2e%2e%2f` arrives decoded as
    `/api/predict/../`, `a%2Fb` as `/api/predict/a/b`): answered here, 404 or 422 by
    `requested`, rather than left to the router, which would answer a path with a
    trailing slash with a redirect to the path without it."""

    def __init__(self) -> None:
        self.http = request_response(predict)
        self.websocket = websocket_session(watch)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "") if scope["type"] in ("http", "websocket") else ""
        under = path == PREFIX.rstrip("/") or path.startswith(PREFIX)
        return (Match.FULL if under and not ROUTED.fullmatch(path) else Match.NONE), {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.websocket if scope["type"] == "websocket" else self.http
        await app(scope, receive, send)


METHOD_NAMES = ["GET", "POST", "PUT", "DELETE"]
ROUTES: list[BaseRoute] = [
    Route("/api/predict/{service}", predict, methods=METHOD_NAMES),
    Route("/api/predict/{service}/sink", predict, methods=METHOD_NAMES),
    WebSocketRoute("/api/predict/{service}", watch),
    WebSocketRoute("/api/predict/{service}/sink", watch),
    Unrouted(),
]
