"""`Worker`: a pull worker that runs a Python function per task (the legacy Queue Worker's
shape, without its polling loop).

Each of `concurrency` slots long-polls `GET /tasks/next` (up to 30 s a call, answered the
moment a task arrives), runs the function on the task, and reports `complete` with its
return value, or `fail` with the exception and its traceback, so the service's retry
policy and dead-letter queue apply (`Reject` fails without retries). Every call carries
the delivery's (`lease`, `attempt`), so a worker whose lease was lost cannot overwrite a
newer attempt.

While the function runs, a background task renews the lease every `lease_timeout / 3`
seconds (`POST /tasks/{id}/renew`). When a renewal is refused (the task was cancelled with
`terminate=true`, or the lease lapsed and the task went to another worker), `job.cancelled`
is set, an async function is cancelled, and its outcome is not reported.

SIGTERM or SIGINT stops it gracefully: no slot takes a new task (a long-poll under way is
abandoned: the service notices the closed connection and hands back a task it claimed in
that instant), the tasks running finish and are reported, then `run()` returns. A task
whose answer was already on its way when the connection closed is lost to this worker
and delivered again once its lease (TASK_TIMEOUT) lapses, as after a crash. A second
signal has its default effect (SIGINT raises KeyboardInterrupt, SIGTERM ends the process).

Plain functions run in a thread pool of `concurrency` threads, async functions on the
event loop. Imports: async_client, errors, models, calls (and stdlib).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import signal
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from taskstream_client.async_client import AsyncClient
from taskstream_client.calls import jsonable
from taskstream_client.errors import Conflict, NotFound, TaskstreamError, Unavailable
from taskstream_client.models import Delivery

log = logging.getLogger("taskstream_client.worker")

MAX_POLL = 30.0  # the service's longest long-poll
SETTLE_TRIES = 6  # reports retried on 503 / no answer: 0.5 + 1 + … + 16 s
MAX_BACKOFF = 10.0  # s between long-polls while the service is unavailable


class Reject(Exception):  # Celery's name for it
    """Raise from a job function to fail the task at once, without retries (into the
    dead-letter queue), as an executor's 4xx does."""


@dataclass
class Job:
    """What the function is given: the pulled task, a flag set when it is no longer ours,
    and `progress()` to report how far it got."""

    delivery: Delivery
    cancelled: threading.Event = field(default_factory=threading.Event)
    _report: Callable[[float, str | None, Any], None] | None = field(default=None, repr=False)

    @property
    def eval_id(self) -> str:
        return self.delivery.eval_id

    @property
    def code(self) -> str:
        return self.delivery.code

    @property
    def language(self) -> str:
        return self.delivery.language

    @property
    def metadata(self) -> dict[str, Any]:
        return self.delivery.metadata

    @property
    def attempt(self) -> int:
        return self.delivery.attempt

    def progress(self, value: float, message: str | None = None, data: Any = None) -> None:
        """Report progress (0-100); returns at once (sent in the background, from any
        thread); a report that fails is logged, never raised."""
        if self._report is not None:
            self._report(value, message, data)


@dataclass(frozen=True)
class Outcome:
    """What the function's run comes to: a result, or a failure (with `retry`)."""

    result: Any = None
    error: str | None = None
    traceback: str | None = None
    retry: bool = True


JobFunction = Callable[[Job], Any]  # returns the result (JSON), or an awaitable of it


