"""GET /metrics: process counters and histograms, Redis gauges, per-app registries, outages.

Real service apps under uvicorn, the session's redis-server and loopback stub executors;
the exposition is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import JSONResponse, Response

from app.settings import RetryPolicy
from tests.conftest import ROOT, Service, StubExecutor, wait_for

MakeService = Callable[..., Awaitable[Service]]
MakeExecutor = Callable[..., Awaitable[StubExecutor]]
FAST = RetryPolicy(3, 0.05, 2.0, 1.0, False)
SLOW = RetryPolicy(3, 60.0, 2.0, 60.0, False)  # a retried task stays `retrying`
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Scrape:
    types: dict[str, str]  # family name -> counter / gauge / histogram
    samples: list[tuple[str, dict[str, str], float]]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels` (0 when none)."""
        return sum(
            v
            for n, found, v in self.samples
            if n == name and all(found.get(k) == want for k, want in labels.items())
        )

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)


def parse(text: str) -> Scrape:
    types, samples = {}, []
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        samples += [(s.name, dict(s.labels), s.value) for s in family.samples]
    return Scrape(types, samples)


async def scrape(service: Service, **headers: str) -> Scrape:
    response = await service.http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE
    return parse(response.text)


async def enqueue(service: Service, **task: Any) -> dict[str, Any]:
    task.setdefault("code", "print(1)")
    response = await service.http.post("/tasks", json=task)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def reaches(service: Service, eval_id: str, state: str) -> None:
    async def check() -> bool:
        response = await service.http.get(f"/tasks/{eval_id}")
        return response.status_code == 200 and response.json()["status"] == state

    await wait_for(check)


async def settled(service: Service, name: str, want: float, **labels: str) -> Scrape:
    """Scrape until a process counter reaches `want`: a task's record changes in the same
    script as the counter's cause, but the consumer counts right after the script answers."""
    found: Scrape | None = None

    async def check() -> bool:
        nonlocal found
        found = await scrape(service)
        return found.value(name, **labels) >= want

    await wait_for(check)
    assert found is not None
    return found


async def answer(status: int, body: Any) -> Response:
    return JSONResponse(body, status_code=status)


# --- counters and histograms ------------------------------------------------------------


async def test_counters_and_histograms_after_executions(
    make_executor: MakeExecutor, make_service: MakeService, queue: str
):
    executor = await make_executor()
    svc = await make_service(executor_urls=(executor.url,))
    await enqueue(svc, eval_id="h1", priority="high")
    await enqueue(svc, eval_id="h2", priority=True)
    await enqueue(svc, eval_id="d1")
    batch = await svc.http.post(
        "/tasks/batch",
        json={
            "tasks": [
                {"eval_id": "l1", "code": "1", "priority": "low"},
                {"eval_id": "d1", "code": "1"},
            ]
        },
    )
    assert batch.status_code == 201 and batch.json()["tasks"][1]["code"] == 409
    for eval_id in ("h1", "h2", "d1", "l1"):
        await reaches(svc, eval_id, "completed")

    m = await settled(svc, "taskstream_tasks_completed_total", 4)
    enq = "taskstream_tasks_enqueued_total"
    assert m.value(enq, queue=queue, priority="high") == 2
    assert m.value(enq, queue=queue, priority="default") == 1  # the duplicate is not counted
    assert m.value(enq, queue=queue, priority="low") == 1
    done = "taskstream_tasks_completed_total"
    assert m.value(done, queue=queue, priority="high") == 2
    assert m.value(done, queue=queue, priority="default") == 1
    assert m.value(done, queue=queue, priority="low") == 1
    for name in ("failed", "retried", "cancelled", "redriven"):
        assert m.value(f"taskstream_tasks_{name}_total") == 0
    assert m.types[enq.removesuffix("_total")] == "counter"

    for hist in ("taskstream_task_runtime_seconds", "taskstream_task_wait_seconds"):
        assert m.types[hist] == "histogram"
        assert m.value(f"{hist}_count", queue=queue) == 4
        assert m.value(f"{hist}_bucket", queue=queue, le="+Inf") == 4
        assert 0 <= m.value(f"{hist}_sum", queue=queue) < 10
    assert m.value("taskstream_tasks_in_flight", queue=queue) == 0
    assert m.value("taskstream_executor_up", executor=executor.url) == 1
    assert m.value("taskstream_executor_in_flight", executor=executor.url) == 0
    assert 0 < m.value("taskstream_executor_latency_seconds", executor=executor.url) < 5


