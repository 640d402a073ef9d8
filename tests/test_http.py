"""The legacy /tasks API, health and status, auth and body limits, over real loopback HTTP.

Every test talks to the real app under uvicorn (`service.http`) backed by the session's
real redis-server; "bad input changes nothing" is checked against the queue's Redis keys.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.engine import views
from app.engine.queue import Queue
from app.models import EVAL_ID_RE
from app.redis_server import RedisServer, find_binary
from app.settings import RetryPolicy
from tests.conftest import Service, StubExecutor, wait_for

MakeService = Callable[..., Awaitable[Service]]
ISO_RE = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


# --- helpers ------------------------------------------------------------------------


async def snapshot(client: Any, streams: Queue) -> dict[str, Any]:
    """Everything this queue holds in Redis: every key's content, plus the counts."""
    stored: dict[Any, Any] = {}
    async for key in client.scan_iter(match=f"{streams.keys.prefix}*", count=1000):
        if key == streams.keys.cleanup_lock.encode():
            continue  # housekeeping's lock, taken by the service's first cleanup at any moment
        kind = (await client.type(key)).decode()
        if kind == "stream":
            stored[key] = (kind, await client.xrange(key))
        elif kind == "hash":
            stored[key] = (kind, await client.hgetall(key))
        elif kind == "zset":
            stored[key] = (kind, await client.zrange(key, 0, -1, withscores=True))
        elif kind == "string":
            stored[key] = (kind, await client.get(key))
        else:
            stored[key] = (kind, None)
    return {"keys": stored, "counts": await views.counts(streams)}


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict)
    assert isinstance(body.get("error"), str) and body["error"]
    return str(body["error"])


async def enqueue(service: Service, **task: Any) -> dict[str, Any]:
    task.setdefault("code", "print(1)")
    response = await service.http.post("/tasks", json=task)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def get(service: Service, eval_id: str) -> dict[str, Any]:
    response = await service.http.get(f"/tasks/{eval_id}")
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return record


async def pull(service: Service, wait: float = 0) -> dict[str, Any]:
    response = await service.http.get("/tasks/next", params={"wait": wait})
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


async def assert_unknown(service: Service, *eval_ids: str) -> None:
    for eval_id in eval_ids:
        response = await service.http.get(f"/tasks/{eval_id}")
        assert_error(response, 404)


@pytest.fixture
async def frozen(service: Service, client: Any, streams: Queue) -> Callable[[], Awaitable[None]]:
    """Snapshot once `service` runs; calling the result asserts Redis still holds exactly that."""
    before = await snapshot(client, streams)

    async def unchanged() -> None:
        assert await snapshot(client, streams) == before

    return unchanged


# --- POST /tasks --------------------------------------------------------------------


async def test_create_answers_201_with_the_task(service: Service, client: Any, streams: Queue):
    before = await snapshot(client, streams)
    response = await service.http.post(
        "/tasks", json={"eval_id": "t-1", "code": "print(1)", "priority": "high"}
    )
    assert response.status_code == 201, response.text
    assert response.json() == {
        "eval_id": "t-1",
        "status": "queued",
        "priority": "high",
        "position": 1,
    }
    # The snapshot helper sees writes (so "unchanged" assertions elsewhere mean something).
    assert await snapshot(client, streams) != before
    record = await get(service, "t-1")
    assert record["status"] == "queued"
    assert record["priority"] == "high"


async def test_create_generates_an_eval_id(service: Service):
    first = await enqueue(service)
    second = await enqueue(service)
    assert EVAL_ID_RE.match(first["eval_id"]) and EVAL_ID_RE.match(second["eval_id"])
    assert first["eval_id"] != second["eval_id"]
    assert first["status"] == "queued" and first["priority"] == "default"
    assert (first["position"], second["position"]) == (1, 2)
    assert (await get(service, second["eval_id"]))["position"] == 2


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (True, "high"),
        (False, "default"),
        (None, "default"),
        ("high", "high"),
        ("default", "default"),
        ("low", "low"),
        ("LOW", "low"),
    ],
)
async def test_create_accepts_each_priority_form(service: Service, given: Any, expected: str):
    answer = await enqueue(service, eval_id="p", priority=given)
    assert answer["priority"] == expected
    assert (await get(service, "p"))["priority"] == expected


async def test_create_duplicate_eval_id_is_409_and_keeps_the_original(
    service: Service, client: Any, streams: Queue
):
    await enqueue(service, eval_id="dup", code="original", priority="low")
    before = await snapshot(client, streams)
    response = await service.http.post(
        "/tasks", json={"eval_id": "dup", "code": "other", "priority": "high"}
    )
    assert "dup" in assert_error(response, 409)
    assert await snapshot(client, streams) == before
    task = await pull(service)
    assert (task["eval_id"], task["code"], task["priority"]) == ("dup", "original", "low")


