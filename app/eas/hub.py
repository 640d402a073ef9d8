"""The PAI-EAS services of this process, and their forwarding consumer pools.

`EasHub` is a runtime component (attached by the composition root): every service this
process has seen, with a forwarding consumer pool per service that has a target (its own
slots and executor pool: a hung target blocks only its service). It finds services first
used on other replicas (and after a restart) in the registry, every DISCOVERY_INTERVAL.

Imports: engine (public names), runtime (consumers, executors, aio; metrics and otel for
typing), eas.store, eas.forward, errors, settings (and structlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from app.eas import store
from app.eas.forward import ForwardCall
from app.eas.store import EasQueue
from app.engine.engine import Engine
from app.engine.fsck import Target
from app.engine.queue import Queue
from app.engine.views import consumers_of, counts_of
from app.errors import Unavailable
from app.runtime.aio import Backoff, cancel
from app.runtime.consumers import ConsumerPool
from app.runtime.executors import ExecutorPool

if TYPE_CHECKING:
    from app.runtime.metrics import Metrics
    from app.runtime.otel import Otel

log = structlog.get_logger()

DISCOVERY_INTERVAL = 2.0


@dataclass
class Service:
    name: str
    input: EasQueue
    sink: EasQueue
    target: str | None
    pool: ConsumerPool | None = None


class EasHub:
    """See the module docstring. `forward=False`: look only (`taskstream info`)."""

    def __init__(
        self,
        engine: Engine,
        consumer: str,
        *,
        metrics: Metrics | None = None,
        tracer: Otel | None = None,
        forward: bool = True,
    ) -> None:
        store.load_scripts(engine)
        self.engine = engine
        self.tracer = tracer
        self.settings = engine.settings
        self.consumer = consumer
        self.metrics = metrics
        self.forward = forward
        self.services: dict[str, Service] = {}
        self.registry = store.registry(engine)
        self._jobs: set[asyncio.Task[None]] = set()
        self.wake: dict[str, asyncio.Event] = {}  # per queue: local put/commit wakes watchers
        self._registered: set[str] = set()
        self._discovery: asyncio.Task[None] | None = None
        self._stopping = False

    def service(self, name: str) -> Service:
        found = self.services.get(name)
        if found is None:
            found = Service(
                name,
                EasQueue(self.engine, name, sink=False),
                EasQueue(self.engine, name, sink=True),
                self.settings.eas_target(name),
            )
            self.services[name] = found
        return found

    def queue(self, name: str, sink: bool) -> EasQueue:
        service = self.service(name)
        return service.sink if sink else service.input

    def find(self, name: str) -> EasQueue | None:
        """A known service's input (`svc`) or sink (`svc/sink`) by its queue name."""
        service, _, part = name.partition("/")
        if service in self.services and part in ("", "sink"):
            return self.queue(service, sink=part == "sink")
        return None

    async def register(self, name: str) -> Service:
        """Record the service in Redis once, so other replicas start forwarding it too."""
        service = self.service(name)
        if name not in self._registered:
            await self.registry.add(name)
            await service.input.queue.ensure_groups()
            await service.sink.queue.ensure_groups()
            self._registered.add(name)
            self._start_pool(service)
        return service

    def notify(self, queue: EasQueue) -> None:
        event = self.wake.get(queue.keys.prefix)
        if event is not None:
            event.set()

    def wake_event(self, queue: EasQueue) -> asyncio.Event:
        return self.wake.setdefault(queue.keys.prefix, asyncio.Event())

    def _start_pool(self, service: Service) -> None:
        if service.target is None or service.pool or self._stopping or not self.forward:
            return
        if not self.settings.consume.forwards(service.name):  # CONSUME leaves it to others
            return
        executors = ExecutorPool(
            [service.target], self.settings.health_interval, call=ForwardCall(), checked=False
        )
        settings = dataclasses.replace(self.settings, concurrency=self.settings.eas_concurrency)
        service.pool = ConsumerPool(
            service.input.queue,
            executors,
            settings,
            self.consumer,
            metrics=self.metrics,
            tracer=self.tracer,
        )
        job = asyncio.get_running_loop().create_task(self._run_pool(service.pool))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    @staticmethod
    async def _run_pool(pool: ConsumerPool) -> None:
        with contextlib.suppress(Unavailable):
            await pool.queue.ensure_groups()
        await pool.executors.start()
        pool.start()
        log.info("eas_forwarding", queue=pool.queue.keys.queue)

    # --- the runtime component ----------------------------------------------------------

    async def start(self) -> None:
        if not self.settings.eas_tokens:
            log.warning("eas_token_unset", detail="any non-empty Authorization passes /api/predict")
        self._discovery = asyncio.create_task(self._discover(), name="eas-discovery")

    async def _discover(self) -> None:
        """Pick up services first used on other replicas (and after a restart)."""
        backoff = Backoff()
        while True:
            try:
                names = await store.services(self.engine)
                backoff.reset()
            except Unavailable:
                await backoff.sleep()
                continue
            for name in names:
                if name not in self._registered:
                    self._registered.add(name)
                    self._start_pool(self.service(name))
            await asyncio.sleep(DISCOVERY_INTERVAL)

    async def stop(self, grace: float) -> None:
        self._stopping = True
        if self._discovery:
            await cancel(self._discovery)
        queues = [q for s in self.services.values() for q in (s.input, s.sink)]
        await asyncio.gather(*(a.close() for q in queues for a in (q.arrivals, q.changes)))
        pools = [s.pool for s in self.services.values() if s.pool]
        await asyncio.gather(*(p.stop(grace) for p in pools), return_exceptions=True)
        await asyncio.gather(*(p.executors.close() for p in pools), return_exceptions=True)

    def queues(self) -> list[Queue]:
        """Every known service's input and sink (discovery keeps this complete, ≤ 2 s)."""
        return [q.queue for s in list(self.services.values()) for q in (s.input, s.sink)]

    def pools(self) -> list[ConsumerPool]:
        return [s.pool for s in list(self.services.values()) if s.pool]

    async def audit_targets(self) -> list[Target]:
        return await store.audit_targets(self.engine)

    # --- the overview -------------------------------------------------------------------

    async def overview(self) -> list[dict[str, Any]]:
        """Counts, consumers and target of every known service, for /status and `info`: five
        round trips however many services there are."""
        for name in await store.services(self.engine):
            self.service(name)
        services = [self.services[name] for name in sorted(self.services)]
        queues = [q for service in services for q in (service.input, service.sink)]
        keys = [q.keys for q in queues]
        counts = await counts_of(self.engine.client, keys)
        consumers = await consumers_of(self.engine.client, keys)
        stats = await asyncio.gather(*(q.stats() for q in queues))  # one pipelined write
        return [
            self._row(service, [(counts[n], consumers[n], stats[n][0]) for n in (2 * i, 2 * i + 1)])
            for i, service in enumerate(services)
        ]

    @staticmethod
    def _row(service: Service, parts: list[tuple[dict[str, Any], Any, int]]) -> dict[str, Any]:
        row: dict[str, Any] = {"service": service.name, "target": service.target}
        for label, (counts, consumers, length) in zip(("input", "sink"), parts, strict=True):
            row[label] = {
                "length": length,
                **counts["states"],
                "dlq": counts["dlq"],
                "totals": counts["totals"],
                "consumers": consumers,
            }
        if service.pool:
            row["forwarding"] = {
                "concurrency": service.pool.settings.concurrency,
                "running": len(service.pool.running),
                "target": service.pool.executors.views(),
            }
        return row
