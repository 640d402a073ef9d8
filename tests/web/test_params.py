"""Query parameters (web/params.py): a bad value is 422 naming it and changes nothing;
flags take the usual spellings.
"""

from __future__ import annotations

from typing import Any

from app.engine.queue import Queue
from tests.conftest import Service
from tests.web.conftest import assert_error, enqueue, get, snapshot

# --- query parameters: 422, never an outage ---------------------------------------------


BAD_QUERIES = [
    ("GET", "/dlq", {"limit": "0"}),  # was 503 "redis unavailable: DataError"
    ("GET", "/dlq", {"limit": "1001"}),
    ("GET", "/dlq", {"limit": "1e2"}),
    ("GET", "/dlq", {"offset": "-1"}),
    ("GET", "/dlq", {"offset": "2.0"}),
    ("GET", "/dlq", {"queue": "no such:queue"}),
    ("DELETE", "/dlq", {"older_than_days": "nan"}),
    ("DELETE", "/dlq", {"older_than_days": "inf"}),
    ("DELETE", "/dlq", {"older_than_days": "36501"}),
    ("GET", "/tasks/next", {"wait": "31"}),
    ("GET", "/tasks/next", {"wait": "-0.5"}),
    ("GET", "/tasks/next", {"wait": "nan"}),
    ("GET", "/tasks/next", {"wait": "soon"}),
    ("GET", "/tasks/next", {"queue": "a/b"}),
    ("GET", "/tasks/q1", {"queue": "x" * 65}),
    ("POST", "/tasks/q1/cancel", {"terminate": "maybe"}),
    ("GET", "/stats", {"minutes": "0"}),
    ("GET", "/stats", {"minutes": "60.5"}),
    ("GET", "/stats", {"queue": "bad name"}),
    ("GET", "/events", {"last_event_id": "yesterday"}),
    ("POST", "/queues/bad%20name/pause", {}),
]


async def test_every_bad_query_parameter_is_422_and_changes_nothing(
    service: Service, client: Any, streams: Queue
):
    await enqueue(service, eval_id="q1")
    before = await snapshot(client, streams)
    for method, path, params in BAD_QUERIES:
        response = await service.http.request(method, path, params=params)
        message = assert_error(response, 422)
        assert "redis" not in message, (method, path, params, message)
        named = next(iter(params), "queue")
        assert named in message or "Last-Event-ID" in message, (path, params, message)
    assert await snapshot(client, streams) == before
    assert (await get(service, "q1"))["status"] == "queued"


async def test_flags_take_the_usual_spellings(service: Service):
    for spelling in ("1", "TRUE", "yes", "On"):
        eval_id = f"t-{spelling}"
        await enqueue(service, eval_id=eval_id)
        response = await service.http.post(f"/tasks/{eval_id}/cancel?terminate={spelling}")
        assert response.status_code == 200, response.text
    await enqueue(service, eval_id="t-off")
    response = await service.http.post("/tasks/t-off/cancel?terminate=off")
    assert response.status_code == 200  # a queued task needs no terminate