async def test_retry_and_permanent_failure_are_counted(
    make_executor: MakeExecutor, make_service: MakeService, queue: str
):
    seen: set[str] = set()

    async def handler(body: dict[str, Any]) -> Response:
        if body["eval_id"].startswith("bad"):
            return await answer(400, {"error": "no such language"})
        if body["eval_id"] not in seen:  # every flaky task fails its first attempt
            seen.add(body["eval_id"])
            return await answer(500, {"error": "try again"})
        return await answer(200, {"status": "success", "output": "", "exit_code": 0})

    executor = await make_executor(handler)
    svc = await make_service(executor_urls=(executor.url,), retry=FAST)
    flaky = [f"flaky-{i}" for i in range(3)]
    for eval_id in flaky:
        await enqueue(svc, eval_id=eval_id)
    await enqueue(svc, eval_id="bad-1", priority="low")
    for eval_id in flaky:
        await reaches(svc, eval_id, "completed")
    await reaches(svc, "bad-1", "failed")

    m = await settled(svc, "taskstream_tasks_completed_total", 3)
    assert m.value("taskstream_tasks_retried_total", queue=queue, priority="default") == 3
    assert m.value("taskstream_tasks_completed_total", queue=queue, priority="default") == 3
    assert m.value("taskstream_tasks_failed_total", queue=queue, priority="low") == 1
    assert m.value("taskstream_tasks_failed_total") == 1
    # 3 tasks × 2 attempts + 1: one runtime and one wait observation per execution
    assert len(executor.calls) == 7
    assert m.value("taskstream_task_runtime_seconds_count", queue=queue) == 7
    assert m.value("taskstream_task_wait_seconds_count", queue=queue) == 7
    assert m.value("taskstream_dlq_length", queue=queue) == 1


async def test_transitions_reported_over_http_are_counted(service: Service, queue: str):
    """Pull workers, cancels and DLQ re-drives are counted where the engine makes them, with
    the task's real priority (from the script's reply), never `unknown`."""
    await enqueue(service, eval_id="c1", priority="high")
    assert (await service.http.post("/tasks/c1/cancel")).status_code == 200
    for eval_id in ("p1", "p2", "p3"):
        await enqueue(service, eval_id=eval_id)
    for eval_id, path, body in (
        ("p1", "complete", {"result": {"ok": True}}),
        ("p2", "fail", {"error": "boom", "retry": False}),
        ("p3", "fail", {"error": "again"}),
    ):
        pulled = await service.http.get("/tasks/next")
        assert pulled.json()["eval_id"] == eval_id
        response = await service.http.post(f"/tasks/{eval_id}/{path}", json=body)
        assert response.status_code == 200, response.text
    assert (await service.http.post("/dlq/p2/retry")).status_code == 200
    assert (await service.http.post("/tasks/c1/cancel")).status_code == 409  # not counted

    m = await scrape(service)
    high, default = {"queue": queue, "priority": "high"}, {"queue": queue, "priority": "default"}
    assert m.value("taskstream_tasks_enqueued_total", **high) == 1
    assert m.value("taskstream_tasks_enqueued_total", **default) == 3
    assert m.value("taskstream_tasks_cancelled_total", **high) == 1
    assert m.value("taskstream_tasks_completed_total", **default) == 1
    assert m.value("taskstream_tasks_failed_total", **default) == 1
    assert m.value("taskstream_tasks_retried_total", **default) == 1
    assert m.value("taskstream_tasks_redriven_total", **default) == 1
    counters = [f"taskstream_tasks_{kind}_total" for kind in ("cancelled", "completed", "failed")]
    for name in [*counters, "taskstream_tasks_retried_total", "taskstream_tasks_redriven_total"]:
        assert m.value(name, priority="unknown") == 0, name
        assert m.value(name) == 1, name  # each counted once, under its real priority
    # pull deliveries are not in-process executions
    assert m.value("taskstream_task_runtime_seconds_count") == 0


