"""The scheduler: every replica fires the cron schedules that are due; each tick once.

One loop per `Runtime` (serve and worker alike). A turn reads the schedules due by the
Redis clock (at most BATCH), and for each one:

1. picks the tick to fire: the latest one due (ticks missed while no replica ran fire
   once, for the latest of them);
2. enqueues its task, `<name>:<tick>`, into the task's queue, as POST /tasks would (a W3C
   trace context, a `send` span with a tracer); an eval_id already there means another
   replica fired this tick first;
3. compare-and-sets the next tick (engine/schedules.py `advance`): only one replica's
   write lands, and a schedule changed meanwhile is left to its new definition.

Between turns the loop sleeps until the earliest next tick, woken early by a change to any
schedule (pub/sub, from whichever replica made it, as the promoter in consumers.py is), and
never longer than MAX_SLEEP, which bounds what a lost message costs. No replica is a
leader: they all read the same due ticks, and the eval_id and the compare-and-set make
the extra work harmless.

Metrics (`ScheduleMetrics`, a collector in the runtime's registry): ticks this process
fired, how late after their tick, and the schedules' count and next tick as of its last
turn.

Imports: engine (schedules, scripts), runtime.aio, runtime.tracing, runtime.metrics, errors;
runtime.otel for typing (and structlog, prometheus_client).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from app.engine.schedules import Due, Schedule, ScheduleStore, Turn
from app.engine.scripts import answering
from app.errors import Conflict, Invalid, Unavailable
from app.runtime import tracing
from app.runtime.aio import Backoff, RedisWatch, cancel
from app.runtime.metrics import HistogramFamily

if TYPE_CHECKING:
    from app.engine.engine import Engine
    from app.runtime.metrics import Metrics
    from app.runtime.otel import Otel

log = structlog.get_logger()

BATCH = 50  # schedules fired per turn: a turn's work is bounded, the next comes at once
# A pub/sub message about a change can be lost (at-most-once); this bounds the damage.
MAX_SLEEP = 5.0
WAKE_MARGIN = 0.002  # wake just after the tick, not just before it
LATE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class ScheduleMetrics:
    """This process's firings, and the schedules as its last turn saw them."""

    def __init__(self) -> None:
        self.fired: dict[str, int] = {}  # schedule -> ticks this process fired
        self.late = HistogramFamily(
            "taskstream_schedule_late_seconds",
            "From a tick to the enqueue of its task, for the ticks this process fired, per "
            "target queue",
            LATE_BUCKETS,
        )
        self.turn: Turn | None = None

    def count(self, name: str, queue: str, late: float) -> None:
        self.fired[name] = self.fired.get(name, 0) + 1
        self.late.observe(queue, late)

    def collect(self) -> Iterable[Metric]:
        fired = CounterMetricFamily(
            "taskstream_schedule_fired",
            "Schedule ticks whose task this process enqueued",
            labels=("schedule",),
        )
        for name, value in sorted(self.fired.items()):
            fired.add_metric([name], value)
        yield fired
        yield self.late.family()
        yield from self._gauges()

    def _gauges(self) -> Iterable[Metric]:
        count = GaugeMetricFamily(
            "taskstream_schedules",
            "Schedules by state, as this process's last scheduler turn read them (global)",
            labels=("state",),
        )
        upcoming = GaugeMetricFamily(
            "taskstream_schedule_next_run_timestamp_seconds",
            "The earliest next tick of any running schedule, as of this process's last turn",
        )
        turn = self.turn
        if turn is not None:
            count.add_metric(["active"], turn.active)
            count.add_metric(["paused"], turn.total - turn.active)
            if turn.earliest is not None:
                upcoming.add_metric([], turn.earliest)
        yield count
        yield upcoming


