"""Task dependencies (`depends_on`, `allow_failure`) end to end, against a real Redis and a
real loopback executor: deferral, release in order, fan-in, cascading cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from starlette.responses import JSONResponse, Response

from app.engine.client import connect
from tests.conftest import has_state, post, status_of, wait_for

OK = {"status": "success", "output": "", "exit_code": 0}


async def counts(svc: Any) -> dict[str, Any]:
    body: dict[str, Any] = (await svc.http.get("/status")).json()
    return body


async def dependants(client: Any, queue: str, eval_id: str) -> set[str]:
    """The dependant marks on a parent's record (`d:<child>`; `x:<child>` of other queues)."""
    fields = await client.hkeys(f"ts:{{{queue}}}:task:{eval_id}")
    return {f.decode() for f in fields if f[:2] in (b"d:", b"x:")}


async def pull_and_complete(svc: Any, eval_id: str) -> None:
    task = (await svc.http.get("/tasks/next")).json()
    assert task["eval_id"] == eval_id
    response = await svc.http.post(f"/tasks/{eval_id}/complete", json={"result": 1})
    assert response.status_code == 200, response.text


class Gates:
    """An executor handler that holds chosen tasks until released and fails chosen ones."""

    def __init__(self, held: Iterable[str] = (), fail: Iterable[str] = ()) -> None:
        self.events = {eval_id: asyncio.Event() for eval_id in held}
        self.fail = set(fail)
        self.order: list[str] = []

    async def handler(self, body: dict[str, Any]) -> Response:
        eval_id = body["eval_id"]
        if eval_id in self.events:
            await self.events[eval_id].wait()
        self.order.append(eval_id)
        if eval_id in self.fail:
            return JSONResponse({"error": "bad code"}, status_code=400)
        return JSONResponse(OK)

    def release(self, eval_id: str) -> None:
        self.events[eval_id].set()


async def served(make_service, make_executor, gates: Gates) -> Any:
    executor = await make_executor(gates.handler)
    return await make_service(executor_urls=(executor.url,))


async def test_chain_runs_in_order(make_service, make_executor):
    gates = Gates(held={"A"})
    svc = await served(make_service, make_executor, gates)
    await post(svc, "A")
    assert (await post(svc, "B", depends_on=["A"]))["status"] == "deferred"
    assert (await post(svc, "C", depends_on=["B"]))["status"] == "deferred"
    view = await status_of(svc, "C")
    assert view["status"] == "deferred"
    assert view["depends_on"] == ["B"]
    assert view["allow_failure"] is False
    gates.release("A")
    await wait_for(has_state(svc, "C", "completed"))
    assert gates.order == ["A", "B", "C"]
    assert (await counts(svc))["states"]["deferred"] == 0


async def test_fan_in_waits_for_every_parent(make_service, make_executor):
    gates = Gates(held={"A", "B"})
    svc = await served(make_service, make_executor, gates)
    await post(svc, "A")
    await post(svc, "B")
    assert (await post(svc, "C", depends_on=["A", "B"], priority="high"))["status"] == "deferred"
    status = await counts(svc)
    assert status["states"]["deferred"] == 1
    assert status["by_priority"]["deferred"] == {"high": 1, "default": 0, "low": 0}
    assert (await svc.http.get("/health")).json()["deferred"] == 1
    gates.release("A")
    await wait_for(has_state(svc, "A", "completed"))
    assert (await status_of(svc, "C"))["status"] == "deferred"
    gates.release("B")
    await wait_for(has_state(svc, "C", "completed"))
    assert gates.order == ["A", "B", "C"]
    assert (await counts(svc))["states"]["deferred"] == 0