class Worker:
    """Runs `function(job)` for each task pulled from `queue` (None: the default queue).
    Give a `client` (an AsyncClient the worker does not close) or `base_url`/`api_key`."""

    def __init__(
        self,
        function: JobFunction,
        *,
        client: AsyncClient | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        queue: str | None = None,
        concurrency: int = 1,
        poll: float = MAX_POLL,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.function = function
        self.queue = queue
        self.concurrency = concurrency
        self.poll = min(max(poll, 0.0), MAX_POLL)
        self.counts: Counter[str] = Counter()  # completed, failed, retried, lost
        self.polling = 0  # slots in a long-poll now
        self._given = client
        self._base_url, self._api_key = base_url, api_key
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_asked = False
        self._background: set[asyncio.Task[Any]] = set()
        self._pool: ThreadPoolExecutor | None = None

    # --- running and stopping --------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT (blocking); in the main thread."""
        asyncio.run(self.serve())

    async def serve(self, *, handle_signals: bool = True) -> None:
        """Serve until `stop()` (or a signal, with `handle_signals`), then return once the
        running tasks are reported."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._stop_asked:
            self._stopping.set()
        client = self._given or AsyncClient(self._base_url, api_key=self._api_key)
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="taskstream-job")
        signals = self._install_signals() if handle_signals else []
        log.info(
            "worker started: %d slot(s) on %s", self.concurrency, self.queue or "the default queue"
        )
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.concurrency):
                    group.create_task(self._slot(client))
        finally:
            for sig in signals:
                self._loop.remove_signal_handler(sig)
            self._pool.shutdown(wait=False)
            if self._given is None:
                await client.aclose()

    def stop(self) -> None:
        """Take no new task; return from `serve` once the running ones are reported.
        Safe from any thread and from signal handlers."""
        self._stop_asked = True
        if self._loop is None or self._stopping is None:
            return
        try:
            here = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            here = False
        if here:
            self._stopping.set()
        else:
            self._loop.call_soon_threadsafe(self._stopping.set)

    def _install_signals(self) -> list[signal.Signals]:
        assert self._loop is not None
        installed = [signal.SIGTERM, signal.SIGINT]
        for sig in installed:
            self._loop.add_signal_handler(sig, self._on_signal, sig)
        return installed

    def _on_signal(self, sig: signal.Signals) -> None:
        """The first signal stops gracefully; its handlers go, so a second one acts as
        it would without the worker."""
        log.info("stopping on %s: running tasks finish, no new one is taken", sig.name)
        assert self._loop is not None
        for each in (signal.SIGTERM, signal.SIGINT):
            self._loop.remove_signal_handler(each)
        self.stop()

    # --- one slot: take, run, report --------------------------------------------------

    async def _slot(self, client: AsyncClient) -> None:
        assert self._stopping is not None
        failures = 0
        while not self._stopping.is_set():
            try:
                delivery = await self._take(client)
            except Unavailable as exc:
                failures += 1
                log.warning("cannot take a task: %s", exc)
                await self._pause(min(MAX_BACKOFF, 0.5 * 2 ** min(failures, 5)))
                continue
            failures = 0
            if delivery is not None:
                await self._handle(client, delivery)

    async def _take(self, client: AsyncClient) -> Delivery | None:
        """One long-poll, abandoned when a stop is asked (the service releases a task it
        claimed as the connection closed); one that came with the stop is still run."""
        assert self._stopping is not None
        poll = asyncio.ensure_future(client.next(self.poll, queue=self.queue))
        stop = asyncio.ensure_future(self._stopping.wait())
        self.polling += 1
        try:
            await asyncio.wait({poll, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if poll.done():
                return poll.result()
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError, TaskstreamError):
                await poll
            return None
        finally:
            self.polling -= 1

    async def _pause(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _handle(self, client: AsyncClient, delivery: Delivery) -> None:
        job = Job(delivery, _report=self._reporter(client, delivery))
        work = asyncio.ensure_future(self._run(job))
        keeper = asyncio.ensure_future(self._keep_lease(client, job, work))
        try:
            await asyncio.wait({work})
            if work.cancelled() or job.cancelled.is_set():
                self.counts["lost"] += 1
                log.warning(
                    "task %s attempt %d: lease lost, outcome dropped",
                    delivery.eval_id,
                    delivery.attempt,
                )
                return
            await self._settle(client, job, work.result())
        finally:
            keeper.cancel()

    async def _run(self, job: Job) -> Outcome:
        """The function's outcome; exceptions become failures (Reject: no retry)."""
        try:
            if inspect.iscoroutinefunction(self.function):
                result = await self.function(job)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._pool, self.function, job)
            json.dumps(result := jsonable(result))
        except Reject as exc:
            return Outcome(
                error=str(exc) or "rejected", traceback=traceback.format_exc(), retry=False
            )
        except Exception as exc:  # the function's failure is the task's, reported below
            return Outcome(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        return Outcome(result=result)

    async def _keep_lease(self, client: AsyncClient, job: Job, work: asyncio.Future[Any]) -> None:
        """Renew every lease_timeout / 3 s until cancelled; on a refusal, mark the job
        cancelled (and cancel an async function)."""
        lease = job.delivery.lease_timeout
        if not lease:
            return  # a service without renewals: its lease is TASK_TIMEOUT
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await client.renew(job.delivery)
            except (Conflict, NotFound) as exc:
                log.warning("task %s: renewal refused: %s", job.eval_id, exc.error)
                job.cancelled.set()
                if inspect.iscoroutinefunction(self.function):
                    work.cancel()
                return
            except Unavailable as exc:
                log.warning("task %s: renewal failed, trying again: %s", job.eval_id, exc)

    async def _settle(self, client: AsyncClient, job: Job, outcome: Outcome) -> None:
        """Report the outcome, again on 503 or no answer (with pauses) while the lease
        lasts; a refusal (409, 404) means another attempt owns the task now."""
        for attempt in range(SETTLE_TRIES):
            try:
                await self._report_outcome(client, job.delivery, outcome)
                return
            except (Conflict, NotFound) as exc:
                self.counts["lost"] += 1
                log.warning("task %s: outcome refused: %s", job.eval_id, exc.error)
                return
            except Unavailable as exc:
                log.warning("task %s: cannot report yet: %s", job.eval_id, exc)
                await asyncio.sleep(0.5 * 2**attempt)
        self.counts["unreported"] += 1

    async def _report_outcome(
        self, client: AsyncClient, delivery: Delivery, outcome: Outcome
    ) -> None:
        if outcome.error is None:
            await client.complete(delivery, outcome.result)
            self.counts["completed"] += 1
            return
        answer = await client.fail(
            delivery, outcome.error, retry=outcome.retry, traceback=outcome.traceback
        )
        self.counts["retried" if answer.status == "retrying" else "failed"] += 1

    def _reporter(
        self, client: AsyncClient, delivery: Delivery
    ) -> Callable[[float, str | None, Any], None]:
        """`Job.progress`: schedules the report on the loop, from whichever thread."""
        loop = self._loop
        assert loop is not None

        def report(value: float, message: str | None, data: Any) -> None:
            call = client.progress(delivery, value, message, data)
            loop.call_soon_threadsafe(self._background_task, call)

        return report

    def _background_task(self, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(self._quietly(call))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _quietly(call: Coroutine[Any, Any, None]) -> None:
        try:
            await call
        except TaskstreamError as exc:
            log.warning("progress report failed: %s", exc)
