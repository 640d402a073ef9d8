"""The loops' asyncio helpers (runtime/aio.py): the one race, the backoff formula (the
Python twin of fail.lua's), the reconnect backoff.
"""

from __future__ import annotations

import asyncio

import pytest

from app.runtime.aio import Backoff, backoff_delay, first_completed, won
from app.settings import RetryPolicy


def test_retry_policy_delay_without_jitter() -> None:
    policy = RetryPolicy(3, 5.0, 2.0, 300.0, jitter=False)
    assert [backoff_delay(policy, n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert backoff_delay(policy, 20) == 300.0


def test_backoff_delay_follows_the_interval_list_as_fail_lua_does() -> None:
    """The Python twin of fail.lua: an interval list replaces the formula, its last value
    repeats, and jitter keeps half of it."""
    policy = RetryPolicy(3, 5.0, 2.0, 300.0, jitter=False, intervals=(1.0, 7.0))
    assert [backoff_delay(policy, n) for n in (1, 2, 3, 9)] == [1.0, 7.0, 7.0, 7.0]
    jittered = RetryPolicy(3, 5.0, 2.0, 300.0, jitter=True, intervals=(8.0,))
    assert backoff_delay(jittered, 1, rand=lambda: 0.0) == 4.0
    # however long a Redis outage lasts, the wait stays at the cap (no float overflow)
    assert backoff_delay(RetryPolicy(0, 0.05, 2.0, 5.0, jitter=False), 5000) == 5.0


def test_retry_policy_equal_jitter_bounds() -> None:
    policy = RetryPolicy(3, 4.0, 2.0, 300.0, jitter=True)
    assert backoff_delay(policy, 2, rand=lambda: 0.0) == 4.0
    assert backoff_delay(policy, 2, rand=lambda: 0.999999) == pytest.approx(8.0, abs=1e-4)
    for _ in range(100):
        assert 4.0 <= backoff_delay(policy, 2) <= 8.0


async def test_first_completed_returns_the_winner_and_cancels_the_rest() -> None:
    finished: list[str] = []

    async def after(seconds: float, name: str) -> str:
        await asyncio.sleep(seconds)
        finished.append(name)
        return name

    fast, slow = await first_completed(after(0.01, "fast"), after(30, "slow"))
    assert won(fast) and fast.result() == "fast"
    assert slow.cancelled() and not won(slow)
    await asyncio.sleep(0.05)
    assert finished == ["fast"]  # the loser never ran on


async def test_first_completed_keeps_a_winners_exception_for_the_caller() -> None:
    async def broken() -> None:
        raise ValueError("boom")

    failed, pending = await first_completed(broken(), asyncio.sleep(30))
    assert won(failed) and isinstance(failed.exception(), ValueError)
    assert pending.cancelled()


async def test_first_completed_times_out_and_cancels_everything() -> None:
    jobs = await first_completed(asyncio.sleep(30), asyncio.sleep(30), timeout=0.01)
    assert all(job.cancelled() for job in jobs)


async def test_first_completed_cancelled_from_outside_cancels_its_jobs() -> None:
    started = asyncio.Event()
    inner: list[asyncio.Future[None]] = []

    async def runs() -> None:
        inner.append(asyncio.current_task())  # type: ignore[arg-type]
        started.set()
        await asyncio.sleep(30)

    race = asyncio.create_task(first_completed(runs(), asyncio.sleep(30)))
    await started.wait()
    race.cancel()
    with pytest.raises(asyncio.CancelledError):
        await race
    assert inner[0].cancelled()


def test_backoff_doubles_from_first_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=0.05, cap=0.3)
    delays = [backoff.next_delay() for _ in range(5)]
    backoff.reset()
    assert [*delays, backoff.next_delay()] == [0.05, 0.1, 0.2, 0.3, 0.3, 0.05]
