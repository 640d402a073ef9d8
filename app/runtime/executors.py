"""Executor pool: health checks, least-busy routing, and the executor protocol.

Executor calls go through `wire.Origin` (keep-alive HTTP/1.1 on httptools), one per
executor: the drain path's cost is the HTTP call, and that client spends ~25 µs of CPU
per request where aiohttp spends ~195 µs and httpx ~6.7 ms (figures in docs/operations.md,
*Dependencies, and why*, and `bench/`).
What one call sends and how its answer becomes an `Outcome` is the pool's call strategy
(`ExecutorCall`): `ProtocolCall`, the executor protocol (`POST /execute`, `classify`), by
default; a wing above brings its own (PAI-EAS forwards to a target URL). Every protocol
call carries `Idempotency-Key: <eval_id>:<attempt>` (see `IDEMPOTENCY_HEADER`) and the
task's W3C `traceparent` (and `tracestate`), see runtime/tracing.py.

Imports: models, wire, tracing (and stdlib).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import structlog

from app.models import Outcome, Task
from app.runtime.tracing import headers_of
from app.runtime.wire import ConnectFailed, Origin, WireError

log = structlog.get_logger()

HEALTH_TIMEOUT = 2.0
RETRYABLE_4XX = frozenset({408, 429})
# Each attempt's request carries `<eval_id>:<attempt>`; only wire's automatic re-send of the
# same request (a reused connection that failed before any byte of the answer) repeats it,
# so an executor can tell a re-send from a retry and answer it from its first result.
IDEMPOTENCY_HEADER = "Idempotency-Key"


@dataclass
class Execution:
    """What one attempt produced: the outcome, the executor's answer and a message."""

    outcome: Outcome
    result: Any = None
    error: str = ""
    status_code: int | None = None
    executor: str | None = None
    answer: bytes = b""  # what the task's reply queue gets, if it has one (engine Queue)

    @property
    def exit_code(self) -> int | None:
        if isinstance(self.result, dict) and isinstance(self.result.get("exit_code"), int):
            return int(self.result["exit_code"])
        return None


def classify(status: int, body: bytes) -> Execution:
    """Map an executor's HTTP answer to an outcome, as the executor protocol says."""
    try:
        answer: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        answer = body.decode(errors="replace")[:2000]
    if 200 <= status < 300:
        return Execution(Outcome.SUCCESS, answer, status_code=status)
    error = f"executor answered {status}"
    if isinstance(answer, dict) and answer.get("error"):
        error = f"{error}: {answer['error']}"
    if 400 <= status < 500 and status not in RETRYABLE_4XX:
        return Execution(Outcome.PERMANENT, answer, error, status)
    return Execution(Outcome.RETRYABLE, answer, error, status)


@dataclass
class Executor:
    url: str
    origin: Origin = field(init=False, repr=False)
    healthy: bool = False
    in_flight: int = 0
    routed: int = 0
    succeeded: int = 0
    failures: int = 0
    latency_ms: float | None = None  # exponentially weighted moving average
    weight: float = 1.0  # share of the load among healthy executors (EXECUTOR_URLS ;weight=)
    max_in_flight: int | None = None  # `;max=N`: calls open on it at most (per pool)
    last_error: str | None = None
    checked_at: float | None = None

    def __post_init__(self) -> None:
        self.origin = Origin(self.url)

    def record(self, seconds: float, ok: bool) -> None:
        ms = seconds * 1000
        self.latency_ms = ms if self.latency_ms is None else 0.8 * self.latency_ms + 0.2 * ms
        if ok:
            self.succeeded += 1
        else:
            self.failures += 1

    def view(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "in_flight": self.in_flight,
            "routed": self.routed,
            "succeeded": self.succeeded,
            "failures": self.failures,
            "latency_ms": round(self.latency_ms, 2) if self.latency_ms is not None else None,
            "last_error": self.last_error,
            "weight": self.weight,
            "max_in_flight": self.max_in_flight,
            "success_rate": round(self.succeeded / done, 4)
            if (done := self.succeeded + self.failures)
            else None,
        }


class ExecutorCall(Protocol):
    """One attempt of a task on one executor. `peer` names the other side in errors; a
    failed connect may raise `ConnectFailed` (the pool takes a checked executor out of
    routing and answers NETWORK)."""

    peer: str

    async def __call__(self, executor: Executor, task: Task, timeout: float) -> Execution: ...


class ProtocolCall:
    """The executor protocol: `POST /execute` with the task, its answer by `classify`."""

    peer = "executor"

    async def __call__(self, executor: Executor, task: Task, timeout: float) -> Execution:
        body = orjson.dumps(task.executor_body())
        headers = headers_of(task.payload)  # a new dict, ours to add to
        headers[IDEMPOTENCY_HEADER] = task.idempotency_key
        try:
            answer = await executor.origin.request(
                "POST", "/execute", body, headers=headers, timeout=timeout
            )
        except TimeoutError:
            return Execution(Outcome.RETRYABLE, error=f"task timed out after {timeout:g}s")
        except ConnectFailed:
            raise
        except WireError as exc:
            return Execution(Outcome.NETWORK, error=f"executor connection failed: {exc}")
        return classify(answer.status, answer.body)


