"""Pure ASGI middleware (no per-request task or body buffering): `Answering`, `Guard` and
`HotPath`.

`Answering` marks what a request does as answered to its client, so under
DURABILITY=replica|fsync the engine confirms its writes before the answer
(engine/scripts.py, `answering`); the lifespan (consumers, the callback sender) is not.

`Guard` checks the API key (web/auth.py) and MAX_BODY_BYTES before any handler runs;
`HotPath` answers `POST /tasks`, the busiest route, straight on ASGI: Starlette's routing
and request objects were a quarter of its CPU in the profile. Same handler, same errors,
the same `JSON` answer.

Imports: web.auth, web.responses, web.tasks, engine.scripts, errors (and starlette).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.engine.scripts import answering
from app.errors import BadRequest, PayloadTooLarge, TaskstreamError
from app.web.auth import api_key_ok, needs_api_key
from app.web.responses import JSON, error_of, error_response
from app.web.tasks import enqueue, enqueued_status


class Answering:
    """Requests' writes are answered to a client (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        with answering():
            await self.app(scope, receive, send)


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
        guarded = needs_api_key(scope["path"], self.api_keys)
        if guarded and not api_key_ok(dict(scope["headers"]), self.api_keys):
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


class HotPath:
    """`POST /tasks` straight on ASGI (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/tasks":
            await self.app(scope, receive, send)
            return
        try:
            state = scope["state"]
            body = await _body(receive)
            created = await enqueue(state["engine"], state["tracer"], body, scope["headers"])
            answer = JSON(created, enqueued_status(created))
        except TaskstreamError as exc:
            answer = error_of(exc)
        await answer(scope, receive, send)


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
