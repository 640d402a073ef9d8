"""POST /tasks/{eval_id}/renew: a pull worker keeps its task's lease (TASK_TIMEOUT s from
each call), fenced by its delivery token like complete and fail."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.engine.queue import Queue
from tests.web.conftest import MakeService, assert_error, enqueue, get, pull, snapshot


def token(task: dict[str, Any]) -> dict[str, Any]:
    return {"lease": task["lease"], "attempt": task["attempt"]}


async def test_renewing_keeps_a_task_past_its_lease(make_service: MakeService):
    service = await make_service(task_timeout=1.0)
    await enqueue(service, eval_id="r1")
    task = await pull(service)
    assert task["lease_timeout"] == 1.0
    for _ in range(4):  # 2 s in all, twice the lease
        await asyncio.sleep(0.5)
        response = await service.http.post("/tasks/r1/renew", json=token(task))
        assert response.status_code == 200, response.text
        assert response.json() == {
            "eval_id": "r1",
            "status": "processing",
            "queue": service.settings.queue,
            "lease_timeout": 1.0,
        }
    assert (await service.http.get("/tasks/next")).status_code == 204  # still ours
    done = await service.http.post("/tasks/r1/complete", json={"result": 1, **token(task)})
    assert done.status_code == 200
    assert (await get(service, "r1"))["attempts"] == 1


async def test_a_lapsed_lease_cannot_be_renewed(make_service: MakeService):
    service = await make_service(task_timeout=0.3)
    await enqueue(service, eval_id="r2")
    task = await pull(service)
    await asyncio.sleep(0.5)
    refused = assert_error(await service.http.post("/tasks/r2/renew", json=token(task)), 409)
    assert "lost" in refused
    again = await pull(service)  # another worker takes it over: attempt 2
    assert again["attempt"] == 2
    assert_error(await service.http.post("/tasks/r2/renew", json=token(task)), 409)
    assert (await service.http.post("/tasks/r2/renew", json=token(again))).status_code == 200


@pytest.mark.parametrize("stale", [{"attempt": 2}, {"lease": "1-1"}])
async def test_renew_with_a_stale_token_is_409_and_changes_nothing(
    service, client: Any, streams: Queue, stale: dict[str, Any]
):
    await enqueue(service, eval_id="r3")
    task = await pull(service)
    before = await snapshot(client, streams)
    body = {**token(task), **stale}
    assert_error(await service.http.post("/tasks/r3/renew", json=body), 409)
    assert await snapshot(client, streams) == before


async def test_renew_of_a_finished_or_unknown_task(service):
    await enqueue(service, eval_id="r4")
    task = await pull(service)
    await service.http.post("/tasks/r4/complete", json={"result": 1})
    message = assert_error(await service.http.post("/tasks/r4/renew", json=token(task)), 409)
    assert message.startswith("task is completed")
    body = {"lease": "1-0", "attempt": 1}
    assert_error(await service.http.post("/tasks/ghost/renew", json=body), 404)


@pytest.mark.parametrize("body", [{}, {"lease": "1-0"}, {"lease": 1, "attempt": 1}, [1]])
async def test_renew_needs_the_token(service, frozen: Callable[[], Awaitable[None]], body: Any):
    await enqueue(service, eval_id="r5")
    assert_error(await service.http.post("/tasks/r5/renew", json=body), 422)


async def test_renew_finds_a_named_queues_task_without_or_with_a_wrong_hint(service):
    await enqueue(service, eval_id="r6", queue="gpu")
    response = await service.http.get("/tasks/next", params={"queue": "gpu"})
    task = response.json()
    for params in ({}, {"queue": service.settings.queue}, {"queue": "gpu"}):
        renewed = await service.http.post("/tasks/r6/renew", params=params, json=token(task))
        assert renewed.status_code == 200, renewed.text
        assert renewed.json()["queue"] == "gpu"