async def test_wait_counts_from_when_the_task_became_due(
    make_executor: MakeExecutor, make_service: MakeService, queue: str
):
    executor = await make_executor()
    executor.healthy = False  # no healthy executor: nothing is claimed
    svc = await make_service(executor_urls=(executor.url,))
    await enqueue(svc, eval_id="waits")
    await asyncio.sleep(0.6)
    executor.healthy = True
    await reaches(svc, "waits", "completed")
    m = await settled(svc, "taskstream_tasks_completed_total", 1)
    assert m.value("taskstream_task_wait_seconds_sum", queue=queue) >= 0.5
    assert m.value("taskstream_task_wait_seconds_bucket", queue=queue, le="0.25") == 0

    # a delayed task waits for its run time in the schedule, not in the queue
    await enqueue(svc, eval_id="later", delay=0.7)
    await reaches(svc, "later", "completed")
    m = await settled(svc, "taskstream_tasks_completed_total", 2)
    assert m.value("taskstream_task_wait_seconds_count", queue=queue) == 2
    assert m.value("taskstream_task_wait_seconds_bucket", queue=queue, le="0.25") == 1


# --- gauges read from Redis -------------------------------------------------------------


async def test_queue_gauges_equal_the_status_counts(make_service: MakeService, queue: str):
    svc = await make_service(retry=SLOW)
    for i in range(3):
        await enqueue(svc, eval_id=f"hi-{i}", priority="high")
    await enqueue(svc, eval_id="lo", priority="low")
    await enqueue(svc, eval_id="sched", delay=600)
    for eval_id, body in (("hi-0", {"error": "x"}), ("hi-1", {"error": "x", "retry": False})):
        assert (await svc.http.get("/tasks/next")).json()["eval_id"] == eval_id
        assert (await svc.http.post(f"/tasks/{eval_id}/fail", json=body)).status_code == 200
    assert (await svc.http.get("/tasks/next")).json()["eval_id"] == "hi-2"  # processing

    status = (await svc.http.get("/status")).json()
    m = await scrape(svc)
    assert m.value("taskstream_redis_up") == 1
    assert m.types["taskstream_queue_length"] == "gauge"
    for state, per_priority in status["by_priority"].items():
        for prio, count in per_priority.items():
            labels = {"queue": queue, "priority": prio, "state": state}
            assert m.value("taskstream_queue_length", **labels) == count, labels
    expected = {"queued": 1, "scheduled": 1, "retrying": 1, "processing": 1}
    for state, count in expected.items():
        assert m.value("taskstream_queue_length", queue=queue, state=state) == count, state
    assert m.value("taskstream_dlq_length", queue=queue) == status["dlq"] == 1
    assert m.value("taskstream_consumers", queue=queue) == len(status["consumers"]) >= 1