async def test_failed_parent_cancels_the_chain(make_service, make_executor):
    gates = Gates(held={"A"}, fail={"A"})
    svc = await served(make_service, make_executor, gates)
    await post(svc, "A")
    await post(svc, "B", depends_on=["A"])
    await post(svc, "C", depends_on=["B"])
    gates.release("A")
    await wait_for(has_state(svc, "C", "cancelled"))
    assert (await status_of(svc, "A"))["status"] == "failed"
    assert (await status_of(svc, "B"))["error"] == "dependency A failed"
    assert (await status_of(svc, "C"))["error"] == "dependency B cancelled"
    assert gates.order == ["A"]
    status = await counts(svc)
    assert status["states"]["deferred"] == 0
    assert status["totals"]["cancelled"] == 2


async def test_allow_failure_runs_after_a_failed_parent(make_service, make_executor):
    gates = Gates(held={"A"}, fail={"A"})
    svc = await served(make_service, make_executor, gates)
    await post(svc, "A")
    assert (await post(svc, "B", depends_on=["A"], allow_failure=True))["status"] == "deferred"
    assert (await status_of(svc, "B"))["allow_failure"] is True
    gates.release("A")
    await wait_for(has_state(svc, "B", "completed"))
    assert gates.order == ["A", "B"]


async def test_cancelled_parent_cancels_children(service, redis_url, queue):
    await post(service, "A")
    await post(service, "B", depends_on=["A"])
    await post(service, "C", depends_on=["A"])
    assert (await service.http.post("/tasks/A/cancel")).status_code == 200
    for child in ("B", "C"):
        view = await status_of(service, child)
        assert (view["status"], view["error"]) == ("cancelled", "dependency A cancelled")
    assert (await counts(service))["states"]["deferred"] == 0
    client = connect(redis_url)
    try:
        assert not await dependants(client, queue, "A")
        assert not await client.hexists(f"ts:{{{queue}}}:task:A", "kids")
    finally:
        await client.aclose()


async def test_cancelled_deferred_child_stays_cancelled(service, redis_url, queue):
    await post(service, "A")
    await post(service, "B", depends_on=["A"])
    await post(service, "D", depends_on=["B"])
    assert (await counts(service))["states"]["deferred"] == 2
    response = await service.http.post("/tasks/B/cancel")
    assert response.json()["status"] == "cancelled"
    assert (await status_of(service, "D"))["error"] == "dependency B cancelled"
    status = await counts(service)
    assert status["states"]["deferred"] == 0
    client = connect(redis_url)
    try:
        assert not await dependants(client, queue, "A")  # B left it
        assert not await client.hexists(f"ts:{{{queue}}}:task:A", "kids")
    finally:
        await client.aclose()
    await pull_and_complete(service, "A")
    assert (await status_of(service, "B"))["status"] == "cancelled"
    status = await counts(service)
    assert status["states"]["queued"] == 0
    assert status["states"]["deferred"] == 0
    assert (await service.http.get("/tasks/next")).status_code == 204


async def test_unknown_parent_is_422_and_writes_nothing(service, redis_url, queue):
    await post(service, "A")
    client = connect(redis_url)
    try:
        counters = await client.hgetall(f"ts:{{{queue}}}:counters")
        events = await client.xlen(f"ts:{{{queue}}}:events")
        body = {"eval_id": "B", "code": "x", "depends_on": ["A", "nope", "gone"]}
        response = await service.http.post("/tasks", json=body)
        assert response.status_code == 422
        assert response.json() == {"error": "unknown parent(s): nope, gone"}
        assert not await client.exists(f"ts:{{{queue}}}:task:B")
        assert not await dependants(client, queue, "A")
        assert not await client.hexists(f"ts:{{{queue}}}:task:A", "kids")
        assert await client.hgetall(f"ts:{{{queue}}}:counters") == counters
        assert await client.xlen(f"ts:{{{queue}}}:events") == events
    finally:
        await client.aclose()


