"""Operator routes: the dead-letter queue, health and readiness probes, status, metrics.

Imports: engine (admin, views, audits, history), runtime (metrics content type, drain, typing),
web.params, web.schedules (the status's overview), web.responses, errors (and starlette).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.engine import admin, audits, flow, history, views
from app.errors import NotFound, Unavailable, WritesRefused
from app.runtime.drain import Drain
from app.runtime.metrics import CONTENT_TYPE
from app.runtime.runtime import Runtime
from app.web import params, schedules
from app.web.responses import JSON
from app.web.tasks import eval_id_of

MAX_DLQ_PAGE = 1000
MAX_DLQ_OFFSET = 1_000_000
MAX_DAYS = 36500.0
PROBE_TIMEOUT = 2.0  # /health and /readyz answer 503 rather than hang on a stalled Redis


# --- dead-letter queue -------------------------------------------------------------


async def _in_queue(request: Request) -> Any:
    return await params.resolve_queue(request.state, request.query_params.get("queue"))


async def list_dlq(request: Request) -> Response:
    limit = params.integer(request.query_params, "limit", 50, 1, MAX_DLQ_PAGE)
    offset = params.integer(request.query_params, "offset", 0, 0, MAX_DLQ_OFFSET)
    return JSON(await admin.dlq_list(await _in_queue(request), limit, offset))


async def retry_dlq(request: Request) -> Response:
    queue = await _in_queue(request)
    return JSON(await admin.dlq_retry(queue, eval_id_of(request)))


async def purge_dlq(request: Request) -> Response:
    older_than = None  # all
    if request.query_params.get("older_than_days"):
        days = params.number(request.query_params, "older_than_days", 0.0, 0.0, MAX_DAYS)
        older_than = days * 86400
    removed = await admin.dlq_purge(await _in_queue(request), older_than=older_than)
    return JSON({"removed": removed})


async def delete_dead(request: Request) -> Response:
    eval_id = eval_id_of(request)
    if not await admin.dlq_purge(await _in_queue(request), eval_id=eval_id):
        raise NotFound(f"not in the dead-letter queue: {eval_id}")
    return JSON({"removed": 1})


# --- health and status --------------------------------------------------------------


async def health(request: Request) -> Response:
    """Healthy when Redis answers the counts and takes a tiny probe write (one round trip)."""
    runtime: Runtime = request.state.runtime
    executors = runtime.workers.default.executors
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            counts = await views.health(runtime.engine.default)
    except (Unavailable, TimeoutError) as exc:
        redis = "refusing writes" if isinstance(exc, WritesRefused) else "unavailable"
        body = {"status": "unhealthy", "redis": redis, "error": str(exc) or "timed out"}
        return JSON(body, status_code=503)
    return JSON(
        {
            "status": "healthy",
            "redis": "ok",
            "queue": runtime.engine.keys.queue,
            **counts["states"],
            "dlq": counts["dlq"],
            "executors": {
                "total": len(executors.executors),
                "healthy": sum(e.healthy for e in executors.executors),
            },
        }
    )


async def livez(request: Request) -> Response:
    return JSON({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Not ready while draining (after SIGTERM) or while Redis cannot be reached. A Redis
    that answers but refuses writes leaves it ready: every replica shares that Redis, so
    failing them all would turn a write outage into a total one (reads, and the writes'
    clear 503s, would be lost too); /health reports the refusal."""
    drain: Drain = request.state.drain
    if drain.reason is not None:
        return JSON({"status": "not ready", "error": drain.reason}, status_code=503)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            await request.state.engine.ping()
    except WritesRefused as exc:  # MISCONF refuses even PING
        return JSON({"status": "ready", "redis": "refusing writes", "error": str(exc)})
    except (Unavailable, TimeoutError) as exc:
        return JSON({"status": "not ready", "error": str(exc) or "timed out"}, status_code=503)
    return JSON({"status": "ready"})


async def status(request: Request) -> Response:
    runtime: Runtime = request.state.runtime
    engine, workers, pool = runtime.engine, runtime.workers, runtime.workers.default
    counts = await views.counts(engine.default)
    return JSON(
        {
            "queue": engine.keys.queue,
            **counts,
            "oldest_waiting": (await history.oldest_waiting([engine.default]))[0],
            "consumers": await views.consumers(engine.default),
            "flow": (await flow.flow_of(engine.client, [engine.default]))[0],
            "process": {
                "consumer": pool.consumer,
                "concurrency": runtime.settings.concurrency,
                "running": pool.views(),
                "consume": runtime.settings.consume.text,
                "consuming": workers.views(),
            },
            "executors": pool.executors.views(),
            "queues": await named_overview(runtime),
            "eas": await request.state.eas.overview(),
            "fsck": await audits.last_audit(engine),  # the last audit, by any process
            "schedules": await schedules.overview(request),
        }
    )


async def named_overview(runtime: Runtime) -> dict[str, Any]:
    """`queues_overview` with this process's executors of each queue it consumes."""
    overview = await views.queues_overview(runtime.engine)
    queues = [runtime.engine.queue(name) for name in overview]
    for queue, row in zip(queues, await flow.flow_of(runtime.engine.client, queues), strict=True):
        overview[queue.keys.queue]["flow"] = row
    for name, row in overview.items():
        if name in runtime.workers.pools:
            row["executors"] = runtime.workers.pools[name].executors.views()
    return overview


async def metrics(request: Request) -> Response:
    """GET /metrics: 200 even when Redis is unreachable (`taskstream_redis_up 0`)."""
    runtime: Runtime = request.state.runtime
    return Response(await runtime.metrics.exposition(runtime), media_type=CONTENT_TYPE)


ROUTES = [
    Route("/dlq", list_dlq, methods=["GET"]),
    Route("/dlq", purge_dlq, methods=["DELETE"]),
    Route("/dlq/{eval_id}/retry", retry_dlq, methods=["POST"]),
    Route("/dlq/{eval_id}", delete_dead, methods=["DELETE"]),
    Route("/health", health, methods=["GET"]),
    Route("/livez", livez, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/status", status, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
