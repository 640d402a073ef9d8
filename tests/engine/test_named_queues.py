"""Named legacy queues (`"queue"` of POST /tasks, QUEUE_EXECUTORS) and consumer selection
(CONSUME), end to end against a real Redis and real loopback executors: routing to each
queue's executor pool, by-id operations, per-queue positions, DLQ and pause, processes that
consume only some queues or priorities, and dependencies across queues."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import orjson
import pytest
from redis.exceptions import ResponseError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.engine import admin
from app.engine.client import consumer_name
from app.engine.engine import Engine
from app.engine.keys import GROUP, QueueKeys
from app.engine.queue import MAX_DEPENDANTS
from app.models import TaskRequest
from app.settings import RetryPolicy, Selection, Settings, SettingsError
from tests.conftest import has_state, post, serve_asgi, status_of, wait_for

OK = {"status": "success", "output": "", "exit_code": 0}
PRIOS = ("high", "default", "low")


# --- helpers ---------------------------------------------------------------------------


async def overview(svc: Any) -> dict[str, Any]:
    response = await svc.http.get("/status")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def all_in_state(svc: Any, eval_ids: Iterable[str], state: str) -> None:
    for eval_id in eval_ids:
        await wait_for(has_state(svc, eval_id, state))


def ran(executor: Any) -> list[str]:
    return [str(call["eval_id"]) for call in executor.calls]


def pools(**named: Any) -> dict[str, tuple[tuple[str, ...], tuple[float, ...]]]:
    """`queue_executors` with one executor per named queue."""
    return {name: ((stub.url,), ()) for name, stub in named.items()}


async def stream_consumers(client: Any, key: str) -> list[str]:
    """Consumer names of the group on one stream (none when the group does not exist)."""
    try:
        rows = await client.xinfo_consumers(key, GROUP)
    except ResponseError:
        return []
    return [row["name"].decode() for row in rows]


def named_stream(queue: str, name: str, prio: str) -> str:
    return QueueKeys.named(queue, name).stream(prio)


class Gates:
    """An executor handler that holds chosen tasks until released and fails chosen ones."""

    def __init__(self, held: Iterable[str] = (), fail: Iterable[str] = ()) -> None:
        self.events = {eval_id: asyncio.Event() for eval_id in held}
        self.fail = set(fail)

    async def handler(self, body: dict[str, Any]) -> Response:
        eval_id = body["eval_id"]
        if eval_id in self.events:
            await self.events[eval_id].wait()
        if eval_id in self.fail:
            return JSONResponse({"error": "bad code"}, status_code=400)
        return JSONResponse(OK)

    def release(self, eval_id: str) -> None:
        self.events[eval_id].set()


# --- 1. routing to each queue's executor pool -------------------------------------------


async def test_named_queues_run_on_their_own_executors(make_service, make_executor, queue):
    default, gpu, cpu = [await make_executor() for _ in range(3)]
    svc = await make_service(executor_urls=(default.url,), queue_executors=pools(gpu=gpu, cpu=cpu))
    plan = {"gpu": ["g1", "g2", "g3"], "cpu": ["c1", "c2"], None: ["d1", "d2"]}
    for name, ids in plan.items():
        for eval_id in ids:
            extra = {"queue": name} if name else {}
            assert (await post(svc, eval_id, **extra))["status"] in ("queued", "processing")
    for ids in plan.values():
        await all_in_state(svc, ids, "completed")
    assert sorted(ran(gpu)) == plan["gpu"]
    assert sorted(ran(cpu)) == plan["cpu"]
    assert sorted(ran(default)) == plan[None]
    assert (await status_of(svc, "g2"))["queue"] == "gpu"
    assert (await status_of(svc, "c1"))["queue"] == "cpu"
    assert (await status_of(svc, "d1"))["queue"] == queue

    status = await overview(svc)
    assert set(status["queues"]) == {"gpu", "cpu"}
    for name, executor in (("gpu", gpu), ("cpu", cpu)):
        row = status["queues"][name]
        assert row["totals"]["enqueued"] == row["totals"]["completed"] == len(plan[name])
        assert row["states"]["queued"] == row["states"]["processing"] == 0
        assert row["paused"] is False
        assert [e["url"] for e in row["executors"]] == [executor.url]
        assert [c["name"] for c in row["consumers"]] == [consumer_name()]
    assert status["totals"]["completed"] == 2  # the default queue counts its own only
    assert [e["url"] for e in status["executors"]] == [default.url]
    consuming = status["process"]["consuming"]
    assert set(consuming) == {queue, "gpu", "cpu"}
    assert [e["url"] for e in consuming["gpu"]["executors"]] == [gpu.url]
    assert consuming["cpu"]["priorities"] == list(PRIOS)


# --- 2. by-id operations ---------------------------------------------------------------


async def test_by_id_operations_find_the_named_queue(service, queue):
    created = await post(service, "A", queue="gpu", priority="high")
    assert created == {"eval_id": "A", "status": "queued", "priority": "high", "position": 1}
    view = await status_of(service, "A")
    assert (view["queue"], view["status"], view["position"]) == ("gpu", "queued", 1)

    assert (await service.http.get("/tasks/next")).status_code == 204  # default queue only
    task = (await service.http.get("/tasks/next?queue=gpu")).json()
    assert (task["eval_id"], task["priority"], task["attempt"]) == ("A", "high", 1)
    assert (await status_of(service, "A"))["status"] == "processing"
    stale = {"result": 1, "lease": task["lease"], "attempt": 2}
    assert (await service.http.post("/tasks/A/complete", json=stale)).status_code == 409
    done = {"result": 7, "lease": task["lease"], "attempt": 1}
    response = await service.http.post("/tasks/A/complete", json=done)
    assert response.json() == {"eval_id": "A", "status": "completed", "queue": "gpu"}
    view = await status_of(service, "A")
    assert (view["queue"], view["status"], view["result"]) == ("gpu", "completed", 7)

    await post(service, "B", queue="gpu")
    response = await service.http.post("/tasks/B/cancel")
    assert response.json() == {"eval_id": "B", "status": "cancelled", "queue": "gpu"}
    assert (await status_of(service, "B"))["queue"] == "gpu"
    assert (await service.http.get("/tasks/next?queue=gpu")).status_code == 204

    await post(service, "C", queue="gpu")
    assert (await service.http.get("/tasks/next?queue=gpu")).json()["eval_id"] == "C"
    response = await service.http.post("/tasks/C/fail", json={"error": "no", "retry": True})
    assert response.json()["status"] == "retrying"
    assert (await status_of(service, "C"))["queue"] == "gpu"

    assert (await service.http.post("/tasks/nope/cancel")).status_code == 404
    assert (await service.http.get("/tasks/nope")).status_code == 404
    row = (await overview(service))["queues"]["gpu"]
    assert row["totals"]["completed"] == row["totals"]["cancelled"] == 1
    assert row["states"]["retrying"] == 1
    default = await overview(service)
    assert default["totals"].get("completed", 0) == default["totals"].get("cancelled", 0) == 0


# --- 3. positions ----------------------------------------------------------------------


async def test_positions_are_per_queue(service):
    assert [(await post(service, f"g{i}", queue="gpu"))["position"] for i in (1, 2, 3)] == [1, 2, 3]
    assert (await post(service, "d1"))["position"] == 1
    assert (await status_of(service, "g3"))["position"] == 3
    assert (await status_of(service, "d1"))["position"] == 1
    assert (await post(service, "gh", queue="gpu", priority="high"))["position"] == 1
    assert (await status_of(service, "g3"))["position"] == 4
    await service.http.post("/tasks/g1/cancel")
    assert (await status_of(service, "g3"))["position"] == 3
    assert (await status_of(service, "d1"))["position"] == 1

    batch = [
        {"eval_id": "b1", "code": "x", "queue": "cpu"},
        {"eval_id": "b2", "code": "x"},
        {"eval_id": "b3", "code": "x", "queue": "gpu"},
    ]
    answers = (await service.http.post("/tasks/batch", json={"tasks": batch})).json()["tasks"]
    assert [a["position"] for a in answers] == [1, 2, 4]
    assert (await status_of(service, "b1"))["queue"] == "cpu"
    assert (await service.http.get("/tasks/next?queue=cpu")).json()["eval_id"] == "b1"
    assert (await service.http.get("/tasks/next")).json()["eval_id"] == "d1"


# --- 4. uniqueness and validation ------------------------------------------------------


async def test_eval_ids_are_unique_across_queues(service, queue):
    await post(service, "X", queue="gpu")
    await post(service, "Y")
    for eval_id, name in (("X", None), ("X", "cpu"), ("X", "gpu"), ("Y", "gpu")):
        named = {"queue": name} if name else {}
        response = await service.http.post(
            "/tasks", json={"eval_id": eval_id, "code": "x", **named}
        )
        assert response.status_code == 409, (eval_id, name)
        assert eval_id in response.json()["error"]
    assert (await status_of(service, "X"))["queue"] == "gpu"
    # Naming the default queue is the default queue: no `q`, no registry entry.
    await post(service, "Z", queue=queue)
    assert (await status_of(service, "Z"))["queue"] == queue
    assert (await overview(service))["states"]["queued"] == 2
    batch = [
        {"eval_id": "W", "code": "x", "queue": "cpu"},
        {"eval_id": "W", "code": "x", "queue": "gpu"},
        {"eval_id": "X", "code": "x", "queue": "cpu"},
    ]
    answers = (await service.http.post("/tasks/batch", json={"tasks": batch})).json()["tasks"]
    assert [a.get("code") for a in answers] == [None, 409, 409]
    assert (await status_of(service, "W"))["queue"] == "cpu"
    assert sorted((await overview(service))["queues"]) == ["cpu", "gpu"]
    # an unknown parent refuses the task before anything is written, registry included
    body: dict[str, Any] = {"eval_id": "V", "code": "x", "queue": "fresh", "depends_on": ["nope"]}
    assert (await service.http.post("/tasks", json=body)).status_code == 422
    assert sorted((await overview(service))["queues"]) == ["cpu", "gpu"]
    assert (await service.http.get("/tasks/V")).status_code == 404


async def test_bad_queue_names_are_422_and_write_nothing(service, client, queue):
    await post(service, "ok", queue="gpu")
    registry = f"ts:{{{queue}}}:queues"
    assert await client.smembers(registry) == {b"gpu"}
    before = sorted([k async for k in client.scan_iter(match=f"ts:{{{queue}}}:*")])
    for i, bad in enumerate(["a:b", "", "x" * 65, "a b", "a/b", 5, ["gpu"], True]):
        eval_id = f"bad{i}"
        body = {"eval_id": eval_id, "code": "x", "queue": bad}
        response = await service.http.post("/tasks", json=body)
        assert response.status_code == 422, bad
        assert "queue" in response.json()["error"]
        batch = {"tasks": [{"eval_id": f"{eval_id}b", "code": "x"}, body]}
        response = await service.http.post("/tasks/batch", json=batch)
        assert response.status_code == 422, bad
        assert response.json()["error"].startswith("tasks[1]: queue")
        assert not await client.exists(f"ts:{{{queue}}}:task:{eval_id}")
        assert not await client.exists(f"ts:{{{queue}}}:task:{eval_id}b")
    for path in ("/tasks/next?queue=a:b", "/dlq?queue=a:b", "/dlq?queue=" + "x" * 65):
        assert (await service.http.get(path)).status_code == 422, path
    assert (await service.http.post("/dlq/ok/retry?queue=a:b")).status_code == 422
    assert (await service.http.delete("/dlq?queue=a:b")).status_code == 422
    assert await client.smembers(registry) == {b"gpu"}
    assert sorted([k async for k in client.scan_iter(match=f"ts:{{{queue}}}:*")]) == before
    await post(service, "long", queue="x" * 64)  # the longest name is fine
    assert await client.smembers(registry) == {b"gpu", b"x" * 64}


# --- 5. dead letters per queue ---------------------------------------------------------


async def test_dlq_is_per_queue(make_service, make_executor):
    fail = {"on": True}

    async def handler(body: dict[str, Any]) -> Response:
        if fail["on"]:
            return JSONResponse({"error": "bad input"}, status_code=400)
        return JSONResponse(OK)

    gpu = await make_executor(handler)
    svc = await make_service(queue_executors=pools(gpu=gpu))
    await post(svc, "G", queue="gpu", priority="low")
    await post(svc, "G2", queue="gpu")
    await wait_for(has_state(svc, "G", "failed"))
    await wait_for(has_state(svc, "G2", "failed"))
    listing = (await svc.http.get("/dlq?queue=gpu")).json()
    assert listing["count"] == 2
    dead = {d["eval_id"]: d for d in listing["tasks"]}
    assert "400" in dead["G"]["error"] and dead["G"]["task"]["priority"] == "low"
    assert (await svc.http.get("/dlq")).json() == {"count": 0, "tasks": []}
    assert (await svc.http.get("/dlq?queue=cpu")).status_code == 404  # no task named it
    assert (await overview(svc))["queues"]["gpu"]["dlq"] == 2
    assert (await overview(svc))["dlq"] == 0

    assert (await svc.http.post("/dlq/G/retry")).status_code == 404  # not the default's
    fail["on"] = False
    redo = await svc.http.post("/dlq/G/retry?queue=gpu")
    assert redo.json() == {"eval_id": "G", "status": "queued"}
    await wait_for(has_state(svc, "G", "completed"))
    view = await status_of(svc, "G")
    assert (view["queue"], view["priority"], view["attempts"]) == ("gpu", "low", 1)
    assert ran(gpu).count("G") == 2

    assert (await svc.http.delete("/dlq")).json() == {"removed": 0}
    assert (await svc.http.get("/dlq?queue=gpu")).json()["count"] == 1
    assert (await svc.http.delete("/dlq?queue=gpu")).json() == {"removed": 1}
    assert (await svc.http.get("/dlq?queue=gpu")).json()["count"] == 0


# --- 6. pause and resume ---------------------------------------------------------------


async def test_pause_and_resume_a_named_queue(make_service, make_executor, queue):
    default, gpu, cpu = [await make_executor() for _ in range(3)]
    svc = await make_service(executor_urls=(default.url,), queue_executors=pools(gpu=gpu, cpu=cpu))
    response = await svc.http.post("/queues/gpu/pause")
    assert response.json() == {"queue": "gpu", "paused": True}
    await post(svc, "g1", queue="gpu")
    await post(svc, "c1", queue="cpu")
    await post(svc, "d1")
    await all_in_state(svc, ["c1", "d1"], "completed")
    await post(svc, "c2", queue="cpu")  # one more turn of the consumers after g1 arrived
    await wait_for(has_state(svc, "c2", "completed"))
    assert (await svc.http.get("/tasks/next?queue=gpu")).status_code == 204
    assert (await status_of(svc, "g1"))["status"] == "queued"
    assert gpu.calls == []
    status = await overview(svc)
    assert (status["queues"]["gpu"]["paused"], status["queues"]["cpu"]["paused"]) == (True, False)
    assert status["paused"] is False

    response = await svc.http.post("/queues/gpu/resume")
    assert response.json() == {"queue": "gpu", "paused": False}
    await wait_for(has_state(svc, "g1", "completed"))
    assert ran(gpu) == ["g1"]
    assert (await overview(svc))["queues"]["gpu"]["paused"] is False

    stats = (await svc.http.get("/stats?queue=gpu&minutes=2")).json()
    assert stats["queue"] == "gpu"
    assert sum(m.get("completed", 0) for m in stats["minutes"]) == 1
    assert (await svc.http.get(f"/stats?queue={queue}&minutes=2")).json()["queue"] == queue
    for path in ("/queues/nope/pause", "/queues/nope/resume", "/stats?queue=nope"):
        response = await (svc.http.get(path) if "stats" in path else svc.http.post(path))
        assert response.status_code == 404, path
    assert (await svc.http.get("/events?queue=nope")).status_code == 404


async def test_events_of_a_named_queue(make_service, make_executor):
    gpu = await make_executor()
    svc = await make_service(queue_executors=pools(gpu=gpu))
    await post(svc, "e1", queue="gpu")
    await post(svc, "d1")  # default queue: never in the gpu feed
    await wait_for(has_state(svc, "e1", "completed"))
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        async with svc.http.stream("GET", "/events?queue=gpu&last_event_id=0") as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    seen.append(orjson.loads(line[5:]))
                    if seen[-1]["state"] == "completed":
                        break
    assert [(e["eval_id"], e["state"]) for e in seen] == [
        ("e1", "queued"),
        ("e1", "processing"),
        ("e1", "completed"),
    ]
    assert {e["queue"] for e in seen} == {"gpu"}


# --- 7. a process that consumes some queues only ----------------------------------------


async def test_consume_limits_a_process_to_its_queues(make_service, make_executor, client, queue):
    default, gpu, cpu = [await make_executor() for _ in range(3)]
    configured = pools(gpu=gpu, cpu=cpu)
    a = await make_service(
        executor_urls=(default.url,), queue_executors=configured, consume=Selection.parse("cpu")
    )
    for eval_id, name in (("g1", "gpu"), ("c1", "cpu"), ("g2", "gpu"), ("c2", "cpu")):
        await post(a, eval_id, queue=name)
    await post(a, "d1")
    await all_in_state(a, ["c1", "c2"], "completed")
    await post(a, "c3", queue="cpu")  # a later turn: A had every chance to touch gpu
    await wait_for(has_state(a, "c3", "completed"))
    await asyncio.sleep(0.2)
    for eval_id in ("g1", "g2", "d1"):
        assert (await status_of(a, eval_id))["status"] == "queued", eval_id
    assert gpu.calls == [] and default.calls == []
    assert sorted(ran(cpu)) == ["c1", "c2", "c3"]
    me = consumer_name()
    assert me in await stream_consumers(client, named_stream(queue, "cpu", "default"))
    for prio in PRIOS:
        assert await stream_consumers(client, named_stream(queue, "gpu", prio)) == []
        assert await stream_consumers(client, f"ts:{{{queue}}}:stream:{prio}") == []
    status = await overview(a)
    assert [c["name"] for c in status["queues"]["cpu"]["consumers"]] == [me]
    assert status["queues"]["gpu"]["consumers"] == []
    assert status["queues"]["gpu"]["states"]["queued"] == 2
    assert "executors" not in status["queues"]["gpu"]  # not consumed here
    assert status["consumers"] == []
    assert status["process"]["consume"] == "cpu"
    assert list(status["process"]["consuming"]) == ["cpu"]

    b = await make_service(queue_executors=configured, consume=Selection.parse("gpu"))
    await all_in_state(b, ["g1", "g2"], "completed")
    assert sorted(ran(gpu)) == ["g1", "g2"]
    assert sorted(ran(cpu)) == ["c1", "c2", "c3"]
    assert (await status_of(b, "d1"))["status"] == "queued"  # neither consumes the default
    assert default.calls == []
    assert list((await overview(b))["process"]["consuming"]) == ["gpu"]


# --- 8. a process that consumes some priorities only ------------------------------------


async def test_consume_limits_a_process_to_its_priorities(
    make_service, make_executor, client, streams, queue
):
    executor = await make_executor()
    # A worker that died holding h0 and l0: their short leases lapse before the service starts.
    await streams.ensure_groups()
    for eval_id, prio in (("h0", "high"), ("l0", "low")):
        await streams.enqueue(request(eval_id, priority=prio))
    held = await streams.claim("other", 2, 0.2)
    assert sorted(t.eval_id for t in held.tasks) == ["h0", "l0"]
    await asyncio.sleep(0.25)
    svc = await make_service(
        executor_urls=(executor.url,), consume=Selection.parse(f"{queue}:high")
    )
    await wait_for(has_state(svc, "h0", "completed"))  # its priority: taken over
    assert (await status_of(svc, "h0"))["attempts"] == 2
    await post(svc, "l1", priority="low")
    await post(svc, "d1")
    await post(svc, "h1", priority="high")
    await post(svc, "h2", priority=True)
    await all_in_state(svc, ["h1", "h2"], "completed")
    await post(svc, "h3", priority="high")  # a later turn, with l0's lease long lapsed
    await wait_for(has_state(svc, "h3", "completed"))
    await asyncio.sleep(0.1)
    assert sorted(ran(executor)) == ["h0", "h1", "h2", "h3"]
    for eval_id in ("l1", "d1"):
        assert (await status_of(svc, eval_id))["status"] == "queued"
    view = await status_of(svc, "l0")  # not its priority: left to a low consumer
    assert (view["status"], view["attempts"]) == ("processing", 1)
    assert await client.hget(f"ts:{{{queue}}}:task:l0", "worker") == b"other"

    me = consumer_name()
    assert me in await stream_consumers(client, f"ts:{{{queue}}}:stream:high")
    for prio in ("default", "low"):
        assert me not in await stream_consumers(client, f"ts:{{{queue}}}:stream:{prio}")
    status = await overview(svc)
    assert status["process"]["consume"] == f"{queue}:high"
    assert status["process"]["consuming"][queue]["priorities"] == ["high"]
    mine = [c for c in status["consumers"] if c["name"] == me]
    assert [c["priorities"] for c in mine] == [["high"]]


def request(eval_id: str, **fields: Any) -> TaskRequest:
    return TaskRequest.parse({"eval_id": eval_id, "code": "x", **fields})


# --- 9. API only -------------------------------------------------------------------------


async def test_consume_nothing_serves_the_api_only(make_service, make_executor):
    executor = await make_executor()
    svc = await make_service(
        executor_urls=(executor.url,),
        queue_executors=pools(gpu=executor),
        consume=Selection.parse(""),
    )
    await post(svc, "a")
    await post(svc, "g", queue="gpu", priority="high")
    status = await overview(svc)
    assert status["process"]["consuming"] == {}
    assert status["process"]["consume"] == ""
    assert "executors" not in status["queues"]["gpu"]
    await asyncio.sleep(0.3)
    assert executor.calls == []
    assert (await status_of(svc, "a"))["status"] == "queued"
    assert (await status_of(svc, "g"))["status"] == "queued"
    # a pull worker is served all the same, from either queue
    for path, eval_id in (("/tasks/next", "a"), ("/tasks/next?queue=gpu", "g")):
        task = (await svc.http.get(path)).json()
        assert task["eval_id"] == eval_id
        response = await svc.http.post(f"/tasks/{eval_id}/complete", json={"result": eval_id})
        assert response.status_code == 200
        assert (await status_of(svc, eval_id))["status"] == "completed"
    assert executor.calls == []


# --- 10. dependencies across queues ------------------------------------------------------


async def test_dependencies_cross_queues(make_service, make_executor):
    gates = Gates(held={"P"}, fail={"F"})
    gpu = await make_executor(gates.handler)
    cpu = await make_executor()
    default = await make_executor()
    svc = await make_service(executor_urls=(default.url,), queue_executors=pools(gpu=gpu, cpu=cpu))
    await post(svc, "P", queue="gpu")
    assert (await post(svc, "C", queue="cpu", depends_on=["P"]))["status"] == "deferred"
    view = await status_of(svc, "C")
    assert (view["status"], view["queue"], view["depends_on"]) == ("deferred", "cpu", ["P"])
    status = await overview(svc)
    assert status["queues"]["cpu"]["states"]["deferred"] == 1
    assert status["queues"]["gpu"]["states"]["deferred"] == 0
    gates.release("P")
    await wait_for(has_state(svc, "C", "completed"))
    assert (ran(gpu), ran(cpu)) == (["P"], ["C"])
    assert (await overview(svc))["queues"]["cpu"]["states"]["deferred"] == 0

    # a failed parent in gpu cancels its dependant in the default queue
    await post(svc, "F", queue="gpu")
    await post(svc, "K", depends_on=["F"])
    await wait_for(has_state(svc, "K", "cancelled"))
    view = await status_of(svc, "K")
    assert (view["queue"], view["error"]) == (status["queue"], "dependency F failed")
    status = await overview(svc)
    assert status["states"]["deferred"] == 0
    assert status["totals"]["cancelled"] == 1
    assert default.calls == []


# --- 11. settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "queues"),
    [
        ("evaluations:high,default", {"evaluations": {"high", "default"}}),
        ("gpu,cpu", {"gpu": set(), "cpu": set()}),
        ("evaluations:high,default,gpu", {"evaluations": {"high", "default"}, "gpu": set()}),
        ("evaluations:low, evaluations:high", {"evaluations": {"high", "low"}}),
        ("gpu:low,gpu", {"gpu": set()}),  # named whole: all of its priorities
        (" cpu ,, ", {"cpu": set()}),
    ],
)
def test_selection_parse_queues(text, queues):
    selection = Selection.parse(text)
    assert {q: set(p) for q, p in selection.queues.items()} == queues
    assert not selection.all_queues and not selection.all_eas and not selection.eas
    assert selection.text == text.strip()
    assert not selection.nothing
    for name, prios in queues.items():
        assert selection.priorities(name) == frozenset(prios)
    assert selection.priorities("elsewhere") is None


def test_selection_parse_wildcards_and_services():
    everything = Selection.parse("*,eas:*")
    assert everything.all_queues and everything.all_eas
    assert everything.priorities("any") == frozenset() and everything.forwards("svc")
    eas_all = Selection.parse("eas:*")
    assert eas_all.forwards("x") and eas_all.priorities("evaluations") is None
    one = Selection.parse("eas:svc,eas:other.v2,gpu:high")
    assert one.eas == {"svc", "other.v2"} and not one.all_eas
    assert one.forwards("svc") and not one.forwards("third")
    assert one.priorities("gpu") == frozenset({"high"})
    star = Selection.parse("*,gpu:low")  # a listed queue keeps its own priorities
    assert star.priorities("gpu") == frozenset({"low"}) and star.priorities("cpu") == frozenset()
    # eas:NAME ends a run of priorities: a bare priority after it has nothing to extend
    with pytest.raises(SettingsError, match="a bare priority follows QUEUE:PRIORITY"):
        Selection.parse("gpu:high,eas:svc,default")
    with pytest.raises(SettingsError, match="a bare priority follows QUEUE:PRIORITY"):
        Selection.parse("high")
    for text in ("", " ", ",,"):
        nothing = Selection.parse(text)
        assert nothing.nothing and nothing.priorities("evaluations") is None
        assert not nothing.forwards("svc")
    default = Selection.everything()
    assert default.priorities("q") == frozenset() and default.forwards("s")
    assert not default.nothing


@pytest.mark.parametrize(
    "text",
    ["gpu:urgent", "a b", "a/b", "x" * 65, "eas:", "eas:bad name", "gpu:high:low", ":high", "low"],
)
def test_selection_parse_errors_name_the_variable(text):
    with pytest.raises(SettingsError, match=r"^CONSUME: "):
        Selection.parse(text)
    with pytest.raises(SettingsError, match=r"^--consume: "):
        Selection.parse(text, name="--consume")
    with pytest.raises(SettingsError, match=r"^CONSUME: "):
        Settings.from_env({"CONSUME": text})


def test_from_env_consume():
    assert Settings.from_env({}).consume == Selection.everything()
    assert Settings.from_env({"CONSUME": ""}).consume.nothing
    env = {
        "QUEUE_NAME": "evaluations",
        "QUEUE_EXECUTORS": "gpu=http://g1:8083;cpu=http://c1:8083",
    }
    everything = Settings.from_env(env).consumed_queues()
    assert everything == {"evaluations": frozenset(), "gpu": frozenset(), "cpu": frozenset()}
    assert Settings.from_env({**env, "CONSUME": "cpu"}).consumed_queues() == {"cpu": frozenset()}
    mixed = Settings.from_env({**env, "CONSUME": "evaluations:high,low,gpu,spare"})
    assert mixed.consumed_queues() == {
        "evaluations": frozenset({"high", "low"}),
        "gpu": frozenset(),
        "spare": frozenset(),  # selected without executors: pull workers only
    }
    assert Settings.from_env({**env, "CONSUME": ""}).consumed_queues() == {}
    assert Settings.from_env({**env, "CONSUME": "eas:*"}).consumed_queues() == {}


def test_from_env_queue_executors():
    env = {
        "QUEUE_NAME": "evaluations",
        "EXECUTOR_URLS": "http://d1:8083",
        "QUEUE_EXECUTORS": "gpu=http://g1:8083;weight=3,http://g2:8083;cpu=http://c1:8083",
    }
    settings = Settings.from_env(env)
    assert settings.queue_executors == {
        "gpu": (("http://g1:8083", "http://g2:8083"), (3.0, 1.0)),
        "cpu": (("http://c1:8083",), ()),
    }
    assert settings.executors_for("gpu") == (("http://g1:8083", "http://g2:8083"), (3.0, 1.0))
    assert settings.executors_for("evaluations") == (("http://d1:8083",), ())
    assert settings.executors_for("other") == ((), ())
    spaced = Settings.from_env(
        {"QUEUE_EXECUTORS": " gpu = http://g1:8083/ ; weight=2 , http://g2:8083 ;cpu=http://c1 "}
    )
    assert spaced.queue_executors == {
        "gpu": (("http://g1:8083", "http://g2:8083"), (2.0, 1.0)),
        "cpu": (("http://c1",), ()),
    }
    assert Settings.from_env({"QUEUE_EXECUTORS": ""}).queue_executors == {}
    # the default queue may get its pool here when EXECUTOR_URLS is unset
    own = Settings.from_env(
        {"QUEUE_NAME": "evaluations", "QUEUE_EXECUTORS": "evaluations=http://e"}
    )
    assert own.executors_for("evaluations") == (("http://e",), ())


@pytest.mark.parametrize(
    "value",
    [
        "gpu",
        "gpu=",
        "gpu= , ",
        "=http://g1:8083",
        "a:b=http://g1:8083",
        "gpu=ftp://g1",
        "gpu=http://",
        "gpu=http://g1:99999",
        "gpu=http://g1;weight=0",
        "gpu=http://g1;weight=x",
        "gpu=http://g1;weight=1001",
        "gpu=http://g1;speed=2",
        "gpu=http://g1;gpu=http://g2",
    ],
)
def test_from_env_bad_queue_executors(value):
    with pytest.raises(SettingsError, match=r"^QUEUE_EXECUTORS: "):
        Settings.from_env({"QUEUE_EXECUTORS": value})


def test_from_env_default_queue_in_queue_executors_with_executor_urls():
    env = {
        "QUEUE_NAME": "evaluations",
        "EXECUTOR_URLS": "http://d1:8083",
        "QUEUE_EXECUTORS": "evaluations=http://e1:8083",
    }
    with pytest.raises(SettingsError, match=r"^QUEUE_EXECUTORS: evaluations is the default"):
        Settings.from_env(env)


# --- more of a named queue's life --------------------------------------------------------


async def test_named_queue_retries_schedules_and_terminates(make_service, make_executor):
    hold = asyncio.Event()

    async def handler(body: dict[str, Any]) -> Response:
        if body["eval_id"] == "R" and body["attempt"] == 1:
            return JSONResponse({"error": "busy"}, status_code=503)
        if body["eval_id"] == "T":
            await hold.wait()
        return JSONResponse(OK)

    gpu = await make_executor(handler)
    svc = await make_service(
        queue_executors=pools(gpu=gpu), retry=RetryPolicy(3, 0.1, 1.0, 1.0, False)
    )
    await post(svc, "R", queue="gpu")
    assert (await post(svc, "S", queue="gpu", delay=0.3))["status"] == "scheduled"
    await post(svc, "T", queue="gpu")
    await wait_for(has_state(svc, "R", "completed"))
    await wait_for(has_state(svc, "S", "completed"))
    assert (await status_of(svc, "R"))["attempts"] == 2
    await wait_for(has_state(svc, "T", "processing"))
    response = await svc.http.post("/tasks/T/cancel?terminate=true")
    assert response.json() == {"eval_id": "T", "status": "cancelled", "queue": "gpu"}
    await wait_for(lambda: _idle(svc, "gpu"))
    hold.set()
    view = await status_of(svc, "T")
    assert (view["queue"], view["status"]) == ("gpu", "cancelled")
    row = (await overview(svc))["queues"]["gpu"]
    assert row["totals"]["completed"] == 2 and row["totals"]["cancelled"] == 1
    assert row["states"]["retrying"] == row["states"]["scheduled"] == 0


async def _idle(svc: Any, name: str) -> bool:
    return not (await overview(svc))["process"]["consuming"][name]["running"]


async def test_long_poll_on_a_named_queue(service):
    # a queue no task named yet is unknown (a typo creates nothing)
    assert (await service.http.get("/tasks/next?queue=gpu")).status_code == 404
    await post(service, "g0", queue="gpu")
    assert (await service.http.get("/tasks/next?queue=gpu")).json()["eval_id"] == "g0"
    waiting = asyncio.ensure_future(service.http.get("/tasks/next?queue=gpu&wait=5"))
    await asyncio.sleep(0.1)
    await post(service, "d")  # the default queue's: not for this poll
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await post(service, "g", queue="gpu")
    response = await asyncio.wait_for(waiting, 5)
    assert response.json()["eval_id"] == "g"
    assert (await status_of(service, "d"))["status"] == "queued"


async def test_deferred_child_of_a_named_queue_cancelled_by_id(service):
    await post(service, "P")
    await post(service, "C", queue="gpu", depends_on=["P"], priority="low")
    assert (await overview(service))["queues"]["gpu"]["by_priority"]["deferred"]["low"] == 1
    assert (await service.http.post("/tasks/C/cancel")).json()["status"] == "cancelled"
    row = (await overview(service))["queues"]["gpu"]
    assert row["states"]["deferred"] == 0 and row["totals"]["cancelled"] == 1
    assert (await service.http.get("/tasks/next")).json()["eval_id"] == "P"
    await service.http.post("/tasks/P/complete", json={"result": 1})
    assert (await status_of(service, "C"))["status"] == "cancelled"
    assert (await service.http.get("/tasks/next?queue=gpu")).status_code == 204


async def test_callbacks_of_a_named_queue(make_service, make_executor):
    bodies: list[dict[str, Any]] = []

    async def receive(request: Request) -> Response:
        bodies.append(await request.json())
        return Response(status_code=200)

    receiver = await serve_asgi(Starlette(routes=[Route("/hook", receive, methods=["POST"])]))
    try:
        gpu = await make_executor()
        svc = await make_service(queue_executors=pools(gpu=gpu))
        await post(svc, "cb", queue="gpu", callback_url=f"{receiver.url}/hook")
        await wait_for(lambda: _callback(svc, "cb", "delivered"))
        assert [(b["eval_id"], b["status"], b.get("queue")) for b in bodies] == [
            ("cb", "completed", "gpu")
        ]
        row = (await overview(svc))["queues"]["gpu"]
        assert row["totals"]["callbacks_delivered"] == 1
    finally:
        await receiver.stop()


async def _callback(svc: Any, eval_id: str, state: str) -> bool:
    view = (await status_of(svc, eval_id)).get("callback")
    return view is not None and view["status"] == state


async def test_clear_empties_named_queues_too(service, client, queue):
    await post(service, "g", queue="gpu")
    await post(service, "c", queue="cpu", priority="high")
    await post(service, "d")
    assert (await service.http.delete("/tasks")).json()["cleared"] == 3
    for eval_id in ("g", "c", "d"):
        assert (await service.http.get(f"/tasks/{eval_id}")).status_code == 404
    assert (await service.http.get("/tasks/next?queue=gpu")).status_code == 204
    row = (await overview(service))["queues"]["cpu"]
    assert row["states"]["queued"] == 0
    assert (await service.http.get("/metrics")).status_code == 200


async def test_consume_some_priorities_of_a_named_queue(make_service, make_executor, client):
    gpu = await make_executor()
    svc = await make_service(queue_executors=pools(gpu=gpu), consume=Selection.parse("gpu:high"))
    await post(svc, "gl", queue="gpu", priority="low")
    await post(svc, "gh", queue="gpu", priority="high")
    await wait_for(has_state(svc, "gh", "completed"))
    await post(svc, "gh2", queue="gpu", priority="high")
    await wait_for(has_state(svc, "gh2", "completed"))
    assert (await status_of(svc, "gl"))["status"] == "queued"
    assert sorted(ran(gpu)) == ["gh", "gh2"]
    consuming = (await overview(svc))["process"]["consuming"]
    assert list(consuming) == ["gpu"] and consuming["gpu"]["priorities"] == ["high"]


# --- found while writing this module (fixed) -----------------------------------------------


async def test_metrics_gauges_cover_named_queues(make_service, make_executor):
    gpu = await make_executor()
    svc = await make_service(queue_executors={"gpu": ((gpu.url,), ())})
    await post(svc, "Q1", queue="cpu")  # no executors anywhere: stays queued
    await post(svc, "G1", queue="gpu")
    await wait_for(has_state(svc, "G1", "completed"))
    text = (await svc.http.get("/metrics")).text
    assert 'taskstream_queue_length{priority="default",queue="cpu",state="queued"} 1.0' in text
    assert 'taskstream_dlq_length{queue="gpu"} 0.0' in text
    assert 'taskstream_tasks_in_flight{queue="gpu"} 0.0' in text


async def test_by_id_transitions_are_counted_under_the_named_queue(service, queue):
    await post(service, "A", queue="gpu")
    await post(service, "B", queue="gpu")
    await post(service, "C", queue="gpu")
    assert (await service.http.get("/tasks/next?queue=gpu")).json()["eval_id"] == "A"
    await service.http.post("/tasks/A/complete", json={"result": 1})
    assert (await service.http.get("/tasks/next?queue=gpu")).json()["eval_id"] == "B"
    await service.http.post("/tasks/B/fail", json={"error": "no", "retry": False})
    await service.http.post("/tasks/C/cancel")
    text = (await service.http.get("/metrics")).text
    assert 'taskstream_tasks_enqueued_total{priority="default",queue="gpu"} 3.0' in text
    for kind in ("completed", "failed", "cancelled"):
        lines = [line for line in text.splitlines() if line.startswith(f"taskstream_tasks_{kind}_")]
        assert f'taskstream_tasks_{kind}_total{{priority="default",queue="gpu"}} 1.0' in lines
        assert not [line for line in lines if 'priority="unknown"' in line]
        assert not [line for line in lines if f'queue="{queue}"' in line]


def test_consume_selects_a_default_queue_with_a_colon():
    env = {"QUEUE_NAME": "team:evals", "CONSUME": "team:evals"}
    assert Settings.from_env(env).consumed_queues() == {"team:evals": frozenset()}
    env["CONSUME"] = "team:evals:high"
    assert Settings.from_env(env).consumed_queues() == {"team:evals": frozenset({"high"})}


# --- CONSUME and the other consumers of a process -----------------------------------------


class Recorder:
    """A loopback HTTP server recording the path and body of every POST (answers 200)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.served: Any = None

    async def handle(self, request: Request) -> Response:
        self.calls.append((request.url.path, await request.body()))
        return Response(b"ok", media_type="application/octet-stream")

    async def start(self) -> Recorder:
        app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])
        self.served = await serve_asgi(app)
        return self

    @property
    def url(self) -> str:
        return str(self.served.url)


