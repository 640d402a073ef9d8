"""Prometheus metrics: process counters and histograms, gauges read from Redis at scrape time.

Two kinds of numbers, which aggregate differently across replicas (docs/operations.md, *Metrics*):

- **process** metrics count what this process did: transitions it made (its engine's, by
  whichever caller: HTTP handlers, its in-process consumers), executor call durations,
  its running tasks and executors. Each replica exports its own; `sum` them.
- **Redis-derived** gauges (queue lengths, DLQ, consumers) describe the shared queue and
  are the same on every replica; take `max` of them, never `sum`.

`Metrics` is an object handed to what reports: it is the engine's observer (transitions
counted where they happen, with the task's real priority), the consumers observe waits and
call durations into it, the callback sender its deliveries. Each `Runtime` has its own, in
a registry of its own, so several in one process (the tests) never share counters. The
text exposition is built here; the web wing serves it.

Imports: engine (views, audits, history, flow), errors, models (and prometheus_client);
the runtime only for typing.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from app.engine import audits, history
from app.engine.flow import flow_of
from app.engine.views import combined, consumers_of, counts_of, merged_consumers
from app.errors import Unavailable
from app.models import PRIORITY_ORDER

if TYPE_CHECKING:
    from app.runtime.consumers import ConsumerPool
    from app.runtime.executors import ExecutorPool
    from app.runtime.runtime import Runtime

# The classic text format every Prometheus version scrapes (prometheus_client >= 0.22 calls
# its 1.0.0 variant CONTENT_TYPE_LATEST; we send no UTF-8 names, so 0.0.4 is exact).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
SCRAPE_TIMEOUT = 2.0  # Redis reads of one scrape; past it the Redis gauges are left out
STATES = ("queued", "scheduled", "retrying", "processing", "deferred")
# Executions run from milliseconds up to TASK_TIMEOUT (600 s by default).
RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


# --- process counters and histograms -----------------------------------------------------
#
# Kept as plain numbers and rendered as metric families at scrape time. The hooks sit on
# the enqueue and drain paths and run on the event loop's thread only, so they need no
# lock: prometheus_client's `Counter.labels(...).inc()` costs ~5 µs (label checks and a
# threading lock) and `Histogram.labels(...).observe()` ~2.7 µs, about 15 µs per task on
# a path that spends ~170 µs per task in all; these cost well under 1 µs.


class CounterFamily:
    """A counter labelled `queue`, `priority`."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.values: dict[tuple[str, str], int] = {}

    def inc(self, queue: str, priority: str, n: int = 1) -> None:
        key = (queue, priority)
        self.values[key] = self.values.get(key, 0) + n

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=("queue", "priority"))
        for (queue, priority), value in sorted(self.values.items()):
            family.add_metric([queue, str(priority)], value)
        return family


@dataclass
class _Series:
    counts: list[int]  # per bucket, not cumulative; the last one is +Inf
    total: float = 0.0


@dataclass
class HistogramFamily:
    """A histogram labelled `queue`."""

    name: str
    documentation: str
    bounds: tuple[float, ...]
    series: dict[str, _Series] = field(default_factory=dict)

    def observe(self, queue: str, value: float) -> None:
        series = self.series.get(queue)
        if series is None:
            series = self.series[queue] = _Series([0] * (len(self.bounds) + 1))
        series.counts[bisect.bisect_left(self.bounds, value)] += 1  # le: value <= bound
        series.total += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=("queue",))
        for queue, series in sorted(self.series.items()):
            buckets, seen = [], 0
            for bound, count in zip((*self.bounds, float("inf")), series.counts, strict=True):
                seen += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), seen))
            family.add_metric([queue], buckets, series.total)
        return family


