"""taskstream on a Redis Cluster (`REDIS_URL=redis+cluster://…`): three primaries with a
replica each (tests/topologies.py), started once per module (per xdist worker).

- The core of the functional suite, run again on the cluster: the tests below are
  imported from their own modules, and `redis_url` here points every fixture
  (make_service, make_settings, client) at the cluster: enqueue and batches, strict
  priority, retries and backoff, the DLQ, cancel (terminate: pub/sub), scheduled tasks,
  named queues, pause, callbacks, PAI-EAS, pull workers and long polls (blocking reads),
  clear and fsck (SCAN on every primary), progress reports, listing (each kind of
  structure), the pace behind ETAs, fair share and limits, and what crosses hash tags:
  dependencies across queues (relays), the id directory (by-id calls without a queue
  name), named queues' callbacks; eight named queues spread over the three primaries.
- Faults under load, each ending with the total-queue report (tests/totalqueue.py, the rig
  of tests/faultrig.py): a primary killed with SIGKILL (its replica takes over), and the
  slot of a live queue migrated to another primary while tasks flow (MOVED and ASK
  followed by the script runner, counted on /metrics).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx
import pytest
from redis.asyncio.cluster import RedisCluster

from app.engine.client import connect, server_features, subscribed
from app.engine.engine import Engine
from app.engine.keys import QueueKeys
from app.engine.scripts import Scripts
from app.models import TaskRequest
from app.settings import Settings
from tests import test_semantics
from tests.conftest import has_state, post, wait_for
from tests.eas import test_forward, test_store
from tests.engine import (
    conftest,
    test_admin,
    test_cross_queue,
    test_fair,
    test_fsck,
    test_limits,
    test_listing,
    test_named_queues,
    test_pace,
    test_partitions,
    test_settle,
)
from tests.faultrig import Rig, Rigs, Spawn
from tests.runtime import test_callbacks, test_consumers
from tests.runtime import test_partitions as test_partitioned_service
from tests.topologies import Cluster, direct
from tests.web import test_progress, test_tasks

# The core of the functional suite (see the module docstring), and the fixtures it needs.
test_target_500_then_200_is_retry_then_success = (
    test_forward.test_target_500_then_200_is_retry_then_success
)
test_long_poll_read_returns_when_an_item_arrives = (
    test_store.test_long_poll_read_returns_when_an_item_arrives
)
make_streams = conftest.make_streams
test_clear_removes_everything_and_groups_still_work = (
    test_admin.test_clear_removes_everything_and_groups_still_work
)
qstreams = test_fsck.qstreams
run_fsck = test_fsck.run_fsck
test_a_clean_deployment_is_consistent = test_fsck.test_a_clean_deployment_is_consistent
test_by_id_operations_find_the_named_queue = (
    test_named_queues.test_by_id_operations_find_the_named_queue
)
test_clear_empties_named_queues_too = test_named_queues.test_clear_empties_named_queues_too
test_named_queues_run_on_their_own_executors = (
    test_named_queues.test_named_queues_run_on_their_own_executors
)
test_pause_and_resume_a_named_queue = test_named_queues.test_pause_and_resume_a_named_queue
test_dependencies_cross_queues = test_named_queues.test_dependencies_cross_queues
test_callbacks_of_a_named_queue = test_named_queues.test_callbacks_of_a_named_queue
test_by_id_calls_take_a_queue_hint = test_named_queues.test_by_id_calls_take_a_queue_hint
test_eval_ids_are_unique_across_queues = test_named_queues.test_eval_ids_are_unique_across_queues
test_deferred_child_of_a_named_queue_cancelled_by_id = (
    test_named_queues.test_deferred_child_of_a_named_queue_cancelled_by_id
)
home = test_cross_queue.home
test_a_failed_parent_cancels_dependants_in_other_queues_and_their_own = (
    test_cross_queue.test_a_failed_parent_cancels_dependants_in_other_queues_and_their_own
)
test_fan_in_over_three_queues_waits_for_every_parent = (
    test_cross_queue.test_fan_in_over_three_queues_waits_for_every_parent
)
test_parents_already_finished_in_other_queues_decide_at_once = (
    test_cross_queue.test_parents_already_finished_in_other_queues_decide_at_once
)
test_unknown_parents_in_any_queue_refuse_and_write_nothing = (
    test_cross_queue.test_unknown_parents_in_any_queue_refuse_and_write_nothing
)
test_a_cancelled_dependant_is_not_released_by_its_remote_parent = (
    test_cross_queue.test_a_cancelled_dependant_is_not_released_by_its_remote_parent
)
test_a_chain_through_three_queues_runs_in_order = (
    test_cross_queue.test_a_chain_through_three_queues_runs_in_order
)
test_a_relay_applies_once_and_is_removed = test_cross_queue.test_a_relay_applies_once_and_is_removed
test_a_parent_that_ends_while_its_dependant_is_stored_is_caught_up = (
    test_cross_queue.test_a_parent_that_ends_while_its_dependant_is_stored_is_caught_up
)
test_the_directory_points_at_a_named_queue_task = (
    test_cross_queue.test_the_directory_points_at_a_named_queue_task
)
test_a_stale_pointer_is_replaced_by_a_new_task = (
    test_cross_queue.test_a_stale_pointer_is_replaced_by_a_new_task
)
test_expired_records_lose_their_pointers_at_housekeeping = (
    test_cross_queue.test_expired_records_lose_their_pointers_at_housekeeping
)
make_receiver = test_callbacks.make_receiver
test_failed_and_cancelled_tasks_call_back = test_callbacks.test_failed_and_cancelled_tasks_call_back
make_worker = test_consumers.make_worker
test_cancel_terminate_sent_to_another_process_aborts_the_call = (
    test_consumers.test_cancel_terminate_sent_to_another_process_aborts_the_call
)
test_a_due_time_announced_by_another_process_wakes_the_idle_consumer = (
    test_consumers.test_a_due_time_announced_by_another_process_wakes_the_idle_consumer
)
test_backoff_gaps_without_jitter = test_semantics.test_backoff_gaps_without_jitter
test_cancel_scheduled_and_retrying_never_run = (
    test_semantics.test_cancel_scheduled_and_retrying_never_run
)
test_dlq_list_redrive_and_purge = test_semantics.test_dlq_list_redrive_and_purge
test_pull_order_is_strict_priority_then_fifo = (
    test_semantics.test_pull_order_is_strict_priority_then_fifo
)
test_scheduled_task_never_runs_early = test_semantics.test_scheduled_task_never_runs_early
test_batch_answers_one_entry_per_task = test_tasks.test_batch_answers_one_entry_per_task
test_complete_a_pulled_task = test_tasks.test_complete_a_pulled_task
test_fail_with_retries_left_is_retrying = test_tasks.test_fail_with_retries_left_is_retrying
test_next_long_poll_returns_a_task_enqueued_while_waiting = (
    test_tasks.test_next_long_poll_returns_a_task_enqueued_while_waiting
)
test_position_counts_across_priorities_with_1_as_next = (
    test_tasks.test_position_counts_across_priorities_with_1_as_next
)
# issue 15: progress, listing (every mode of listing.lua), the pace
test_a_pull_worker_reports_with_its_token = test_progress.test_a_pull_worker_reports_with_its_token
test_queued_in_position_order_under_mixed_priorities = (
    test_listing.test_queued_in_position_order_under_mixed_priorities
)
test_processing_with_holder_and_elapsed = test_listing.test_processing_with_holder_and_elapsed
test_finished_states_newest_first = test_listing.test_finished_states_newest_first
test_deferred_with_what_it_waits_for = test_listing.test_deferred_with_what_it_waits_for
test_a_queue_that_starts_tasks_gets_a_pace = test_pace.test_a_queue_that_starts_tasks_gets_a_pace

# fair share and limits (issue 15): the claim's fair-share and GCRA keys in one slot
test_weights_split_the_starts = test_fair.test_weights_split_the_starts
test_a_lapsed_lease_is_taken_over = test_fair.test_a_lapsed_lease_is_taken_over
test_cancel_a_tenants_queued_task = test_fair.test_cancel_a_tenants_queued_task
test_a_released_dependant_waits_under_its_tenant = (
    test_fair.test_a_released_dependant_waits_under_its_tenant
)
test_a_rate_allows_one_burst_then_one_start_per_interval = (
    test_limits.test_a_rate_allows_one_burst_then_one_start_per_interval
)
test_a_cap_bounds_the_tasks_in_flight = test_limits.test_a_cap_bounds_the_tasks_in_flight
test_the_flow_view_shows_the_limits_state = test_limits.test_the_flow_view_shows_the_limits_state
# issue 14: a batch of completions with tenants and a cap (the 'release' SPUBLISHed)
test_a_batch_leaves_what_complete_leaves_with_tenants_and_a_cap = (
    test_settle.test_a_batch_leaves_what_complete_leaves_with_tenants_and_a_cap
)
test_a_capped_queue_settles_in_one_call_and_tells_release_once = (
    test_settle.test_a_capped_queue_settles_in_one_call_and_tells_release_once
)

# issue 13 item 4: partitioned queues
make_engine = test_partitions.make_engine
test_tasks_spread_and_all_complete_exactly_once = (
    test_partitions.test_tasks_spread_and_all_complete_exactly_once
)
test_fifo_within_each_partition_and_priority_within_it = (
    test_partitions.test_fifo_within_each_partition_and_priority_within_it
)
test_inversion_across_partitions_is_bounded = (
    test_partitions.test_inversion_across_partitions_is_bounded
)
test_position_sums_the_partitions = test_partitions.test_position_sums_the_partitions
test_by_id_calls_without_a_queue_name_find_the_partition = (
    test_partitions.test_by_id_calls_without_a_queue_name_find_the_partition
)
test_dependencies_across_partitions = test_partitions.test_dependencies_across_partitions
test_growing_partitions_live_loses_no_task = (
    test_partitions.test_growing_partitions_live_loses_no_task
)
service_partitioned = test_partitioned_service.service_partitioned
test_pull_workers_take_from_every_partition = (
    test_partitioned_service.test_pull_workers_take_from_every_partition
)
test_a_long_poll_wakes_for_a_task_of_any_partition = (
    test_partitioned_service.test_a_long_poll_wakes_for_a_task_of_any_partition
)
test_dependencies_across_partitions_release_through_the_sender = (
    test_partitioned_service.test_dependencies_across_partitions_release_through_the_sender
)
test_cancel_by_id_finds_every_partition = (
    test_partitioned_service.test_cancel_by_id_finds_every_partition
)
test_a_process_with_the_old_count_finds_tasks_placed_by_the_new_one = (
    test_partitions.test_a_process_with_the_old_count_finds_tasks_placed_by_the_new_one
)
test_events_follow_every_partition_and_resume_from_the_vector = (
    test_partitioned_service.test_events_follow_every_partition_and_resume_from_the_vector
)
test_listing_pages_through_every_partition = (
    test_partitioned_service.test_listing_pages_through_every_partition
)
test_dead_letters_of_every_partition = test_partitioned_service.test_dead_letters_of_every_partition
test_detail_history_and_oldest_waiting_span_the_partitions = (
    test_partitioned_service.test_detail_history_and_oldest_waiting_span_the_partitions
)
test_a_task_rebuilt_from_its_lease_renews_in_its_partition = (
    test_partitions.test_a_task_rebuilt_from_its_lease_renews_in_its_partition
)
test_fsck_finds_a_busy_partitioned_queue_consistent = (
    test_partitions.test_fsck_finds_a_busy_partitioned_queue_consistent
)
# fair share on a partitioned queue: each partition's tenant keys on its own master
test_fair_share_works_within_each_partition = (
    test_partitions.test_fair_share_works_within_each_partition
)
test_an_idle_wait_with_tenants_waiting_wakes_for_any_partition = (
    test_partitions.test_an_idle_wait_with_tenants_waiting_wakes_for_any_partition
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    topology = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield topology
    topology.stop()


@pytest.fixture
def redis_url(cluster: Cluster) -> str:
    """Every fixture of tests/conftest.py on the cluster (see the module docstring)."""
    return cluster.url


@pytest.fixture
def svc(queue: str) -> str:
    return f"svc-{queue[:8]}"


@pytest.fixture
async def make_rig(
    spawn_service: Spawn, queue: str
) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    rigs = Rigs(spawn_service, queue)
    yield rigs.make
    await rigs.close()


# --- the client and the runner on the cluster ----------------------------------------------


async def test_the_url_gives_a_cluster_client_that_routes_by_slot(cluster: Cluster, queue: str):
    """Queues of different tags land on different primaries; one pipelined batch of
    enqueues across them answers every one."""
    client = connect(cluster.url)
    try:
        assert isinstance(client, RedisCluster)
        names = [f"{queue}-{i}" for i in range(12)]
        owners = {cluster.owner(cluster.slot_of(f"{{{n}}}")).port for n in names}
        assert len(owners) == 3  # twelve tags over three primaries: all of them used
        shared = Scripts(client)  # one runner: the twelve calls are one turn's batch
        engines = [Engine(client, Settings(queue=n), scripts=shared) for n in names]
        answers = await asyncio.gather(
            *(e.default.enqueue(TaskRequest.parse({"code": "x"})) for e in engines)
        )
        assert [a["position"] for a in answers] == [1] * 12
        assert shared.redirects["moved"] == 0 and shared.redirects["ask"] == 0
    finally:
        await client.aclose()


def masters_by_slot(cluster: Cluster) -> dict[int, tuple[int, int]]:
    """port -> (first slot, last slot) of each master, from CLUSTER NODES."""
    raw = direct(cluster.live()[0]).execute_command("CLUSTER", "NODES")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if "master" in parts[2] and len(parts) > 8:
            lo, _, hi = parts[8].partition("-")
            found[int(parts[1].split(":")[1].split("@")[0])] = (int(lo), int(hi or lo))
    return found


async def test_eight_named_queues_use_all_three_masters_and_all_run(
    cluster: Cluster, make_service, make_executor, queue: str
):
    """Each named queue has its own hash tag, `{QUEUE_NAME/name}`: eight of them land on all
    three masters (names taken in order, at most three per master: an operator spreading
    queues does the same, docs/operations.md), every one runs, and each queue's keys are on
    the master that CLUSTER KEYSLOT and CLUSTER NODES name."""
    masters = masters_by_slot(cluster)
    assert len(masters) == 3

    def owner(name: str) -> int:
        slot = cluster.slot_of(QueueKeys.named(queue, name).counters)
        return next(port for port, (lo, hi) in masters.items() if lo <= slot <= hi)

    names: list[str] = []
    per_master: dict[int, int] = {}
    for i in range(100):
        port = owner(f"q{i}")
        if len(names) < 8 and per_master.get(port, 0) < 3:
            names.append(f"q{i}")
            per_master[port] = per_master.get(port, 0) + 1
    assert len(names) == 8 and len(per_master) == 3
    executor = await make_executor()
    svc = await make_service(queue_executors={n: ((executor.url,), ()) for n in names})
    for name in names:
        for j in range(2):
            await post(svc, f"{name}-{j}", queue=name)
    for name in names:
        for j in range(2):
            await wait_for(has_state(svc, f"{name}-{j}", "completed"))
    by_node = {n.port: n for n in cluster.nodes}
    for name in names:
        counters = QueueKeys.named(queue, name).counters
        on_owner = direct(by_node[owner(name)]).hget(counters, "total:completed")
        assert on_owner == b"2", name  # read on that master itself: the keys live there
    assert len({owner(name) for name in names}) == 3


def spread_name(cluster: Cluster, queue: str, parts: int) -> str:
    """A default queue name whose `parts` partition tags use all three masters."""
    for i in range(200):
        name = f"{queue[:12]}{i}"
        tags = [QueueKeys.default(name).partition(p).counters for p in range(parts)]
        if len({cluster.owner(cluster.slot_of(t)).port for t in tags}) == 3:
            return name
    raise AssertionError("no spread name")


async def test_a_partitioned_queue_runs_on_all_three_masters(
    cluster: Cluster, make_service, make_executor, queue: str
):
    """QUEUE_PARTITIONS=4 on the default queue: the tasks are stored over all three
    masters, every one runs exactly once through the service's consumers, each is found by
    id, and each partition's keys are read on the master that owns its slot."""
    name = spread_name(cluster, queue, 4)
    executor = await make_executor()
    svc = await make_service(queue=name, queue_partitions={name: 4}, executor_urls=(executor.url,))
    ids = [f"p{i}" for i in range(60)]
    batch = {"tasks": [{"eval_id": i, "code": "x"} for i in ids]}
    answers = (await svc.http.post("/tasks/batch", json=batch)).json()["tasks"]
    assert all(a.get("status") in ("queued", "completed") for a in answers), answers
    for eval_id in ids:
        await wait_for(has_state(svc, eval_id, "completed"))
    by_node = {n.port: n for n in cluster.nodes}
    per_master: dict[int, int] = {}
    for part in range(4):
        counters = QueueKeys.default(name).partition(part).counters
        port = cluster.owner(cluster.slot_of(counters)).port
        done = int(direct(by_node[port]).hget(counters, "total:completed") or 0)
        per_master[port] = per_master.get(port, 0) + done
    assert sum(per_master.values()) == 60 and len(per_master) == 3
    assert all(n > 0 for n in per_master.values()), per_master


