"""The dashboard's other pages: the task browser (`/dashboard/tasks`, one list per queue and
state, from `GET /tasks?state=`), the task page (`/dashboard/tasks/{eval_id}`) and the
history (`/dashboard/history`); and `GET /tasks/{eval_id}/detail`, what the task page
shows beyond the record (engine/detail.py).

The pages are static files in app/web/static, no build step, and hold no data: like
`/dashboard` they open without the API key, and every API call they make carries it.

Imports: engine (detail), models, web.responses (and starlette).
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from app.engine import detail
from app.models import check_eval_id
from app.web.responses import JSON

STATIC = resources.files("app.web") / "static"
PREFIX = "/dashboard/"  # public, as /dashboard is (web/auth.py)


def page(name: str) -> HTMLResponse:
    return HTMLResponse((STATIC / name).read_text())


async def tasks_page(request: Request) -> Response:
    return page("tasks.html")


async def task_page(request: Request) -> Response:
    check_eval_id(request.path_params["eval_id"])
    return page("task.html")


async def history_page(request: Request) -> Response:
    return page("history.html")


async def task_detail(request: Request) -> Response:
    """GET /tasks/{eval_id}/detail: payload, holder, dead letter, timeline."""
    eval_id = check_eval_id(request.path_params["eval_id"])
    return JSON(await detail.detail(request.state.engine, eval_id))


ROUTES = [
    Route("/dashboard/tasks", tasks_page, methods=["GET"]),
    Route("/dashboard/tasks/{eval_id}", task_page, methods=["GET"]),
    Route("/dashboard/history", history_page, methods=["GET"]),
    Route("/tasks/{eval_id}/detail", task_detail, methods=["GET"]),
]
