"""Query parameters: the one set of parsers every route uses, so a bad value is always a
clear 4xx naming the parameter and what it accepts, and never reaches Redis; and the one
resolver of a queue named by a request (`?queue=`, or the path).

A parameter that is absent or empty takes its default. The error is `Invalid` (422); the
PAI-EAS routes pass `BadRequest` (400), as the real PAI-EAS queue service answers (their
own parameters, `_timeout_`, `_index_`, `_indexes_`, are 400 always).

Imports: engine (typing), eas.items (MAX_LENGTH), models, errors, settings; `resolve_queue`
finds PAI-EAS queues through the lifespan state's hub.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from app.eas.items import MAX_LENGTH
from app.errors import BadRequest, Invalid, NotFound
from app.models import check_queue
from app.settings import SERVICE_NAME_RE

if TYPE_CHECKING:
    from app.engine.queue import Queue

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})
DIGITS = re.compile(r"[0-9]{1,15}")
DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")
MAX_TIMEOUT = 60.0  # seconds: the longest PAI-EAS `_timeout_`


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


def choice(query: Mapping[str, str], name: str, default: str, options: Sequence[str]) -> str:
    """One of `options`, spelled exactly."""
    raw = query.get(name)
    if not raw:
        return default
    if raw not in options:
        raise Invalid(f"{name} must be one of {', '.join(options)}, got {raw!r}")
    return raw


# --- PAI-EAS parameters (400) ----------------------------------------------------------


def duration(value: str | None, default: float = 0.0) -> float:
    """`_timeout_` as the SDK sends it ("5s", "500ms", "1m") or plain seconds."""
    if value is None or value == "":
        return default
    found = DURATION_RE.fullmatch(value.strip())
    if not found:
        raise BadRequest(f"_timeout_ must be a duration such as 5s or 500ms, got {value!r}")
    number, unit = float(found.group(1)), found.group(2) or "s"
    seconds = number / 1000 if unit == "ms" else number * 60 if unit == "m" else number
    return min(seconds, MAX_TIMEOUT)


def index(value: str | None, name: str, default: int = 0) -> int:
    """A PAI-EAS index (ASCII digits only)."""
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit()):
        raise BadRequest(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def indexes(value: str | None) -> list[int]:
    """`_indexes_`: a comma-separated list of at most MAX_LENGTH indexes."""
    parts = [p.strip() for p in (value or "").split(",") if p.strip()]
    if not parts or not all(p.isascii() and p.isdigit() for p in parts):
        raise BadRequest("_indexes_ must be a comma-separated list of indexes")
    if len(parts) > MAX_LENGTH:
        raise BadRequest(f"at most {MAX_LENGTH} indexes per request")
    return [int(p) for p in parts]


def service_name(name: str) -> str:
    """A PAI-EAS service name (already percent-decoded), or 422: one path segment of the
    forwarding URL, so never `.`/`..` nor anything with a `/`."""
    if not SERVICE_NAME_RE.fullmatch(name):
        raise Invalid("service name must be 1-64 characters of A-Z a-z 0-9 . _ -, not only dots")
    return name


# --- the queue a request names ------------------------------------------------------------


async def resolve_queue(
    state: Any, name: str | None, *, hint: bool = False, services: bool = False
) -> Queue:
    """The queue `name` names (None or empty: the default queue), from a request's state.

    A legacy queue must be one this deployment knows (QUEUE_NAME, QUEUE_EXECUTORS, or used
    by a task): another name is 404, so a typo creates nothing, and an impossible one 422.
    As the hint of a by-id call (`hint`), an unknown name means the default queue instead
    (the engine routes the call to the task's queue). With `services`, a known PAI-EAS
    service's input (`svc`) or sink (`svc/sink`) is a queue too."""
    if services and name:
        found = state.eas.find(name)
        if found is not None:
            numbered: Queue = found.queue
            return numbered
        if "/" in name:
            raise NotFound(f"no such queue: {name}")
    engine = state.engine
    if name and name != engine.settings.queue:
        check_queue(name)  # 422 for a name no queue can have
    queue: Queue | None = await engine.known_queue(name)
    if queue is None and not hint:
        raise NotFound(f"no such queue: {name}")
    default: Queue = engine.default
    return queue or default