class Metrics:
    """The process metrics of one app, in a registry of its own."""

    def __init__(self) -> None:
        self.enqueued_total = CounterFamily(
            "taskstream_tasks_enqueued_total", "Tasks accepted by this process (POST /tasks, batch)"
        )
        self.completed = CounterFamily(
            "taskstream_tasks_completed_total", "Tasks this process recorded as completed"
        )
        self.failed = CounterFamily(
            "taskstream_tasks_failed_total",
            "Tasks this process failed for good, i.e. moved into the dead-letter queue",
        )
        self.retried = CounterFamily(
            "taskstream_tasks_retried_total", "Failed attempts this process scheduled for retry"
        )
        self.cancelled = CounterFamily("taskstream_tasks_cancelled_total", "Tasks cancelled here")
        self.expired = CounterFamily(
            "taskstream_tasks_expired_total",
            "Tasks this process found expired (not started before `expires`), never run",
        )
        self.redriven_total = CounterFamily(
            "taskstream_tasks_redriven_total", "Dead letters queued again (POST /dlq/{id}/retry)"
        )
        self.settled_as = {
            "completed": self.completed,
            "failed": self.failed,
            "retrying": self.retried,
            "cancelled": self.cancelled,
            "expired": self.expired,
        }
        self.runtime = HistogramFamily(
            "taskstream_task_runtime_seconds",
            "Executor call duration of in-process attempts",
            RUNTIME_BUCKETS,
        )
        self.wait = HistogramFamily(
            "taskstream_task_wait_seconds",
            "Queue wait of in-process deliveries: from entering the priority stream to claim",
            WAIT_BUCKETS,
        )
        self.callbacks: dict[str, int] = {"delivered": 0, "failed": 0}  # per target
        self.held: dict[tuple[str, str], int] = {}  # (queue, limit) -> claims held back
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> Iterable[Metric]:
        for counter in (self.enqueued_total, *self.settled_as.values(), self.redriven_total):
            yield counter.family()
        yield self.runtime.family()
        yield self.wait.family()
        callbacks = CounterMetricFamily(
            "taskstream_callbacks_total",
            "Result callbacks this process finished, per target: delivered or given up on",
            labels=("outcome",),
        )
        for outcome, value in self.callbacks.items():
            callbacks.add_metric([outcome], value)
        yield callbacks
        held = CounterMetricFamily(
            "taskstream_claims_held",
            "Claims of this process that a limit held back (RATE_LIMITS: rate, "
            "QUEUE_MAX_IN_FLIGHT: in_flight): tasks waited, queued, for the limit",
            labels=("queue", "limit"),
        )
        for (queue, limit), value in sorted(self.held.items()):
            held.add_metric([queue, limit], value)
        yield held

    # the engine's observer (engine/observer.py)

    def enqueued(self, queue: str, priority: str, n: int = 1) -> None:
        self.enqueued_total.inc(queue, priority, n)

    def settled(self, queue: str, priority: str, status: str) -> None:
        """One transition by its resulting status: completed, failed, retrying, cancelled,
        expired."""
        counter = self.settled_as.get(status)
        if counter is not None:
            counter.inc(queue, priority)

    def redriven(self, queue: str, priority: str) -> None:
        self.redriven_total.inc(queue, priority)

    def throttled(self, queue: str, limit: str) -> None:
        self.held[(queue, limit)] = self.held.get((queue, limit), 0) + 1

    def count_callbacks(self, outcome: str, n: int = 1) -> None:
        """Targets of finished callbacks: `delivered` (a 2xx) or `failed` (retries spent)."""
        if n:
            self.callbacks[outcome] = self.callbacks.get(outcome, 0) + n

    def observe_wait(self, queue: str, waited_ms: int | None) -> None:
        if waited_ms is not None:
            self.wait.observe(queue, waited_ms / 1000)

    def observe_runtime(self, queue: str, seconds: float) -> None:
        self.runtime.observe(queue, seconds)

    async def exposition(self, runtime: Runtime) -> bytes:
        """The text exposition: process metrics, then gauges, Redis ones read right now."""
        snapshot = await read_redis(runtime)
        audit = await read_audit(runtime) if snapshot is not None else None
        families = [*redis_families(snapshot), *audit_families(audit), *process_families(runtime)]
        return generate_latest(_Scrape(self.registry, families))


@dataclass
class _Scrape:
    """A one-off collector: the app's registry plus this scrape's gauge families."""

    registry: CollectorRegistry
    families: list[Metric]

    def collect(self) -> Iterable[Metric]:
        yield from self.registry.collect()
        yield from self.families


# --- gauges read from Redis ----------------------------------------------------------------


@dataclass
class QueueSnapshot:
    queue: str
    by_priority: dict[str, dict[str, int]]  # state -> priority -> count
    dlq: int
    consumers: int
    lost: int = 0  # tasks dead-lettered because their stream entry was deleted (total:lost)
    oldest: dict[str, float] = field(default_factory=dict)  # priority -> seconds waited
    flow: dict[str, Any] = field(default_factory=dict)  # engine/flow.py (legacy queues)


