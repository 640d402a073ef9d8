"""A queued task's ETA (issue 15, item 8): its position over its queue's measured pace.

The pace comes from counters every queue already keeps, per priority, cumulatively, on
the Redis clock: `head:<prio>` (the sequence number of the last task handed out, so it
grows by one per start) and `seq:<prio>` (one per task entering the stream); under fair
share (docs/flow-control.md) the tenants' tasks add `thead:<prio>` and `tseq:<prio>`. `pace.lua`
reads them and keeps timed samples of them in the queue's `pace` list, at most one per
`SAMPLE_EVERY` seconds, taken only when someone asks for an ETA (nothing on a task's path
writes it; any replica may take the sample, the list is shared).

Between a sample and now, over `span` seconds:

- `starts` = Σ over priorities of the growth of `head`: tasks started per second, which is
  the queue's service rate while it has a backlog (every replica's consumers and the pull
  workers together);
- `overtakers(p)` = Σ over the priorities above `p` of the growth of `seq`: tasks per
  second that arrive later and still start before a waiting task of priority `p` (strict
  priority);
- `pace(p) = starts − overtakers(p)`, and a task at position `n` (1 = next; the tasks ahead
  at its priority and above) is estimated to start `n / pace(p)` seconds from now.

The sample used is the newest one at least `MIN_SPAN` old that has seen `MIN_STARTS`
starts (a fast queue's pace follows its last seconds), else the oldest one kept (a slow
queue's pace is averaged over up to `KEPT × SAMPLE_EVERY` seconds). No ETA ("no pace")
until two readings `MIN_SPAN` apart have seen at least two starts, nor while the pace is
not positive (paused, no executors, or higher priorities arriving as fast as it serves).

An ETA is a best effort: when Redis refuses writes (the sample), the record is answered
without one rather than failing a read.

Imports: client, queue (typing), models, errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.engine.client import text, translate_errors
from app.errors import Unavailable
from app.models import PRIORITY_ORDER, Priority, iso_ms

if TYPE_CHECKING:
    from app.engine.queue import Queue

SAMPLE_EVERY = 2.0  # seconds between samples kept
KEPT = 60  # samples kept: the longest span is about two minutes
TTL = 600.0  # seconds the samples outlive the last question
MIN_SPAN = 1.0  # seconds: a shorter span says too little
MIN_STARTS = 32  # starts that make a span long enough to trust (else the oldest sample)


@dataclass(frozen=True)
class Reading:
    """The counters at one moment: `at` (ms), then head and seq per priority (claim order)."""

    at: int
    heads: tuple[int, ...]
    seqs: tuple[int, ...]

    @classmethod
    def parse(cls, raw: Any) -> Reading:
        at, *values = (int(v) for v in text(raw).split())
        return cls(at, tuple(values[:3]), tuple(values[3:]))


@dataclass(frozen=True)
class Pace:
    """Starts per second of a queue and arrivals per second per priority, now."""

    now: int  # ms, Redis clock
    starts: float
    arrivals: tuple[float, ...]  # per priority, in claim order

    def per_second(self, priority: Priority) -> float:
        """How fast the tasks ahead of a waiting task of `priority` are started."""
        above = PRIORITY_ORDER.index(priority)
        return self.starts - sum(self.arrivals[:above])

    def eta(self, priority: Priority, position: int) -> str | None:
        """ISO-8601 estimated start of the task at `position`; None without a pace."""
        rate = self.per_second(priority)
        if rate <= 0 or position < 1:
            return None
        return iso_ms(str(self.now + round(position / rate * 1000)))


def measure(now: Reading, samples: Sequence[Reading]) -> Pace | None:
    """The pace between `now` and the sample chosen (see the module docstring)."""
    chosen = None
    for sample in samples:  # newest first
        if now.at - sample.at < MIN_SPAN * 1000:
            continue
        chosen = sample
        if sum(now.heads) - sum(sample.heads) >= MIN_STARTS:
            break
    if chosen is None:
        return None
    span = (now.at - chosen.at) / 1000
    started = sum(now.heads) - sum(chosen.heads)
    if started < 2:
        return None
    arrivals = tuple((n - s) / span for n, s in zip(now.seqs, chosen.seqs, strict=True))
    return Pace(now.at, started / span, arrivals)


async def pace_of(queue: Queue) -> Pace | None:
    """The queue's pace now (None: not known yet); keeps a sample now and then. A
    partitioned queue's is the sum of its partitions' paces (each keeps its own samples),
    over the partitions that have one: its positions count every partition
    (engine/partitions.py `position`)."""
    if not queue.parts[1:]:
        return await _pace_one(queue)
    found = [p for p in await asyncio.gather(*(_pace_one(q) for q in queue.parts)) if p]
    if not found:
        return None
    arrivals = tuple(sum(col) for col in zip(*(p.arrivals for p in found), strict=True))
    return Pace(max(p.now for p in found), sum(p.starts for p in found), arrivals)


@translate_errors
async def _pace_one(queue: Queue) -> Pace | None:
    k = queue.keys
    argv = [int(SAMPLE_EVERY * 1000), KEPT, int(TTL * 1000)]
    reading, samples = await queue.scripts.run("pace", [k.counters, k.pace], argv)
    return measure(Reading.parse(reading), [Reading.parse(s) for s in samples])


async def add_etas(queue: Queue, records: Sequence[dict[str, Any]]) -> None:
    """Set `eta` on the queued records (GET /tasks/{id}, a page of queued tasks), from one
    reading of the pace; left out while the queue has none."""
    waiting = [r for r in records if r.get("position")]
    if not waiting:
        return
    try:
        pace = await pace_of(queue)
    except Unavailable:  # refusing writes (the sample): the record, without an estimate
        return
    if pace is None:
        return
    for record in waiting:
        eta = pace.eta(Priority(record["priority"]), int(record["position"]))
        if eta is not None:
            record["eta"] = eta
