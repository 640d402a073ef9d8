"""A partitioned queue (QUEUE_PARTITIONS, engine/partitions.py) through the whole service on
one server: the consumers run every partition's tasks, pull workers and long polls take
from every partition, /status and /metrics show one queue (partitions summed), pause
reaches every partition, and a callback of a task of any partition is sent. The cluster
runs the same flows in tests/test_cluster.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.engine.partitions import place
from tests.conftest import Service, has_state, post, wait_for
from tests.web.test_live import Events


@pytest.fixture
async def service_partitioned(make_service, queue: str) -> Service:
    """The service, no executors (pull workers), the default queue over 3 partitions."""
    svc: Service = await make_service(queue_partitions={queue: 3})
    return svc


def spread_ids(count: int, parts: int, prefix: str = "t") -> list[str]:
    """`count` (>= `parts`) ids that use every one of `parts` partitions."""
    pool = [f"{prefix}{i}" for i in range(1000)]
    firsts = [next(i for i in pool if place(i, parts) == p) for p in range(parts)]
    return [*firsts, *[i for i in pool if i not in firsts][: count - parts]]


async def test_consumers_run_every_partition(make_service, make_executor, queue):
    executor = await make_executor()
    svc = await make_service(queue_partitions={queue: 4}, executor_urls=(executor.url,))
    ids = spread_ids(40, 4)
    batch = {"tasks": [{"eval_id": i, "code": "x"} for i in ids]}
    assert (await svc.http.post("/tasks/batch", json=batch)).status_code == 201
    for eval_id in ids:
        await wait_for(has_state(svc, eval_id, "completed"))
    status = (await svc.http.get("/status")).json()
    assert status["totals"]["completed"] == 40, status
    assert status["states"]["queued"] == 0
    minutes = (await svc.http.get("/stats")).json()["minutes"]
    assert sum(row.get("completed", 0) for row in minutes) == 40, minutes


async def test_pull_workers_take_from_every_partition(service_partitioned):
    svc = service_partitioned
    ids = spread_ids(12, 3, "pull")
    for eval_id in ids:
        await post(svc, eval_id)
    status = (await svc.http.get("/status")).json()
    assert status["states"]["queued"] == 12
    taken = []
    for _ in ids:
        response = await svc.http.get("/tasks/next")
        assert response.status_code == 200, response.text
        taken.append(response.json()["eval_id"])
    assert sorted(taken) == sorted(ids)
    assert (await svc.http.get("/tasks/next")).status_code == 204


async def test_a_long_poll_wakes_for_a_task_of_any_partition(service_partitioned):
    svc = service_partitioned
    for eval_id in spread_ids(3, 3, "late"):
        started = time.monotonic()
        waiting = asyncio.create_task(svc.http.get("/tasks/next", params={"wait": 8}))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await post(svc, eval_id)
        response = await waiting
        assert response.json()["eval_id"] == eval_id
        assert time.monotonic() - started < 4


async def test_metrics_show_one_queue_and_pause_reaches_every_partition(service_partitioned, queue):
    svc = service_partitioned
    for eval_id in spread_ids(9, 3, "m"):
        await post(svc, eval_id)
    text = (await svc.http.get("/metrics")).text
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("taskstream_queue_length{")
        and f'queue="{queue}"' in line
        and 'state="queued"' in line
    ]
    assert len(lines) == 3, lines  # one per priority, partitions summed
    assert any('priority="default"' in line and line.endswith(" 9.0") for line in lines), lines
    assert (await svc.http.post(f"/queues/{queue}/pause")).status_code == 200
    assert (await svc.http.get("/tasks/next")).status_code == 204
    assert (await svc.http.get("/status")).json()["paused"] is True
    assert (await svc.http.post(f"/queues/{queue}/resume")).status_code == 200
    assert (await svc.http.get("/tasks/next")).status_code == 200


async def test_dependencies_across_partitions_release_through_the_sender(service_partitioned):
    """The callback sender reads every partition's callbacks stream: parents in several
    partitions release their dependant in another one, by relay."""
    svc = service_partitioned
    parents = spread_ids(6, 3, "par")
    for eval_id in parents:
        await post(svc, eval_id)
    child = next(f"kid{i}" for i in range(50) if place(f"kid{i}", 3) != place(parents[0], 3))
    assert (await post(svc, child, depends_on=parents))["status"] == "deferred"
    for _ in parents:
        task = (await svc.http.get("/tasks/next")).json()
        assert task["eval_id"] in parents
        done = await svc.http.post(f"/tasks/{task['eval_id']}/complete", json={"result": 1})
        assert done.status_code == 200, done.text
    await wait_for(has_state(svc, child, "queued"))
    assert (await svc.http.get("/tasks/next")).json()["eval_id"] == child


async def test_cancel_by_id_finds_every_partition(service_partitioned):
    svc = service_partitioned
    ids = spread_ids(6, 3, "can")
    for eval_id in ids:
        await post(svc, eval_id)
    for eval_id in ids:
        response = await svc.http.post(f"/tasks/{eval_id}/cancel")
        assert response.status_code == 200, response.text
        assert (await svc.http.get(f"/tasks/{eval_id}")).json()["status"] == "cancelled"
    assert (await svc.http.get("/tasks/next")).status_code == 204


async def test_events_follow_every_partition_and_resume_from_the_vector(service_partitioned):
    """GET /events of a partitioned queue merges its partitions' events streams; an event's
    id is every partition's position, and resuming with it misses and repeats nothing."""
    svc = service_partitioned
    ids = spread_ids(6, 3, "ev")
    async with svc.http.stream("GET", "/events") as stream:
        assert stream.status_code == 200
        events = Events(stream)
        for eval_id in ids[:3]:
            await post(svc, eval_id)
        first = await events.next(3)
    assert sorted(e["data"]["eval_id"] for e in first) == sorted(ids[:3])
    assert all(len(e["id"].split(",")) == 3 for e in first), first
    for eval_id in ids[3:]:
        await post(svc, eval_id)
    headers = {"Last-Event-ID": first[0]["id"]}
    async with svc.http.stream("GET", "/events", headers=headers) as stream:
        rest = await Events(stream).next(5)
    assert sorted(e["data"]["eval_id"] for e in rest) == sorted([*ids[1:3], *ids[3:]])
    async with svc.http.stream("GET", "/events?last_event_id=0") as stream:
        everything = await Events(stream).next(6)
    assert sorted(e["data"]["eval_id"] for e in everything) == sorted(ids)
    at = [e["data"]["at"] for e in everything]
    assert at == sorted(at)  # merged by time
    bad = await svc.http.get("/events", headers={"Last-Event-ID": "1-0,yesterday"})
    assert bad.status_code == 422