async def read_redis(runtime: Runtime) -> list[QueueSnapshot] | None:
    """Counts, consumers and oldest waiting ages of the legacy queues (default and named)
    and of the attached components' queues (every known PAI-EAS queue); None when Redis
    is away."""
    engine = runtime.engine
    queues = [engine.default, *runtime.component_queues()]
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT):
            legacy = await engine.legacy_queues()
            queues += legacy[1:]
            keys = [p.keys for q in queues for p in q.parts]  # partitions summed below
            counts = await counts_of(engine.client, keys)
            consumers = await consumers_of(engine.client, keys)
            ages = await history.oldest_waiting(queues)
            names = [q.keys.queue for q in legacy]
            flows = dict(zip(names, await flow_of(engine.client, legacy), strict=True))
    except (Unavailable, TimeoutError):
        return None
    found, at = [], 0
    for q, oldest in zip(queues, ages, strict=True):
        n = len(q.parts)
        c = combined(counts[at : at + n])
        who = merged_consumers(consumers[at : at + n])
        at += n
        found.append(
            QueueSnapshot(
                q.keys.queue,
                c["by_priority"],
                c["dlq"],
                len(who),
                c["totals"].get("lost", 0),
                {prio: age["seconds"] for prio, age in oldest.items()},
                flows.get(q.keys.queue, {}),
            )
        )
    return found


def redis_families(snapshot: list[QueueSnapshot] | None) -> Iterator[Metric]:
    up = GaugeMetricFamily("taskstream_redis_up", "1 when Redis answered this scrape, else 0")
    up.add_metric([], 0 if snapshot is None else 1)
    yield up
    if snapshot is None:
        return
    length = GaugeMetricFamily(
        "taskstream_queue_length",
        "Tasks per queue, priority and state (global: the same on every replica)",
        labels=("queue", "priority", "state"),
    )
    dlq = GaugeMetricFamily(
        "taskstream_dlq_length", "Dead letters per queue (global)", labels=("queue",)
    )
    consumers = GaugeMetricFamily(
        "taskstream_consumers",
        "Consumers in the queue's consumer group, as XINFO CONSUMERS lists them (global)",
        labels=("queue",),
    )
    lost = CounterMetricFamily(
        "taskstream_tasks_lost",
        "Tasks dead-lettered because their stream entry was deleted under them (global)",
        labels=("queue",),
    )
    yield from flow_families(snapshot)
    oldest = GaugeMetricFamily(
        "taskstream_oldest_waiting_seconds",
        "Age of the oldest waiting (queued, undelivered) task per queue and priority, by the "
        "Redis clock; 0 when none waits (global: for autoscalers)",
        labels=("queue", "priority"),
    )
    for queue in snapshot:
        for prio in PRIORITY_ORDER:
            oldest.add_metric([queue.queue, prio.value], queue.oldest.get(prio.value, 0.0))
        for state in STATES:
            per_priority = queue.by_priority.get(state, {})
            for prio in PRIORITY_ORDER:
                length.add_metric([queue.queue, prio.value, state], per_priority.get(prio.value, 0))
        dlq.add_metric([queue.queue], queue.dlq)
        consumers.add_metric([queue.queue], queue.consumers)
        lost.add_metric([queue.queue], queue.lost)
    yield from (length, oldest, dlq, consumers, lost)


