"""What crosses hash tags (engine/links.py), against a real Redis: dependencies between
tasks of different queues (linked at enqueue, relayed through the parent queue's callbacks
stream by the callback sender), and the id directory (pointers in the default queue's key
space: unique eval_ids, by-id calls without a queue name, stale and expired pointers).

The service-level tests run again on the cluster (tests/test_cluster.py), where each
queue below sits on its own slot."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine import links
from app.engine.callbacks import CallbackStream
from app.engine.keys import QueueKeys
from app.engine.queue import Queue
from app.models import TaskRequest
from tests.conftest import has_state, post, status_of, wait_for
from tests.engine.test_named_queues import Gates, overview, pools, ran


def req(eval_id: str, **fields: Any) -> TaskRequest:
    return TaskRequest.parse({"eval_id": eval_id, "code": "x", **fields})


async def pull_and_finish(svc: Any, eval_id: str, queue: str | None, ok: bool = True) -> None:
    """Take `eval_id` as a pull worker and complete or fail it (by id: no queue named)."""
    path = f"/tasks/next?queue={queue}" if queue else "/tasks/next"
    task = (await svc.http.get(path)).json()
    assert task["eval_id"] == eval_id, task
    if ok:
        response = await svc.http.post(f"/tasks/{eval_id}/complete", json={"result": 1})
    else:
        body = {"error": "no", "retry": False}
        response = await svc.http.post(f"/tasks/{eval_id}/fail", json=body)
    assert response.status_code == 200, response.text


# --- dependencies across queues, end to end -----------------------------------------------------


async def test_a_failed_parent_cancels_dependants_in_other_queues_and_their_own(service, queue):
    """P (gpu) fails: C (default) is cancelled by relay, and C's own dependant D (default)
    by C's script; E (cpu, allow_failure) is released."""
    await post(service, "P", queue="gpu")
    assert (await post(service, "C", depends_on=["P"]))["status"] == "deferred"
    assert (await post(service, "D", depends_on=["C"]))["status"] == "deferred"
    assert (await post(service, "E", queue="cpu", depends_on=["P"], allow_failure=True))[
        "status"
    ] == "deferred"
    await pull_and_finish(service, "P", "gpu", ok=False)
    await wait_for(has_state(service, "D", "cancelled"))
    assert (await status_of(service, "C"))["error"] == "dependency P failed"
    assert (await status_of(service, "D"))["error"] == "dependency C cancelled"
    await wait_for(has_state(service, "E", "queued"))
    status = await overview(service)
    assert status["states"]["deferred"] == 0 and status["totals"]["cancelled"] == 2
    assert status["queues"]["cpu"]["states"]["deferred"] == 0


async def test_fan_in_over_three_queues_waits_for_every_parent(service):
    await post(service, "A")
    await post(service, "G", queue="gpu")
    await post(service, "K", queue="cpu")
    answer = await post(service, "J", queue="gpu", depends_on=["A", "G", "K"])
    assert answer["status"] == "deferred"
    assert (await status_of(service, "J"))["depends_on"] == ["A", "G", "K"]
    await pull_and_finish(service, "A", None)
    await pull_and_finish(service, "K", "cpu")
    assert (await status_of(service, "J"))["status"] == "deferred"
    await pull_and_finish(service, "G", "gpu")
    await wait_for(has_state(service, "J", "queued"))
    await pull_and_finish(service, "J", "gpu")


async def test_parents_already_finished_in_other_queues_decide_at_once(service):
    await post(service, "done", queue="gpu")
    await pull_and_finish(service, "done", "gpu")
    await post(service, "bad", queue="cpu")
    await pull_and_finish(service, "bad", "cpu", ok=False)
    assert (await post(service, "q", depends_on=["done"]))["status"] == "queued"
    answer = await post(service, "c", queue="other", depends_on=["done", "bad"])
    assert (answer["status"], answer["error"]) == ("cancelled", "dependency bad failed")
    answer = await post(service, "a", queue="gpu", depends_on=["bad"], allow_failure=True)
    assert answer["status"] == "queued"
    assert (await overview(service))["states"]["deferred"] == 0


async def test_unknown_parents_in_any_queue_refuse_and_write_nothing(service, client, queue):
    await post(service, "P", queue="gpu")
    home = QueueKeys.default(queue)
    for named in ({}, {"queue": "cpu"}):
        body = {"eval_id": "X", "code": "x", "depends_on": ["P", "nope"], **named}
        response = await service.http.post("/tasks", json=body)
        assert response.status_code == 422
        assert response.json() == {"error": "unknown parent(s): nope"}
        assert not await client.exists(home.task("X"))  # no pointer, no record
        assert not await client.exists(QueueKeys.named(queue, "cpu").task("X"))
    gpu = QueueKeys.named(queue, "gpu")
    assert await client.hget(gpu.task("P"), "kids") is None  # no link left behind
    assert (await service.http.get("/tasks/X")).status_code == 404


async def test_a_cancelled_dependant_is_not_released_by_its_remote_parent(service, client, queue):
    await post(service, "P", queue="gpu")
    await post(service, "C", depends_on=["P"])
    assert (await service.http.post("/tasks/C/cancel")).json()["status"] == "cancelled"
    await pull_and_finish(service, "P", "gpu")
    relays = QueueKeys.named(queue, "gpu").callbacks

    async def relayed() -> bool:  # the relay was appended, applied (skipped) and removed
        return bool(await client.xlen(relays) == 0 and await client.exists(relays))

    await wait_for(relayed)
    assert (await status_of(service, "C"))["status"] == "cancelled"
    assert (await service.http.get("/tasks/next")).status_code == 204


