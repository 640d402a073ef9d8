"""`wait` follows the event stream instead of polling the record; where the stream is not
served it falls back to reading the record with growing pauses. And the pieces: the SSE
decoder, the encoding of task options."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskstream_client.calls import jsonable, task_body
from taskstream_client.waiting import SSEDecoder
from tests.client.conftest import ThreadedServer, in_thread


def counting(flavour: str, counts: dict[str, int]) -> dict[str, object]:
    """httpx event hooks counting the requests by path (for the flavour's client)."""
    lock = threading.Lock()

    def count(request: httpx.Request) -> None:
        with lock:
            counts[request.url.path] = counts.get(request.url.path, 0) + 1

    async def acount(request: httpx.Request) -> None:
        count(request)

    return {"event_hooks": {"request": [count if flavour == "sync" else acount]}}


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_wait_reads_events_not_the_record_in_a_loop(live, make_api, sync_api, flavour):
    counts: dict[str, int] = {}
    api = make_api(flavour, live.url, **counting(flavour, counts))
    sync_api.enqueue("x", eval_id="e1")
    for i in range(20):  # other tasks' events on the same stream, before and during
        sync_api.enqueue("x", eval_id=f"other-{i}", priority="low")

    def work():
        delivery = sync_api.next(wait=5)
        deadline = time.monotonic() + 10
        while counts.get("/tasks/e1", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the waiter follows the stream (record read after it)
        for i in range(20):
            sync_api.cancel(f"other-{i}")
        return sync_api.complete(delivery, "done")

    in_thread(work)
    assert api.wait("e1", timeout=10).result == "done"
    # before, after the headers, at the end; a stream that broke under load is opened again
    # (Last-Event-ID) and costs one more record read: never a read per poll interval
    streams = counts["/events"]
    assert set(counts) == {"/tasks/e1", "/events"} and streams <= 3
    assert counts["/tasks/e1"] <= 1 + 2 * streams


class NoEvents:
    """A loopback proxy to the service that answers 404 for /events (say, a gateway that
    does not pass server-sent events)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream

    async def forward(self, request: Request) -> Response:
        if request.url.path == "/events":
            return JSONResponse({"error": "Not Found"}, status_code=404)
        async with httpx.AsyncClient(base_url=self.upstream) as http:
            answer = await http.request(
                request.method,
                request.url.path,
                params=request.query_params,
                content=await request.body(),
                headers={"content-type": request.headers.get("content-type", "")},
            )
        return Response(answer.content, answer.status_code, media_type="application/json")

    def app(self) -> Starlette:
        methods = ["GET", "POST", "DELETE", "PUT"]
        return Starlette(routes=[Route("/{path:path}", self.forward, methods=methods)])


@pytest.fixture
def no_events(live):
    proxy = ThreadedServer(NoEvents(live.url).app)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_wait_falls_back_to_reading_the_record(no_events, make_api, sync_api, flavour):
    counts: dict[str, int] = {}
    api = make_api(flavour, no_events.url, **counting(flavour, counts))
    sync_api.enqueue("x", eval_id="f1")

    def work():
        delivery = sync_api.next(wait=5)
        deadline = time.monotonic() + 10
        while counts.get("/events", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # the waiter has fallen back: 404, pause, record, 404, ...
        return sync_api.complete(delivery, 5)

    in_thread(work)
    assert api.wait("f1", timeout=15).result == 5
    assert counts["/events"] >= 3 and counts["/tasks/f1"] >= 4
    assert counts["/tasks/f1"] <= counts["/events"] + 2  # one read per pause: 50 ms, 100, ...


def test_sse_decoder():
    decoder = SSEDecoder()
    lines = [
        ": ping",
        "id: 1700000000000-0",
        "event: completed",
        'data: {"eval_id": "t1", "state": "completed", "attempt": 2, "queue": "q",',
        'data:  "at": 1700000000000}',
        "",
    ]
    events = [decoder.feed(line) for line in lines]
    assert events[:-1] == [None] * 5
    event = events[-1]
    assert event is not None
    assert (event.id, event.eval_id, event.state, event.attempt, event.queue) == (
        "1700000000000-0",
        "t1",
        "completed",
        2,
        "q",
    )
    assert event.at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert decoder.feed("") is None  # a blank line without data dispatches nothing
    assert decoder.last_id == "1700000000000-0"


def test_task_options_are_encoded_as_the_api_takes_them():
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    body = task_body(
        "x",
        {
            "delay": timedelta(minutes=2),
            "run_at": None,
            "expires_at": moment,
            "retry_intervals": (1, timedelta(seconds=1.5)),
            "priority": True,
            "metadata": {"when": moment},
        },
    )
    assert body == {
        "code": "x",
        "delay": 120.0,
        "expires_at": moment.timestamp(),
        "retry_intervals": [1, 1.5],
        "priority": True,
        "metadata": {"when": moment.timestamp()},
    }
    assert jsonable("2030-01-01T00:00:00Z") == "2030-01-01T00:00:00Z"
