"""taskstream on a Sentinel deployment (`REDIS_URL=redis+sentinel://…/mymaster`): a
primary, two replicas and three sentinels (tests/topologies.py). Two replicas, so that
after a failover the new primary still has one and DURABILITY=replica can confirm writes.

- A few functional tests of the core, imported from their modules, on a set shared by the
  module (`redis_url` points the fixtures at it).
- The primary killed with SIGKILL under enqueue and drain load through two replicas (the
  rig of tests/faultrig.py), with DURABILITY=async (writes acknowledged by the primary and
  not yet replicated may be lost: counted and printed) and DURABILITY=replica (none may
  be: every 201 waited for a replica), each ending with the total-queue report; and a
  cancel with terminate=true after a failover, which reaches the process running the task
  (pub/sub subscribed again on the new primary).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import test_semantics
from tests.conftest import wait_for
from tests.faultrig import IN_FLIGHT, Rig, Rigs, Spawn
from tests.runtime import test_callbacks, test_consumers
from tests.topologies import SentinelSet, direct
from tests.totalqueue import Report
from tests.web import test_tasks

pytestmark = pytest.mark.timeout(120)

# The core on Sentinel (see the module docstring), and the fixtures it needs.
test_create_answers_201_with_the_task = test_tasks.test_create_answers_201_with_the_task
test_next_long_poll_returns_a_task_enqueued_while_waiting = (
    test_tasks.test_next_long_poll_returns_a_task_enqueued_while_waiting
)
test_pull_order_is_strict_priority_then_fifo = (
    test_semantics.test_pull_order_is_strict_priority_then_fifo
)
test_dlq_list_redrive_and_purge = test_semantics.test_dlq_list_redrive_and_purge
make_receiver = test_callbacks.make_receiver
test_failed_and_cancelled_tasks_call_back = test_callbacks.test_failed_and_cancelled_tasks_call_back
make_worker = test_consumers.make_worker
MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture(scope="module")
def shared_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    topology = SentinelSet(tmp_path_factory.mktemp("sentinel")).start()
    yield topology
    topology.stop()


@pytest.fixture
def redis_url(shared_set: SentinelSet) -> str:
    return shared_set.url


@pytest.fixture
def own_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A set of the test's own, whose primary it kills."""
    topology = SentinelSet(tmp_path / "own").start()
    yield topology
    topology.stop()


@pytest.fixture
async def make_rig(spawn_service: Spawn, queue: str) -> AsyncIterator[MakeRig]:
    rigs = Rigs(spawn_service, queue)
    yield rigs.make
    await rigs.close()


async def failover_under_load(rig: Rig, topology: SentinelSet) -> tuple[float, Report]:
    """Kill the primary once the load flows; the seconds until both replicas are
    accepted again, and the report after the drain."""
    await rig.more("accepted", 20)
    old = topology.primary()
    killed = time.monotonic()
    old.kill()
    await rig.more("indeterminate", 1, timeout=10)
    await rig.more("accepted", 20, timeout=30)
    recovered = time.monotonic() - killed
    assert topology.primary() is not old
    return recovered, await rig.report()


async def test_async_durability_follows_a_killed_primary(make_rig: MakeRig, own_set: SentinelSet):
    """DURABILITY=async: the sentinels promote a replica, both service replicas follow
    it, and the report counts what the asynchronous replication lost (may be > 0)."""
    rig = await make_rig(own_set.url, env={"DURABILITY": "async"})
    recovered, report = await failover_under_load(rig, own_set)
    print(f"\nsentinel failover, async: serving again after {recovered:.1f} s\n{report.summary()}")
    assert not report.unexpected and not report.bad_keys and not report.uncounted


async def test_replica_durability_loses_no_acknowledged_task(
    make_rig: MakeRig, own_set: SentinelSet
):
    """DURABILITY=replica: every 201 waited for a replica (WAIT 1 1000), so the promoted
    replica holds every accepted task: nothing lost, repeats only of tasks in flight."""
    rig = await make_rig(own_set.url, env={"DURABILITY": "replica"})
    recovered, report = await failover_under_load(rig, own_set)
    print(
        f"\nsentinel failover, replica: serving again after {recovered:.1f} s\n{report.summary()}"
    )
    report.check(max_duplicates=IN_FLIGHT)


async def test_a_terminate_cancel_after_a_failover_reaches_the_runner(
    make_worker: test_consumers.MakeWorker,
    make_service: test_consumers.MakeService,
    own_set: SentinelSet,
):
    """Pub/sub follows the failover: the runner subscribes again on the new primary, and
    a cancel with terminate=true sent to another process aborts its executor call."""
    worker = await make_worker(hold=lambda body: 8.0)
    fast = test_consumers.FAST
    runner = await make_service(
        redis_url=own_set.url,
        executor_urls=(worker.url,),
        retry=fast,
        network_retry=fast,
        lease_timeout=30.0,
    )
    front = await make_service(redis_url=own_set.url)
    assert (await test_consumers.enqueue(front, "before"))["status"] == "queued"
    old = own_set.primary()
    listeners = _subscribers(old)
    assert listeners >= 1
    old.kill()

    async def answered() -> bool:
        response = await front.http.post("/tasks", json={"eval_id": "after", "code": "x"})
        return response.status_code == 201

    await wait_for(answered, timeout=20, interval=0.1)
    await wait_for(lambda: _ran(worker, "after"), timeout=20)
    # pub/sub is at-most-once: the cancel reaches the runner once it listens again on the
    # new primary (its own reconnect backoff; under load that came after the task started)
    new = own_set.primary()
    await wait_for(lambda: _true(_subscribers(new) >= listeners), timeout=20)
    response = await front.http.post("/tasks/after/cancel", params={"terminate": "true"})
    assert response.status_code == 200, response.text
    await wait_for(lambda: _true(any(b["eval_id"] == "after" for b in worker.hung_up)), 5)
    assert (await runner.http.get("/tasks/after")).json()["status"] == "cancelled"


async def _ran(worker: test_consumers.Worker, eval_id: str) -> bool:
    return any(call.get("eval_id") == eval_id for call in worker.calls)


async def _true(value: bool) -> bool:
    return value


def _subscribers(server: Any) -> int:
    """The pub/sub connections open on `server` (every service process keeps one)."""
    listing = direct(server).execute_command("CLIENT", "LIST", "TYPE", "pubsub")
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    return len([line for line in text.splitlines() if line.strip()])
