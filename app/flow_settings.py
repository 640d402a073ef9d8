"""Flow-control settings: TENANT_WEIGHTS, RATE_LIMITS, QUEUE_MAX_IN_FLIGHT (docs/flow-control.md).

Read here from the mapping `Settings.from_env` is given; `Flow.limits(queue)` is what one
queue's claims send to claim.lua, and `Flow.weights_arg` the weights every fair-share
script is handed, both built once. An executor's `;max=N` is read with its URL, in
settings.py.

Imports: env (and stdlib).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.env import Reader, SettingsError

TENANT_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # a task's `tenant` (models.py) too
QUEUE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # QUEUE_NAME's; named queues have no `:`
RATE_RE = re.compile(r"^(\d+)\s*/\s*([sm])$")
PERIODS = {"s": 1.0, "m": 60.0}
MAX_WEIGHT = 1000.0
MAX_RATE = 1_000_000


@dataclass(frozen=True)
class Rate:
    """At most `n` starts per `period` seconds, with one burst of `n` (GCRA in claim.lua)."""

    n: int
    period: float

    @property
    def interval_ms(self) -> float:
        """The emission interval: one start every `period / n` seconds, in ms."""
        return self.period * 1000 / self.n

    def text(self) -> str:
        return f"{self.n}/{'s' if self.period == 1.0 else 'm'}"


@dataclass(frozen=True)
class Limits:
    """One queue's limits, as claim.lua takes them (ARGV 12-14); empty strings: none."""

    rate: Rate | None = None
    max_in_flight: int | None = None

    @property
    def any(self) -> bool:
        return self.rate is not None or self.max_in_flight is not None

    def args(self) -> list[str]:
        """claim.lua's ARGV 12 (emission interval ms), 13 (burst), 14 (max in flight)."""
        rate = self.rate
        return [
            repr(rate.interval_ms) if rate else "",
            str(rate.n) if rate else "",
            str(self.max_in_flight) if self.max_in_flight is not None else "",
        ]

    def view(self) -> dict[str, object]:
        return {
            "rate": self.rate.text() if self.rate else None,
            "max_in_flight": self.max_in_flight,
        }


NO_LIMITS = Limits()


@dataclass(frozen=True)
class Flow:
    """TENANT_WEIGHTS (tenant -> weight, default 1), RATE_LIMITS and QUEUE_MAX_IN_FLIGHT
    (queue -> limit)."""

    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    rates: Mapping[str, Rate] = field(default_factory=dict)
    max_in_flight: Mapping[str, int] = field(default_factory=dict)

    def limits(self, queue: str) -> Limits:
        """The limits of a legacy queue (NO_LIMITS when none is configured)."""
        rate, cap = self.rates.get(queue), self.max_in_flight.get(queue)
        return NO_LIMITS if rate is None and cap is None else Limits(rate, cap)

    @property
    def weights_arg(self) -> str:
        """`name=w,…` as the scripts parse it ('' when every tenant weighs 1)."""
        return ",".join(f"{t}={w!r}" for t, w in sorted(self.tenant_weights.items()))


def flow_from(r: Reader) -> Flow:
    """TENANT_WEIGHTS, RATE_LIMITS and QUEUE_MAX_IN_FLIGHT, each `name=value,…`."""
    weights = {
        tenant: _weight(value, tenant)
        for tenant, value in _pairs(r, "TENANT_WEIGHTS", TENANT_RE, "TENANT")
    }
    rates = {q: _rate(value, q) for q, value in _pairs(r, "RATE_LIMITS", QUEUE_RE, "QUEUE")}
    caps = {q: _cap(value, q) for q, value in _pairs(r, "QUEUE_MAX_IN_FLIGHT", QUEUE_RE, "QUEUE")}
    return Flow(weights, rates, caps)


def _pairs(r: Reader, name: str, pattern: re.Pattern[str], what: str) -> list[tuple[str, str]]:
    """`key=value` items of a comma-separated variable; each key once."""
    found: dict[str, str] = {}
    for item in r.items(name):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not pattern.match(key) or not value:
            raise SettingsError(f"{name}: expected {what}=VALUE, got {item!r}")
        if key in found:
            raise SettingsError(f"{name}: {key} given twice")
        found[key] = value
    return list(found.items())


def _weight(value: str, tenant: str) -> float:
    try:
        weight = float(value)
    except ValueError:
        weight = -1.0
    if not 0 < weight <= MAX_WEIGHT:
        raise SettingsError(f"TENANT_WEIGHTS: {tenant}: a number in (0, {MAX_WEIGHT:g}]: {value!r}")
    return weight


def _rate(value: str, queue: str) -> Rate:
    match = RATE_RE.match(value)
    if not match or not 1 <= int(match[1]) <= MAX_RATE:
        raise SettingsError(f"RATE_LIMITS: {queue}: expected N/s or N/m (N >= 1): {value!r}")
    return Rate(int(match[1]), PERIODS[match[2]])


def _cap(value: str, queue: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 1_000_000:
        raise SettingsError(f"QUEUE_MAX_IN_FLIGHT: {queue}: an integer >= 1: {value!r}")
    return int(value)