async def test_noscript_on_a_primary_loads_the_script_there_only(cluster: Cluster, queue: str):
    engine = Engine.connect(cluster.url, Settings(redis_url=cluster.url, queue=queue))
    try:
        await engine.default.enqueue(TaskRequest.parse({"eval_id": "a", "code": "x"}))
        owner = cluster.owner(cluster.slot_of(f"{{{queue}}}"))
        raw = connect(f"redis://127.0.0.1:{owner.port}")
        await raw.script_flush()
        await raw.aclose()
        before = engine.scripts.redirects["noscript"]
        await engine.default.enqueue(TaskRequest.parse({"eval_id": "b", "code": "x"}))
        assert engine.scripts.redirects["noscript"] == before + 1
        assert (await engine.default.get("b"))["position"] == 2
    finally:
        await engine.close()


# --- faults under load ----------------------------------------------------------------------


async def test_a_primary_killed_under_load_is_replaced_by_its_replica(
    make_rig: Callable[..., Awaitable[Rig]], cluster: Cluster, queue: str
):
    """SIGKILL to the primary holding the queue's slot while two replicas enqueue and
    drain through it: its replica is promoted (cluster-node-timeout 1 s), the service
    follows (slot map refreshed after the connection errors), and the total-queue report
    counts what async replication lost (reported, not bounded: DURABILITY=async)."""
    rig = await make_rig(cluster.url)
    victim = cluster.owner(cluster.slot_of(f"{{{queue}}}"))
    await rig.more("accepted", 20)
    killed = time.monotonic()
    cluster.kill(victim)
    try:
        await rig.more("indeterminate", 1, timeout=10)
        await rig.more("accepted", 20, timeout=30)
        recovered = time.monotonic() - killed
        report = await rig.report()
    finally:
        cluster.restart(victim)  # whole again for the module's next tests
    print(f"\ncluster primary SIGKILL: serving again after {recovered:.1f} s\n{report.summary()}")
    assert not report.unexpected and not report.bad_keys and not report.uncounted
    assert len(report.lost) <= 5, report.summary()  # async replication's window: a few


