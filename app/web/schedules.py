"""Cron schedules: `/schedules` (create, list, show, replace, delete, pause, resume).

A schedule's `task` is validated as POST /tasks validates a task (models.TaskRequest and
the callback host check), without its eval_id, which each tick sets (`<name>:<tick>`).
Every refusal (422 invalid, 409 name taken, 404 unknown) is decided before anything is
written. The runtime's scheduler (runtime/scheduler.py) fires them.

Imports: engine (schedules), runtime (typing), web.tasks (body parsing, the callback
check), web.responses, errors (and starlette).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.engine.schedules import NAME_RE, Schedule, ScheduleStore
from app.errors import NotFound
from app.web.responses import JSON
from app.web.tasks import check_callback, json_body


def _store(request: Request) -> ScheduleStore:
    store: ScheduleStore = request.state.runtime.scheduler.store
    return store


def _name(request: Request) -> str:
    """The path's name; one no schedule can have is unknown (404), not a bad request."""
    name: str = request.path_params["name"]
    if not NAME_RE.fullmatch(name):
        raise NotFound(f"no such schedule: {name}")
    return name


async def _parsed(request: Request, name: str | None = None) -> tuple[Schedule, bool | None]:
    schedule, paused = Schedule.parse(await json_body(request), name)
    check_callback(schedule.request(0), request.state.settings)
    return schedule, paused


async def create_schedule(request: Request) -> Response:
    schedule, paused = await _parsed(request)
    return JSON(await _store(request).create(schedule, paused), status_code=201)


async def list_schedules(request: Request) -> Response:
    return JSON({"schedules": await _store(request).listing()})


async def get_schedule(request: Request) -> Response:
    return JSON(await _store(request).get(_name(request)))


async def replace_schedule(request: Request) -> Response:
    name = _name(request)
    schedule, paused = await _parsed(request, name)
    return JSON(await _store(request).replace(schedule, paused))


async def delete_schedule(request: Request) -> Response:
    return JSON(await _store(request).delete(_name(request)))


async def pause_schedule(request: Request) -> Response:
    return JSON(await _store(request).pause(_name(request)))


async def resume_schedule(request: Request) -> Response:
    return JSON(await _store(request).resume(_name(request)))


async def overview(request: Request) -> dict[str, Any]:
    """/status's `schedules`: counts and the next tick of any, and this process's firings."""
    runtime = request.state.runtime
    return {**await _store(request).overview(), "fired_here": runtime.scheduler.fired_here}


ROUTES = [
    Route("/schedules", create_schedule, methods=["POST"]),
    Route("/schedules", list_schedules, methods=["GET"]),
    Route("/schedules/{name}", get_schedule, methods=["GET"]),
    Route("/schedules/{name}", replace_schedule, methods=["PUT"]),
    Route("/schedules/{name}", delete_schedule, methods=["DELETE"]),
    Route("/schedules/{name}/pause", pause_schedule, methods=["POST"]),
    Route("/schedules/{name}/resume", resume_schedule, methods=["POST"]),
]