async def test_consume_selects_eas_services(make_service, queue):
    target = await Recorder().start()
    try:
        chosen, other = f"a{queue[:10]}", f"b{queue[:10]}"
        svc = await make_service(
            eas_targets={name: f"{target.url}/{name}" for name in (chosen, other)},
            consume=Selection.parse(f"eas:{chosen}"),
        )
        for name in (chosen, other):
            response = await svc.http.post(
                f"/api/predict/{name}", content=b"hi", headers={"Authorization": "x"}
            )
            assert response.status_code == 200, response.text
        await wait_for(lambda: _async_true(bool(target.calls)))
        await asyncio.sleep(0.2)
        assert [path for path, _ in target.calls] == [f"/{chosen}"]
        rows = {row["service"]: row for row in (await overview(svc))["eas"]}
        assert "forwarding" in rows[chosen] and "forwarding" not in rows[other]
        assert rows[other]["input"]["queued"] == 1
        assert (await overview(svc))["process"]["consuming"] == {}  # no legacy queue
    finally:
        await target.served.stop()


async def _async_true(value: bool) -> bool:
    return value


async def test_consume_nothing_sends_no_callbacks(make_service):
    receiver = await Recorder().start()
    try:
        api = await make_service(consume=Selection.parse(""))
        await post(api, "cb", queue="gpu", callback_url=f"{receiver.url}/hook")
        assert (await api.http.get("/tasks/next?queue=gpu")).json()["eval_id"] == "cb"
        await api.http.post("/tasks/cb/complete", json={"result": 1})
        await asyncio.sleep(0.3)
        assert receiver.calls == []
        assert (await status_of(api, "cb"))["callback"] == {"status": "pending"}
        # any process that consumes something delivers it
        other = await make_service(consume=Selection.parse("cpu"))
        await wait_for(lambda: _callback(other, "cb", "delivered"))
        assert [orjson.loads(body)["queue"] for _, body in receiver.calls] == ["gpu"]
    finally:
        await receiver.served.stop()


