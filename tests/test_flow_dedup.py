"""Deduplication end to end (issue 15, item 3): two replicas of the service on one Redis,
real loopback executors that count their calls. Concurrent requests with one key make
one task whichever replica they reach; throttle and debounce hold on the Redis clock; an
`active` key is free again once its task finished."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
from starlette.responses import JSONResponse, Response

from app.engine.keys import QueueKeys
from tests.conftest import Service, StubExecutor, has_state, status_of, wait_for

OK = {"status": "success", "output": "", "exit_code": 0}


async def replicas(
    make_service: Callable[..., Awaitable[Service]], executor: StubExecutor | None = None
) -> list[Service]:
    urls = (executor.url,) if executor else ()
    return [await make_service(executor_urls=urls) for _ in range(2)]


async def send(svc: Service, **task: Any) -> httpx.Response:
    return await svc.http.post("/tasks", json={"code": "x", **task})


def executed(executor: StubExecutor) -> list[str]:
    return [call["eval_id"] for call in executor.calls]


async def test_fifty_concurrent_requests_from_two_replicas_make_one_task(make_service, client):
    svcs = await replicas(make_service)
    answers = await asyncio.gather(
        *(send(svcs[i % 2], dedup_key="report:42", metadata={"i": i}) for i in range(50))
    )
    created = [a for a in answers if a.status_code == 201]
    deduplicated = [a for a in answers if a.status_code == 200]
    assert len(created) == 1 and len(deduplicated) == 49, [a.text for a in answers]
    survivor = created[0].json()["eval_id"]
    for answer in deduplicated:
        assert answer.json() == {"eval_id": survivor, "status": "queued", "deduplicated": True}
    status = (await svcs[1].http.get("/status")).json()
    assert status["states"]["queued"] == 1
    assert status["totals"] == {"enqueued": 1, "deduplicated": 49}
    keys = QueueKeys.default(svcs[0].settings.queue)
    assert await client.hgetall(keys.dedup) == {b"report:42": survivor.encode()}
    task = (await svcs[0].http.get("/tasks/next")).json()
    assert task["eval_id"] == survivor
    assert (await svcs[0].http.get("/tasks/next")).status_code == 204


async def test_batches_and_single_requests_race_to_one_task(make_service):
    svcs = await replicas(make_service)
    item = {"code": "x", "dedup_key": "k"}
    singles = [send(svcs[i % 2], dedup_key="k") for i in range(20)]
    batches = [
        svcs[i % 2].http.post("/tasks/batch", json={"tasks": [item, item, item]}) for i in range(10)
    ]
    answers = await asyncio.gather(*singles, *batches)
    names: list[dict[str, Any]] = []
    for answer in answers[:20]:
        assert answer.status_code in (200, 201)
        names.append(answer.json())
    for answer in answers[20:]:
        assert answer.status_code == 201
        names += answer.json()["tasks"]
    fresh = [n for n in names if not n.get("deduplicated")]
    assert len(fresh) == 1 and len(names) == 50
    assert {n["eval_id"] for n in names} == {fresh[0]["eval_id"]}


async def test_active_key_is_free_once_the_task_finished(make_service, make_executor):
    gate = asyncio.Event()

    async def hold(body: dict[str, Any]) -> Response:
        await gate.wait()
        return JSONResponse(OK)

    executor = await make_executor(hold)
    svcs = await replicas(make_service, executor)
    first = await send(svcs[0], eval_id="a1", dedup_key="nightly")
    assert first.status_code == 201
    await wait_for(has_state(svcs[0], "a1", "processing"))
    again = await send(svcs[1], eval_id="a2", dedup_key="nightly")
    assert again.status_code == 200
    assert again.json() == {"eval_id": "a1", "status": "processing", "deduplicated": True}
    gate.set()
    await wait_for(has_state(svcs[1], "a1", "completed"))
    third = await send(svcs[1], eval_id="a3", dedup_key="nightly")
    assert third.status_code == 201
    await wait_for(has_state(svcs[0], "a3", "completed"))
    assert executed(executor) == ["a1", "a3"]
    assert (await svcs[0].http.get("/tasks/a2")).status_code == 404


async def test_throttle_runs_one_task_per_window(make_service, make_executor):
    executor = await make_executor()
    svcs = await replicas(make_service, executor)
    throttled = {"dedup_key": "t", "dedup": "throttle", "dedup_ttl": 1}
    answers = [await send(svcs[i % 2], eval_id=f"t{i}", **throttled) for i in range(5)]
    assert [a.status_code for a in answers] == [201, 200, 200, 200, 200]
    await wait_for(has_state(svcs[0], "t0", "completed"))
    assert (await send(svcs[1], eval_id="t5", **throttled)).json()["status"] == "completed"

    async def window_lapsed() -> bool:
        answer = await send(svcs[0], eval_id="t6", **throttled)
        return answer.status_code == 201

    await wait_for(window_lapsed, timeout=5, interval=0.1)
    await wait_for(has_state(svcs[1], "t6", "completed"))
    assert executed(executor) == ["t0", "t6"]


async def test_debounce_runs_once_with_the_newest_payload(make_service, make_executor, client):
    executor = await make_executor()
    svcs = await replicas(make_service, executor)
    debounced = {"dedup_key": "d", "dedup": "debounce", "dedup_ttl": 0.5}
    first = await send(svcs[0], eval_id="d0", metadata={"n": 0}, **debounced)
    assert first.status_code == 201 and first.json()["status"] == "scheduled"
    for n in range(1, 5):
        await asyncio.sleep(0.1)
        answer = await send(svcs[n % 2], eval_id=f"d{n}", metadata={"n": n}, **debounced)
        assert answer.json() == {"eval_id": "d0", "status": "scheduled", "deduplicated": True}
    seconds, micros = await client.time()
    last_request_ms = int(seconds) * 1000 + int(micros) // 1000
    await wait_for(has_state(svcs[1], "d0", "completed"))
    assert executed(executor) == ["d0"]
    assert executor.calls[0]["metadata"] == {"n": 4}
    record = await status_of(svcs[0], "d0")
    started_ms = int(datetime.fromisoformat(record["started_at"]).timestamp() * 1000)
    assert started_ms >= last_request_ms + 400  # 0.5 s after the newest request (≤ 0.1 s ago)
    # it started: a new request makes a new task
    fresh = await send(svcs[0], eval_id="d5", **debounced)
    assert fresh.status_code == 201
