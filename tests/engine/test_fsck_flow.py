"""fsck of the flow-control structures (issue 15): the `expiries` zsets and the `dedup`
hashes, damaged on purpose with redis-cli's commands; `python -m app fsck` names each
orphan's class and --repair mends it. Also: an expired task is a consistent terminal state,
whatever structures it left."""

from __future__ import annotations

from app.engine.queue import Queue
from tests.conftest import wait_for
from tests.engine import test_fsck
from tests.engine.test_fsck import Fsck, add, claim_one, found_then_repaired, raw

# the fsck suite's fixtures
qstreams = test_fsck.qstreams
run_fsck = test_fsck.run_fsck


async def test_expired_tasks_and_dedup_holders_are_consistent(qstreams: Queue, run_fsck: Fsck):
    streams = qstreams
    await add(streams, "parent")
    await add(streams, "old", expires=0.05, depends_on=["parent"])
    await add(streams, "gone", expires=0.05)
    await add(streams, "live", expires=600, delay=60, dedup_key="a")
    await add(streams, "thr", dedup_key="t", dedup="throttle", dedup_ttl=600)

    async def expired() -> bool:
        await streams.promote()
        return bool((await streams.get("old"))["status"] == "expired")

    await wait_for(expired, timeout=5)
    code, report = await run_fsck()
    assert code == 0 and report["consistent"], report


async def test_expiry_orphan_is_removed(qstreams: Queue, run_fsck: Fsck):
    streams = qstreams
    await add(streams, "ran", expires=600)
    task = await claim_one(streams, "w")
    await streams.complete("ran", 1, task)
    await raw(streams).zadd(streams.keys.expiries, {"ran": 4102444800000, "ghost": 1})
    await found_then_repaired(run_fsck, [("expiry_orphan", "ghost"), ("expiry_orphan", "ran")])
    assert await raw(streams).zcard(streams.keys.expiries) == 0


async def test_expiry_missing_is_added_back_and_then_expires(qstreams: Queue, run_fsck: Fsck):
    streams = qstreams
    await add(streams, "lost-track", delay=60, expires=600)
    await add(streams, "child", depends_on=["lost-track"], expires=600)
    await raw(streams).zrem(streams.keys.expiries, "lost-track", "child")
    await found_then_repaired(
        run_fsck, [("expiry_missing", "child"), ("expiry_missing", "lost-track")]
    )
    record = await raw(streams).hget(streams.keys.task("child"), "exp")
    assert await raw(streams).zscore(streams.keys.expiries, "child") == int(record)


async def test_dedup_orphan_is_removed(qstreams: Queue, run_fsck: Fsck):
    streams = qstreams
    await add(streams, "done", dedup_key="stale")
    await streams.complete("done", 1, await claim_one(streams, "w"))  # released its key
    await add(streams, "holder", dedup_key="live")
    await add(streams, "throttled", dedup_key="window", dedup="throttle", dedup_ttl=600)
    task = await claim_one(streams, "w")  # holder, processing: still holds its key
    await raw(streams).hset(
        streams.keys.dedup, mapping={"nowhere": "no-such-task", "stale": "done", "loose": "holder"}
    )
    await found_then_repaired(
        run_fsck,
        [("dedup_orphan", "loose"), ("dedup_orphan", "nowhere"), ("dedup_orphan", "stale")],
    )
    left = await raw(streams).hgetall(streams.keys.dedup)
    assert left == {b"live": b"holder", b"window": b"throttled"}
    await streams.complete("holder", 1, task)
    assert await raw(streams).hgetall(streams.keys.dedup) == {b"window": b"throttled"}


async def test_a_lapsed_throttle_window_left_behind_is_a_dedup_orphan(
    qstreams: Queue, run_fsck: Fsck
):
    streams = qstreams
    await add(streams, "t1", dedup_key="w", dedup="throttle", dedup_ttl=600)
    await raw(streams).zadd(streams.keys.dedup_ttl, {"w": 1})  # lapsed, not swept
    await found_then_repaired(run_fsck, [("dedup_orphan", "w")])
    assert await raw(streams).exists(streams.keys.dedup, streams.keys.dedup_ttl) == 0
