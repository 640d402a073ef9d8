"""Expiry end to end (issue 15, item 4): two replicas of the service on one Redis, real
loopback executors that count their calls. A task not started by its `expires` time is
`expired` whatever it waited in (queued behind a paused queue or a busy executor,
scheduled, retrying, deferred behind a parent), is never executed, and shows in the event
stream, `/status`, `/stats` and `/metrics`."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from starlette.responses import JSONResponse, Response

from app.engine.keys import QueueKeys
from tests.conftest import Service, StubExecutor, has_state, post, status_of, wait_for

OK = {"status": "success", "output": "", "exit_code": 0}


class Held:
    """An executor handler that holds chosen tasks until released and fails chosen ones
    with a 500 (a retryable error)."""

    def __init__(self, held: Iterable[str] = (), broken: Iterable[str] = ()) -> None:
        self.gates = {eval_id: asyncio.Event() for eval_id in held}
        self.broken = set(broken)

    async def handler(self, body: dict[str, Any]) -> Response:
        gate = self.gates.get(body["eval_id"])
        if gate is not None:
            await gate.wait()
        if body["eval_id"] in self.broken:
            return JSONResponse({"error": "down"}, status_code=500)
        return JSONResponse(OK)

    def release(self) -> None:
        for gate in self.gates.values():
            gate.set()


async def replicas(
    make_service: Callable[..., Awaitable[Service]], executor: StubExecutor, **settings: Any
) -> list[Service]:
    """Two replicas of the service on one Redis and one queue, each with the executor."""
    return [await make_service(executor_urls=(executor.url,), **settings) for _ in range(2)]


def calls(executor: StubExecutor, eval_id: str) -> int:
    return sum(call["eval_id"] == eval_id for call in executor.calls)


async def expired_everywhere(svcs: list[Service], eval_id: str, timeout: float = 10) -> None:
    """Expired, as both replicas answer; with its `expires_at` shown."""
    await wait_for(has_state(svcs[0], eval_id, "expired"), timeout=timeout)
    for svc in svcs:
        record = await status_of(svc, eval_id)
        assert record["status"] == "expired" and record["expires_at"]
        assert record["error"] == "expired before it started"


async def expired_metric(svc: Service) -> float:
    text = (await svc.http.get("/metrics")).text
    found = re.findall(r"^taskstream_tasks_expired_total\{[^}]*\} (\S+)$", text, re.M)
    return sum(float(v) for v in found)


async def assert_counted(svcs: list[Service], client: Any, eval_ids: list[str]) -> None:
    """The expiries in the shared totals, the per-minute stats, the events stream, and
    (once, whichever replica settled each) in the replicas' counters."""
    status = (await svcs[0].http.get("/status")).json()
    assert status["totals"]["expired"] == len(eval_ids)
    stats = (await svcs[1].http.get("/stats", params={"minutes": 5})).json()
    assert sum(m.get("expired", 0) for m in stats["minutes"]) == len(eval_ids)
    keys = QueueKeys.default(svcs[0].settings.queue)
    events = await client.xrange(keys.events)
    expired = {f[b"id"].decode() for _, f in events if f[b"state"] == b"expired"}
    assert expired == set(eval_ids)
    assert sum([await expired_metric(svc) for svc in svcs]) == len(eval_ids)
    assert (await svcs[0].http.get("/dlq")).json()["count"] == 0


async def test_queued_behind_a_paused_queue(make_service, make_executor, client, queue):
    executor = await make_executor()
    svcs = await replicas(make_service, executor)
    assert (await svcs[0].http.post(f"/queues/{queue}/pause")).status_code == 200
    answer = await post(svcs[1], "late", expires=0.5)
    assert answer["status"] == "queued"
    assert (await status_of(svcs[0], "late"))["expires_at"]
    await expired_everywhere(svcs, "late")
    assert (await svcs[1].http.post(f"/queues/{queue}/resume")).status_code == 200
    await post(svcs[0], "after")
    await wait_for(has_state(svcs[0], "after", "completed"))
    assert calls(executor, "late") == 0
    await assert_counted(svcs, client, ["late"])
    cancel = await svcs[0].http.post("/tasks/late/cancel")
    assert cancel.status_code == 409, cancel.text


