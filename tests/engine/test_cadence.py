"""The next-tick math of engine/cadence.py: cron in time zones (DST on both sides of the
year, as Debian cron), fixed intervals, the latest missed tick, and what is refused."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from app.engine.cadence import Cadence
from app.errors import Invalid

NEW_YORK = ZoneInfo("America/New_York")
PARIS = ZoneInfo("Europe/Paris")


def at(zone: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=zone).timestamp())


def after(cadence: Cadence, t: int) -> int:
    found = cadence.next_after(t)
    assert found is not None
    return found


def ticks(cadence: Cadence, start: int, n: int) -> list[int]:
    found = []
    for _ in range(n):
        start = after(cadence, start)
        found.append(start)
    return found


def local(zone: ZoneInfo, tick: int) -> str:
    return datetime.fromtimestamp(tick, zone).strftime("%m-%d %H:%M %Z")


def test_cron_in_utc_by_default():
    cadence = Cadence.parse({"cron": "*/15 9-10 * * MON-FRI"})
    assert cadence.timezone == "UTC"
    start = int(datetime(2026, 1, 2, 10, 50, tzinfo=UTC).timestamp())  # a Friday
    found = [datetime.fromtimestamp(t, UTC).strftime("%a %H:%M") for t in ticks(cadence, start, 3)]
    assert found == ["Mon 09:00", "Mon 09:15", "Mon 09:30"]


def test_the_next_tick_is_strictly_after():
    cadence = Cadence.parse({"cron": "0 * * * *"})
    hour = int(datetime(2026, 5, 1, 12, tzinfo=UTC).timestamp())
    assert cadence.next_after(hour) == hour + 3600
    assert cadence.next_after(hour - 1) == hour


def test_cron_follows_the_zone():
    cadence = Cadence.parse({"cron": "0 9 * * *", "timezone": "Europe/Paris"})
    winter = after(cadence, at(PARIS, 2026, 1, 10, 12, 0))
    summer = after(cadence, at(PARIS, 2026, 7, 10, 12, 0))
    assert datetime.fromtimestamp(winter, UTC).hour == 8  # CET = UTC+1
    assert datetime.fromtimestamp(summer, UTC).hour == 7  # CEST = UTC+2


def test_spring_forward_a_skipped_time_runs_once_right_after_the_jump():
    """02:30 does not exist in New York on 2026-03-08 (02:00 EST -> 03:00 EDT)."""
    cadence = Cadence.parse({"cron": "30 2 * * *", "timezone": "America/New_York"})
    found = [local(NEW_YORK, t) for t in ticks(cadence, at(NEW_YORK, 2026, 3, 7, 12, 0), 3)]
    assert found == ["03-08 03:00 EDT", "03-09 02:30 EDT", "03-10 02:30 EDT"]


def test_spring_forward_times_after_the_gap_are_untouched():
    cadence = Cadence.parse({"cron": "15 3 * * *", "timezone": "America/New_York"})
    tick = after(cadence, at(NEW_YORK, 2026, 3, 8, 0, 0))
    assert local(NEW_YORK, tick) == "03-08 03:15 EDT"


def test_fall_back_a_repeated_time_runs_once():
    """01:30 happens twice in New York on 2026-11-01 (EDT, then EST): one tick, the first."""
    cadence = Cadence.parse({"cron": "30 1 * * *", "timezone": "America/New_York"})
    found = [local(NEW_YORK, t) for t in ticks(cadence, at(NEW_YORK, 2026, 10, 31, 12, 0), 3)]
    assert found == ["11-01 01:30 EDT", "11-02 01:30 EST", "11-03 01:30 EST"]


def test_fall_back_an_hourly_job_runs_every_real_hour():
    """`*` in the hour field follows real time: the repeated hour runs twice, 1 h apart."""
    cadence = Cadence.parse({"cron": "30 * * * *", "timezone": "America/New_York"})
    found = ticks(cadence, at(NEW_YORK, 2026, 11, 1, 0, 0), 4)
    assert [local(NEW_YORK, t) for t in found] == [
        "11-01 00:30 EDT",
        "11-01 01:30 EDT",
        "11-01 01:30 EST",
        "11-01 02:30 EST",
    ]
    assert {b - a for a, b in zip(found, found[1:], strict=False)} == {3600}


def test_spring_forward_an_every_minute_job_has_no_gap_in_real_time():
    cadence = Cadence.parse({"cron": "* * * * *", "timezone": "America/New_York"})
    before = at(NEW_YORK, 2026, 3, 8, 1, 58)
    found = ticks(cadence, before, 3)
    assert [t - before for t in found] == [60, 120, 180]
    assert local(NEW_YORK, found[1]) == "03-08 03:00 EDT"


def test_every_ticks_are_multiples_of_the_interval_since_the_epoch():
    cadence = Cadence.parse({"every": 60, "timezone": "Asia/Tokyo"})
    assert cadence.next_after(119) == 120
    assert cadence.next_after(120) == 180
    assert ticks(Cadence.parse({"every": 1}), 10, 3) == [11, 12, 13]


def test_latest_is_the_last_missed_tick():
    every = Cadence.parse({"every": 10})
    assert every.latest(100, 100) == 100
    assert every.latest(100, 109) == 100
    assert every.latest(100, 1234) == 1230
    daily = Cadence.parse({"cron": "0 6 * * *", "timezone": "Europe/Paris"})
    due = at(PARIS, 2026, 4, 1, 6, 0)
    assert daily.latest(due, at(PARIS, 2026, 4, 1, 7, 0)) == due
    assert daily.latest(due, at(PARIS, 2026, 4, 5, 5, 59)) == at(PARIS, 2026, 4, 4, 6, 0)
    assert daily.latest(due, at(PARIS, 2026, 4, 5, 6, 0)) == at(PARIS, 2026, 4, 5, 6, 0)


def test_latest_across_a_spring_forward_agrees_with_next():
    cadence = Cadence.parse({"cron": "30 2 * * *", "timezone": "America/New_York"})
    due = at(NEW_YORK, 2026, 3, 7, 2, 30)
    jumped = after(cadence, due)
    assert cadence.latest(due, at(NEW_YORK, 2026, 3, 8, 4, 0)) == jumped
    assert cadence.latest(due, jumped - 1) == due


def test_fields_are_what_is_stored():
    assert Cadence.parse({"cron": " 0  9 * * 1 "}).fields() == {
        "cron": "0 9 * * 1",
        "timezone": "UTC",
    }
    assert Cadence.parse({"every": 5}).fields() == {"every": 5, "timezone": "UTC"}


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"cron": "* * * * *", "every": 5},
        {"cron": "* * * *"},
        {"cron": "0 * * * * *"},  # cronsim's seconds field: not a 5-field expression
        {"cron": "60 * * * *"},
        {"cron": "* 24 * * *"},
        {"cron": "0 0 31 4 *"},  # April has no 31st
        {"cron": "0 0 * 13 *"},
        {"cron": "0 0 * * 8"},
        {"cron": "*/0 * * * *"},
        {"cron": 5},
        {"cron": ""},
        {"cron": "x" * 300},
        {"every": 0},
        {"every": -5},
        {"every": True},
        {"every": 2.5},
        {"every": "60"},
        {"every": 400 * 86400},
        {"every": 60, "timezone": "Nowhere/Special"},
        {"every": 60, "timezone": "../../../etc/passwd"},
        {"every": 60, "timezone": ""},
        {"every": 60, "timezone": 1},
    ],
)
def test_invalid(data):
    with pytest.raises(Invalid):
        Cadence.parse(data)
