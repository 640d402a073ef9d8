"""Query parameters: the one set of parsers every route uses, so a bad value is always a
clear 4xx naming the parameter and what it accepts, and never reaches Redis.

A parameter that is absent or empty takes its default. The error is `Invalid` (422); the
PAI-EAS routes pass `BadRequest` (400), as the real PAI-EAS queue service answers.

Imports: errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from app.errors import Invalid

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})
DIGITS = re.compile(r"[0-9]{1,15}")


def flag(
    query: Mapping[str, str], name: str, default: bool = False, error: type[Invalid] = Invalid
) -> bool:
    """true/false (1/0, yes/no, on/off, any case)."""
    raw = query.get(name)
    if not raw:
        return default
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise error(f"{name} must be true or false, got {raw!r}")


def integer(
    query: Mapping[str, str],
    name: str,
    default: int,
    low: int,
    high: int,
    error: type[Invalid] = Invalid,
) -> int:
    """A whole number from `low` to `high` (digits only: no sign, point or exponent)."""
    raw = query.get(name)
    if not raw:
        return default
    if not DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        raise error(f"{name} must be an integer from {low} to {high}, got {raw!r}")
    return int(raw)


def number(
    query: Mapping[str, str],
    name: str,
    default: float,
    low: float,
    high: float,
    error: type[Invalid] = Invalid,
) -> float:
    """A finite number from `low` to `high` (fractions allowed)."""
    raw = query.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not low <= value <= high:  # NaN fails every comparison, infinities the range
        raise error(f"{name} must be a number from {low:g} to {high:g}, got {raw!r}")
    return value
