"""Pull workers' long-poll under limits (runtime/pull.py): `GET /tasks/next` obeys
RATE_LIMITS (it waits for the next allowed start) and QUEUE_MAX_IN_FLIGHT (a task held back
stays queued; a finished one lets the next out), across pulled and in-process tasks alike.

A real service app under uvicorn with no executors, the session's redis-server.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from app.flow_settings import Flow, Rate
from tests.conftest import Service

MakeService = Callable[..., Awaitable[Service]]


async def fill(service: Service, n: int) -> None:
    tasks = [{"eval_id": f"t{i}", "code": "x"} for i in range(n)]
    response = await service.http.post("/tasks/batch", json={"tasks": tasks})
    assert response.status_code == 201, response.text


async def test_a_pull_waits_for_the_rate(make_service: MakeService, queue: str) -> None:
    svc = await make_service(flow=Flow(rates={queue: Rate(2, 1.0)}))
    await fill(svc, 5)
    assert [(await svc.http.get("/tasks/next")).status_code for _ in range(3)] == [200, 200, 204]
    started = time.monotonic()
    response = await svc.http.get("/tasks/next?wait=3")
    assert response.status_code == 200
    assert 0.2 <= time.monotonic() - started <= 1.5  # the next start, one interval (0.5 s) on


async def test_a_pull_is_held_at_the_cap(make_service: MakeService, queue: str) -> None:
    svc = await make_service(flow=Flow(max_in_flight={queue: 1}))
    await fill(svc, 2)
    first = (await svc.http.get("/tasks/next")).json()
    assert (await svc.http.get("/tasks/next?wait=0.6")).status_code == 204
    assert (await svc.http.get("/tasks/t1")).json()["status"] == "queued"
    done = {"result": 1, "lease": first["lease"], "attempt": first["attempt"]}
    assert (await svc.http.post(f"/tasks/{first['eval_id']}/complete", json=done)).is_success
    assert (await svc.http.get("/tasks/next?wait=2")).json()["eval_id"] == "t1"
