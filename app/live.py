"""Live views for operators: every state change as server-sent events (`GET /events`).

The source is each queue's capped events stream (`ts:{q}:events`); an SSE event id is the
stream entry id, so a client that reconnects with `Last-Event-ID` resumes where it left
off (as long as the entry is still within EVENTS_MAXLEN). Waiting uses the queue's
`Arrivals` loop, one XREAD per process however many clients listen.

Imports: streams, errors (and starlette, sse-starlette).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.errors import BadRequest
from app.streams import Arrivals, Streams

EVENT_ID_RE = re.compile(r"^\d{1,20}-\d{1,20}$")
BATCH = 200
PING_SECONDS = 15


def _start(request: Request) -> str:
    """Resume after `Last-Event-ID` (header, or `last_event_id` for plain links); else
    only new events (`$`), or everything still kept with `last_event_id=0`."""
    given = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if not given:
        return "$"
    if given == "0":
        return "0-0"
    if not EVENT_ID_RE.fullmatch(given):
        raise BadRequest("Last-Event-ID must be an events stream id such as 1700000000000-0")
    return given


def render(queue: str, entry_id: bytes, fields: dict[bytes, bytes]) -> ServerSentEvent:
    """One SSE event: `event` is the new state, `data` the change as JSON."""
    state = fields.get(b"state", b"").decode()
    attempt = fields.get(b"attempt", b"").decode()
    data = {
        "eval_id": fields.get(b"id", b"").decode(),
        "state": state,
        "attempt": int(attempt) if attempt.isdigit() else None,
        "queue": queue,
        "at": int(entry_id.split(b"-")[0]),
    }
    return ServerSentEvent(data=orjson.dumps(data).decode(), event=state, id=entry_id.decode())


async def follow(streams: Streams, arrivals: Arrivals, start: str) -> AsyncIterator[Any]:
    """The queue's events after `start`, then each new one as it is appended."""
    if start == "$":
        start = await streams.events_tail()
    async with arrivals.waiting(lambda entry: True) as arrived:
        while True:
            arrived.clear()
            entries = await streams.events_after(start, BATCH)
            for entry_id, fields in entries:
                yield render(streams.keys.queue, entry_id, fields)
            if entries:
                start = entries[-1][0].decode()
            if len(entries) < BATCH:
                await arrived.wait()


async def events(request: Request) -> Response:
    streams: Streams = request.state.streams
    start = _start(request)
    arrivals: Arrivals = request.state.event_arrivals
    return EventSourceResponse(follow(streams, arrivals, start), ping=PING_SECONDS)


ROUTES = [Route("/events", events, methods=["GET"])]