def flow_families(snapshot: list[QueueSnapshot]) -> Iterator[Metric]:
    """Fair share and limits (docs/flow-control.md): the tenants next in line per queue and
    priority (at most engine.flow.TENANTS_SHOWN each: the cardinality stays bounded however
    many tenants exist) and the configured limits."""
    tenants = GaugeMetricFamily(
        "taskstream_tenant_waiting",
        "Waiting tasks of the tenants next in line per queue and priority (global; at most "
        "20 tenants each, those with the smallest virtual times)",
        labels=("queue", "priority", "tenant"),
    )
    cap = GaugeMetricFamily(
        "taskstream_queue_max_in_flight", "QUEUE_MAX_IN_FLIGHT of a queue", labels=("queue",)
    )
    rate = GaugeMetricFamily(
        "taskstream_queue_rate_limit",
        "RATE_LIMITS of a queue, in task starts per second",
        labels=("queue",),
    )
    in_flight = GaugeMetricFamily(
        "taskstream_queue_in_flight",
        "Processing tasks of a queue with QUEUE_MAX_IN_FLIGHT, every replica and pull worker "
        "(global; what the cap counts)",
        labels=("queue",),
    )
    available = GaugeMetricFamily(
        "taskstream_queue_rate_available",
        "Task starts a queue's RATE_LIMITS allows right now (global; the burst left, 0 while held)",
        labels=("queue",),
    )
    for queue in snapshot:
        for prio, level in queue.flow.get("tenants", {}).items():
            for row in level["next"]:
                tenants.add_metric([queue.queue, prio, row["tenant"]], row["waiting"])
        limits = queue.flow.get("limits") or {}
        if limits.get("max_in_flight") is not None:
            cap.add_metric([queue.queue], limits["max_in_flight"])
            in_flight.add_metric([queue.queue], queue.flow.get("in_flight", 0))
        if limits.get("rate"):
            n, _, unit = limits["rate"].partition("/")
            rate.add_metric([queue.queue], int(n) / (60 if unit == "m" else 1))
        if "rate" in queue.flow:
            available.add_metric([queue.queue], queue.flow["rate"]["available"])
    yield from (tenants, cap, rate, in_flight, available)


async def read_audit(runtime: Runtime) -> audits.Totals | None:
    """The audits' findings kept in Redis (None when Redis is away)."""
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT):
            return await audits.totals(runtime.engine)
    except (Unavailable, TimeoutError):
        return None


def audit_families(audit: audits.Totals | None) -> Iterator[Metric]:
    """fsck (issue 11): orphans found and repaired by every audit, and when the last ran."""
    if audit is None:
        return
    for name, doc, values in (
        ("taskstream_fsck_orphans", "Orphans found by fsck audits (global)", audit.found),
        ("taskstream_fsck_repaired", "Orphans repaired by fsck audits (global)", audit.repaired),
    ):
        family = CounterMetricFamily(name, doc, labels=("queue", "class"))
        for (queue, kind), value in sorted(values.items()):
            family.add_metric([queue, kind], value)
        yield family
    last = GaugeMetricFamily(
        "taskstream_fsck_last_run_timestamp_seconds",
        "When the last fsck audit started, by the Redis clock (global)",
    )
    if audit.last:  # no sample before the first audit
        last.add_metric([], audit.last["at_ms"] / 1000)
    yield last


# --- gauges of this process ----------------------------------------------------------------


def process_families(runtime: Runtime) -> Iterator[Metric]:
    yield in_flight_family(runtime.pools())
    yield redirects_family(runtime.engine.scripts.redirects)
    yield from executor_families(runtime.workers.default.executors)


def redirects_family(redirects: Mapping[str, int]) -> Metric:
    """What the script runner followed instead of failing (engine/scripts.py)."""
    family = CounterMetricFamily(
        "taskstream_redis_redirects",
        "Script calls sent again by this process: MOVED, ASK, TRYAGAIN (Redis Cluster), "
        "NOSCRIPT (a restarted, flushed or promoted server)",
        labels=("kind",),
    )
    for kind in ("moved", "ask", "tryagain", "noscript"):
        family.add_metric([kind], redirects.get(kind, 0))
    return family


def in_flight_family(pools: Sequence[ConsumerPool]) -> Metric:
    in_flight = GaugeMetricFamily(
        "taskstream_tasks_in_flight",
        "Tasks this process's consumers are running now",
        labels=("queue",),
    )
    for pool in pools:
        in_flight.add_metric([pool.queue.keys.queue], len(pool.running))
    return in_flight


def executor_families(executors: ExecutorPool) -> Iterator[Metric]:
    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=("executor",))

    up = gauge("taskstream_executor_up", "1 when the executor passed its last health check")
    in_flight = gauge("taskstream_executor_in_flight", "Calls this process has open on it")
    latency = gauge(
        "taskstream_executor_latency_seconds",
        "Moving average (EWMA, weight 0.2) of its call durations, as seen by this process",
    )
    for executor in executors.executors:
        up.add_metric([executor.url], 1 if executor.healthy else 0)
        in_flight.add_metric([executor.url], executor.in_flight)
        if executor.latency_ms is not None:
            latency.add_metric([executor.url], executor.latency_ms / 1000)
    yield from (up, in_flight, latency)