@dataclass
class ExecutorPool:
    """Routes each task to the healthy executor with the fewest tasks in flight.

    `checked`: executors are health-checked (GET /health), and one whose connect fails is
    out of routing until its next good check; unchecked ones (targets without a health
    protocol) always count as healthy, and a target that is down shows as network errors."""

    urls: Sequence[str]
    health_interval: float = 5.0
    weights: Sequence[float] = ()  # one per URL; empty: all 1
    call: ExecutorCall = field(default_factory=ProtocolCall)
    checked: bool = True
    limits: Mapping[str, int] = field(default_factory=dict)  # URL -> `;max=N`
    executors: list[Executor] = field(init=False)
    available: asyncio.Event = field(init=False)
    _freed: asyncio.Event = field(init=False)  # a call ended or health changed: pick again
    _health_task: asyncio.Task[None] | None = field(init=False, default=None)
    _turn: itertools.count[int] = field(init=False, default_factory=itertools.count)
    _bounded: bool = field(init=False, default=False)  # some executor has a `;max=N`

    def __post_init__(self) -> None:
        weights = list(self.weights) or [1.0] * len(self.urls)
        self.executors = [
            Executor(url.rstrip("/"), weight=weight, max_in_flight=self.limits.get(url.rstrip("/")))
            for url, weight in zip(self.urls, weights, strict=True)
        ]
        self._bounded = any(e.max_in_flight is not None for e in self.executors)
        self.available = asyncio.Event()
        self._freed = asyncio.Event()

    async def start(self) -> None:
        """Check health once now, then every `health_interval` in the background."""
        if not self.checked:
            for executor in self.executors:
                executor.healthy = True
            self._update_available()
            return
        if not self.executors:
            return
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop(), name="executor-health")

    async def close(self) -> None:
        if self._health_task:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        for executor in self.executors:
            executor.origin.close()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self.check_health()

    async def check_health(self) -> None:
        await asyncio.gather(*(self._probe(e) for e in self.executors))
        self._update_available()

    async def _probe(self, executor: Executor) -> None:
        try:
            answer = await executor.origin.request("GET", "/health", timeout=HEALTH_TIMEOUT)
            healthy, error = 200 <= answer.status < 300, f"health answered {answer.status}"
        except (WireError, TimeoutError) as exc:
            healthy, error = False, f"health check failed: {exc.__class__.__name__}"
        if healthy != executor.healthy:
            log.info("executor_health", url=executor.url, healthy=healthy, reason=error)
        executor.healthy = healthy
        executor.last_error = None if healthy else error
        executor.checked_at = time.time()

    def _update_available(self) -> None:
        if any(e.healthy for e in self.executors):
            self.available.set()
        else:
            self.available.clear()
        self._freed.set()

    @property
    def capacity(self) -> int | None:
        """Calls the healthy executors take at once when every one has a `;max=N` (their
        sum), else None: no bound but CONCURRENCY. Consumers claim no more than this."""
        if not self._bounded:  # (asked on every claim and start of a task)
            return None
        healthy = [e.max_in_flight for e in self.executors if e.healthy]
        if not healthy or any(m is None for m in healthy):
            return None
        return sum(m for m in healthy if m is not None)

    def pick(self) -> Executor | None:
        """Healthy executor with the least load for its weight (in flight / weight), among
        those under their `;max=N`; ties go to the one furthest behind its share (routed /
        weight), then round-robin."""
        if len(self.executors) == 1:  # the usual deployment: no choice to make
            only = self.executors[0]
            if only.healthy and (only.max_in_flight is None or only.in_flight < only.max_in_flight):
                return only
            return None
        healthy = [
            e
            for e in self.executors
            if e.healthy and (e.max_in_flight is None or e.in_flight < e.max_in_flight)
        ]
        if not healthy:
            return None
        least = min(e.in_flight / e.weight for e in healthy)
        tied = [e for e in healthy if e.in_flight / e.weight == least]
        if len(tied) > 1 and self.weighted:
            behind = min(e.routed / e.weight for e in tied)
            tied = [e for e in tied if e.routed / e.weight == behind]
        return tied[next(self._turn) % len(tied)]

    @property
    def weighted(self) -> bool:
        return any(e.weight != 1.0 for e in self.executors)

    async def execute(self, task: Task, timeout: float) -> Execution:
        """Run one attempt of `task` on the best executor, bounded by `timeout` seconds;
        while every healthy executor has its `;max=N` calls open, the attempt waits."""
        executor = self.pick()
        if executor is None:
            executor = await self._acquire()
        if executor is None:
            return Execution(Outcome.NETWORK, error="no healthy executor")
        executor.in_flight += 1
        executor.routed += 1
        started = time.perf_counter()
        try:
            execution = await self.call(executor, task, timeout)
        except ConnectFailed as exc:
            if self.checked:
                self._mark_down(executor, exc)
            execution = Execution(Outcome.NETWORK, error=f"{self.call.peer} unreachable: {exc}")
        finally:
            executor.in_flight -= 1
            if not self._freed.is_set():
                self._freed.set()
        executor.record(time.perf_counter() - started, execution.outcome is Outcome.SUCCESS)
        execution.executor = executor.url
        return execution

    async def _acquire(self) -> Executor | None:
        """The executor to call (`pick`), once one is under its `;max=N`; None when none is
        healthy."""
        while True:
            executor = self.pick()
            if executor is not None or not any(e.healthy for e in self.executors):
                return executor
            self._freed.clear()
            await self._freed.wait()

    def _mark_down(self, executor: Executor, exc: Exception) -> None:
        """A failed connect takes the executor out of routing until its next good health check."""
        if executor.healthy:
            executor.healthy = False
            executor.last_error = f"connection failed: {exc}"
            log.warning("executor_down", url=executor.url, error=str(exc))
            self._update_available()

    def views(self) -> list[dict[str, Any]]:
        """Per executor, with its share of everything routed (to compare pools side by side)."""
        total = sum(e.routed for e in self.executors)
        return [
            {**e.view(), "share": round(e.routed / total, 4) if total else None}
            for e in self.executors
        ]
