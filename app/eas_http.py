"""HTTP and WebSocket routes of the PAI-EAS frontend: `/api/predict/{service}[/sink]`.

Two dialects on one path: the Flask+Celery imitation (`POST` a request, `GET /sink?
request_id=` its JSON status) and the real PAI-EAS queue protocol that the
`eas-prediction` SDK speaks (put, indexed reads, `_attrs_`, delete, commit, truncate,
`_watch_` over WebSocket). Every route needs `Authorization` (EAS_TOKEN).

Imports: eas, errors, models, settings, params (and starlette).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from app import params
from app.eas import (
    MAX_LENGTH,
    EasHub,
    EasQueue,
    Item,
    Watch,
    check_service,
    frame_list,
    frames_json,
    parse_duration,
    parse_index,
    parse_indexes,
)
from app.errors import BadRequest, NotFound, TaskstreamError, Unauthorized
from app.models import Priority

log = structlog.get_logger()

PROTOBUF = "application/vnd.google.protobuf"
REQUEST_ID_HEADER = "X-Eas-Queueservice-Request-Id"
UID_HEADER = "x-eas-queueservice-redis-uid"
GID_HEADER = "x-eas-queueservice-redis-gid"


def authorize(header: str | None, tokens: tuple[str, ...]) -> None:
    """`Authorization: TOKEN` or `Bearer TOKEN`, checked in constant time against
    EAS_TOKEN; with no EAS_TOKEN set, any non-empty value passes (warned at start)."""
    offered = (header or "").strip()
    if offered[:7].lower() == "bearer ":
        offered = offered[7:].strip()
    if not offered:
        raise Unauthorized("Authorization header required")
    if tokens and not any(hmac.compare_digest(offered.encode(), t.encode()) for t in tokens):
        raise Unauthorized("wrong token")


def _flag(query: Any, name: str, default: bool) -> bool:
    """A PAI-EAS flag: a bad value is 400, as the real service answers."""
    return params.flag(query, name, default, BadRequest)


def _tags(query: Any) -> dict[str, str]:
    """Tags are the query parameters that do not start with `_` (requestId included)."""
    return {k: v for k, v in query.items() if not k.startswith("_") and k != "request_id"}


def _queue(request: Request | WebSocket, sink: bool) -> tuple[EasHub, EasQueue]:
    settings = request.state.settings
    authorize(request.headers.get("authorization"), settings.eas_tokens)
    hub: EasHub = request.state.eas
    return hub, hub.queue(check_service(request.path_params["service"]), sink)


# --- HTTP -------------------------------------------------------------------------------


async def put(request: Request, hub: EasHub, queue: EasQueue) -> Response:
    tags = _tags(request.query_params)
    priority = Priority.HIGH if _flag(request.query_params, "_priority_", False) else None
    if queue.sink and priority:
        raise BadRequest("_priority_ applies to input queues only")
    body = await request.body()
    item = Item(0, body, tags, request.headers.get("content-type", ""))
    await hub.register(queue.service)
    index = await queue.put(item, priority or Priority.DEFAULT)
    hub.notify(queue)
    return Response(str(index), media_type="text/plain", headers={REQUEST_ID_HEADER: str(index)})


async def get(request: Request, hub: EasHub, queue: EasQueue) -> Response:
    query = request.query_params
    if queue.sink and "request_id" in query:
        return await sink_status(request, hub.service(queue.service).input)
    if _flag(query, "_attrs_", False):
        target = None if queue.sink else hub.service(queue.service).target
        return json_response(await queue.attributes(target))
    length = parse_index(query.get("_length_"), "_length_", 1)
    if not 1 <= length <= MAX_LENGTH:
        raise BadRequest(f"_length_ must be between 1 and {MAX_LENGTH}")
    request_id = query.get("requestId", "")
    if request_id and not queue.sink and not request_id.isdigit():
        return Response(status_code=204)  # an input item's request id is its index
    tags = {k: v for k, v in _tags(query).items() if k != "requestId"}
    items = await queue.read(
        parse_index(query.get("_index_"), "_index_"),
        length,
        _flag(query, "_auto_delete_", True),
        parse_duration(query.get("_timeout_")),
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
    return Response(frames_json(items), media_type="application/json")


async def sink_status(request: Request, queue: EasQueue) -> Response:
    """The imitation's status document of an input item (`queue`): 202 while pending, 200
    once final, 404 unknown."""
    raw = request.query_params["request_id"]
    if not raw.isdigit():
        raise NotFound(f"unknown request_id: {raw}")
    timeout = parse_duration(request.query_params.get("_timeout_"))
    try:
        document = await queue.wait_status(int(raw), timeout)
    except NotFound:
        raise NotFound(f"unknown request_id: {raw}") from None
    code = 200 if document["status"] in ("SUCCESS", "FAILURE") else 202
    return json_response(document, status_code=code)


async def commit(request: Request, hub: EasHub, queue: EasQueue) -> Response:
    indexes = parse_indexes(request.query_params.get("_indexes_"))
    committed = await queue.remove("commit", indexes)
    hub.notify(queue)
    return json_response({"status": "ok", "committed": committed})


async def delete(request: Request, hub: EasHub, queue: EasQueue) -> Response:
    query = request.query_params
    if _flag(query, "_trunc_", False):
        below = parse_index(query.get("_index_"), "_index_", -1)
        if below < 0:
            raise BadRequest("_trunc_ needs _index_: items below it are deleted")
        return json_response({"status": "ok", "deleted": await queue.truncate(below)})
    deleted = await queue.remove("delete", parse_indexes(query.get("_indexes_")))
    hub.notify(queue)
    return json_response({"status": "ok", "deleted": deleted})


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code, media_type="application/json")


METHODS = {"POST": put, "GET": get, "PUT": commit, "DELETE": delete}


async def predict(request: Request) -> Response:
    hub, queue = _queue(request, sink=False)
    return await METHODS[request.method](request, hub, queue)


async def predict_sink(request: Request) -> Response:
    hub, queue = _queue(request, sink=True)
    return await METHODS[request.method](request, hub, queue)


# --- WebSocket watch ----------------------------------------------------------------------


async def watch(websocket: WebSocket) -> None:
    await _watch(websocket, sink=False)


async def watch_sink(websocket: WebSocket) -> None:
    await _watch(websocket, sink=True)


async def _watch(websocket: WebSocket, sink: bool) -> None:
    query = websocket.query_params
    try:
        hub, queue = _queue(websocket, sink)
        if not _flag(query, "_watch_", False):
            raise BadRequest("a WebSocket on this path must ask for _watch_=true")
        window = parse_index(query.get("_window_"), "_window_", 1)
        if not 1 <= window <= MAX_LENGTH:
            raise BadRequest(f"_window_ must be between 1 and {MAX_LENGTH}")
        if {k for k in _tags(query)}:
            raise BadRequest("tag filters are not supported on _watch_")
        parse_index(query.get("_index_"), "_index_")
        uid = websocket.headers.get(UID_HEADER) or "anonymous"
        gid = websocket.headers.get(GID_HEADER) or "eas"
        subscriber = Watch(
            queue,
            hub,
            f"{gid}:{uid}",
            window,
            auto_commit=_flag(query, "_auto_commit_", False),
            index_only=_flag(query, "_index_only_", False),
        )
    except TaskstreamError as exc:
        log.info("eas_watch_refused", reason=str(exc))
        await websocket.close(code=1008, reason=str(exc)[:120])
        return
    await hub.register(queue.service)
    await websocket.accept()
    log.info("eas_watch_started", queue=queue.name, consumer=subscriber.consumer, window=window)
    delivery = asyncio.ensure_future(subscriber.run(websocket.send_bytes))
    hangup = asyncio.ensure_future(_until_closed(websocket))
    try:
        await asyncio.wait({delivery, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for job in (delivery, hangup):
            job.cancel()
        await asyncio.gather(delivery, hangup, return_exceptions=True)
    if delivery.done() and not delivery.cancelled() and delivery.exception():
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


ROUTES = [
    Route("/api/predict/{service}", predict, methods=["GET", "POST", "PUT", "DELETE"]),
    Route("/api/predict/{service}/sink", predict_sink, methods=["GET", "POST", "PUT", "DELETE"]),
    WebSocketRoute("/api/predict/{service}", watch),
    WebSocketRoute("/api/predict/{service}/sink", watch_sink),
]
