"""When a schedule fires: a 5-field cron expression in a time zone, or a fixed interval.

Ticks are whole epoch seconds (a schedule's task is `<name>:<tick>`). Two kinds:

- `cron` (5 fields, Debian cron syntax plus `L`, `LW`, `#`, names) in `timezone` (an IANA
  name, default UTC), evaluated by cronsim (chosen over croniter, docs/schedules.md): its
  DST rules are Debian cron's. A job at a fixed local time that a spring-forward skips
  (02:30 on that day) runs once, right after the jump (03:00 new time); one the fall-back
  repeats runs once, at its first occurrence. Jobs with `*` in the minute or hour field
  follow real time: every real minute or hour, none skipped or doubled.
- `every` N seconds: the multiples of N since the Unix epoch (every 60 fires at :00 of
  each minute, every 3600 at the top of each UTC hour), as BullMQ aligned its repeatable
  jobs; the zone does not matter.

`next_after(t)` is the first tick after `t`; `latest(due, now)` the last tick from `due` up
to `now`, the one a schedule fires when it finds several ticks missed. Both take the time
from the caller, which reads it from Redis (engine/schedules.py), never from this host.

Imports: errors (and cronsim, zoneinfo).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from app.errors import Invalid

MAX_EVERY = 366 * 86400  # a year and a day, in seconds
MAX_CRON_LENGTH = 200
ZONE_RE = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")


@functools.cache
def zone(name: str) -> tzinfo:
    """The time zone `name` (IANA); Invalid when unknown. UTC is the stdlib's, which
    cronsim iterates without its DST handling."""
    if name == "UTC":
        return UTC
    if not ZONE_RE.fullmatch(name):
        raise Invalid(f"timezone must be an IANA name such as Europe/Paris, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise Invalid(f"timezone: unknown time zone {name!r}") from None


@dataclass(frozen=True)
class Cadence:
    """A schedule's ticks: `cron` in `timezone`, or `every` seconds (see the module)."""

    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Cadence:
        """From a schedule's fields `cron` or `every`, and `timezone`; Invalid otherwise."""
        cron, every, name = data.get("cron"), data.get("every"), data.get("timezone")
        if (cron is None) == (every is None):
            raise Invalid("give cron (5 fields) or every (seconds), exactly one")
        name = "UTC" if name is None else name
        if not isinstance(name, str):
            raise Invalid("timezone must be a string (an IANA name such as Europe/Paris)")
        zone(name)
        if every is not None:
            return cls(every=_every(every), timezone=name)
        cadence = cls(cron=_cron(cron), timezone=name)
        cadence.next_after(0)  # an expression that never matches is caught here
        return cadence

    def fields(self) -> dict[str, Any]:
        """As stored and shown: `cron` or `every`, and `timezone`."""
        if self.every is not None:
            return {"every": self.every, "timezone": self.timezone}
        return {"cron": self.cron, "timezone": self.timezone}

    def next_after(self, t: int) -> int | None:
        """The first tick after epoch second `t`; None when there is none (for 50 years)."""
        if self.every is not None:
            return (t // self.every + 1) * self.every
        assert self.cron is not None
        try:
            found = next(CronSim(self.cron, datetime.fromtimestamp(t, zone(self.timezone))))
        except StopIteration:
            return None
        except CronSimError as exc:  # checked by parse: only a stored one gone bad
            raise Invalid(f"cron: {exc}") from None
        return int(found.timestamp())

    def latest(self, due: int, now: int) -> int:
        """The last tick in [`due`, `now`] (`due`, a tick, when none is later)."""
        if self.every is not None:
            return max(due, now - now % self.every)
        assert self.cron is not None
        # Backwards from just after `now`: the first match is the last one at or before it.
        start = datetime.fromtimestamp(now + 1, zone(self.timezone))
        try:
            found = int(next(CronSim(self.cron, start, reverse=True)).timestamp())
        except StopIteration:
            return due
        return max(due, found)


def _every(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_EVERY:
        raise Invalid(f"every must be a whole number of seconds from 1 to {MAX_EVERY}")
    return value


def _cron(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_CRON_LENGTH:
        raise Invalid("cron must be a string of 5 fields: minute hour day month weekday")
    fields = value.split()
    if len(fields) != 5:
        raise Invalid(f"cron must have 5 fields (minute hour day month weekday), got {value!r}")
    expr = " ".join(fields)
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise Invalid(f"cron {value!r}: {str(exc).lower()}") from None
    except (ValueError, OverflowError, IndexError):  # a parse cronsim did not foresee
        raise Invalid(f"cron {value!r}: not a valid expression") from None
    return expr