async def test_a_chain_through_three_queues_runs_in_order(make_service, make_executor):
    gates = Gates()
    gpu, cpu, default = [await make_executor(gates.handler) for _ in range(3)]
    svc = await make_service(executor_urls=(default.url,), queue_executors=pools(gpu=gpu, cpu=cpu))
    await post(svc, "one", queue="gpu")
    await post(svc, "two", queue="cpu", depends_on=["one"])
    await post(svc, "three", depends_on=["two"])
    await wait_for(has_state(svc, "three", "completed"))
    assert (ran(gpu), ran(cpu), ran(default)) == (["one"], ["two"], ["three"])


# --- the relay, at the engine level ---------------------------------------------------------


@pytest.fixture
def home(streams: Queue) -> Queue:
    return streams


async def test_a_relay_applies_once_and_is_removed(home: Queue):
    """No sender runs here: the relay entry waits in the parent queue's callbacks stream;
    applying it twice releases the child once."""
    gpu = home.engine.queue("gpu")
    await gpu.ensure_groups()
    await gpu.enqueue(req("P", queue="gpu"))
    assert (await home.enqueue(req("C", depends_on=["P"])))["status"] == "deferred"
    task = (await gpu.claim("w", 1, 30)).tasks[0]
    await gpu.complete("P", 1, task)
    assert (await home.get("C"))["status"] == "deferred"
    stream = CallbackStream(home.engine, gpu.keys)
    await stream.ensure_group()
    (entry,) = await stream.read("sender", 10, 0.1)
    assert entry.relay and entry.fields["child"] == "C" and entry.fields["status"] == "completed"
    assert await links.relay(home.engine, entry.fields) == "released"
    assert await stream.relay(entry) == "skipped"  # delivered again: nothing more happens
    assert await home.redis.xlen(gpu.keys.callbacks) == 0
    view = await home.get("C")
    assert (view["status"], view["position"]) == ("queued", 1)


async def test_a_parent_that_ends_while_its_dependant_is_stored_is_caught_up(home: Queue):
    """The parent ends after its link and before the dependant exists (its relay finds no
    mark to take): the enqueue reads it once more and applies it."""
    gpu = home.engine.queue("gpu")
    await gpu.ensure_groups()
    await gpu.enqueue(req("P", queue="gpu"))
    task = (await gpu.claim("w", 1, 30)).tasks[0]
    reply = await home.scripts.run(
        "link", [gpu.keys.task("P")], ["link", "C", home.keys.queue, 10, "P"]
    )
    assert reply[1] == [b"pending"]
    await gpu.fail("P", "boom", retry=False, task=task)
    child = req("C", depends_on=["P"])
    stored = await links._store(home, child, [], '[["P", "pending"]]')  # as _across does
    assert stored[0] == b"deferred"
    answer = await links._catch_up(home, child, {"P": gpu.keys.queue}, stored)
    assert answer == ["cancelled", "dependency P failed"]
    view = await home.get("C")
    assert (view["status"], view["error"]) == ("cancelled", "dependency P failed")


# --- the id directory -----------------------------------------------------------------------------


async def test_the_directory_points_at_a_named_queue_task(home: Queue, client: Any):
    gpu = home.engine.queue("gpu")
    await gpu.enqueue(req("T", queue="gpu"))
    pointer = await client.hgetall(home.keys.directory("T"))
    assert pointer[b"q"] == b"gpu" and set(pointer) == {b"q", b"at"}
    assert await client.sismember(home.keys.registry, "gpu")
    assert (await home.get("T"))["queue"] == "gpu"  # by id from the default queue: 2 reads
    with pytest.raises(Exception, match="already exists"):
        await home.enqueue(req("T"))


async def test_a_stale_pointer_is_replaced_by_a_new_task(home: Queue, client: Any):
    """The named queue's record is gone (expired) but its pointer was not swept yet: the
    id is free again, in any queue, once the pointer is old enough to be no enqueue's."""
    gpu = home.engine.queue("gpu")
    await gpu.enqueue(req("T", queue="gpu"))
    await client.delete(gpu.keys.task("T"))
    with pytest.raises(Exception, match="already exists"):  # young: maybe under way
        await home.enqueue(req("T"))
    await client.hset(home.keys.directory("T"), "at", 1)  # as if claimed long ago
    assert (await home.enqueue(req("T")))["status"] == "queued"
    assert (await home.get("T"))["queue"] == home.keys.queue
    await client.delete(home.keys.task("T"))
    await gpu.enqueue(req("U", queue="gpu"))
    await client.delete(gpu.keys.task("U"))
    await client.hset(home.keys.directory("U"), "at", 1)
    assert (await home.engine.queue("cpu").enqueue(req("U", queue="cpu")))["position"] == 1
    assert (await client.hget(home.keys.directory("U"), "q")) == b"cpu"


async def test_expired_records_lose_their_pointers_at_housekeeping(make_streams: Any, client: Any):
    streams = make_streams(result_ttl=1)
    gpu = streams.engine.queue("gpu")
    await gpu.ensure_groups()
    for eval_id in ("a", "b"):
        await gpu.enqueue(req(eval_id, queue="gpu"))
    task = (await gpu.claim("w", 1, 30)).tasks[0]
    await gpu.complete(task.eval_id, 1, task)
    assert await client.zcard(gpu.keys.expiring) == 1

    async def expired() -> bool:
        return not await client.exists(gpu.keys.task("a"))

    await wait_for(expired, timeout=5)
    assert await links.sweep(gpu) == 1
    assert not await client.exists(streams.keys.directory("a"))
    assert await client.exists(streams.keys.directory("b"))  # still queued: kept
    assert await client.zcard(gpu.keys.expiring) == 0