async def test_a_slot_migrated_while_tasks_flow_loses_nothing(
    make_rig: Callable[..., Awaitable[Rig]], cluster: Cluster, queue: str
):
    """The queue's slot moves to another primary under load (IMPORTING / MIGRATING,
    MIGRATE of its keys, a pause with the keys moved and ownership not yet, then SETSLOT
    NODE): the runner follows ASK (during) and MOVED (after), nothing accepted is lost,
    nothing runs twice."""
    rig = await make_rig(cluster.url)
    slot = cluster.slot_of(f"{{{queue}}}")
    source = cluster.owner(slot)
    target = next(n for n in cluster.masters_now() if n is not source)
    await rig.more("accepted", 20)
    moved = cluster.migrate(slot, target, between=lambda: time.sleep(0.3))
    await rig.more("accepted", 20, timeout=20)
    assert cluster.owner(slot) is target and moved > 5
    report = (await rig.report()).check(max_duplicates=0)
    redirects = await _redirects(rig)
    print(f"\nslot migration: {moved} keys moved; redirects {redirects}\n{report.summary()}")
    # MOVED after the move is mostly met first by the replicas' redis-py commands (their
    # blocking reads), which patch the slot map the runner shares: see the next test.
    assert redirects["ask"] >= 1


async def test_moved_is_followed_to_the_new_owner(cluster: Cluster, queue: str):
    """A runner whose slot map still names the old owner meets MOVED once, patches the
    map, and the call runs on the new owner (once: the reply is the second position)."""
    engine = Engine.connect(cluster.url, Settings(redis_url=cluster.url, queue=queue))
    try:
        await engine.default.enqueue(TaskRequest.parse({"eval_id": "a", "code": "x"}))
        slot = cluster.slot_of(f"{{{queue}}}")
        target = next(n for n in cluster.masters_now() if n is not cluster.owner(slot))
        cluster.migrate(slot, target)
        answer = await engine.default.enqueue(TaskRequest.parse({"eval_id": "b", "code": "x"}))
        assert answer["position"] == 2
        assert engine.scripts.redirects["moved"] == 1, engine.scripts.redirects
        assert cluster.owner(slot) is target
    finally:
        await engine.close()


