"""Executor pool: health checks, least-busy routing, and the executor protocol.

One pooled aiohttp session serves every executor call. aiohttp rather than httpx on this
hot path: with 32 requests in flight httpx's default transport reaches ~300 req/s on the
reference machine against ~3,000+ for aiohttp (figures in README, `bench/`).
`classify` is the one place where HTTP answers and client exceptions become an `Outcome`.

Imports: models, errors, settings (and aiohttp).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import structlog

from app.models import Outcome, Task

log = structlog.get_logger()

HEALTH_TIMEOUT = 2.0
RETRYABLE_4XX = frozenset({408, 429})


@dataclass
class Execution:
    """What one attempt produced: the outcome, the executor's answer and a message."""

    outcome: Outcome
    result: Any = None
    error: str = ""
    status_code: int | None = None
    executor: str | None = None

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


@functools.lru_cache(maxsize=64)
def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    """Timeouts are few distinct values; building one per request shows up in profiles."""
    return aiohttp.ClientTimeout(total=seconds, sock_connect=min(seconds, 5.0))


@dataclass
class Executor:
    url: str
    healthy: bool = False
    in_flight: int = 0
    routed: int = 0
    succeeded: int = 0
    failures: int = 0
    latency_ms: float | None = None  # exponentially weighted moving average
    last_error: str | None = None
    checked_at: float | None = None

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
        }


@dataclass
class ExecutorPool:
    """Routes each task to the healthy executor with the fewest tasks in flight."""

    urls: Sequence[str]
    health_interval: float = 5.0
    connections: int = 256
    executors: list[Executor] = field(init=False)
    available: asyncio.Event = field(init=False)
    _session: aiohttp.ClientSession | None = field(init=False, default=None)
    _health_task: asyncio.Task[None] | None = field(init=False, default=None)
    _turn: itertools.count[int] = field(init=False, default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.executors = [Executor(url.rstrip("/")) for url in self.urls]
        self.available = asyncio.Event()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # executors set no cookies; skip the jar
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def start(self) -> None:
        """Check health once now, then every `health_interval` in the background."""
        if not self.executors:
            return
        await self.check_health()
        self._health_task = asyncio.create_task(self._health_loop(), name="executor-health")

    async def close(self) -> None:
        if self._health_task:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        if self._session:
            await self._session.close()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await self.check_health()

    async def check_health(self) -> None:
        await asyncio.gather(*(self._probe(e) for e in self.executors))
        self._update_available()

    async def _probe(self, executor: Executor) -> None:
        timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT)
        try:
            async with self.session.get(f"{executor.url}/health", timeout=timeout) as resp:
                await resp.read()
                healthy, error = 200 <= resp.status < 300, f"health answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
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

    def pick(self) -> Executor | None:
        """Healthy executor with the fewest in flight; ties go round-robin."""
        healthy = [e for e in self.executors if e.healthy]
        if not healthy:
            return None
        least = min(e.in_flight for e in healthy)
        tied = [e for e in healthy if e.in_flight == least]
        return tied[next(self._turn) % len(tied)]

    async def execute(self, task: Task, timeout: float) -> Execution:
        """Run one attempt of `task` on the best executor, bounded by `timeout` seconds."""
        executor = self.pick()
        if executor is None:
            return Execution(Outcome.NETWORK, error="no healthy executor")
        executor.in_flight += 1
        executor.routed += 1
        started = time.perf_counter()
        try:
            execution = await self._post(executor, task, timeout)
        finally:
            executor.in_flight -= 1
        executor.record(time.perf_counter() - started, execution.outcome is Outcome.SUCCESS)
        execution.executor = executor.url
        return execution

    async def _post(self, executor: Executor, task: Task, timeout: float) -> Execution:
        body = orjson.dumps(task.executor_body())
        headers = {"Content-Type": "application/json"}
        client_timeout = _timeout(timeout)
        try:
            async with self.session.post(
                f"{executor.url}/execute", data=body, headers=headers, timeout=client_timeout
            ) as resp:
                return classify(resp.status, await resp.read())
        except aiohttp.ConnectionTimeoutError as exc:
            self._mark_down(executor, exc)
            return Execution(Outcome.NETWORK, error="executor connect timed out")
        except TimeoutError:
            return Execution(Outcome.RETRYABLE, error=f"task timed out after {timeout:g}s")
        except aiohttp.ClientError as exc:
            self._mark_down(executor, exc)
            return Execution(Outcome.NETWORK, error=f"executor unreachable: {exc}")

    def _mark_down(self, executor: Executor, exc: Exception) -> None:
        """A connection error takes the executor out of routing until its next good health check."""
        connect_failed = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
        if isinstance(exc, connect_failed) and executor.healthy:
            executor.healthy = False
            executor.last_error = f"connection failed: {exc.__class__.__name__}"
            log.warning("executor_down", url=executor.url, error=str(exc))
            self._update_available()

    def views(self) -> list[dict[str, Any]]:
        return [e.view() for e in self.executors]