INVALID_TASKS: list[Any] = [
    {"eval_id": "bad-1"},  # no code
    {"eval_id": "bad-2", "code": ""},
    {"eval_id": "bad-3", "code": 5},
    {"eval_id": "bad-4", "code": None},
    {"eval_id": "", "code": "x"},
    {"eval_id": "a b", "code": "x"},
    {"eval_id": "x" * 129, "code": "x"},
    {"eval_id": "é", "code": "x"},
    {"eval_id": 17, "code": "x"},
    {"eval_id": "bad-5", "code": "x", "language": ""},
    {"eval_id": "bad-6", "code": "x", "language": 3},
    {"eval_id": "bad-7", "code": "x", "language": "x" * 65},
    {"eval_id": "bad-8", "code": "x", "priority": "urgent"},
    {"eval_id": "bad-9", "code": "x", "priority": 1},
    {"eval_id": "bad-10", "code": "x", "timeout": 0},
    {"eval_id": "bad-11", "code": "x", "timeout": -1},
    {"eval_id": "bad-12", "code": "x", "timeout": "10"},
    {"eval_id": "bad-13", "code": "x", "timeout": True},
    {"eval_id": "bad-14", "code": "x", "timeout": 86401},
    {"eval_id": "bad-15", "code": "x", "max_retries": -1},
    {"eval_id": "bad-16", "code": "x", "max_retries": 1.5},
    {"eval_id": "bad-17", "code": "x", "max_retries": "3"},
    {"eval_id": "bad-18", "code": "x", "max_retries": 1001},
    {"eval_id": "bad-19", "code": "x", "delay": -1},
    {"eval_id": "bad-20", "code": "x", "delay": "soon"},
    {"eval_id": "bad-21", "code": "x", "delay": 10, "run_at": 4102444800},
    {"eval_id": "bad-22", "code": "x", "run_at": "tomorrow"},
    {"eval_id": "bad-23", "code": "x", "run_at": -5},
    {"eval_id": "bad-24", "code": "x", "run_at": [1]},
    {"eval_id": "bad-25", "code": "x", "metadata": []},
    {"eval_id": "bad-26", "code": "x", "metadata": "x"},
    [{"eval_id": "bad-27", "code": "x"}],
    "task",
    42,
    None,
]


@pytest.mark.parametrize("body", INVALID_TASKS)
async def test_create_invalid_task_is_422_and_stores_nothing(
    service: Service, frozen: Callable[[], Awaitable[None]], body: Any
):
    response = await service.http.post("/tasks", json=body)
    assert_error(response, 422)
    await frozen()
    eval_id = body.get("eval_id") if isinstance(body, dict) else None
    if isinstance(eval_id, str) and EVAL_ID_RE.match(eval_id):
        await assert_unknown(service, eval_id)
    assert (await service.http.get("/tasks/next")).status_code == 204


@pytest.mark.parametrize(
    "raw",
    [b"{", b"{'code': 'x'}", b'{"code": "x",}', b'{"code": NaN}', b"\xff\xfe", b"code=x"],
)
async def test_create_malformed_json_is_400(
    service: Service, frozen: Callable[[], Awaitable[None]], raw: bytes
):
    response = await service.http.post(
        "/tasks", content=raw, headers={"content-type": "application/json"}
    )
    assert_error(response, 400)
    await frozen()


async def test_create_with_an_empty_body_is_rejected(
    service: Service, frozen: Callable[[], Awaitable[None]]
):
    response = await service.http.post("/tasks", content=b"")
    assert response.status_code in (400, 422), response.text
    assert_error(response, response.status_code)
    await frozen()


def exact_body(size: int, eval_id: str) -> bytes:
    """A valid task body of exactly `size` bytes."""
    skeleton = orjson.dumps({"eval_id": eval_id, "code": ""})
    body = orjson.dumps({"eval_id": eval_id, "code": "x" * (size - len(skeleton))})
    assert len(body) == size
    return body