class Scheduler:
    """See the module docstring. `start()` / `stop()`."""

    def __init__(
        self, engine: Engine, metrics: Metrics | None = None, tracer: Otel | None = None
    ) -> None:
        self.engine = engine
        self.store = ScheduleStore(engine)
        self.tracer = tracer
        self.stats = ScheduleMetrics()
        if metrics is not None:
            metrics.registry.register(self.stats)
        self.redis_watch = RedisWatch("scheduler_")
        self._changed = asyncio.Event()
        self._jobs: list[asyncio.Task[None]] = []

    def start(self) -> None:
        with answering(False):  # its writes are answered to no client (engine/scripts.py)
            self._jobs = [
                asyncio.create_task(self._loop(), name="scheduler"),
                asyncio.create_task(self._listen(), name="scheduler-listen"),
            ]

    async def stop(self) -> None:
        for job in self._jobs:
            await cancel(job)
        self._jobs = []

    async def _loop(self) -> None:
        while True:
            self._changed.clear()
            try:
                wait = await self.turn()
                self.redis_watch.back()
            except Unavailable as exc:
                await self.redis_watch.lost(exc)
                continue
            except Exception:  # a bug, or a definition mangled by hand: the loop goes on
                log.exception("scheduler_turn_failed")
                wait = MAX_SLEEP
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), min(MAX_SLEEP, wait))

    async def _listen(self) -> None:
        """Wake the loop on every change to a schedule, from any process."""
        backoff = Backoff()
        while True:
            try:
                async for _ in self.store.changes():
                    backoff.reset()
                    self._changed.set()
            except Unavailable:
                await backoff.sleep()

    async def turn(self) -> float:
        """Fire what is due now; the seconds until the next tick (0: more are due now)."""
        turn = await self.store.due(BATCH)
        self.stats.turn = turn
        nexts = await asyncio.gather(*(self.fire(due, turn) for due in turn.due))
        if len(turn.due) >= BATCH:
            return 0.0
        upcoming = [t for t in (turn.earliest, *nexts) if t is not None]
        if not upcoming:
            return MAX_SLEEP
        return max(0.0, min(upcoming) - turn.now_ms / 1000) + WAKE_MARGIN

    async def fire(self, due: Due, turn: Turn) -> int | None:
        """Fire the latest due tick of `due`, then advance it; its next tick."""
        cadence = due.schedule.cadence
        tick = cadence.latest(due.tick, turn.now)
        next_tick = cadence.next_after(turn.now)
        if await self._enqueue(due.schedule, tick):
            late = max(0.0, turn.now_ms / 1000 - tick)
            self.stats.count(due.schedule.name, self._queue_of(due.schedule), late)
            log.info("schedule_fired", schedule=due.schedule.name, tick=tick, late_s=round(late, 3))
        await self.store.advance(due, tick, next_tick)
        return next_tick

    def _queue_of(self, schedule: Schedule) -> str:
        return self.engine.queue(schedule.task.get("queue")).keys.queue

    async def _enqueue(self, schedule: Schedule, tick: int) -> bool:
        """Enqueue the task of `tick`; False when it is there already (fired by another
        replica), deduplicated (its dedup_key is held) or refused (logged: the tick is
        spent, the schedule goes on)."""
        try:
            req = schedule.request(tick)
            queue = self.engine.queue(req.queue)
            context = tracing.from_fields(schedule.task)
            if self.tracer is None:
                req.payload.update((context or tracing.new_context()).fields())
                answer = await queue.enqueue(req)
            else:
                name, prio = queue.keys.queue, req.priority.value
                with self.tracer.send(name, context, req.eval_id, prio) as sending:
                    req.payload.update(sending.context.fields())
                    answer = await queue.enqueue(req)
            # a task with a dedup_key whose holder answered: this tick made no task
            return "deduplicated" not in answer
        except Conflict:
            return False
        except Invalid as exc:
            log.error("schedule_task_refused", schedule=schedule.name, tick=tick, error=str(exc))
            return False

    @property
    def fired_here(self) -> int:
        """Ticks whose task this process enqueued."""
        return sum(self.stats.fired.values())
