"""The Starlette application: its routes, middleware, error handlers, and the lifespan.

The lifespan is the serving process's composition: it builds the `Runtime` (engine,
metrics, consumers, callback sender), attaches the PAI-EAS hub to it, starts it, and
hands the request handlers what they use through the lifespan state; at shutdown it
waits for the consumers' stop (begun early when the server drains, see
runtime/drain.py) and stops the runtime.

Imports: eas (hub), runtime, web.* (and starlette).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from app.eas.hub import EasHub
from app.engine.arrivals import Arrivals
from app.errors import Unavailable
from app.runtime.drain import Drain
from app.runtime.executors import ExecutorPool
from app.runtime.runtime import Runtime
from app.settings import Settings
from app.web import browser, eas, live, openapi, operator, schedules, tasks
from app.web.middleware import Answering, Gate, Guard, HotPath
from app.web.responses import HANDLERS

if TYPE_CHECKING:
    from app.runtime.otel import Otel

log = structlog.get_logger()


async def openapi_json(request: Request) -> Response:
    return Response(openapi.as_json(), media_type="application/json")


async def openapi_yaml(request: Request) -> Response:
    return Response(openapi.as_yaml(), media_type="application/yaml")


async def docs(request: Request) -> Response:
    return HTMLResponse(openapi.swagger_page())


async def redoc(request: Request) -> Response:
    return HTMLResponse(openapi.redoc_page())


ROUTES: list[BaseRoute] = [
    *tasks.ROUTES,
    *operator.ROUTES,
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/openapi.yaml", openapi_yaml, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    Route("/redoc", redoc, methods=["GET"]),
    *eas.ROUTES,
    *live.ROUTES,
    *browser.ROUTES,
    *schedules.ROUTES,
]


class App(Starlette):
    """Starlette, but `POST /tasks` goes to the `HotPath` before its middleware stack."""

    hot_path: HotPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hot_path is not None and HotPath.wants(scope):
            await self.hot_path(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    redis_url: str | None = None,
    executors: ExecutorPool | None = None,
    drain: Drain | None = None,
    tracer: Otel | None = None,
) -> Starlette:
    """Build the app; the lifespan starts the runtime (see the module docstring).
    `drain`: the server's (see runtime/drain.py); a fresh one that never begins by default.
    `tracer`: instead of the one the settings ask for (see `Runtime`)."""
    drain = drain or Drain()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        url = redis_url or settings.redis_url
        if not url:
            raise RuntimeError("no Redis URL: set REDIS_URL or let the CLI embed one")
        runtime = Runtime(settings, url, executors, tracer=tracer)
        hub = EasHub(
            runtime.engine, runtime.consumer, metrics=runtime.metrics, tracer=runtime.tracer
        )
        runtime.attach(hub)
        with contextlib.suppress(Unavailable):  # pull workers claim from it
            await runtime.engine.default.ensure_groups()
        await runtime.start()
        # GET /events: one XREAD loop per queue's events stream, made on first use
        event_arrivals: dict[str, Arrivals] = {}
        drain.attach(lambda: runtime.stop_consuming(settings.shutdown_grace))
        pool = runtime.workers.default
        log.info(
            "service_started",
            queue=settings.queue,
            consumer=runtime.consumer,
            executors=len(pool.executors.executors),
            concurrency=settings.concurrency,
            consume=settings.consume.text,
            consumed=sorted(runtime.workers.pools),
        )
        try:
            yield {
                "settings": settings,
                "runtime": runtime,
                "engine": runtime.engine,
                "consumer": runtime.consumer,
                "eas": hub,
                "tracer": runtime.tracer,
                "event_arrivals": event_arrivals,
                "drain": drain,
            }
        finally:
            await asyncio.gather(*(a.close() for a in event_arrivals.values()))
            await drain.stopped()  # begun at the signal when the server drained first
            await runtime.stop(settings.shutdown_grace)
            log.info("service_stopped")

    app = App(routes=ROUTES, lifespan=lifespan, exception_handlers=HANDLERS)
    gate = Gate(settings.api_keys, settings.max_body_bytes)
    app.hot_path = HotPath(gate)
    app.add_middleware(Guard, gate=gate)
    app.add_middleware(Answering)
    return app
