"""Live views for operators: the dashboard (`/dashboard`, static files in app/web/static, no
build step), per-minute stats for its plots (`/stats`), the history per minute and per hour
(`/stats/history`, engine/history.py), and every state change as server-sent events
(`GET /events`).

The source is each queue's capped events stream (`ts:{q}:events`); an SSE event id is the
stream entry id, so a client that reconnects with `Last-Event-ID` resumes where it left
off (as long as the entry is still within EVENTS_MAXLEN). Waiting uses the queue's
`Arrivals` loop, one XREAD per process however many clients listen.

Imports: engine (views, admin, arrivals, history), web.params, web.responses, errors (and
starlette, sse-starlette).
"""

from __future__ import annotations

import contextlib
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

from app.engine import admin, history, views
from app.engine.arrivals import Arrivals
from app.engine.queue import Queue
from app.errors import Invalid
from app.runtime.aio import first_completed
from app.settings import MAX_PARTITIONS
from app.web import params
from app.web.responses import JSON

EVENT_ID_RE = re.compile(r"^\d{1,20}-\d{1,20}$")
BATCH = 200
PING_SECONDS = 15


def _start(request: Request, parts: int) -> list[str]:
    """Where to resume in each of the queue's `parts` events streams (one, unpartitioned):
    after `Last-Event-ID` (header, or `last_event_id` for plain links); else only new
    events (`$`), or everything still kept with `last_event_id=0`. A partitioned queue's
    event ids are its partitions' positions joined by commas (`_event_id`); a single id
    resumes every partition after it (entry ids are times), and a vector of another
    partition count resumes the partitions it lacks after its oldest position."""
    given = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if not given:
        return ["$"] * parts
    if given == "0":
        return ["0-0"] * parts
    ids = given.split(",")
    if len(ids) > MAX_PARTITIONS or not all(EVENT_ID_RE.fullmatch(i) for i in ids):
        raise Invalid("Last-Event-ID must be an events stream id such as 1700000000000-0")
    oldest = min(ids, key=_entry_key)
    return [ids[i] if i < len(ids) else oldest for i in range(parts)]


def _entry_key(entry_id: str | bytes) -> tuple[int, int]:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq or 0)


def _event_id(positions: list[str]) -> str:
    """The SSE id after an event: the entry id, or each partition's position, joined."""
    return ",".join(positions)


def render(
    queue: str, entry_id: bytes, fields: dict[bytes, bytes], event_id: str | None = None
) -> ServerSentEvent:
    """One SSE event: `event` is the new state, `data` the change as JSON; a progress
    report is `event: progress` with its `progress` (0-100). `event_id`: the SSE id when it
    is not the entry id (a partitioned queue's, see `_event_id`)."""
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
    sse_id = event_id if event_id is not None else entry_id.decode()
    return ServerSentEvent(data=orjson.dumps(data).decode(), event=state, id=sse_id)


async def follow(queue: Queue, feeds: list[Arrivals], starts: list[str]) -> AsyncIterator[Any]:
    """The queue's events after `starts` (an entry id per partition), then each new one as
    it is appended. A partitioned queue's partitions are read in turn, a batch of each, and
    merged by entry id (the time each partition's Redis appended it) up to the earliest
    end of a full batch, so a partition read further than another is not emitted ahead of
    it; each event's id is then every partition's position (`_event_id`)."""
    parts, name = queue.parts, queue.keys.queue
    positions = list(starts)
    async with contextlib.AsyncExitStack() as stack:
        arrived = [await stack.enter_async_context(a.waiting(lambda entry: True)) for a in feeds]
        while True:
            for event in arrived:
                event.clear()
            batches = [
                await views.events_after(p, positions[i], BATCH) for i, p in enumerate(parts)
            ]
            if len(parts) == 1:
                for entry_id, fields in batches[0]:
                    yield render(name, entry_id, fields)
                if batches[0]:
                    positions[0] = batches[0][-1][0].decode()
            else:
                full = [_entry_key(b[-1][0]) for b in batches if len(b) == BATCH]
                upto = min(full) if full else None
                merged = sorted(
                    ((e, i) for i, b in enumerate(batches) for e in b),
                    key=lambda item: (_entry_key(item[0][0]), item[1]),
                )
                for (entry_id, fields), i in merged:
                    if upto is not None and _entry_key(entry_id) > upto:
                        break
                    positions[i] = entry_id.decode()
                    yield render(name, entry_id, fields, _event_id(positions))
            if all(len(b) < BATCH for b in batches):
                await first_completed(*(event.wait() for event in arrived))


async def events(request: Request) -> Response:
    queue = await params.resolve_queue(request.state, request.query_params.get("queue"))
    starts = _start(request, len(queue.parts))
    # Fixed before the headers go out: a client that has the headers (and then reads a
    # task's record) misses no later change, as it would if the generator read the tail.
    for i, part in enumerate(queue.parts):
        if starts[i] == "$":
            starts[i] = await views.events_tail(part)
    registry: dict[str, Arrivals] = request.state.event_arrivals
    feeds = []
    for part in queue.parts:  # one XREAD loop per stream: partitions are on other slots
        arrivals = registry.get(part.keys.events)
        if arrivals is None:
            arrivals = registry[part.keys.events] = Arrivals(
                part.redis, [part.keys.events], lambda fields: None
            )
        feeds.append(arrivals)
    return EventSourceResponse(follow(queue, feeds, starts), ping=PING_SECONDS)


STATIC = resources.files("app.web") / "static"


async def dashboard(request: Request) -> Response:
    """The page holds no data: everything it shows comes from API calls that carry the key."""
    return HTMLResponse((STATIC / "dashboard.html").read_text())


async def stats(request: Request) -> Response:
    """State changes per minute (queued, completed, failed, retrying, cancelled, deleted)."""
    minutes_back = params.integer(request.query_params, "minutes", 60, 1, history.MAX_MINUTES)
    name = request.query_params.get("queue")
    queue = await params.resolve_queue(request.state, name, services=True)
    minutes = await views.minute_stats(queue, minutes_back)
    return JSON({"queue": queue.keys.queue, "minutes": minutes})


async def stats_history(request: Request) -> Response:
    """State changes per minute (kept 48 h) or per hour (kept 90 days), oldest first."""
    query = request.query_params
    resolution = params.choice(query, "resolution", "minute", tuple(history.RESOLUTIONS))
    step, kept = history.RESOLUTIONS[resolution]
    points = params.integer(query, "points", 60 if resolution == "minute" else 48, 1, kept)
    queue = await params.resolve_queue(request.state, query.get("queue"), services=True)
    series = await history.series(queue, resolution, points)
    body = {"queue": queue.keys.queue, "resolution": resolution, "step": step, "points": series}
    return JSON(body)


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
    Route("/stats/history", stats_history, methods=["GET"]),
    Route("/dashboard", dashboard, methods=["GET"]),
    Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
]
