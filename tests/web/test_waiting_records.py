"""What a waiting task shows over HTTP now that its record is lean (issue 14, memory): a
task queued at its creation has no `created` in its record (its stream entry's id holds
the time) and, at priority `default`, no `prio`, until it leaves the queue. Every reader a
user or operator meets must still answer its priority and its creation time: GET
/tasks/{id}, GET /tasks?state=…, the task detail page's JSON, and the record once it was
cancelled, expired or dead-lettered without ever starting."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from app.engine.queue import Queue
from tests.conftest import Service
from tests.eas.conftest import eas_service, put, sink_status
from tests.engine.conftest import server_ms
from tests.web.conftest import enqueue, get, pull


def ms(iso: str | None) -> int:
    assert iso is not None
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


async def listed(service: Service, state: str) -> list[dict[str, Any]]:
    response = await service.http.get("/tasks", params={"state": state})
    assert response.status_code == 200, response.text
    tasks: list[dict[str, Any]] = response.json()["tasks"]
    return tasks


async def test_waiting_tasks_show_priority_and_creation_time(
    service: Service, client: Any, streams: Queue
):
    start = await server_ms(client)
    for eval_id, priority in (("w1", "default"), ("w2", "default"), ("w3", "high")):
        await enqueue(service, eval_id=eval_id, priority=priority)
    end = await server_ms(client)
    stored = await client.hgetall(streams.keys.task("w1"))
    assert b"created" not in stored and b"prio" not in stored  # the lean layout is in use

    one = await get(service, "w1")
    assert one["priority"] == "default" and start <= ms(one["created_at"]) <= end
    page = await listed(service, "queued")
    assert [(t["eval_id"], t["priority"]) for t in page] == [
        ("w3", "high"),
        ("w1", "default"),
        ("w2", "default"),
    ]
    created = {t["eval_id"]: ms(t["created_at"]) for t in page}
    assert all(start <= at <= end for at in created.values())
    assert created["w1"] <= created["w2"] <= created["w3"]  # creation order, FIFO within
    assert created["w1"] == ms(one["created_at"])

    detail = (await service.http.get("/tasks/w1/detail")).json()
    assert [e["state"] for e in detail["timeline"]] == ["queued"]
    assert detail["timeline_complete"] is True
    assert detail["payload"]["code"] == "print(1)"

    # leaving the queue keeps the time: started, or cancelled while waiting
    assert (await pull(service))["eval_id"] == "w3"
    assert (await pull(service))["eval_id"] == "w1"
    started = await get(service, "w1")
    assert ms(started["created_at"]) == created["w1"] and started["priority"] == "default"
    assert (await service.http.post("/tasks/w2/cancel")).status_code == 200
    cancelled = await get(service, "w2")
    assert ms(cancelled["created_at"]) == created["w2"] and cancelled["priority"] == "default"
    [shown] = await listed(service, "cancelled")
    assert shown["eval_id"] == "w2" and ms(shown["created_at"]) == created["w2"]
    running = {t["eval_id"]: ms(t["created_at"]) for t in await listed(service, "processing")}
    assert running == {"w1": created["w1"], "w3": created["w3"]}


async def test_an_expired_waiting_task_keeps_its_creation_time(service: Service, client: Any):
    start = await server_ms(client)
    await enqueue(service, eval_id="x1", expires=0.05)
    created = ms((await get(service, "x1"))["created_at"])
    assert start <= created
    deadline = time.monotonic() + 10
    while await server_ms(client) <= created + 100:  # past its expiry by the Redis clock
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    while (record := await get(service, "x1"))["status"] != "expired":
        assert time.monotonic() < deadline, record
        response = await service.http.get("/tasks/next")  # a claim meets it expired
        assert response.status_code == 204, response.text
    assert ms(record["created_at"]) == created and record["priority"] == "default"
    [shown] = await listed(service, "expired")
    assert ms(shown["created_at"]) == created


async def test_an_eas_item_shows_its_creation_time(make_service: Any, svc: str, client: Any):
    """PAI-EAS items (numbered queues) write `created` themselves; their waiting records
    lack `prio` at `default` too, and the imitation's status still reads."""
    service = await eas_service(make_service, svc)
    start = await server_ms(client)
    index = await put(service, svc)
    response = await sink_status(service, svc, index)
    assert response.status_code in (200, 202), response.text
    assert start <= ms(response.json()["created_at"]) <= await server_ms(client)


async def test_an_orphan_entry_at_the_tail_leaves_no_phantom_task(
    service: Service, client: Any, streams: Queue
):
    """An entry whose record is gone (an operator's DEL, an eviction) carries no sequence
    number any more: the claim that drops it must still count it handed out, or a
    phantom task stays queued — in the counts and ahead of every later task."""
    await enqueue(service, eval_id="o1")
    await enqueue(service, eval_id="o2")
    await client.delete(streams.keys.task("o2"))
    assert (await pull(service))["eval_id"] == "o1"
    response = await service.http.get("/tasks/next")  # this claim meets o2's entry: dropped
    assert response.status_code == 204, response.text
    assert await client.xlen(streams.keys.stream("default")) == 1  # (o1's, in flight)
    status = (await service.http.get("/status")).json()
    assert status["states"]["queued"] == 0, status
    assert (await enqueue(service, eval_id="o3"))["position"] == 1
    assert (await get(service, "o3"))["position"] == 1
    assert [t["position"] for t in await listed(service, "queued")] == [1]
