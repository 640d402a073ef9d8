"""RATE_LIMITS and QUEUE_MAX_IN_FLIGHT in the claim script (claim.lua, _fair.lua's GCRA),
against the real Redis server: how many a claim hands out, what it says when a limit held
tasks back (and when to look again), and that the limits hold for claims of several
consumers at once; a held task stays `queued`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from app.engine import flow
from app.engine.queue import Queue
from app.flow_settings import Flow, Rate
from tests.conftest import wait_for
from tests.engine.conftest import claim_one, raw, req


def limited(make_streams: Callable[..., Queue], queue: str, **limits: object) -> Queue:
    rates = {queue: limits["rate"]} if "rate" in limits else {}
    caps = {queue: limits["cap"]} if "cap" in limits else {}
    return make_streams(flow=Flow({}, rates, caps))  # type: ignore[arg-type]


async def fill(q: Queue, n: int) -> None:
    await asyncio.gather(*(q.enqueue(req(f"t{i}")) for i in range(n)))


async def test_a_rate_allows_one_burst_then_one_start_per_interval(
    make_streams: Callable[..., Queue], queue: str
) -> None:
    q = limited(make_streams, queue, rate=Rate(5, 1.0))
    await fill(q, 20)
    first = await q.claim("c1", 20, 30)
    assert len(first.tasks) == 5 and first.held == "rate"
    assert first.wake_in is not None and 0.15 <= first.wake_in <= 0.2  # one interval: 200 ms
    assert first.tails == []  # held: not a drained queue
    again = await q.claim("c2", 20, 30)
    assert (again.tasks, again.held) == ([], "rate")
    assert (await q.get("t10"))["status"] == "queued"
    await asyncio.sleep(again.wake_in or 0)
    assert len((await q.claim("c1", 20, 30)).tasks) == 1


async def test_a_rate_holds_for_concurrent_claims(
    make_streams: Callable[..., Queue], queue: str
) -> None:
    """Claims of four consumers at once for 1.5 s: at most N×T + N starts in any T."""
    q = limited(make_streams, queue, rate=Rate(20, 1.0))
    await fill(q, 200)
    starts: list[float] = []

    async def consumer(name: str) -> None:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            claimed = await q.claim(name, 8, 30)
            starts.extend(time.monotonic() for _ in claimed.tasks)
            await asyncio.sleep(min(claimed.wake_in or 0.01, 0.05))

    await asyncio.gather(*(consumer(f"c{i}") for i in range(4)))
    starts.sort()
    assert 20 + 20 * 1.2 <= len(starts) <= 20 + 20 * 1.5 + 1
    for i, t in enumerate(starts):  # every window [t, t + 0.5]: at most 20 × 0.5 + 20
        assert sum(1 for u in starts[i:] if u <= t + 0.5) <= 30 + 1  # +1: clock granularity


async def test_the_rate_state_expires(make_streams: Callable[..., Queue], queue: str) -> None:
    q = limited(make_streams, queue, rate=Rate(100, 1.0))
    await fill(q, 3)
    await q.claim("c1", 3, 30)
    ttl = await raw(q).pttl(q.keys.rate)
    assert 0 < ttl <= 30  # three intervals of 10 ms: gone once they passed


async def test_a_cap_bounds_the_tasks_in_flight(
    make_streams: Callable[..., Queue], queue: str
) -> None:
    q = limited(make_streams, queue, cap=3)
    await fill(q, 10)
    first = await q.claim("c1", 2, 30)
    second = await q.claim("c2", 5, 30)
    assert (len(first.tasks), len(second.tasks), second.held) == (2, 1, "in_flight")
    assert (await q.claim("c3", 5, 30)).held == "in_flight"
    await q.complete(first.tasks[0].eval_id, None, first.tasks[0])
    assert len((await q.claim("c3", 5, 30)).tasks) == 1


async def test_a_lapsed_lease_taken_over_counts_once(
    make_streams: Callable[..., Queue], queue: str
) -> None:
    q = limited(make_streams, queue, cap=1)
    await fill(q, 2)
    await claim_one(q, "c1", lease=0.05)
    await asyncio.sleep(0.1)
    taken = await q.claim("c2", 5, 30)
    assert [t.attempt for t in taken.tasks] == [2] and taken.held == "in_flight"


async def test_nothing_is_held_when_nothing_waits(
    make_streams: Callable[..., Queue], queue: str
) -> None:
    q = limited(make_streams, queue, cap=5, rate=Rate(10, 60.0))
    await fill(q, 1)
    claimed = await q.claim("c1", 4, 30)
    assert (len(claimed.tasks), claimed.held) == (1, "")
    assert len(claimed.tails) == 3  # drained: wait for new entries as usual


async def test_a_cap_wakes_consumers_when_a_slot_frees(
    make_streams: Callable[..., Queue], queue: str
) -> None:
    q = limited(make_streams, queue, cap=1)
    await fill(q, 2)
    task = await claim_one(q)
    heard: list[tuple[str, str]] = []

    async def listen() -> None:
        async for message in q.notifications():
            heard.append(message)
            return

    listener = asyncio.create_task(listen())

    async def subscribed() -> bool:
        return any(n for _, n in await raw(q).pubsub_numsub(q.keys.schedule_channel))

    await wait_for(subscribed)
    await q.complete(task.eval_id, None, task)
    await asyncio.wait_for(listener, 5)
    assert heard == [("schedule", "release")]


async def test_the_flow_view_shows_the_limits_state(
    make_streams: Callable[..., Queue], queue: str
) -> None:
    """What /status and /metrics read (engine/flow.py): the starts a rate allows now (the
    burst left) and when the next is allowed, and the tasks in flight under a cap."""
    q = limited(make_streams, queue, rate=Rate(5, 60.0), cap=3)
    view = (await flow.flow_of(q.redis, [q]))[0]
    assert view["limits"] == {"rate": "5/m", "max_in_flight": 3}
    assert view["rate"] == {"available": 5, "next_in_ms": 0} and view["in_flight"] == 0
    await fill(q, 10)
    first = await q.claim("c1", 2, 30)
    assert len(first.tasks) == 2
    view = (await flow.flow_of(q.redis, [q]))[0]
    assert view["rate"] == {"available": 3, "next_in_ms": 0} and view["in_flight"] == 2
    second = await q.claim("c1", 5, 30)
    assert len(second.tasks) == 1 and second.held == "in_flight"  # the cap: 3 in flight
    for task in [*first.tasks, *second.tasks]:
        await q.complete(task.eval_id, None, task)
    assert len((await q.claim("c1", 5, 30)).tasks) == 2  # the rate: 5 per minute
    view = (await flow.flow_of(q.redis, [q]))[0]
    assert view["rate"]["available"] == 0 and view["in_flight"] == 2
    assert 11_000 <= view["rate"]["next_in_ms"] <= 12_000  # one interval: 12 s
    unlimited = make_streams()
    assert "rate" not in (await flow.flow_of(q.redis, [unlimited]))[0]
