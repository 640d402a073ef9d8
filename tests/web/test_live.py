"""GET /events: state changes as server-sent events, live and resumable."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson

from tests.conftest import wait_for


class Events:
    """Reads SSE frames (id/event/data lines; a blank line ends one) off one response."""

    def __init__(self, response: Any) -> None:
        self.lines = response.aiter_lines()

    async def next(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        frame: dict[str, Any] = {}

        async def collect() -> None:
            async for line in self.lines:
                if not line:
                    if "data" in frame:
                        events.append({**frame, "data": orjson.loads(frame["data"])})
                    frame.clear()
                    if len(events) >= count:
                        return
                    continue
                name, _, value = line.partition(": ")
                if name in ("id", "event", "data"):
                    frame[name] = value

        await asyncio.wait_for(collect(), timeout)
        return events


async def enqueue(service: Any, eval_id: str) -> None:
    response = await service.http.post("/tasks", json={"eval_id": eval_id, "code": "x"})
    assert response.status_code == 201


async def test_events_arrive_live_and_resume_after_last_event_id(service):
    await enqueue(service, "live-0")
    async with service.http.stream("GET", "/events?last_event_id=0") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = Events(stream)
        (zero,) = await events.next(1)  # the stream is open: now events are live
        assert zero["data"]["eval_id"] == "live-0"
        await enqueue(service, "live-1")
        await enqueue(service, "live-2")
        first, second = await events.next(2)
    assert first["event"] == "queued" and first["data"]["eval_id"] == "live-1"
    assert first["data"]["queue"] == service.settings.queue
    assert second["data"]["eval_id"] == "live-2"
    assert first["id"] < second["id"] or len(first["id"]) < len(second["id"])
    # resume: only what came after the first event
    cancel = await service.http.post("/tasks/live-1/cancel")
    assert cancel.status_code == 200
    headers = {"Last-Event-ID": first["id"]}
    async with service.http.stream("GET", "/events", headers=headers) as stream:
        again, cancelled = await Events(stream).next(2)
    assert again["id"] == second["id"]
    assert cancelled["event"] == "cancelled" and cancelled["data"]["eval_id"] == "live-1"


async def test_events_from_the_start_with_last_event_id_zero(service):
    await enqueue(service, "old-1")
    async with service.http.stream("GET", "/events?last_event_id=0") as stream:
        (event,) = await Events(stream).next(1)
    assert event["data"]["eval_id"] == "old-1" and event["data"]["attempt"] is None


async def test_bad_last_event_id_is_422(service):
    response = await service.http.get("/events", headers={"Last-Event-ID": "yesterday"})
    assert response.status_code == 422
    assert "Last-Event-ID" in response.json()["error"]


async def test_events_need_the_api_key(make_service):
    service = await make_service(api_keys=("k",))
    assert (await service.http.get("/events")).status_code == 401


async def test_stats_count_state_changes_per_minute(service):
    await enqueue(service, "s-1")
    await enqueue(service, "s-2")
    assert (await service.http.post("/tasks/s-1/cancel")).status_code == 200
    response = await service.http.get("/stats?minutes=5")
    assert response.status_code == 200
    minutes = response.json()["minutes"]
    assert len(minutes) == 5
    assert [m["minute"] for m in minutes] == sorted(m["minute"] for m in minutes)
    assert sum(m.get("queued", 0) for m in minutes) == 2
    assert sum(m.get("cancelled", 0) for m in minutes) == 1
    for bad in ("0", "121", "x", "1.5", "-1"):
        assert (await service.http.get(f"/stats?minutes={bad}")).status_code == 422


async def test_dashboard_page_and_assets_are_served_locally(make_service):
    service = await make_service(api_keys=("k",))
    page = await service.http.get("/dashboard")
    assert page.status_code == 200
    assert "http://" not in page.text and "https://" not in page.text
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        response = await service.http.get(asset)
        assert response.status_code == 200, asset
        assert "//cdn" not in response.text
    assert (await service.http.get("/stats")).status_code == 401  # the data needs the key


async def test_pause_stops_pull_workers_and_consumers_until_resume(make_service, executor):
    from app.runtime.executors import ExecutorPool

    pool = ExecutorPool([executor.url], health_interval=0.2)
    service = await make_service(executors=pool)
    queue = service.settings.queue
    paused = await service.http.post(f"/queues/{queue}/pause")
    assert paused.json() == {"queue": queue, "paused": True}
    assert (await service.http.get("/status")).json()["paused"] is True
    await enqueue(service, "held")
    assert (await service.http.get("/tasks/next?wait=0.3")).status_code == 204
    assert (await service.http.get("/tasks/held")).json()["status"] == "queued"
    assert executor.calls == []
    resumed = await service.http.post(f"/queues/{queue}/resume")
    assert resumed.json()["paused"] is False

    async def done():
        return (await service.http.get("/tasks/held")).json()["status"] == "completed"

    await wait_for(done, timeout=5)  # released at once: the resume wakes idle consumers
    assert [c["eval_id"] for c in executor.calls] == ["held"]


async def test_pause_of_an_unknown_queue_is_404(service):
    response = await service.http.post("/queues/nope/pause")
    assert response.status_code == 404
    assert "no such queue" in response.json()["error"]


async def test_stats_of_a_pai_eas_queue(service, queue):
    svc = f"s.{queue[:8]}"
    auth = {"Authorization": "any"}
    for _ in range(2):
        assert (await service.http.post(f"/api/predict/{svc}", headers=auth)).is_success
    assert (await service.http.post(f"/api/predict/{svc}/sink", headers=auth)).is_success
    for name, queued in ((svc, 2), (f"{svc}/sink", 1)):
        response = await service.http.get(f"/stats?minutes=3&queue={name}")
        assert response.json()["queue"] == name
        assert sum(m.get("queued", 0) for m in response.json()["minutes"]) == queued
    for unknown in ("nope", f"{svc}/other"):
        assert (await service.http.get(f"/stats?queue={unknown}")).status_code == 404


async def test_a_progress_report_is_an_event_with_its_progress(service):
    await enqueue(service, "pg-live")
    task = (await service.http.get("/tasks/next")).json()
    async with service.http.stream("GET", "/events?last_event_id=0") as stream:
        events = Events(stream)
        await events.next(2)  # queued, processing
        report = {"progress": 33.5, "lease": task["lease"], "attempt": task["attempt"]}
        assert (await service.http.post("/tasks/pg-live/progress", json=report)).is_success
        (event,) = await events.next(1)
    assert event["event"] == "progress"
    assert event["data"]["eval_id"] == "pg-live" and event["data"]["progress"] == 33.5
    assert event["data"]["attempt"] == 1


async def test_a_stream_without_an_id_starts_when_its_headers_are_sent(service):
    # What the Python client's wait relies on: once the headers are in, no later change
    # is missed (the start is not read later, when the first event is due).
    async with service.http.stream("GET", "/events") as stream:
        assert stream.status_code == 200
        await enqueue(service, "after-headers")
        (event,) = await Events(stream).next(1)
    assert event["data"]["eval_id"] == "after-headers"
