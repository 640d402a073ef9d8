"""The legacy /tasks API (web/tasks.py) over real loopback HTTP: create, batch, pull,
get, complete, fail, cancel, clear.

Every test talks to the real app under uvicorn (`service.http`) backed by the session's
real redis-server; "bad input changes nothing" is checked against the queue's Redis keys.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from app.engine import views
from app.engine.queue import Queue
from app.models import EVAL_ID_RE
from app.settings import RetryPolicy
from tests.conftest import Service
from tests.web.conftest import (
    MakeService,
    assert_error,
    assert_unknown,
    enqueue,
    get,
    pull,
    snapshot,
)

ISO_RE = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


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


# --- long-poll hygiene --------------------------------------------------------------


async def test_an_abandoned_long_poll_does_not_swallow_a_task(service: Service):
    with pytest.raises(httpx.ReadTimeout):
        await service.http.get("/tasks/next", params={"wait": 5}, timeout=0.3)
    await asyncio.sleep(0.1)  # the server has seen the disconnect
    await enqueue(service, eval_id="orphan")
    task = await pull(service, wait=2)
    assert task["eval_id"] == "orphan"
