"""The runtime of one process: the engine, its metrics, the consumers, the callback sender,
the hourly housekeeping, the scheduler of cron schedules, and components attached by the
composition root.

`Runtime.start()` / `Runtime.stop(grace)` is the one lifecycle, used by the web lifespan
(`serve`) and by `taskstream worker`. Stopping is two-phase, as uvicorn's shutdown is:
`stop_consuming(grace)` (claims stop, running tasks get `grace`, the rest are released)
can run early, when a drain begins; `stop(grace)` then waits for it, stops the callback
sender (after the consumers' last outcomes) and closes the client.

A component (the PAI-EAS hub) is attached before `start`: it starts after the consumers,
stops with them, and tells what it adds to the metrics (its queues and pools) and to the
housekeeping and audit (its queues, its numbered-queue audit targets).

The runtime also owns the process's tracer (runtime/tracing.py `start`: None unless the
settings turn span export on), handed to its consumers and read by the composition root.

Imports: engine, runtime.consumers, runtime.callbacks, runtime.metrics, runtime.aio,
runtime.executors, runtime.tracing, runtime.scheduler, runtime.otel (typing), errors,
settings (and structlog).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import structlog

from app.engine import admin, audits, upgrade
from app.engine.callbacks import CallbackStream
from app.engine.client import consumer_name
from app.engine.engine import Engine
from app.engine.fsck import Target
from app.engine.queue import Queue
from app.errors import Unavailable
from app.runtime.aio import cancel
from app.runtime.callbacks import CallbackSender
from app.runtime.consumers import ConsumerPool, Workers
from app.runtime.executors import ExecutorPool
from app.runtime.metrics import Metrics
from app.runtime.scheduler import Scheduler
from app.runtime.tracing import start as start_tracing
from app.settings import Settings

if TYPE_CHECKING:
    from app.runtime.otel import Otel

log = structlog.get_logger()


class Component(Protocol):
    """What the composition root attaches to a runtime (see the module docstring)."""

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...

    def queues(self) -> list[Queue]: ...

    def pools(self) -> list[ConsumerPool]: ...

    async def audit_targets(self) -> list[Target]: ...


class Runtime:
    """See the module docstring. `runnable_only`: consume only queues with executors here
    (a worker; a serving process also serves pull workers). `tracer`: instead of the one
    the settings ask for (tests hand in one with an in-memory exporter)."""

    def __init__(
        self,
        settings: Settings,
        redis_url: str,
        executors: ExecutorPool | None = None,
        *,
        runnable_only: bool = False,
        tracer: Otel | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.tracer = tracer or start_tracing(settings)
        self.engine = Engine.connect(redis_url, settings, observer=self.metrics)
        self.consumer = consumer_name()
        self.workers = Workers(
            self.engine,
            self.consumer,
            executors,
            metrics=self.metrics,
            tracer=self.tracer,
            runnable_only=runnable_only,
        )
        self.scheduler = Scheduler(self.engine, self.metrics, self.tracer)
        self.components: list[Component] = []
        self.sender: CallbackSender | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    def attach(self, component: Component) -> None:
        self.components.append(component)

    @property
    def consuming(self) -> bool:
        """This process consumes something (CONSUME is not empty)."""
        return not self.settings.consume.nothing

    async def start(self) -> None:
        """The key layout brought up to date (engine/upgrade.py), then consumers,
        components; the callback sender and the housekeeping in every process that
        consumes anything (CONSUME= empty: the API only)."""
        with contextlib.suppress(Unavailable):  # Redis down at start: the next start does it
            await upgrade.migrate(self.engine)
        await self.workers.start()
        for component in self.components:
            await component.start()
        self.scheduler.start()  # in every process, API-only ones too
        if not self.consuming:
            return
        stream = CallbackStream(self.engine, self.engine.keys)
        with contextlib.suppress(Unavailable):
            await stream.ensure_group()
        self.sender = CallbackSender(
            stream, self.settings, self.consumer, metrics=self.metrics, discover=self._streams
        )
        self.sender.start()
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")

    async def _streams(self) -> list[CallbackStream]:
        """The callbacks streams of every legacy queue (each queue, and each partition of a
        partitioned one, has its own)."""
        queues = await self.engine.legacy_queues()
        return [CallbackStream(self.engine, p.keys) for q in queues for p in q.parts]

    async def stop_consuming(self, grace: float) -> None:
        """Consumers and components stop claiming; running tasks get `grace` s, then are
        aborted and released. Once; a second call waits for the first."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._stop_consuming(grace))
        await asyncio.shield(self._stopping)

    async def _stop_consuming(self, grace: float) -> None:
        if self._housekeeping is not None:
            await cancel(self._housekeeping)
        stops = [c.stop(grace) for c in self.components]
        await asyncio.gather(*stops, self.workers.stop(grace), self.scheduler.stop())

    async def stop(self, grace: float) -> None:
        """`stop_consuming`, then the callback sender, then the client; the tracer exports
        what spans are left."""
        await self.stop_consuming(grace)
        if self.sender is not None:
            await self.sender.stop(grace)  # after the consumers' last outcomes
        await self.engine.close()
        if self.tracer is not None:
            await self.tracer.shutdown()

    # --- what components add ------------------------------------------------------------

    def component_queues(self) -> list[Queue]:
        return [q for c in self.components for q in c.queues()]

    def pools(self) -> list[ConsumerPool]:
        """The default queue's pool (consumed or not), the other consumed queues', and the
        components'."""
        default = self.workers.default
        named = [p for p in self.workers.pools.values() if p is not default]
        return [default, *named, *(p for c in self.components for p in c.pools())]

    async def audit_targets(self) -> Sequence[Target]:
        return [t for c in self.components for t in await c.audit_targets()]

    # --- housekeeping ---------------------------------------------------------------------

    async def _housekeep(self) -> None:
        """Trim old dead letters and the events streams, and audit every queue (fsck, with
        repair), each once per interval across all processes (locks). The first audit comes
        an interval after start, not while a process starts."""
        audit = False
        while True:
            try:
                done = await admin.cleanup(self.engine, self.component_queues())
                if done:
                    log.info("cleanup", **done)
                if audit:
                    await audits.background(self.engine, await self.audit_targets())
            except Unavailable:
                pass
            audit = True
            await asyncio.sleep(self.settings.cleanup_interval)