async def test_listing_pages_through_every_partition(service_partitioned):
    svc = service_partitioned
    ids = spread_ids(12, 3, "ls")
    for eval_id in ids:
        await post(svc, eval_id)
    seen: list[str] = []
    positions: list[int] = []
    cursor = None
    while True:
        params = {"state": "queued", "limit": 5, **({"cursor": cursor} if cursor else {})}
        response = await svc.http.get("/tasks", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [t["eval_id"] for t in page["tasks"]]
        positions += [t["position"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)  # each once
    assert all(1 <= p <= 12 for p in positions), positions  # estimated across partitions


async def test_dead_letters_of_every_partition(service_partitioned):
    svc = service_partitioned
    ids = spread_ids(6, 3, "dl")
    for eval_id in ids:
        await post(svc, eval_id)
    for _ in ids:
        task = (await svc.http.get("/tasks/next")).json()
        body = {"error": "x", "retry": False}
        failed = await svc.http.post(f"/tasks/{task['eval_id']}/fail", json=body)
        assert failed.status_code == 200, failed.text
    dlq = (await svc.http.get("/dlq")).json()
    assert dlq["count"] == 6 and sorted(t["eval_id"] for t in dlq["tasks"]) == sorted(ids)
    assert len((await svc.http.get("/dlq", params={"limit": 2, "offset": 4})).json()["tasks"]) == 2
    for eval_id in ids[:3]:
        retried = await svc.http.post(f"/dlq/{eval_id}/retry")
        assert retried.status_code == 200, retried.text
        assert (await svc.http.get(f"/tasks/{eval_id}")).json()["status"] == "queued"
    assert (await svc.http.delete(f"/dlq/{ids[3]}")).status_code == 200
    assert (await svc.http.get("/dlq")).json()["count"] == 2
    assert (await svc.http.delete("/dlq")).status_code == 200
    assert (await svc.http.get("/dlq")).json()["count"] == 0


async def test_detail_history_and_oldest_waiting_span_the_partitions(service_partitioned, queue):
    svc = service_partitioned
    ids = spread_ids(6, 3, "hi")
    for eval_id in ids:
        await post(svc, eval_id)
    for eval_id in ids:
        found = await svc.http.get(f"/tasks/{eval_id}/detail")
        assert found.status_code == 200, found.text
        assert found.json()["state"] == "queued" and found.json()["queue"] == queue
    points = (await svc.http.get("/stats/history", params={"points": 2})).json()["points"]
    assert sum(p.get("queued", 0) for p in points) == 6
    hours = (await svc.http.get("/stats/history?resolution=hour&points=2")).json()["points"]
    assert sum(p.get("queued", 0) for p in hours) == 6
    status = (await svc.http.get("/status")).json()
    assert status["oldest_waiting"]["default"]["eval_id"] in ids
