"""In-process consumers: claim -> execute -> settle, lease renewal, cancellation, promotion.

One fetch loop per queue claims only as many tasks as there are free slots
(`CONCURRENCY`); each task runs in its own asyncio task; one renewal loop extends the
leases of all running tasks about every LEASE_TIMEOUT / 3; one listener aborts tasks
cancelled with `terminate=true` on whichever process runs them; one promoter moves due
scheduled and retrying tasks into their streams (every process runs one; the script
moves each task once). The engine counts the transitions (its observer); this module
observes queue waits and executor call durations into the `Metrics` it is handed. With a
tracer (runtime/otel.py, span export on), each attempt runs inside a `process` span; the
choice is made once, when the pool is built, so the untraced path has no tracing code.

Imports: engine, runtime.aio, runtime.executors, runtime.metrics and runtime.otel (typing),
models, errors, settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from app.engine.scripts import answering
from app.errors import Conflict, NotFound, Unavailable
from app.models import PRIORITY_ORDER, Outcome, Task
from app.runtime.aio import Backoff, RedisWatch, cancel, first_completed, won
from app.runtime.executors import ExecutorPool

if TYPE_CHECKING:
    from app.engine.engine import Engine
    from app.engine.queue import Claimed, Queue
    from app.runtime.executors import Execution
    from app.runtime.metrics import Metrics
    from app.runtime.otel import Otel
    from app.settings import Settings

log = structlog.get_logger()

MAX_IDLE = 5.0  # longest block while idle; scheduled tasks and lapsed leases wake sooner
# A pub/sub message about a new due time can be lost (at-most-once); this bounds the damage.
MAX_PROMOTE_SLEEP = 5.0


def progress_url_parts(base_url: str, queue: str) -> tuple[str, str]:
    """What comes before and after the eval_id in a task's `progress_url` (an eval_id is
    URL-safe as it is); a named queue's task carries its queue as the by-id hint."""
    return f"{base_url}/tasks/", "/progress" + (f"?queue={queue}" if queue else "")


def progress_url(base_url: str, eval_id: str, queue: str = "") -> str:
    """`POST` progress reports of task `eval_id` here (web/tasks.py, engine/progress.py)."""
    before, after = progress_url_parts(base_url, queue)
    return before + eval_id + after


@dataclass
class Running:
    task: Task
    job: asyncio.Task[None]
    started: float


