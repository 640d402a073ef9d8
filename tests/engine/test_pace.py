"""The pace behind a queued task's ETA (engine/pace.py): the estimator on chosen readings,
and its samples in Redis (taken when asked, at most one per SAMPLE_EVERY)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

from app.engine import pace
from app.engine.pace import Pace, Reading, measure
from app.engine.queue import Queue
from app.models import Priority
from tests.engine.conftest import claim_ids, raw, req


def reading(at_s: float, heads: tuple[int, ...], seqs: tuple[int, ...] = (0, 0, 0)) -> Reading:
    return Reading(int(at_s * 1000), heads, seqs)


def test_the_pace_is_starts_per_second_less_the_arrivals_above():
    now = reading(10, (100, 50, 0), (120, 80, 10))
    then = reading(5, (50, 25, 0), (70, 55, 10))
    found = measure(now, [then])
    assert found is not None
    assert found.starts == pytest.approx(15.0)  # 75 starts in 5 s
    assert found.arrivals == pytest.approx((10.0, 5.0, 0.0))
    assert found.per_second(Priority.HIGH) == pytest.approx(15.0)
    assert found.per_second(Priority.DEFAULT) == pytest.approx(5.0)  # high arrivals overtake
    assert found.per_second(Priority.LOW) == pytest.approx(0.0)
    assert found.eta(Priority.LOW, 3) is None  # no pace for low: nothing to estimate


def test_the_eta_is_the_position_over_the_pace():
    found = Pace(now=1_700_000_000_000, starts=4.0, arrivals=(0.0, 0.0, 0.0))
    eta = found.eta(Priority.DEFAULT, 10)
    assert eta is not None
    moment = datetime.fromisoformat(eta.replace("Z", "+00:00")).timestamp()
    assert moment == pytest.approx(1_700_000_000 + 2.5)


def test_the_newest_sample_with_enough_starts_is_used():
    now = reading(100, (1000, 0, 0))
    samples = [
        reading(99.5, (990, 0, 0)),  # too recent (under MIN_SPAN)
        reading(99, (980, 0, 0)),  # 20 starts: not enough
        reading(98, (900, 0, 0)),  # 100 starts in 2 s: chosen
        reading(50, (0, 0, 0)),  # older: a different pace, not used
    ]
    found = measure(now, samples)
    assert found is not None and found.starts == pytest.approx(50.0)


def test_a_slow_queue_is_averaged_over_the_oldest_sample():
    now = reading(100, (10, 0, 0))
    found = measure(now, [reading(90, (7, 0, 0)), reading(40, (4, 0, 0))])
    assert found is not None and found.starts == pytest.approx(0.1)


@pytest.mark.parametrize(
    "samples",
    [
        [],  # nothing to compare with
        [reading(99.8, (0, 0, 0))],  # too recent
        [reading(90, (9, 0, 0))],  # one start: no pace yet
    ],
)
def test_no_pace_without_two_readings_and_starts(samples: list[Reading]):
    assert measure(reading(100, (10, 0, 0)), samples) is None


async def test_samples_are_kept_when_asked_at_most_one_per_interval(streams: Queue):
    assert await pace.pace_of(streams) is None  # the first question keeps the first sample
    assert await pace.pace_of(streams) is None
    assert await raw(streams).llen(streams.keys.pace) == 1
    assert 0 < await raw(streams).pttl(streams.keys.pace) <= pace.TTL * 1000


async def test_a_queue_that_starts_tasks_gets_a_pace(
    streams: Queue, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(pace, "MIN_SPAN", 0.05)
    monkeypatch.setattr(pace, "SAMPLE_EVERY", 0.01)
    for i in range(6):
        await streams.enqueue(req(f"e{i}"))
    assert await pace.pace_of(streams) is None
    await claim_ids(streams, 3)
    records: list[dict[str, Any]] = [await streams.get("e5")]
    await asyncio.sleep(0.06)
    await pace.add_etas(streams, records)
    assert records[0]["position"] == 3
    assert datetime.fromisoformat(records[0]["eta"].replace("Z", "+00:00"))