async def test_body_over_the_limit_with_content_length_is_413(
    make_service: MakeService, client: Any, streams: Queue
):
    service = await make_service(max_body_bytes=1000)
    before = await snapshot(client, streams)
    response = await service.http.post(
        "/tasks", content=exact_body(1001, "big"), headers={"content-type": "application/json"}
    )
    assert response.request.headers["content-length"] == "1001"
    assert_error(response, 413)
    assert await snapshot(client, streams) == before
    await assert_unknown(service, "big")
    # The boundary: exactly MAX_BODY_BYTES is accepted.
    response = await service.http.post(
        "/tasks", content=exact_body(1000, "fits"), headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text


async def test_body_over_the_limit_when_streamed_is_413(
    make_service: MakeService, client: Any, streams: Queue
):
    service = await make_service(max_body_bytes=1000)
    before = await snapshot(client, streams)

    async def chunks(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 256):
            yield body[start : start + 256]

    response = await service.http.post(
        "/tasks",
        content=chunks(exact_body(4000, "streamed")),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413)
    assert await snapshot(client, streams) == before
    await assert_unknown(service, "streamed")
    # The connection and the service are still fine; a streamed body under the limit passes.
    response = await service.http.post(
        "/tasks",
        content=chunks(exact_body(1000, "small")),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201, response.text


async def test_body_limit_applies_to_batch_too(
    make_service: MakeService, client: Any, streams: Queue
):
    service = await make_service(max_body_bytes=200)
    before = await snapshot(client, streams)
    tasks = [{"eval_id": f"b{i}", "code": "print(1)"} for i in range(20)]
    response = await service.http.post("/tasks/batch", json={"tasks": tasks})
    assert_error(response, 413)
    assert await snapshot(client, streams) == before
    await assert_unknown(service, "b0")


@pytest.mark.parametrize(
    "schedule",
    [
        {"delay": 60},
        {"delay": 0.5},
        {"run_at": "epoch+3600"},
        {"run_at": "2099-01-01T00:00:00Z"},
        {"run_at": "2099-01-01T02:00:00+02:00"},
    ],
)
async def test_create_scheduled(service: Service, schedule: dict[str, Any]):
    if schedule.get("run_at") == "epoch+3600":
        schedule = {"run_at": time.time() + 3600}
    answer = await enqueue(service, eval_id="later", **schedule)
    assert answer == {"eval_id": "later", "status": "scheduled", "priority": "default"}
    record = await get(service, "later")
    assert record["status"] == "scheduled"
    assert "position" not in record
    assert (await service.http.get("/tasks/next")).status_code == 204


@pytest.mark.parametrize("schedule", [{"delay": 0}, {"run_at": 1000}, {"run_at": "2001-01-01"}])
async def test_create_with_a_past_run_time_is_queued(service: Service, schedule: dict[str, Any]):
    answer = await enqueue(service, eval_id="now", **schedule)
    assert answer["status"] == "queued" and answer["position"] == 1


async def test_a_delayed_task_is_delivered_when_due(service: Service):
    started = time.monotonic()
    answer = await enqueue(service, eval_id="soon", delay=0.3)
    assert answer["status"] == "scheduled"
    task = await pull(service, wait=5)
    assert task["eval_id"] == "soon"
    assert 0.25 <= time.monotonic() - started < 4


# --- POST /tasks/batch --------------------------------------------------------------


async def test_batch_answers_one_entry_per_task(service: Service):
    tasks = [
        {"eval_id": "b1", "code": "1"},
        {"code": "2", "priority": "high"},
        {"eval_id": "b3", "code": "3", "priority": "low"},
        {"eval_id": "b4", "code": "4", "delay": 60},
    ]
    response = await service.http.post("/tasks/batch", json={"tasks": tasks})
    assert response.status_code == 201, response.text
    answers = response.json()["tasks"]
    assert len(answers) == 4
    assert answers[0] == {"eval_id": "b1", "status": "queued", "priority": "default", "position": 1}
    assert EVAL_ID_RE.match(answers[1]["eval_id"])
    assert answers[1]["priority"] == "high" and answers[1]["position"] == 1
    assert answers[2]["eval_id"] == "b3" and answers[2]["status"] == "queued"
    assert answers[3] == {"eval_id": "b4", "status": "scheduled", "priority": "default"}
    for answer in answers:
        assert (await get(service, answer["eval_id"]))["status"] == answer["status"]
    order = [(await pull(service))["eval_id"] for _ in range(3)]
    assert order == [answers[1]["eval_id"], "b1", "b3"]


@pytest.mark.parametrize("bad_index", [0, 2, 4])
async def test_batch_with_one_invalid_task_is_422_and_stores_nothing(
    service: Service, frozen: Callable[[], Awaitable[None]], bad_index: int
):
    tasks: list[Any] = [{"eval_id": f"ok-{i}", "code": "print(1)"} for i in range(5)]
    tasks[bad_index] = {"eval_id": f"ok-{bad_index}", "code": "x", "priority": "urgent"}
    response = await service.http.post("/tasks/batch", json={"tasks": tasks})
    message = assert_error(response, 422)
    assert f"tasks[{bad_index}]" in message
    await frozen()
    await assert_unknown(service, *(f"ok-{i}" for i in range(5)))


async def test_batch_answers_duplicates_per_task(service: Service, client: Any, streams: Queue):
    await enqueue(service, eval_id="known", code="original")
    tasks = [
        {"eval_id": "new-1", "code": "a"},
        {"eval_id": "known", "code": "replacement"},
        {"eval_id": "new-2", "code": "b"},
        {"eval_id": "new-1", "code": "again"},
    ]
    response = await service.http.post("/tasks/batch", json={"tasks": tasks})
    assert response.status_code == 201, response.text
    answers = response.json()["tasks"]
    assert [a["eval_id"] for a in answers] == ["new-1", "known", "new-2", "new-1"]
    assert answers[0]["status"] == "queued" and answers[2]["status"] == "queued"
    for duplicate in (answers[1], answers[3]):
        assert duplicate.get("code") == 409 or duplicate.get("status_code") == 409, duplicate
        assert isinstance(duplicate.get("error"), str)
        assert duplicate.get("status") != "queued"
    assert (await views.counts(streams))["states"]["queued"] == 3
    codes = {}
    for _ in range(3):
        task = await pull(service)
        codes[task["eval_id"]] = task["code"]
    assert codes == {"known": "original", "new-1": "a", "new-2": "b"}


@pytest.mark.parametrize(
    "body",
    [{"tasks": []}, {"tasks": "x"}, {"tasks": None}, {}, [], {"tasks": [None]}, "tasks"],
)
async def test_batch_of_the_wrong_shape_is_422(
    service: Service, frozen: Callable[[], Awaitable[None]], body: Any
):
    assert_error(await service.http.post("/tasks/batch", json=body), 422)
    await frozen()


async def test_batch_over_the_size_limit_is_422(
    service: Service, frozen: Callable[[], Awaitable[None]]
):
    tasks = [{"eval_id": f"many-{i}", "code": "x"} for i in range(1001)]
    assert_error(await service.http.post("/tasks/batch", json={"tasks": tasks}), 422)
    await frozen()
    await assert_unknown(service, "many-0")


async def test_batch_malformed_json_is_400(service: Service, frozen: Callable[[], Awaitable[None]]):
    response = await service.http.post("/tasks/batch", content=b'{"tasks": [')
    assert_error(response, 400)
    await frozen()


# --- GET /tasks/next ----------------------------------------------------------------


async def test_next_on_an_empty_queue_is_204(service: Service):
    response = await service.http.get("/tasks/next")
    assert response.status_code == 204
    assert response.content == b""


async def test_next_hands_out_the_task_as_processing_attempt_1(service: Service):
    await enqueue(
        service, eval_id="w1", code="print(2)", language="bash", metadata={"k": "v"}, timeout=7
    )
    task = await pull(service)
    assert task["eval_id"] == "w1"
    assert task["code"] == "print(2)"
    assert task["language"] == "bash"
    assert task["metadata"] == {"k": "v"}
    assert task["attempt"] == 1
    assert task["status"] == "processing"
    assert task["priority"] == "default"
    assert task["timeout"] == 7
    assert isinstance(task["lease"], str) and task["lease"]
    record = await get(service, "w1")
    assert record["status"] == "processing"
    assert record["attempts"] == 1
    assert record["started_at"] is not None
    assert "position" not in record
    assert (await service.http.get("/tasks/next")).status_code == 204


async def test_next_takes_high_then_default_then_low(service: Service):
    await enqueue(service, eval_id="low-1", priority="low")
    await enqueue(service, eval_id="default-1")
    await enqueue(service, eval_id="high-1", priority="high")
    await enqueue(service, eval_id="default-2", priority=False)
    await enqueue(service, eval_id="high-2", priority=True)
    order = [(await pull(service))["eval_id"] for _ in range(5)]
    assert order == ["high-1", "high-2", "default-1", "default-2", "low-1"]
    assert (await service.http.get("/tasks/next")).status_code == 204


async def test_next_long_poll_returns_a_task_enqueued_while_waiting(service: Service):
    started = time.monotonic()
    waiting = asyncio.create_task(service.http.get("/tasks/next", params={"wait": 8}))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await enqueue(service, eval_id="late")
    response = await waiting
    assert response.status_code == 200, response.text
    assert response.json()["eval_id"] == "late"
    assert time.monotonic() - started < 4


async def test_next_long_poll_answers_204_after_the_wait(service: Service):
    started = time.monotonic()
    response = await service.http.get("/tasks/next", params={"wait": 0.8})
    elapsed = time.monotonic() - started
    assert response.status_code == 204
    assert 0.75 <= elapsed < 4


@pytest.mark.parametrize("wait", ["-1", "31", "abc", "nan", "inf", "1e9"])
async def test_next_wait_out_of_range_is_422(service: Service, wait: str):
    await enqueue(service, eval_id="untouched")
    assert_error(await service.http.get("/tasks/next", params={"wait": wait}), 422)
    assert (await get(service, "untouched"))["status"] == "queued"


# --- GET /tasks/{eval_id} -----------------------------------------------------------


async def test_get_answers_every_field(service: Service):
    await enqueue(service, eval_id="g1", priority="low")
    record = await get(service, "g1")
    assert record["eval_id"] == "g1"
    assert record["status"] == "queued"
    assert record["priority"] == "low"
    assert record["position"] == 1
    assert record["attempts"] == 0
    assert record["started_at"] is None and record["completed_at"] is None
    assert record["result"] is None and record["error"] is None
    assert re.match(ISO_RE, record["created_at"])


async def test_position_counts_across_priorities_with_1_as_next(service: Service):
    for eval_id, priority in [("d1", "default"), ("d2", "default"), ("h1", "high"), ("l1", "low")]:
        await enqueue(service, eval_id=eval_id, priority=priority)
    positions = {i: (await get(service, i))["position"] for i in ("h1", "d1", "d2", "l1")}
    assert positions == {"h1": 1, "d1": 2, "d2": 3, "l1": 4}
    assert (await service.http.post("/tasks/d1/cancel")).status_code == 200
    assert (await get(service, "d2"))["position"] == 2
    assert (await get(service, "l1"))["position"] == 3
    assert (await pull(service))["eval_id"] == "h1"
    assert (await get(service, "d2"))["position"] == 1
    assert (await get(service, "l1"))["position"] == 2
    assert (await enqueue(service, eval_id="h2", priority="high"))["position"] == 1
    assert (await get(service, "l1"))["position"] == 3


async def test_get_unknown_is_404(service: Service):
    assert_error(await service.http.get("/tasks/nobody"), 404)


@pytest.mark.parametrize("eval_id", ["a%20b", "x" * 129, "bad$id", "%C3%A9", "a%2Ab"])
async def test_get_bad_eval_id_is_422(service: Service, eval_id: str):
    assert_error(await service.http.get(f"/tasks/{eval_id}"), 422)


# --- POST /tasks/{eval_id}/complete -------------------------------------------------


async def test_complete_a_pulled_task(service: Service):
    await enqueue(service, eval_id="c1")
    await pull(service)
    result = {"status": "success", "output": "42\n", "exit_code": 0}
    response = await service.http.post("/tasks/c1/complete", json={"result": result})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    record = await get(service, "c1")
    assert record["status"] == "completed"
    assert record["result"] == result
    assert record["completed_at"] is not None
    assert_error(await service.http.post("/tasks/c1/complete", json={"result": 1}), 409)
    assert (await get(service, "c1"))["result"] == result


async def test_complete_unknown_is_404_and_creates_nothing(
    service: Service, frozen: Callable[[], Awaitable[None]]
):
    assert_error(await service.http.post("/tasks/ghost/complete", json={"result": 1}), 404)
    await frozen()
    await assert_unknown(service, "ghost")


async def test_complete_a_queued_task_is_409(service: Service, client: Any, streams: Queue):
    await enqueue(service, eval_id="q1")
    before = await snapshot(client, streams)
    assert_error(await service.http.post("/tasks/q1/complete", json={"result": 1}), 409)
    assert await snapshot(client, streams) == before
    assert (await get(service, "q1"))["status"] == "queued"


async def test_complete_with_the_delivery_token(service: Service):
    await enqueue(service, eval_id="tok")
    task = await pull(service)
    body = {"result": "ok", "lease": task["lease"], "attempt": task["attempt"]}
    response = await service.http.post("/tasks/tok/complete", json=body)
    assert response.status_code == 200, response.text
    assert (await get(service, "tok"))["status"] == "completed"


@pytest.mark.parametrize("stale", [{"attempt": 2}, {"lease": "1-1"}, {"attempt": 0}])
async def test_complete_with_a_stale_token_is_409(
    service: Service, client: Any, streams: Queue, stale: dict[str, Any]
):
    await enqueue(service, eval_id="st")
    task = await pull(service)
    before = await snapshot(client, streams)
    token = {"lease": task["lease"], "attempt": task["attempt"], **stale}
    assert_error(await service.http.post("/tasks/st/complete", json={"result": 1, **token}), 409)
    assert await snapshot(client, streams) == before
    assert (await get(service, "st"))["status"] == "processing"
    token = {"lease": task["lease"], "attempt": task["attempt"]}
    response = await service.http.post("/tasks/st/complete", json={"result": 2, **token})
    assert response.status_code == 200
    assert (await get(service, "st"))["result"] == 2


async def test_a_redelivered_task_fences_off_the_first_worker(make_service: MakeService):
    service = await make_service(task_timeout=0.3)
    await enqueue(service, eval_id="again")
    first = await pull(service)
    assert first["attempt"] == 1
    second = await pull(service, wait=5)  # the first lease lapses; delivered again
    assert second["eval_id"] == "again"
    assert second["attempt"] == 2
    old = {"result": "old", "lease": first["lease"], "attempt": first["attempt"]}
    assert_error(await service.http.post("/tasks/again/complete", json=old), 409)
    new = {"result": "new", "lease": second["lease"], "attempt": second["attempt"]}
    assert (await service.http.post("/tasks/again/complete", json=new)).status_code == 200
    record = await get(service, "again")
    assert (record["status"], record["result"], record["attempts"]) == ("completed", "new", 2)


@pytest.mark.parametrize(
    "token",
    [
        {"lease": 5, "attempt": 1},
        {"lease": "1-1", "attempt": "1"},
        {"lease": "1-1"},
        {"attempt": 1},
    ],
)
async def test_complete_with_a_malformed_token_is_422(
    service: Service, client: Any, streams: Queue, token: dict[str, Any]
):
    await enqueue(service, eval_id="mt")
    await pull(service)
    before = await snapshot(client, streams)
    assert_error(await service.http.post("/tasks/mt/complete", json={"result": 1, **token}), 422)
    assert await snapshot(client, streams) == before


@pytest.mark.parametrize("action", ["complete", "fail", "cancel"])
async def test_write_with_a_bad_eval_id_is_422(
    service: Service, frozen: Callable[[], Awaitable[None]], action: str
):
    assert_error(await service.http.post(f"/tasks/a%20b/{action}", json={}), 422)
    assert_error(await service.http.post(f"/tasks/{'x' * 129}/{action}", json={}), 422)
    await frozen()


@pytest.mark.parametrize("action", ["complete", "fail"])
async def test_write_with_a_malformed_body(service: Service, client: Any, streams: Queue, action):
    await enqueue(service, eval_id="mb")
    await pull(service)
    before = await snapshot(client, streams)
    assert_error(await service.http.post(f"/tasks/mb/{action}", content=b"{nope"), 400)
    assert_error(await service.http.post(f"/tasks/mb/{action}", json=[1]), 422)
    assert await snapshot(client, streams) == before


# --- POST /tasks/{eval_id}/fail -----------------------------------------------------


async def test_fail_with_retries_left_is_retrying(service: Service):
    await enqueue(service, eval_id="f1")
    await pull(service)
    response = await service.http.post("/tasks/f1/fail", json={"error": "boom"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "retrying"
    # Retry 1 waits RETRY_BASE_DELAY (50 s in these settings, no jitter).
    retry_at = datetime.fromisoformat(answer["retry_at"].replace("Z", "+00:00")).timestamp()
    assert 45 < retry_at - time.time() < 55
    record = await get(service, "f1")
    assert record["status"] == "retrying"
    assert record["error"] == "boom"
    assert_error(await service.http.post("/tasks/f1/fail", json={"error": "again"}), 409)
    assert (await service.http.get("/tasks/next")).status_code == 204  # backoff is 50 s


async def test_fail_without_retry_is_failed(service: Service, streams: Queue):
    await enqueue(service, eval_id="f2")
    await pull(service)
    response = await service.http.post("/tasks/f2/fail", json={"error": "bad", "retry": False})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "failed"
    record = await get(service, "f2")
    assert (record["status"], record["error"]) == ("failed", "bad")
    assert record["completed_at"] is not None
    assert (await views.counts(streams))["dlq"] == 1
    assert_error(await service.http.post("/tasks/f2/fail", json={"error": "x"}), 409)
    assert_error(await service.http.post("/tasks/f2/complete", json={"result": 1}), 409)


async def test_fail_with_no_retries_left_is_failed(service: Service):
    await enqueue(service, eval_id="f3", max_retries=0)
    await pull(service)
    response = await service.http.post("/tasks/f3/fail", json={"error": "once"})
    assert response.json()["status"] == "failed"


async def test_a_pull_worker_that_always_fails_runs_max_retries_plus_one_times(
    make_service: MakeService, streams: Queue
):
    service = await make_service(retry=RetryPolicy(2, 0.1, 2.0, 1.0, False))
    await enqueue(service, eval_id="flaky")
    statuses = []
    for attempt in (1, 2, 3):
        task = await pull(service, wait=5)
        assert (task["eval_id"], task["attempt"]) == ("flaky", attempt)
        body = {"error": f"e{attempt}", "lease": task["lease"], "attempt": task["attempt"]}
        response = await service.http.post("/tasks/flaky/fail", json=body)
        assert response.status_code == 200, response.text
        statuses.append(response.json()["status"])
    assert statuses == ["retrying", "retrying", "failed"]
    record = await get(service, "flaky")
    assert (record["status"], record["attempts"], record["error"]) == ("failed", 3, "e3")
    assert (await views.counts(streams))["dlq"] == 1
    assert (await service.http.get("/tasks/next", params={"wait": 0.3})).status_code == 204


async def test_fail_unknown_is_404(service: Service, frozen: Callable[[], Awaitable[None]]):
    assert_error(await service.http.post("/tasks/ghost/fail", json={"error": "x"}), 404)
    await frozen()
    await assert_unknown(service, "ghost")


async def test_fail_a_queued_task_is_409(service: Service, client: Any, streams: Queue):
    await enqueue(service, eval_id="fq")
    before = await snapshot(client, streams)
    assert_error(await service.http.post("/tasks/fq/fail", json={"error": "x"}), 409)
    assert await snapshot(client, streams) == before


async def test_fail_with_a_stale_token_is_409(service: Service, client: Any, streams: Queue):
    await enqueue(service, eval_id="fs")
    task = await pull(service)
    before = await snapshot(client, streams)
    body = {"error": "x", "lease": task["lease"], "attempt": task["attempt"] + 1}
    assert_error(await service.http.post("/tasks/fs/fail", json=body), 409)
    assert await snapshot(client, streams) == before


@pytest.mark.parametrize("body", [{"error": 5}, {"error": "x", "retry": "no"}, {"retry": 1}])
async def test_fail_with_invalid_fields_is_422(
    service: Service, client: Any, streams: Queue, body: dict[str, Any]
):
    await enqueue(service, eval_id="fi")
    await pull(service)
    before = await snapshot(client, streams)
    assert_error(await service.http.post("/tasks/fi/fail", json=body), 422)
    assert await snapshot(client, streams) == before


# --- POST /tasks/{eval_id}/cancel and /api/eval/{eval_id}/cancel -------------------

CANCEL_PATHS = ["/tasks/{}/cancel", "/api/eval/{}/cancel"]


@pytest.mark.parametrize("path", CANCEL_PATHS)
async def test_cancel_a_queued_task(service: Service, streams: Queue, path: str):
    await enqueue(service, eval_id="cq")
    response = await service.http.post(path.format("cq"))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    record = await get(service, "cq")
    assert record["status"] == "cancelled" and "position" not in record
    assert (await views.counts(streams))["states"]["queued"] == 0
    assert (await service.http.get("/tasks/next")).status_code == 204
    assert_error(await service.http.post(path.format("cq")), 409)


@pytest.mark.parametrize("path", CANCEL_PATHS)
async def test_cancel_scheduled_and_retrying_tasks(service: Service, streams: Queue, path: str):
    await enqueue(service, eval_id="cs", delay=60)
    await enqueue(service, eval_id="cr")
    await pull(service)
    await service.http.post("/tasks/cr/fail", json={"error": "x"})
    assert (await get(service, "cr"))["status"] == "retrying"
    for eval_id in ("cs", "cr"):
        response = await service.http.post(path.format(eval_id))
        assert response.status_code == 200, response.text
        assert (await get(service, eval_id))["status"] == "cancelled"
    states = (await views.counts(streams))["states"]
    assert states["scheduled"] == 0 and states["retrying"] == 0


@pytest.mark.parametrize("path", CANCEL_PATHS)
async def test_cancel_processing_needs_terminate(
    service: Service, client: Any, streams: Queue, path: str
):
    await enqueue(service, eval_id="cp")
    task = await pull(service)
    before = await snapshot(client, streams)
    for query in ("", "?terminate=false"):
        assert_error(await service.http.post(path.format("cp") + query), 409)
    assert await snapshot(client, streams) == before
    assert (await get(service, "cp"))["status"] == "processing"
    response = await service.http.post(path.format("cp"), params={"terminate": "true"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert (await get(service, "cp"))["status"] == "cancelled"
    assert (await views.counts(streams))["states"]["processing"] == 0
    token = {"result": 1, "lease": task["lease"], "attempt": task["attempt"]}
    assert_error(await service.http.post("/tasks/cp/complete", json=token), 409)
    assert (await get(service, "cp"))["status"] == "cancelled"


@pytest.mark.parametrize("path", CANCEL_PATHS)
async def test_cancel_a_finished_task_is_409(
    service: Service, client: Any, streams: Queue, path: str
):
    await enqueue(service, eval_id="done")
    await pull(service)
    await service.http.post("/tasks/done/complete", json={"result": 1})
    before = await snapshot(client, streams)
    assert_error(await service.http.post(path.format("done")), 409)
    assert_error(await service.http.post(path.format("done"), params={"terminate": "true"}), 409)
    assert await snapshot(client, streams) == before
    assert (await get(service, "done"))["status"] == "completed"


@pytest.mark.parametrize("path", CANCEL_PATHS)
async def test_cancel_unknown_is_404(
    service: Service, frozen: Callable[[], Awaitable[None]], path: str
):
    assert_error(await service.http.post(path.format("ghost")), 404)
    await frozen()


# --- DELETE /tasks ------------------------------------------------------------------


async def test_clear_removes_every_task_and_new_tasks_still_flow(service: Service, streams: Queue):
    await enqueue(service, eval_id="x-queued-1")
    await enqueue(service, eval_id="x-queued-2", priority="low")
    await enqueue(service, eval_id="x-processing", priority="high")
    await enqueue(service, eval_id="x-done", priority="high")
    await enqueue(service, eval_id="x-dead", priority="high")
    await enqueue(service, eval_id="x-scheduled", delay=60)
    assert (await pull(service))["eval_id"] == "x-processing"
    assert (await pull(service))["eval_id"] == "x-done"
    assert (await pull(service))["eval_id"] == "x-dead"
    await service.http.post("/tasks/x-done/complete", json={"result": 1})
    await service.http.post("/tasks/x-dead/fail", json={"error": "x", "retry": False})
    assert (await views.counts(streams))["dlq"] == 1

    response = await service.http.delete("/tasks")
    assert response.status_code == 200, response.text
    assert response.json() == {"cleared": 6}
    await assert_unknown(
        service, "x-queued-1", "x-queued-2", "x-processing", "x-done", "x-dead", "x-scheduled"
    )
    counts = await views.counts(streams)
    assert set(counts["states"].values()) == {0}
    assert counts["dlq"] == 0
    assert (await service.http.get("/tasks/next")).status_code == 204

    assert (await enqueue(service, eval_id="x-queued-1"))["position"] == 1
    task = await pull(service)
    assert (task["eval_id"], task["attempt"]) == ("x-queued-1", 1)
    assert (await service.http.post("/tasks/x-queued-1/complete", json={})).status_code == 200
    assert (await service.http.delete("/tasks")).json() == {"cleared": 1}
    assert (await service.http.delete("/tasks")).json() == {"cleared": 0}


# --- health, probes, status ---------------------------------------------------------


async def test_health_reports_redis_and_counts(service: Service):
    await enqueue(service, eval_id="h1")
    await enqueue(service, eval_id="h2", delay=60)
    response = await service.http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["redis"] == "ok"
    assert body["queued"] == 1
    assert body["scheduled"] == 1
    assert body["processing"] == 0
    assert body["dlq"] == 0
    assert body["executors"] == {"total": 0, "healthy": 0}


async def test_livez_and_readyz(service: Service):
    livez = await service.http.get("/livez")
    assert livez.status_code == 200 and livez.json()["status"] == "ok"
    readyz = await service.http.get("/readyz")
    assert readyz.status_code == 200 and readyz.json()["status"] == "ready"


async def test_status_counts_states_priorities_and_consumers(service: Service):
    await enqueue(service, eval_id="s-high", priority="high")
    await enqueue(service, eval_id="s-d1")
    await enqueue(service, eval_id="s-d2")
    await enqueue(service, eval_id="s-low", priority="low")
    await enqueue(service, eval_id="s-later", priority="low", delay=60)
    await pull(service)
    response = await service.http.get("/status")
    assert response.status_code == 200
    body = response.json()
    assert body["queue"] == service.settings.queue
    assert body["states"] == {
        "queued": 3,
        "processing": 1,
        "scheduled": 1,
        "retrying": 0,
        "deferred": 0,
    }
    assert body["by_priority"]["queued"] == {"high": 0, "default": 2, "low": 1}
    assert body["by_priority"]["processing"] == {"high": 1, "default": 0, "low": 0}
    assert body["by_priority"]["scheduled"] == {"high": 0, "default": 0, "low": 1}
    assert body["totals"]["enqueued"] == 5
    assert body["dlq"] == 0
    assert [c["pending"] for c in body["consumers"]] == [1]
    assert body["executors"] == []


async def test_status_lists_executors(
    make_service: MakeService, make_executor: Callable[..., Awaitable[StubExecutor]]
):
    stub = await make_executor()
    service = await make_service(executor_urls=(stub.url,))

    async def executor_healthy() -> Any:
        views = (await service.http.get("/status")).json()["executors"]
        return views if views and views[0]["healthy"] else None

    await wait_for(executor_healthy, 5)
    await enqueue(service, eval_id="run")

    async def completed() -> bool:
        return bool((await get(service, "run"))["status"] == "completed")

    await wait_for(completed, 5)
    body = (await service.http.get("/status")).json()
    [view] = body["executors"]
    assert view["url"] == stub.url
    assert view["healthy"] is True
    assert view["in_flight"] == 0
    assert view["routed"] == 1
    assert view["failures"] == 0
    assert any(key.startswith("latency") for key in view)
    assert body["totals"]["completed"] == 1
    health = (await service.http.get("/health")).json()
    assert health["executors"] == {"total": 1, "healthy": 1}


# --- API key, unknown routes, error bodies ------------------------------------------


async def test_api_key_guards_everything_but_the_probes(
    make_service: MakeService, client: Any, streams: Queue
):
    service = await make_service(api_keys=("k",))
    before = await snapshot(client, streams)
    guarded = [
        ("POST", "/tasks"),
        ("POST", "/tasks/batch"),
        ("DELETE", "/tasks"),
        ("GET", "/tasks/next"),
        ("GET", "/tasks/x"),
        ("POST", "/tasks/x/complete"),
        ("POST", "/tasks/x/fail"),
        ("POST", "/tasks/x/cancel"),
        ("POST", "/api/eval/x/cancel"),
        ("GET", "/status"),
    ]
    wrong = [{}, {"X-API-Key": "nope"}, {"Authorization": "Bearer nope"}, {"Authorization": "k"}]
    for method, path in guarded:
        for headers in wrong:
            response = await service.http.request(
                method, path, json={"eval_id": "x", "code": "1"}, headers=headers
            )
            assert_error(response, 401)
    assert await snapshot(client, streams) == before

    for path in ("/health", "/livez", "/readyz"):
        assert (await service.http.get(path)).status_code == 200

    response = await service.http.post(
        "/tasks", json={"eval_id": "x", "code": "1"}, headers={"X-API-Key": "k"}
    )
    assert response.status_code == 201, response.text
    response = await service.http.get("/tasks/x", headers={"Authorization": "Bearer k"})
    assert response.status_code == 200 and response.json()["status"] == "queued"
    response = await service.http.get("/status", headers={"authorization": "bearer k"})
    assert response.status_code == 200


async def test_unknown_route_and_method_are_json_errors(service: Service):
    assert_error(await service.http.get("/nowhere"), 404)
    assert_error(await service.http.post("/tasks/x/explode"), 404)
    response = await service.http.put("/tasks", json={})
    assert response.status_code == 405
    assert_error(response, 405)


# --- Redis outage -------------------------------------------------------------------


def dedicated_redis(tmp_path: Path, appendonly: bool) -> RedisServer:
    binary = find_binary(prefer=os.environ.get("TASKSTREAM_TEST_REDIS", "path"))
    server = RedisServer(
        tmp_path / "redis", appendonly=appendonly, unix_socket=False, binary=binary
    )
    server.start()
    return server


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[Callable[[bool], RedisServer]]:
    servers: list[RedisServer] = []

    def make(appendonly: bool) -> RedisServer:
        server = dedicated_redis(tmp_path, appendonly)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


async def test_redis_outage_is_503_and_the_service_recovers(
    own_redis: Callable[[bool], RedisServer], make_service: MakeService
):
    server = own_redis(False)
    service = await make_service(redis_url=server.url)
    await enqueue(service, eval_id="before")
    server.kill()

    for i in range(3):
        response = await service.http.post("/tasks", json={"eval_id": f"down-{i}", "code": "1"})
        assert_error(response, 503)
    health = await service.http.get("/health")
    assert_error(health, 503)
    assert health.json()["status"] != "healthy"
    assert_error(await service.http.get("/readyz"), 503)
    assert_error(await service.http.get("/tasks/before"), 503)
    assert_error(await service.http.post("/tasks/batch", json={"tasks": [{"code": "1"}]}), 503)
    assert_error(await service.http.get("/tasks/next", params={"wait": 1}), 503)
    assert_error(await service.http.post("/tasks/before/cancel"), 503)
    assert_error(await service.http.get("/status"), 503)
    assert (await service.http.get("/livez")).status_code == 200
    assert not service.served.job.done()

    server.restart()  # no AOF: it comes back empty

    async def accepts() -> bool:
        response = await service.http.post("/tasks", json={"eval_id": "after", "code": "1"})
        assert response.status_code in (201, 503), response.text
        return response.status_code == 201

    await wait_for(accepts, 8, interval=0.05)

    async def healthy() -> bool:
        return (await service.http.get("/health")).status_code == 200

    await wait_for(healthy, 5, interval=0.05)
    assert (await service.http.get("/readyz")).status_code == 200
    assert (await get(service, "after"))["position"] == 1
    task = await pull(service)
    assert (task["eval_id"], task["attempt"]) == ("after", 1)
    response = await service.http.post("/tasks/after/complete", json={"result": 1})
    assert response.status_code == 200


async def test_tasks_answered_201_survive_a_clean_redis_restart_with_aof(
    own_redis: Callable[[bool], RedisServer], make_service: MakeService
):
    server = own_redis(True)
    service = await make_service(redis_url=server.url)
    await enqueue(service, eval_id="kept-low", priority="low")
    await enqueue(service, eval_id="kept-high", priority="high")
    await enqueue(service, eval_id="kept-later", delay=60)
    server.stop()
    server.start()

    async def readable() -> bool:
        response = await service.http.get("/tasks/kept-high")
        assert response.status_code in (200, 503), response.text
        return response.status_code == 200

    await wait_for(readable, 8, interval=0.05)
    assert (await get(service, "kept-high"))["position"] == 1
    assert (await get(service, "kept-low"))["position"] == 2
    assert (await get(service, "kept-later"))["status"] == "scheduled"
    assert [(await pull(service))["eval_id"] for _ in range(2)] == ["kept-high", "kept-low"]


async def test_health_answers_503_promptly_when_redis_hangs(
    own_redis: Callable[[bool], RedisServer], make_service: MakeService
):
    server = own_redis(False)
    service = await make_service(redis_url=server.url)
    server.pause()  # SIGSTOP: connections stay open, nothing answers (like a partition)
    try:
        response = await service.http.get("/health", timeout=4)
        assert_error(response, 503)
    finally:
        server.resume()


# --- long-poll hygiene --------------------------------------------------------------


async def test_an_abandoned_long_poll_does_not_swallow_a_task(service: Service):
    with pytest.raises(httpx.ReadTimeout):
        await service.http.get("/tasks/next", params={"wait": 5}, timeout=0.3)
    await asyncio.sleep(0.1)  # the server has seen the disconnect
    await enqueue(service, eval_id="orphan")
    task = await pull(service, wait=2)
    assert task["eval_id"] == "orphan"


# --- /dlq error paths ---------------------------------------------------------------


async def test_dlq_bad_input_and_unknown_ids(
    service: Service, frozen: Callable[[], Awaitable[None]]
):
    for params in ({"limit": "abc"}, {"limit": "-1"}, {"limit": "1.5"}, {"offset": "x"}):
        assert_error(await service.http.get("/dlq", params=params), 422)
    assert_error(await service.http.delete("/dlq", params={"older_than_days": "x"}), 422)
    assert_error(await service.http.delete("/dlq", params={"older_than_days": "-1"}), 422)
    assert_error(await service.http.post("/dlq/ghost/retry"), 404)
    assert_error(await service.http.post("/dlq/a%20b/retry"), 422)
    assert_error(await service.http.delete("/dlq/ghost"), 404)
    assert_error(await service.http.delete("/dlq/a%20b"), 422)
    await frozen()
    await assert_unknown(service, "ghost")


async def test_dlq_retry_after_the_record_expired_and_when_the_id_is_reused(
    make_service: MakeService, client: Any, streams: Queue
):
    service = await make_service(failure_ttl=1)
    await enqueue(service, eval_id="gone", code="print('kept')", priority="high")
    await pull(service)
    await service.http.post("/tasks/gone/fail", json={"error": "x", "retry": False})

    async def expired() -> bool:
        return (await service.http.get("/tasks/gone")).status_code == 404

    await wait_for(expired, 5, interval=0.05)
    # The dead letter still holds the task: re-driving it queues it again.
    response = await service.http.post("/dlq/gone/retry")
    assert response.status_code == 200, response.text
    record = await get(service, "gone")
    assert (record["status"], record["priority"], record["attempts"]) == ("queued", "high", 0)
    task = await pull(service)
    assert (task["code"], task["attempt"]) == ("print('kept')", 1)

    await service.http.post("/tasks/gone/fail", json={"error": "y", "retry": False})
    await wait_for(expired, 5, interval=0.05)
    await enqueue(service, eval_id="gone", code="new")  # a live task reuses the id
    before = await snapshot(client, streams)
    assert_error(await service.http.post("/dlq/gone/retry"), 409)
    assert await snapshot(client, streams) == before
    assert (await pull(service))["code"] == "new"


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


async def test_a_bug_answers_500_json_and_the_connection_stays_usable(
    service: Service, monkeypatch: pytest.MonkeyPatch
):
    """Not one of ours (a DataError from a bad argument, say): 500 JSON, never text/plain."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Queue, "get", broken)
    monkeypatch.setattr(Queue, "enqueue", broken)
    for response in (
        await service.http.get("/tasks/anything"),
        await service.http.post("/tasks", json={"code": "x"}),  # the HotPath shortcut
    ):
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": "internal error"}
    assert (await service.http.get("/livez")).status_code == 200