class ConsumerPool:
    """CONCURRENCY task slots fed from one queue's streams, run on the executor pool."""

    def __init__(
        self,
        queue: Queue,
        executors: ExecutorPool,
        settings: Settings,
        consumer: str,
        priorities: frozenset[str] = frozenset(),
        *,
        metrics: Metrics | None = None,
        tracer: Otel | None = None,
    ) -> None:
        self.queue = queue
        self.metrics = metrics
        self.tracer = tracer
        self.executors = executors
        self.settings = settings
        self.consumer = consumer
        # taken from (CONSUME), in claim order; empty: all
        self.priorities = tuple(p.value for p in PRIORITY_ORDER if p.value in priorities)
        self.settled = 0  # outcomes written by this pool (completed, retrying, failed)
        self.running: dict[str, Running] = {}
        self._slot_free = asyncio.Event()
        self._slot_free.set()
        self._schedule_changed = asyncio.Event()
        self._released = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._fetcher: asyncio.Task[None] | None = None
        self.redis_watch = RedisWatch()
        self._progress = progress_url_parts(settings.base_url, queue.keys.q)
        self._log_attempts = settings.log_level in ("DEBUG", "INFO")
        # one attempt, decided once: with tracing off no tracing code runs
        self._attempt: Callable[[Task], Awaitable[None]] = (
            self._attempt_plain if tracer is None else self._attempt_traced
        )

    @property
    def free_slots(self) -> int:
        """CONCURRENCY, or less when every healthy executor has a `;max=N` (their sum),
        minus what runs."""
        capacity = self.executors.capacity
        slots = (
            self.settings.concurrency
            if capacity is None
            else min(self.settings.concurrency, capacity)
        )
        return slots - len(self.running)

    def start(self) -> None:
        """Start claiming (when executors are configured), renewing and listening for cancels."""
        with answering(False):  # its settles are answered to no client (engine/scripts.py)
            if self.executors.executors:
                self._fetcher = asyncio.create_task(self._fetch_loop(), name="consumer-fetch")
            self._loops = [
                asyncio.create_task(self._renew_loop(), name="consumer-renew"),
                asyncio.create_task(self._listen(), name="consumer-listen"),
                asyncio.create_task(self._promote_loop(), name="consumer-promote"),
            ]

    async def stop(self, grace: float) -> None:
        """Stop claiming; give running tasks `grace` s; abort and release the rest."""
        if self._fetcher:
            await cancel(self._fetcher)
        jobs = [r.job for r in self.running.values()]
        if jobs:
            log.info("consumer_draining", running=len(jobs), grace=grace)
            await asyncio.wait(jobs, timeout=grace)
        left = list(self.running.values())
        for running in left:
            running.job.cancel()
        await asyncio.gather(*(r.job for r in left), return_exceptions=True)
        if left:
            await self._release([r.task for r in left])
        for loop in self._loops:
            await cancel(loop)

    async def _release(self, tasks: list[Task]) -> None:
        """Expire our leases now so another process takes the tasks over at once."""
        try:
            await self.queue.renew(self.consumer, tasks, 0)
            log.info("consumer_released", tasks=len(tasks))
        except Unavailable:
            log.warning("consumer_release_failed", tasks=len(tasks))

    # --- claim ---------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        while True:
            await self._slot_free.wait()
            await self.executors.available.wait()
            if self.free_slots <= 0:  # the executors' `;max=N` are taken: a task must end
                if self.running:
                    self._slot_free.clear()  # set again when one ends
                else:
                    await asyncio.sleep(MAX_IDLE)  # no task to wake it (a health change)
                continue
            self._released.clear()  # a 'release' from now on counts for a held claim
            try:
                claimed = await self.queue.claim(
                    self.consumer, self.free_slots, self.settings.lease_timeout, self.priorities
                )
                self.redis_watch.back()
            except Unavailable as exc:
                await self.redis_watch.lost(exc)
                continue
            if claimed.recreated:
                log.warning("consumer_group_recreated", queue=self.queue.keys.queue)
            for task in claimed.tasks:
                self._spawn(task)
            if claimed.held:  # a limit held tasks back: wait for it, not for new entries
                await self._held(claimed)
            elif claimed.tails:  # fewer than asked for: the streams are drained, so wait
                await self._idle(claimed)

    async def _idle(self, claimed: Claimed) -> None:
        wake_in = claimed.wake_in
        timeout = MAX_IDLE if wake_in is None else min(MAX_IDLE, wake_in + 0.005)
        self._released.clear()
        read, _ = await first_completed(
            self.queue.wait_for_work(timeout, claimed.tails, self.priorities),
            self._released.wait(),
        )
        if won(read) and isinstance(error := read.exception(), Unavailable):
            await self.redis_watch.lost(error)  # logged once; the next claim logs the return

    async def _held(self, claimed: Claimed) -> None:
        """RATE_LIMITS: sleep exactly until the next start is allowed (the claim says when);
        QUEUE_MAX_IN_FLIGHT: until a slot frees anywhere ('release' on the wake channel) or
        the next lease expiry, at most MAX_IDLE (a lost message costs no more)."""
        wake_in = claimed.wake_in
        timeout = MAX_IDLE if wake_in is None else min(MAX_IDLE, wake_in)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), timeout)

    def _spawn(self, task: Task) -> None:
        task.progress_url = self._progress[0] + task.eval_id + self._progress[1]
        job = asyncio.create_task(self._run(task), name=f"task-{task.eval_id}")
        self.running[task.eval_id] = Running(task, job, time.perf_counter())
        if self.free_slots <= 0:
            self._slot_free.clear()
        job.add_done_callback(lambda _: self._finished(task.eval_id))

    def _finished(self, eval_id: str) -> None:
        self.running.pop(eval_id, None)
        self._slot_free.set()

    # --- execute and settle --------------------------------------------------------

    async def _run(self, task: Task) -> None:
        if not self._log_attempts:  # binding context costs ~5 % of the drain's CPU
            await self._attempt(task)
            return
        with structlog.contextvars.bound_contextvars(eval_id=task.eval_id, attempt=task.attempt):
            await self._attempt(task)

    async def _attempt_plain(self, task: Task) -> None:
        """Execute once and settle; one `task_attempt` log line when INFO is on."""
        metrics = self.metrics
        if metrics is not None:
            metrics.observe_wait(self.queue.keys.queue, task.waited_ms)
        executors = self.executors
        if not executors.available.is_set():  # (an await of a set Event costs a coroutine)
            await executors.available.wait()
        started = time.perf_counter()
        execution = await executors.execute(task, task.timeout or self.settings.task_timeout)
        if metrics is not None:
            metrics.observe_runtime(self.queue.keys.queue, time.perf_counter() - started)
        status = await self._settle(task, execution)
        if self._log_attempts:
            self._log_attempt(execution, status, started)

    async def _attempt_traced(self, task: Task) -> None:
        """`_attempt_plain` inside a process span: the executor request carries the span's
        context, and the settle is a span of its own under it."""
        assert self.tracer is not None
        if self.metrics is not None:
            self.metrics.observe_wait(self.queue.keys.queue, task.waited_ms)
        await self.executors.available.wait()
        started = time.perf_counter()
        with self.tracer.process(self.queue.keys.queue, self.consumer, task) as attempt:
            timeout = task.timeout or self.settings.task_timeout
            execution = await self.executors.execute(attempt.carrying(task), timeout)
            if self.metrics is not None:
                self.metrics.observe_runtime(self.queue.keys.queue, time.perf_counter() - started)
            attempt.executed(execution)
            with attempt.settle() as settling:
                status = await self._settle(task, execution)
                settling.done(status)
        if self._log_attempts:
            self._log_attempt(execution, status, started)

    @staticmethod
    def _log_attempt(execution: Execution, status: str, started: float) -> None:
        log.info(
            "task_attempt",
            outcome=execution.outcome.value,
            status=status,
            executor=execution.executor,
            http_status=execution.status_code,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            error=execution.error or None,
        )

    async def _settle(self, task: Task, execution: Execution) -> str:
        """Write the outcome; retry while Redis is away, give up once the lease is lost."""
        began = time.monotonic()
        try:
            return await self._write_outcome(task, execution)
        except (Conflict, NotFound) as exc:
            return f"discarded: {exc}"
        except Unavailable:
            return await self._settle_later(task, execution, began + self.settings.lease_timeout)

    async def _settle_later(self, task: Task, execution: Execution, deadline: float) -> str:
        """`_settle` once Redis was away: again with backoff until `deadline` (monotonic)."""
        backoff = Backoff(cap=1.0)
        while True:
            if time.monotonic() > deadline:
                return "discarded: redis unavailable past the lease"
            await backoff.sleep()
            try:
                return await self._write_outcome(task, execution)
            except (Conflict, NotFound) as exc:
                return f"discarded: {exc}"
            except Unavailable:
                continue

    async def _write_outcome(self, task: Task, execution: Execution) -> str:
        self.settled += 1
        if execution.outcome is Outcome.SUCCESS:
            await self.queue.complete_soon(task.eval_id, execution.result, task, execution.answer)
            return "completed"
        policy = (
            self.settings.network_retry
            if execution.outcome is Outcome.NETWORK
            else self.settings.retry
        )
        answer = await self.queue.fail(
            task.eval_id,
            execution.error,
            retry=execution.outcome is not Outcome.PERMANENT,
            policy=policy,
            task=task,
            detail=execution.result,
            exit_code=execution.exit_code,
            answer=execution.answer,
        )
        return str(answer["status"])

    # --- leases and cancellation ---------------------------------------------------

    async def _renew_loop(self) -> None:
        interval = self.settings.lease_timeout / 3
        while True:
            await asyncio.sleep(interval)
            if not self.running:
                continue
            sent = {r.task.eval_id: r.task for r in self.running.values()}
            try:
                lost = await self.queue.renew(
                    self.consumer, list(sent.values()), self.settings.lease_timeout
                )
            except Unavailable:
                continue
            for eval_id in lost:
                self._abort(eval_id, "lease lost", sent[eval_id])

    def _abort(self, eval_id: str, reason: str, attempt: Task | None = None) -> None:
        """Cancel the running task `eval_id`; with `attempt`, only that delivery of it (a
        late renewal answer must not abort a newer attempt claimed meanwhile)."""
        running = self.running.get(eval_id)
        if running and (attempt is None or running.task is attempt):
            log.warning("task_aborted", eval_id=eval_id, reason=reason)
            running.job.cancel()

    async def _listen(self) -> None:
        """Abort tasks cancelled with terminate=true; wake the promoter on new due times."""
        backoff = Backoff()
        while True:
            try:
                async for kind, value in self.queue.notifications():
                    backoff.reset()
                    if kind == "cancel":
                        self._abort(value, "cancelled")
                    elif value == "release":
                        self._released.set()
                    else:
                        self._schedule_changed.set()
            except Unavailable:
                await backoff.sleep()

    async def _promote_loop(self) -> None:
        """Queue due scheduled/retrying tasks; sleep until the next due time or a new one."""
        backoff = Backoff()
        while True:
            self._schedule_changed.clear()
            try:
                wait = await self.queue.promote()
                backoff.reset()
            except Unavailable:
                await backoff.sleep()
                continue
            if wait == 0.0:  # a full batch was moved: more are due right now
                continue
            timeout = MAX_PROMOTE_SLEEP if wait is None else min(MAX_PROMOTE_SLEEP, wait + 0.002)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._schedule_changed.wait(), timeout)

    def views(self) -> list[dict[str, Any]]:
        now = time.perf_counter()
        return [
            {
                "eval_id": r.task.eval_id,
                "attempt": r.task.attempt,
                "running_s": round(now - r.started, 3),
            }
            for r in self.running.values()
        ]


