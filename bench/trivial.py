"""Ceiling (b): a trivial Starlette endpoint on the service's exact uvicorn configuration.

    python -m bench.trivial --port 8090

`POST /tasks` reads the body and answers 201 `{}`; `GET /readyz` answers 200 `{}`. The
uvicorn.Config mirrors app/cli/serve.py (uvloop, httptools, log_config=None,
access_log=False, lifespan on), so the gap between this and `POST /tasks` on the service
is the service's own work (validation, Redis round trip, middleware, rendering).
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def tasks(request: Request) -> Response:
    await request.body()
    return Response(b"{}", status_code=201, media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


def create_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/tasks", tasks, methods=["POST"]),
            Route("/readyz", ready, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--host", default="127.0.0.1")
    args.add_argument("--port", type=int, required=True)
    ns = args.parse_args(argv)
    config = uvicorn.Config(
        create_app(),
        host=ns.host,
        port=ns.port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="on",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