async def test_invalid_depends_on_is_422(service):
    cases: list[tuple[dict[str, Any], str]] = [
        ({"eval_id": "S", "depends_on": ["S"]}, "cycle"),
        ({"depends_on": []}, "depends_on"),
        ({"depends_on": "A"}, "depends_on"),
        ({"depends_on": ["A", "A"]}, "repeat"),
        ({"depends_on": ["bad id"]}, "eval_id"),
        ({"depends_on": [f"p{i}" for i in range(101)]}, "depends_on"),
        ({"allow_failure": "yes"}, "allow_failure"),
    ]
    for fields, word in cases:
        response = await service.http.post("/tasks", json={"code": "x", **fields})
        assert response.status_code == 422, fields
        assert word in response.json()["error"], response.json()


async def test_finished_parents_decide_at_once(service):
    await post(service, "done")
    await pull_and_complete(service, "done")
    await post(service, "bad")
    await service.http.get("/tasks/next")
    await service.http.post("/tasks/bad/fail", json={"error": "x", "retry": False})

    assert (await post(service, "q", depends_on=["done"]))["status"] == "queued"
    answer = await post(service, "c", depends_on=["done", "bad"])
    assert answer["status"] == "cancelled"
    assert answer["error"] == "dependency bad failed"
    assert (await status_of(service, "c"))["status"] == "cancelled"
    answer = await post(service, "a", depends_on=["bad"], allow_failure=True)
    assert answer["status"] == "queued"
    assert (await counts(service))["states"]["deferred"] == 0


async def test_batch_child_of_an_earlier_task(service, redis_url, queue):
    tasks = [
        {"eval_id": "A", "code": "x"},
        {"eval_id": "B", "code": "x", "depends_on": ["A"]},
        {"eval_id": "X", "code": "x", "depends_on": ["missing"]},
    ]
    response = await service.http.post("/tasks/batch", json={"tasks": tasks})
    assert response.status_code == 201
    answers = response.json()["tasks"]
    assert [a.get("status") for a in answers] == ["queued", "deferred", None]
    assert answers[2] == {"eval_id": "X", "error": "unknown parent(s): missing", "code": 422}
    client = connect(redis_url)
    try:
        assert await dependants(client, queue, "A") == {"d:B"}
        await pull_and_complete(service, "A")
        assert (await status_of(service, "B"))["status"] == "queued"
        assert not await dependants(client, queue, "A")
    finally:
        await client.aclose()
    await pull_and_complete(service, "B")


async def test_released_child_with_a_delay_is_scheduled(service):
    await post(service, "A")
    assert (await post(service, "B", depends_on=["A"], delay=600))["status"] == "deferred"
    await pull_and_complete(service, "A")
    view = await status_of(service, "B")
    assert view["status"] == "scheduled"
    assert "run_at" in view
    status = await counts(service)
    assert (status["states"]["scheduled"], status["states"]["deferred"]) == (1, 0)


async def test_clear_removes_dependants(service, redis_url, queue):
    await post(service, "A")
    await post(service, "B", depends_on=["A"])
    assert (await service.http.delete("/tasks")).json()["cleared"] == 2
    client = connect(redis_url)
    try:
        assert not [k async for k in client.scan_iter(match=f"ts:{{{queue}}}:task:*")]
    finally:
        await client.aclose()
    assert (await counts(service))["states"]["deferred"] == 0


async def test_fan_in_child_cancelled_by_one_parent_leaves_the_other(service, redis_url, queue):
    await post(service, "A")
    await post(service, "B")
    await post(service, "C", depends_on=["A", "B"])
    task = (await service.http.get("/tasks/next")).json()
    assert task["eval_id"] == "A"
    await service.http.post("/tasks/A/fail", json={"error": "x", "retry": False})
    assert (await status_of(service, "C"))["error"] == "dependency A failed"
    client = connect(redis_url)
    try:
        assert not await dependants(client, queue, "B")
    finally:
        await client.aclose()
    await pull_and_complete(service, "B")
    assert (await status_of(service, "C"))["status"] == "cancelled"
    status = await counts(service)
    assert (status["states"]["queued"], status["states"]["deferred"]) == (0, 0)