async def test_oldest_waiting_per_queue_and_priority(make_service: MakeService, queue: str):
    svc = await make_service()
    await enqueue(svc, eval_id="old-h", priority="high")
    await enqueue(svc, eval_id="old-d")
    await enqueue(svc, eval_id="gpu-1", queue="gpu")

    async def aged() -> Scrape | None:
        m = await scrape(svc)
        ages = [m.value("taskstream_oldest_waiting_seconds", queue=q) for q in (queue, "gpu")]
        return m if min(ages) >= 0.05 else None

    m = await wait_for(aged)
    assert m.types["taskstream_oldest_waiting_seconds"] == "gauge"
    label = "taskstream_oldest_waiting_seconds"
    assert m.value(label, queue=queue, priority="high") >= 0.05
    assert m.value(label, queue=queue, priority="default") >= 0.05
    assert m.value(label, queue=queue, priority="low") == 0  # nothing waits
    assert m.value(label, queue="gpu", priority="default") >= 0.05
    assert (await svc.http.get("/tasks/next")).json()["eval_id"] == "old-h"
    m = await scrape(svc)
    assert m.value(label, queue=queue, priority="high") == 0  # delivered: no longer waiting
    status = (await svc.http.get("/status")).json()
    assert status["oldest_waiting"]["default"]["eval_id"] == "old-d"
    assert status["oldest_waiting"]["default"]["seconds"] >= 0.05
    assert status["oldest_waiting"]["high"] == {"seconds": 0.0, "eval_id": None}
    assert status["queues"]["gpu"]["oldest_waiting"]["default"]["eval_id"] == "gpu-1"


async def test_eas_queues_have_gauges_too(make_service: MakeService, queue: str):
    svc = await make_service()
    name = f"m{queue[:10]}"  # PAI-EAS keys are per service name, not per test queue
    response = await svc.http.post(f"/api/predict/{name}", headers={"Authorization": "x"})
    assert response.status_code == 200, response.text
    m = await scrape(svc)
    labels = {"priority": "default", "state": "queued"}
    assert m.value("taskstream_queue_length", queue=name, **labels) == 1
    assert m.value("taskstream_queue_length", queue=f"{name}/sink", **labels) == 0
    assert m.value("taskstream_dlq_length", queue=name) == 0
    assert m.has("taskstream_oldest_waiting_seconds")
    assert m.value("taskstream_oldest_waiting_seconds", queue=f"{name}/sink") == 0


async def test_two_apps_share_the_queue_gauges_but_not_their_counters(
    make_service: MakeService, queue: str
):
    one, two = await make_service(), await make_service()
    for i in range(2):
        await enqueue(one, eval_id=f"one-{i}")
    await enqueue(two, eval_id="two-0")

    m1, m2 = await scrape(one), await scrape(two)
    for m in (m1, m2):  # global: the same number on both replicas
        assert m.value("taskstream_queue_length", queue=queue, state="queued") == 3
    assert m1.value("taskstream_tasks_enqueued_total", queue=queue) == 2
    assert m2.value("taskstream_tasks_enqueued_total", queue=queue) == 1


async def test_redis_down_still_answers_with_redis_up_0(make_service: MakeService):
    svc = await make_service(redis_url="redis://127.0.0.1:1")
    m = await scrape(svc)
    assert m.value("taskstream_redis_up") == 0
    gauges = ("queue_length", "dlq_length", "consumers", "oldest_waiting_seconds")
    for gauge in (f"taskstream_{name}" for name in gauges):
        assert not m.has(gauge)
    assert m.has("taskstream_tasks_in_flight")  # process metrics are still there


# --- access and documentation -------------------------------------------------------------


async def test_metrics_need_the_api_key_when_one_is_set(make_service: MakeService):
    svc = await make_service(api_keys=("k",))
    assert (await svc.http.get("/metrics")).status_code == 401
    await scrape(svc, authorization="Bearer k")  # Prometheus: `authorization: {credentials}`
    await scrape(svc, **{"X-API-Key": "k"})


async def test_every_exported_metric_is_documented(service: Service):
    doc = (ROOT / "docs" / "operations.md").read_text()
    section = doc[doc.index("\n## Metrics\n") :]
    section = section[: section.index("\n## ", 1)]
    m = await scrape(service)
    assert len(m.types) == 34  # every family, with or without samples yet
    for name in m.types:
        shown = name + ("_total" if m.types.get(name) == "counter" else "")
        assert re.search(rf"`{shown}[`{{]", section), shown
