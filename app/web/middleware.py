"""Pure ASGI middleware (no per-request task or body buffering): `Answering`, `Guard` and
`HotPath`.

`Answering` marks what a request does as answered to its client, so under
DURABILITY=replica|fsync the engine confirms its writes before the answer
(engine/scripts.py, `answering`); the lifespan (consumers, the callback sender) is not.

`Guard` checks the API key (web/auth.py) and MAX_BODY_BYTES before any handler runs (its
`Gate`); `HotPath` answers `POST /tasks`, the busiest route, straight on ASGI, ahead of
Starlette's whole stack (web/app.py `App`): Starlette's routing and request objects were
a quarter of its CPU in the profile, and its middleware layers (the error middleware, the
two above) and `Response` object a few µs more per request. It applies the same gate,
marks the request answered, and gives the same answers: the same handler, the same
errors, the same JSON (a bug: 500 `{"error": "internal error"}`, then raised for uvicorn
to log, as Starlette's error middleware does).

Imports: web.auth, web.responses, web.tasks, engine.scripts, errors (and starlette).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.engine.scripts import answering
from app.errors import BadRequest, PayloadTooLarge, TaskstreamError
from app.web.auth import api_key_ok, needs_api_key
from app.web.responses import JSON, error_content, error_response, send_json
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


class Gate:
    """The API key check and the MAX_BODY_BYTES limit of one app (`Guard`, `HotPath`)."""

    def __init__(self, api_keys: tuple[str, ...], max_body: int) -> None:
        self.api_keys = tuple(k.encode() for k in api_keys)
        self.max_body = max_body

    def refusal(self, scope: Scope) -> JSON | None:
        """The 401 or 413 answer to a request, or None when it may go on."""
        guarded = needs_api_key(scope["path"], self.api_keys)
        if guarded and not api_key_ok(dict(scope["headers"]), self.api_keys):
            return error_response(401, "missing or wrong API key")
        length = _content_length(scope["headers"])
        if length is not None and length > self.max_body:
            return error_response(413, f"body larger than {self.max_body} bytes")
        return None

    def receive_for(self, scope: Scope, receive: Receive) -> Receive:
        """`receive`, counting the body when no length was declared (one within the limit
        needs no counting: `refusal` checked it)."""
        if _content_length(scope["headers"]) is not None:
            return receive
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise PayloadTooLarge(f"body larger than {self.max_body} bytes")
            return message

        return limited


class Guard:
    """API key check and MAX_BODY_BYTES limit, before any handler runs."""

    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.gate.refusal(scope)
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, self.gate.receive_for(scope, receive), send)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class HotPath:
    """`POST /tasks` straight on ASGI, ahead of Starlette (see the module docstring)."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    @staticmethod
    def wants(scope: Scope) -> bool:
        return bool(
            scope["type"] == "http" and scope["path"] == "/tasks" and scope["method"] == "POST"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = self.gate.refusal(scope)
        if refused is not None:
            await refused(scope, receive, send)
            return
        receive = self.gate.receive_for(scope, receive)
        with answering():
            try:
                state = scope["state"]
                body = await _body(receive)
                created = await enqueue(state["engine"], state["tracer"], body, scope["headers"])
                status, content = enqueued_status(created), created
            except TaskstreamError as exc:
                status, content = error_content(exc)
            except Exception:
                await send_json(send, 500, {"error": "internal error"})
                raise
        await send_json(send, status, content)


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