class Workers:
    """The consumer pools of one process: one per legacy queue it consumes (the default
    queue and the QUEUE_EXECUTORS queues, as CONSUME selects), each on its own executor
    pool, so a hung GPU executor never takes a CPU queue's slots. `runnable_only`: leave
    out the queues that have no executors here (a worker has no pull API to serve them)."""

    def __init__(
        self,
        engine: Engine,
        consumer: str,
        executors: ExecutorPool | None = None,
        *,
        metrics: Metrics | None = None,
        tracer: Otel | None = None,
        runnable_only: bool = False,
    ) -> None:
        settings = self.settings = engine.settings
        self.pools: dict[str, ConsumerPool] = {}
        for name, priorities in settings.consumed_queues().items():
            pool = executors if executors is not None and name == settings.queue else None
            if pool is None:
                urls, weights = settings.executors_for(name)
                pool = ExecutorPool(
                    urls, settings.health_interval, weights, limits=settings.executor_limits
                )
            if runnable_only and not pool.executors:
                log.warning(
                    "worker_queue_skipped", queue=name, reason="no executors for this queue"
                )
                continue
            queue = engine.queue(name)
            self.pools[name] = ConsumerPool(
                queue, pool, settings, consumer, priorities, metrics=metrics, tracer=tracer
            )
        # /status and /metrics show the default queue's pool, consumed or not.
        self.default = self.pools.get(settings.queue) or ConsumerPool(
            engine.default,
            executors
            or ExecutorPool((), settings.health_interval, limits=settings.executor_limits),
            settings,
            consumer,
            metrics=metrics,
        )

    @property
    def settled(self) -> int:
        """Outcomes written by every pool of this process."""
        return sum(pool.settled for pool in self.pools.values())

    async def start(self) -> None:
        for name, pool in self.pools.items():
            with contextlib.suppress(Unavailable):
                await pool.queue.ensure_groups()
            await pool.executors.start()
            pool.start()
            if not pool.executors.executors:
                log.info("queue_pull_only", queue=name, detail="no executors: pull workers only")

    async def stop(self, grace: float) -> None:
        pools = list(self.pools.values())
        await asyncio.gather(*(p.stop(grace) for p in pools))
        await asyncio.gather(*(p.executors.close() for p in pools), return_exceptions=True)

    def views(self) -> dict[str, Any]:
        """Per consumed queue: priorities, running tasks, executors."""
        return {
            name: {
                "priorities": list(pool.priorities) or [p.value for p in PRIORITY_ORDER],
                "running": pool.views(),
                "executors": pool.executors.views(),
            }
            for name, pool in self.pools.items()
        }