# --- review follow-ups ----------------------------------------------------------------------


async def test_priority_names_are_not_queue_names(service):
    for name in ("high", "default", "low"):
        answer = await service.http.post("/tasks", json={"code": "x", "queue": name})
        assert answer.status_code == 422
        assert "priority name" in answer.json()["error"]


async def test_a_parent_with_too_many_dependants_refuses_more(service, client, queue):
    await post(service, "P")
    parent = f"ts:{{{queue}}}:task:P"
    await client.hset(parent, "kids", MAX_DEPENDANTS)  # as if that many had been deferred
    for named in ({}, {"queue": "gpu"}):  # a dependant of its queue, or of another
        body = {"code": "x", "depends_on": ["P"], **named}
        answer = await service.http.post("/tasks", json=body)
        assert answer.status_code == 422
        assert "already has 10000 deferred dependants" in answer.json()["error"]
    assert await client.hget(parent, "kids") == str(MAX_DEPENDANTS).encode()


async def test_cleanup_of_the_default_queue_covers_named_queues(make_settings, client):
    settings = make_settings(dlq_max_age_days=0.0)
    streams = Engine(client, settings).default
    gpu = streams.engine.queue("gpu")
    await gpu.enqueue(TaskRequest.parse({"eval_id": "dead", "code": "x", "queue": "gpu"}))
    claimed = await gpu.claim("w", 1, 30)
    await gpu.fail("dead", "boom", retry=False, task=claimed.tasks[0])
    assert (await admin.dlq_list(gpu))["count"] == 1
    done = await admin.cleanup(streams.engine)
    assert done is not None and done["dlq_removed"] == 1
    assert (await admin.dlq_list(gpu))["count"] == 0


async def test_by_id_calls_take_a_queue_hint(service):
    for eval_id in ("h1", "h2", "h3"):
        await post(service, eval_id, queue="gpu")
    await post(service, "c1", queue="cpu")
    task = (await service.http.get("/tasks/next?queue=gpu")).json()
    assert task["queue"] == "gpu"  # what a pull worker sends back as the hint
    done = await service.http.post("/tasks/h1/complete?queue=gpu", json={"result": 1})
    assert done.json() == {"eval_id": "h1", "status": "completed", "queue": "gpu"}
    # a wrong or unknown hint still finds the task (the script routes the call)
    assert (await service.http.get("/tasks/h2?queue=cpu")).json()["queue"] == "gpu"
    assert (await service.http.get("/tasks/h2?queue=nope")).json()["queue"] == "gpu"
    cancelled = await service.http.post("/tasks/h3/cancel?queue=cpu")
    assert cancelled.json()["queue"] == "gpu"
    assert (await service.http.get("/tasks/h2?queue=a:b")).status_code == 422