async def test_queued_behind_a_busy_executor(make_service, make_executor, client):
    held = Held(held={"b0", "b1"})
    executor = await make_executor(held.handler)
    svcs = await replicas(make_service, executor, concurrency=1)
    await post(svcs[0], "b0")
    await post(svcs[1], "b1")
    for eval_id in ("b0", "b1"):
        await wait_for(has_state(svcs[0], eval_id, "processing"))
    await post(svcs[0], "victim", expires=0.5)
    await post(svcs[1], "patient", expires=60)
    await expired_everywhere(svcs, "victim")
    assert (await status_of(svcs[1], "patient"))["status"] == "queued"
    held.release()
    await wait_for(has_state(svcs[0], "patient", "completed"))
    assert calls(executor, "victim") == 0 and calls(executor, "patient") == 1
    await assert_counted(svcs, client, ["victim"])


async def test_scheduled(make_service, make_executor, client):
    executor = await make_executor()
    svcs = await replicas(make_service, executor)
    assert (await post(svcs[0], "sched", delay=2, expires=0.5))["status"] == "scheduled"
    await post(svcs[1], "sched-ok", delay=0.3, expires=30)
    await expired_everywhere(svcs, "sched")
    await wait_for(has_state(svcs[0], "sched-ok", "completed"))
    assert calls(executor, "sched") == 0
    await assert_counted(svcs, client, ["sched"])


async def test_retrying(make_service, make_executor, client):
    held = Held(broken={"flaky"})
    executor = await make_executor(held.handler)
    svcs = await replicas(make_service, executor)  # retries wait 50 s in these settings
    await post(svcs[0], "flaky", expires=1)
    await wait_for(has_state(svcs[1], "flaky", "retrying"))
    await expired_everywhere(svcs, "flaky")
    record = await status_of(svcs[0], "flaky")
    assert record["attempts"] == 1
    assert calls(executor, "flaky") == 1  # the first attempt only
    await assert_counted(svcs, client, ["flaky"])


async def test_deferred_behind_a_parent(make_service, make_executor, client):
    held = Held(held={"parent"})
    executor = await make_executor(held.handler)
    svcs = await replicas(make_service, executor)
    await post(svcs[0], "parent")
    await wait_for(has_state(svcs[0], "parent", "processing"))
    answer = await post(svcs[1], "child", depends_on=["parent"], expires=0.5)
    assert answer["status"] == "deferred"
    await post(svcs[0], "grandchild", depends_on=["child"])
    await expired_everywhere(svcs, "child")
    grandchild = await status_of(svcs[1], "grandchild")
    assert grandchild["status"] == "cancelled"
    assert grandchild["error"] == "dependency child expired"
    held.release()
    await wait_for(has_state(svcs[0], "parent", "completed"))
    assert calls(executor, "child") == 0 and calls(executor, "grandchild") == 0
    assert (await status_of(svcs[0], "child"))["status"] == "expired"
    await assert_counted(svcs, client, ["child"])


async def test_a_pull_worker_never_gets_an_expired_task(make_service):
    svc = await make_service()  # no executors: pull only
    await post(svc, "old", expires=0.2)
    await post(svc, "new")
    await wait_for(has_state(svc, "old", "expired"), timeout=5)
    pulled = (await svc.http.get("/tasks/next")).json()
    assert pulled["eval_id"] == "new"
    assert (await svc.http.get("/tasks/next")).status_code == 204


async def test_an_expired_task_gets_its_callback(make_service, make_target):
    target = await make_target()
    svc = await make_service()
    hook = f"{target.url}/hook"
    await post(svc, "cb", delay=30, expires=0.3, callback_url=hook)
    await expired_everywhere([svc], "cb")

    async def delivered() -> bool:
        return bool(target.calls)

    await wait_for(delivered)
    body = orjson.loads(target.calls[0]["body"])
    assert body["eval_id"] == "cb" and body["status"] == "expired"
    assert body["error"] == "expired before it started" and body["attempts"] == 0
