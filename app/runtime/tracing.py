"""W3C trace context (traceparent, tracestate) and the choice of a span exporter.

Every task carries a trace context from its enqueue to every executor request and PAI-EAS
forward, with or without OpenTelemetry installed: the context a producer sent (header, or
per task in a body), else a new trace, is stored in the task's payload (the item's header
for PAI-EAS) under the field names `traceparent` / `tracestate`, which are also the header
names it is sent under. Nothing here imports the SDK: `start` imports runtime/otel.py only
when the settings turn span export on, so with tracing off a task costs one small dict
lookup per executor call and ~60 stored bytes (docs/tracing.md).

Imports: models, settings, runtime.otel (only in `start`, only when on) (and stdlib,
structlog).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from app.models import TRACE_FIELDS

if TYPE_CHECKING:
    from app.runtime.otel import Otel
    from app.settings import Settings

TRACEPARENT, TRACESTATE = TRACE_FIELDS
_HEADER_NAMES = (TRACEPARENT.encode(), TRACESTATE.encode())
# version-traceid-parentid-flags, lower-case hex only (W3C Trace Context, level 1, §3.2)
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_KEY = r"(?:[a-z0-9][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER_RE = re.compile(rf"({_KEY})=({_VALUE})")
MAX_MEMBERS = 32  # tracestate list members (W3C §3.3.1)
MAX_TRACESTATE = 512  # characters a vendor must propagate at least; longer is dropped here


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A valid, normalised `traceparent` and the `tracestate` that goes with it ('' none)."""

    traceparent: str
    tracestate: str = ""

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def span_id(self) -> str:
        return self.traceparent[36:52]

    @property
    def flags(self) -> int:
        return int(self.traceparent[53:55], 16)

    def fields(self) -> dict[str, str]:
        """As stored in a payload, and as sent: the field names are the header names."""
        if self.tracestate:
            return {TRACEPARENT: self.traceparent, TRACESTATE: self.tracestate}
        return {TRACEPARENT: self.traceparent}


def parse_traceparent(value: object) -> str | None:
    """The traceparent in version-00 form, or None when `value` is not a valid one (W3C:
    an invalid traceparent is ignored and a new trace starts; never an error). A higher
    version is read by its first four fields and passed on as version 00."""
    if not isinstance(value, str) or len(value) < 55:
        return None
    match = _TRACEPARENT_RE.match(value)
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or not int(trace_id, 16) or not int(span_id, 16):
        return None
    if len(value) > 55 and (version == "00" or value[55] != "-"):
        return None
    return value if len(value) == 55 and version == "00" else f"00-{trace_id}-{span_id}-{flags}"


def parse_tracestate(values: Iterable[str]) -> str:
    """The list members of one or more `tracestate` values, joined; '' when any member is
    malformed, a key repeats, or the list is longer than we pass on."""
    members = [m.strip() for value in values for m in value.split(",") if m.strip()]
    joined = ",".join(members)
    if len(members) > MAX_MEMBERS or len(joined) > MAX_TRACESTATE:
        return ""
    keys = set()
    for member in members:
        match = _MEMBER_RE.fullmatch(member)
        if match is None or match.group(1) in keys:
            return ""
        keys.add(match.group(1))
    return joined


def from_headers(headers: Iterable[tuple[bytes, bytes]]) -> TraceContext | None:
    """The context of a request's raw (ASGI) headers; None when absent or invalid, or when
    `traceparent` is repeated (W3C §3.2: ignore it then)."""
    parents: list[bytes] = []
    states: list[str] = []
    for name, value in headers:
        if name in _HEADER_NAMES:  # ASGI header names are lower-case
            if name == _HEADER_NAMES[0]:
                parents.append(value)
            else:
                states.append(value.decode("latin-1"))
    if len(parents) != 1:
        return None
    traceparent = parse_traceparent(parents[0].decode("latin-1"))
    if traceparent is None:
        return None
    return TraceContext(traceparent, parse_tracestate(states) if states else "")


def from_fields(doc: Mapping[str, Any]) -> TraceContext | None:
    """The context a task document names in its `traceparent` / `tracestate` fields (a
    batch item's own, say); None when absent or invalid."""
    traceparent = parse_traceparent(doc.get(TRACEPARENT))
    if traceparent is None:
        return None
    state = doc.get(TRACESTATE)
    return TraceContext(traceparent, parse_tracestate([state]) if isinstance(state, str) else "")


def stored(payload: Mapping[str, Any]) -> TraceContext | None:
    """The context kept with a claimed task (validated when it was stored)."""
    traceparent = payload.get(TRACEPARENT)
    if not traceparent:
        return None
    return TraceContext(traceparent, payload.get(TRACESTATE) or "")


def new_context() -> TraceContext:
    """A new trace, flagged sampled so that the executor's own (parent-based) sampler records
    it; its parent id names no exported span when this service does not export."""
    trace_id = random.getrandbits(128) or 1
    span_id = random.getrandbits(64) or 1
    return TraceContext(f"00-{trace_id:032x}-{span_id:016x}-01")


def headers_of(payload: Mapping[str, Any]) -> dict[str, str]:
    """The trace headers of an executor request or PAI-EAS forward for a claimed task:
    the stored context (or, when a tracer runs, its process span's), else a new trace
    (a task stored before contexts were kept)."""
    traceparent = payload.get(TRACEPARENT)
    if traceparent is None:
        return new_context().fields()
    tracestate = payload.get(TRACESTATE)
    if tracestate:
        return {TRACEPARENT: traceparent, TRACESTATE: tracestate}
    return {TRACEPARENT: traceparent}


def start(settings: Settings) -> Otel | None:
    """The span exporter the settings ask for, or None (tracing off: no SDK import). With
    export asked for but the `otel` extra missing, one warning, and propagation only."""
    if not settings.tracing.on:
        return None
    try:
        from app.runtime.otel import Otel
    except ImportError as exc:
        structlog.get_logger().warning(
            "tracing_unavailable",
            reason=f"OpenTelemetry SDK not installed ({exc.name}): pip install taskstream[otel]",
            detail="trace context is still propagated; no spans are exported",
        )
        return None
    return Otel(settings.tracing)
