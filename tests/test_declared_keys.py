"""Every key a script touches is in its KEYS (docs/operations.md, *Declared keys*).

The core of the functional suite runs against a Redis watched with MONITOR
(tests/keycheck.py): after each test, every script call it caused is compared with the
keys its commands touched (`COMMAND GETKEYS`, asked of the server), and the test fails on
any key outside KEYS but the one documented family (task records of a declared queue,
reached by ids read from that queue's structures). The first tests show that the check
fails on a violation: an ad-hoc script, and a real script run with part of its KEYS left
out. `TASKSTREAM_KEYCHECK=1` puts the same check on every test of the suite that uses the
session's Redis (tests/conftest.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from app.engine.engine import Engine
from app.engine.queue import Queue
from app.models import TaskRequest
from app.redis_server import RedisServer, find_binary
from tests import test_semantics
from tests.eas import test_forward, test_store
from tests.engine import (
    conftest,
    test_admin,
    test_cross_queue,
    test_dedup,
    test_dependencies,
    test_expiry,
    test_fair,
    test_fsck,
    test_fsck_flow,
    test_history,
    test_intake,
    test_limits,
    test_listing,
    test_named_queues,
    test_settle,
)
from tests.keycheck import KeyCheck, Violation
from tests.runtime import test_callbacks, test_consumers
from tests.web import test_tasks

# The flows checked (each from its own module; the fixtures they need with them).
make_streams = conftest.make_streams
qstreams, run_fsck = test_fsck.qstreams, test_fsck.run_fsck
make_receiver = test_callbacks.make_receiver
make_worker, make_pool = test_consumers.make_worker, test_consumers.make_pool
home = test_cross_queue.home
CHECKED = [
    test_semantics.test_backoff_gaps_without_jitter,
    test_semantics.test_cancel_scheduled_and_retrying_never_run,
    test_semantics.test_dlq_list_redrive_and_purge,
    test_semantics.test_pull_order_is_strict_priority_then_fifo,
    test_semantics.test_scheduled_task_never_runs_early,
    test_tasks.test_batch_answers_one_entry_per_task,
    test_tasks.test_complete_a_pulled_task,
    test_tasks.test_fail_with_retries_left_is_retrying,
    test_tasks.test_next_long_poll_returns_a_task_enqueued_while_waiting,
    test_admin.test_clear_removes_everything_and_groups_still_work,
    test_named_queues.test_by_id_operations_find_the_named_queue,
    test_named_queues.test_dlq_is_per_queue,
    test_named_queues.test_pause_and_resume_a_named_queue,
    test_named_queues.test_named_queue_retries_schedules_and_terminates,
    test_named_queues.test_callbacks_of_a_named_queue,
    test_named_queues.test_dependencies_cross_queues,
    test_dependencies.test_chain_runs_in_order,
    test_dependencies.test_failed_parent_cancels_the_chain,
    test_dependencies.test_cancelled_deferred_child_stays_cancelled,
    test_dependencies.test_released_child_with_a_delay_is_scheduled,
    test_dependencies.test_fan_in_child_cancelled_by_one_parent_leaves_the_other,
    test_cross_queue.test_a_failed_parent_cancels_dependants_in_other_queues_and_their_own,
    test_cross_queue.test_fan_in_over_three_queues_waits_for_every_parent,
    test_cross_queue.test_parents_already_finished_in_other_queues_decide_at_once,
    test_cross_queue.test_a_relay_applies_once_and_is_removed,
    test_cross_queue.test_a_parent_that_ends_while_its_dependant_is_stored_is_caught_up,
    test_cross_queue.test_expired_records_lose_their_pointers_at_housekeeping,
    test_fsck.test_deferred_stuck_is_relinked_then_released_by_its_parent,
    test_fsck.test_deferred_stuck_behind_a_failed_parent_is_cancelled,
    test_fsck.test_deps_orphan_is_removed,
    test_fsck.test_dependants_left_on_a_finished_parent_are_settled,
    test_fsck.test_orphans_of_a_named_queue_are_found_under_it,
    test_fsck.test_eas_item_whose_entry_was_deleted_leaves_its_index,
    test_fsck.test_counter_drift_is_recomputed,
    test_callbacks.test_failed_and_cancelled_tasks_call_back,
    test_callbacks.test_an_entry_held_by_a_dead_sender_is_taken_over,
    test_consumers.test_cancel_terminate_sent_to_another_process_aborts_the_call,
    test_consumers.test_stop_releases_to_an_idle_consumer_promptly,
    test_forward.test_target_500_then_200_is_retry_then_success,
    test_forward.test_retries_exhausted_end_in_failure_and_the_dlq,
    test_forward.test_delete_of_a_running_forward_aborts_it_and_forgets_the_request,
    test_forward.test_an_answerless_failure_leaves_an_error_frame_in_the_sink,
    test_store.test_index_reads_length_tags_and_auto_delete,
    test_store.test_commit_marks_an_item_done_for_the_sink_json,
    # issue 15 (dedup, expiry) and the listing and history keys, merged with the keyspace
    test_dedup.test_active_released_by_every_terminal_state,
    test_dedup.test_throttle_holds_for_the_ttl_then_lapses,
    test_dedup.test_promoter_sweeps_lapsed_throttle_windows,
    test_dedup.test_debounce_takes_the_newest_payload_and_time,
    test_dedup.test_batch_dedups_within_and_across_apis,
    test_expiry.test_queued_task_met_by_a_claim_is_expired_not_delivered,
    test_expiry.test_queued_task_behind_a_pause_is_swept,
    test_expiry.test_retrying_task_expires_during_its_backoff,
    test_expiry.test_deferred_task_expires_and_leaves_its_parent,
    test_expiry.test_dependants_of_an_expired_task_are_cancelled,
    test_expiry.test_an_expired_task_gets_its_callback,
    test_expiry.test_cancel_leaves_the_expiries,
    test_expiry.test_a_named_queue_has_its_own_expiries,
    test_fsck_flow.test_expired_tasks_and_dedup_holders_are_consistent,
    test_fsck_flow.test_expiry_missing_is_added_back_and_then_expires,
    test_fsck_flow.test_dedup_orphan_is_removed,
    test_history.test_the_housekeeping_rolls_up,
    test_history.test_a_task_lifecycle_shows_in_the_current_hour,
    test_listing.test_deferred_with_what_it_waits_for,
    # issue 15 items 1-2: fair share (tenant streams, waiting orders, virtual times) and the
    # limits (the GCRA's key, the leases a cap counts)
    test_fair.test_a_tenants_task_waits_parked_and_leaves_nothing_behind,
    test_fair.test_tenant_default_takes_its_share,
    test_fair.test_strict_priority_stays_across_levels,
    test_fair.test_cancel_a_tenants_queued_task,
    test_fair.test_a_lapsed_lease_is_taken_over,
    test_fair.test_a_retried_task_waits_under_its_tenant_again,
    test_fair.test_a_dead_letter_keeps_its_tenant,
    test_fair.test_a_released_dependant_waits_under_its_tenant,
    test_fair.test_fsck_finds_the_structures_consistent,
    test_fair.test_queued_listing_shows_tenants_tasks_with_their_positions,
    test_fair.test_processing_listing_leaves_out_waiting_tenants_tasks,
    test_fair.test_oldest_waiting_counts_tenants_tasks,
    test_fair.test_a_tenants_task_expires_from_its_waiting_order,
    test_fair.test_a_tenants_task_is_deduplicated,
    test_limits.test_a_rate_allows_one_burst_then_one_start_per_interval,
    test_limits.test_the_rate_state_expires,
    test_limits.test_a_cap_bounds_the_tasks_in_flight,
    test_limits.test_a_cap_wakes_consumers_when_a_slot_frees,
    test_fsck.test_a_tenants_task_missing_from_its_waiting_order_is_listed_again,
    test_fsck.test_a_waiting_member_naming_no_task_is_removed,
    test_fsck.test_tenant_task_counter_drift_is_recomputed,
    # issue 14: completions settled in batches, tenants' tasks and a capped queue's included
    test_settle.test_a_batch_leaves_what_complete_leaves_with_tenants_and_a_cap,
    test_settle.test_a_capped_queue_settles_in_one_call_and_tells_release_once,
    test_settle.test_a_tenant_stream_with_waiting_entries_is_kept,
    # issue 14: enqueues batched per event-loop turn (enqueue_batch.lua)
    test_intake.test_a_batch_answers_and_writes_as_single_enqueues_one_after_the_other,
    test_intake.test_a_named_queue_batch_through_enqueue_many,
    test_intake.test_a_partitioned_queue_sends_one_batch_per_partition,
]
hub = test_fsck.hub
for _test in CHECKED:
    globals()[_test.__name__] = _test

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, KeyCheck]]:
    binary = find_binary(prefer=os.environ.get("TASKSTREAM_TEST_REDIS", "path"))
    server = RedisServer(
        tmp_path_factory.mktemp("keycheck"), appendonly=False, binary=binary, unix_socket=False
    )
    server.start()
    check = KeyCheck("127.0.0.1", server.port)
    yield server, check
    check.close()
    server.stop()


@pytest.fixture
def redis_url(monitored: tuple[RedisServer, KeyCheck]) -> str:
    """Every fixture of tests/conftest.py on the watched server."""
    return monitored[0].url


@pytest.fixture
def key_check(monitored: tuple[RedisServer, KeyCheck]) -> KeyCheck:
    return monitored[1]


@pytest.fixture(autouse=True)
def declared_only(monitored: tuple[RedisServer, KeyCheck]) -> Iterator[None]:
    """The check after each test: script calls were seen, and none touched a key it did
    not declare."""
    check = monitored[1]
    check.take()
    seen = check.calls
    yield
    violations = check.take()
    assert check.calls > seen, "no script call was seen: is MONITOR working?"
    assert not violations, "\n".join(sorted({str(v) for v in violations})[:20])


# --- the check itself fails on a violation --------------------------------------------------


async def test_the_check_fails_on_an_undeclared_key(client: Any, key_check: KeyCheck, queue: str):
    declared = f"ts:{{{queue}}}:counters"
    script = """
      redis.call('HSET', KEYS[1], 'a', 1)
      redis.call('HSET', 'ts:{' .. ARGV[1] .. '}:other', 'a', 1)
      redis.call('HGET', 'ts:{' .. ARGV[1] .. '}:task:t1', 'state')
      redis.call('HGET', 'ts:{elsewhere}:task:t1', 'state')
      return 1"""
    await client.eval(script, 1, declared, queue)
    found = key_check.take()
    assert {(v.key, v.command) for v in found} == {
        (f"ts:{{{queue}}}:other", "HSET"),  # a key of the same tag, not declared
        ("ts:{elsewhere}:task:t1", "HGET"),  # a task record of a queue not declared
    }  # a task record of the declared queue is the one family allowed
    assert all(isinstance(v, Violation) and v.declared == (declared,) for v in found)


async def test_the_check_fails_on_a_real_script_missing_keys(
    client: Any, key_check: KeyCheck, make_settings: Any
):
    """complete.lua run without its queue's effects (engine/keys.py): finishing a task with
    a callback appends to the callbacks stream, which the call then does not declare."""
    streams: Queue = Engine(client, make_settings(storage_service_url="http://x/")).default
    await streams.ensure_groups()
    await streams.enqueue(TaskRequest.parse({"eval_id": "cb", "code": "x"}))
    task = (await streams.claim("w", 1, 30)).tasks[0]
    k, s = streams.keys, streams.settings
    keys = [k.task("cb"), k.leases, k.events, k.counters, *k.streams]  # no effects
    argv = ["cb", task.entry, task.attempt, "1", s.result_ttl, "workers", s.events_maxlen, "", ""]
    assert (await streams.scripts.run("complete", keys, argv))[0] == b"ok"
    found = {(v.key, v.command) for v in key_check.take()}
    assert (k.callbacks, "XADD") in found and (k.stats, "HINCRBY") in found