async def _redirects(rig: Rig) -> dict[str, int]:
    """taskstream_redis_redirects_total of every replica, summed per kind."""
    found = {"moved": 0, "ask": 0, "tryagain": 0, "noscript": 0}
    async with httpx.AsyncClient(timeout=5) as http:
        for url in rig.urls:
            text = (await http.get(url + "/metrics")).text
            for line in text.splitlines():
                if line.startswith("taskstream_redis_redirects_total{"):
                    kind = line.split('"')[1]
                    found[kind] += int(float(line.rsplit(" ", 1)[1]))
    return found


async def test_sharded_subscribers_hear_spublish_on_the_owning_primary(
    cluster: Cluster, queue: str
):
    """The queue channels' subscriber on a cluster of Redis >= 7: the scripts SPUBLISH, so
    SSUBSCRIBE on the primary owning the channel's slot. On 6.2 the runner keeps PUBLISH."""
    client = connect(cluster.url)
    try:
        features = await server_features(client)
        scripts = Scripts(client)
        await scripts.prepare()
        assert scripts.publish == ("SPUBLISH" if features.sharded_pubsub else "PUBLISH")
        assert scripts.sharded_pubsub == features.sharded_pubsub
        if not features.sharded_pubsub:
            return
        channel = f"ts:{{{queue}}}:cancel"
        heard = subscribed(client, [channel], sharded=True)
        first = asyncio.ensure_future(anext(heard))

        async def delivered() -> bool:  # published until the subscription is in place
            await client.execute_command("SPUBLISH", channel, "t1")
            return first.done()

        await wait_for(delivered, timeout=5, interval=0.05)
        assert first.result() == (channel, "t1")
        await heard.aclose()
    finally:
        await client.aclose()
