"""Live views for operators: the dashboard (`/dashboard`, static files in app/web/static, no
build step), per-minute stats for its plots (`/stats`), and every state change as
server-sent events (`GET /events`).

The source is each queue's capped events stream (`ts:{q}:events`); an SSE event id is the
stream entry id, so a client that reconnects with `Last-Event-ID` resumes where it left
off (as long as the entry is still within EVENTS_MAXLEN). Waiting uses the queue's
`Arrivals` loop, one XREAD per process however many clients listen.

Imports: engine (views, admin, arrivals), web.params, web.responses, errors (and
starlette, sse-starlette).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from app.engine import admin, views
from app.engine.arrivals import Arrivals
from app.engine.queue import Queue
from app.errors import Invalid
from app.web import params
from app.web.responses import JSON

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
        raise Invalid("Last-Event-ID must be an events stream id such as 1700000000000-0")
    return given


def render(queue: str, entry_id: bytes, fields: dict[bytes, bytes]) -> ServerSentEvent:
    """One SSE event: `event` is the new state, `data` the change as JSON; a progress
    report is `event: progress` with its `progress` (0-100)."""
    state = fields.get(b"state", b"").decode()
    attempt = fields.get(b"attempt", b"").decode()
    data = {
        "eval_id": fields.get(b"id", b"").decode(),
        "state": state,
        "attempt": int(attempt) if attempt.isdigit() else None,
        "queue": queue,
        "at": int(entry_id.split(b"-")[0]),
    }
    if b"progress" in fields:  # a progress report (engine/progress.py): no state change
        data["progress"] = orjson.loads(fields[b"progress"])
    return ServerSentEvent(data=orjson.dumps(data).decode(), event=state, id=entry_id.decode())


async def follow(queue: Queue, arrivals: Arrivals, start: str) -> AsyncIterator[Any]:
    """The queue's events after `start` (an entry id), then each new one as it is appended."""
    async with arrivals.waiting(lambda entry: True) as arrived:
        while True:
            arrived.clear()
            entries = await views.events_after(queue, start, BATCH)
            for entry_id, fields in entries:
                yield render(queue.keys.queue, entry_id, fields)
            if entries:
                start = entries[-1][0].decode()
            if len(entries) < BATCH:
                await arrived.wait()


async def events(request: Request) -> Response:
    queue = await params.resolve_queue(request.state, request.query_params.get("queue"))
    start = _start(request)
    if start == "$":
        # Fixed before the headers go out: a client that has the headers (and then reads a
        # task's record) misses no later change, as it would if the generator read the tail.
        start = await views.events_tail(queue)
    feeds: dict[str, Arrivals] = request.state.event_arrivals
    arrivals = feeds.get(queue.keys.events)
    if arrivals is None:
        arrivals = feeds[queue.keys.events] = Arrivals(
            queue.redis, [queue.keys.events], lambda fields: None
        )
    return EventSourceResponse(follow(queue, arrivals, start), ping=PING_SECONDS)


STATIC = resources.files("app.web") / "static"
MAX_MINUTES = 120  # the per-minute counters are kept 2 h


async def dashboard(request: Request) -> Response:
    """The page holds no data: everything it shows comes from API calls that carry the key."""
    return HTMLResponse((STATIC / "dashboard.html").read_text())


async def stats(request: Request) -> Response:
    """State changes per minute (queued, completed, failed, retrying, cancelled, deleted)."""
    minutes_back = params.integer(request.query_params, "minutes", 60, 1, MAX_MINUTES)
    name = request.query_params.get("queue")
    queue = await params.resolve_queue(request.state, name, services=True)
    minutes = await views.minute_stats(queue, minutes_back)
    return JSON({"queue": queue.keys.queue, "minutes": minutes})


async def pause(request: Request) -> Response:
    return await _set_paused(request, True)


async def resume(request: Request) -> Response:
    return await _set_paused(request, False)


async def _set_paused(request: Request, paused: bool) -> Response:
    """Pause or resume a queue: consumers and pull workers stop (start) taking its work."""
    name = request.path_params["queue"]
    await admin.set_paused(await params.resolve_queue(request.state, name), paused)
    return JSON({"queue": name, "paused": paused})


ROUTES = [
    Route("/queues/{queue}/pause", pause, methods=["POST"]),
    Route("/queues/{queue}/resume", resume, methods=["POST"]),
    Route("/events", events, methods=["GET"]),
    Route("/stats", stats, methods=["GET"]),
    Route("/dashboard", dashboard, methods=["GET"]),
    Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
]
