"""Fixtures of the client tests: the real service in a thread of its own (so that the
synchronous client can block on it), and the clients under test.

`api` is parametrized over both clients: `Client` itself, and `AsyncClient` driven from
the test's plain code by `Blocking` (each coroutine runs on an event loop in another
thread), so one test body checks the same behaviour through both.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, Self

import pytest

from app.settings import RetryPolicy, Settings
from app.web.app import create_app
from taskstream_client import AsyncClient, Client, TaskTemplate
from tests.conftest import Served, serve_asgi

CALL_TIMEOUT = 25.0
FAST_RETRIES = RetryPolicy(2, 0.05, 1.0, 0.05, False)  # 3 attempts, 50 ms apart


class ThreadedServer:
    """An ASGI app under uvicorn on loopback, on an event loop in its own thread (built
    there by `factory`)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._ready: Future[Served] = Future()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        try:
            served = await serve_asgi(self._factory())
        except BaseException as exc:
            self._ready.set_exception(exc)
            raise
        self._ready.set_result(served)
        await served.job

    def start(self) -> Self:
        self._thread.start()
        self.url = self._ready.result(timeout=20).url
        return self

    def stop(self) -> None:
        if self._ready.done() and self._ready.exception() is None:
            self._ready.result().server.should_exit = True
        self._thread.join(timeout=15)


class ThreadedService(ThreadedServer):
    """taskstream itself, with `settings`."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(lambda: create_app(settings))
        self.settings = settings

    @property
    def queue(self) -> str:
        return self.settings.queue


@pytest.fixture
def make_live(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., ThreadedService]]:
    started: list[ThreadedService] = []

    def make(**overrides: Any) -> ThreadedService:
        service = ThreadedService(make_settings(**overrides))
        started.append(service)
        return service.start()

    yield make
    for service in started:
        service.stop()


@pytest.fixture
def live(make_live: Callable[..., ThreadedService]) -> ThreadedService:
    """The service with no executors (tasks wait for pull workers), fast retries."""
    return make_live(retry=FAST_RETRIES)


class LoopThread:
    """An event loop running in a thread, for driving async code from plain tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, awaitable: Any) -> Any:
        async def wrapped() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(CALL_TIMEOUT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class Blocking:
    """An AsyncClient (or one of its templates) with plain methods: each coroutine it
    returns is run to its end on the LoopThread."""

    def __init__(self, target: Any, runner: LoopThread) -> None:
        self._target, self._runner = target, runner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if inspect.isawaitable(result):
                return self._runner.run(result)
            if isinstance(result, TaskTemplate):
                return Blocking(result, self._runner)
            return result

        return call


@pytest.fixture
def make_api() -> Iterator[Callable[..., Any]]:
    """`make_api(flavour, url, **options)`: a Client, or an AsyncClient behind Blocking."""
    closers: list[Callable[[], None]] = []
    runner = LoopThread()

    def make(flavour: str, url: str, **options: Any) -> Any:
        if flavour == "sync":
            client = Client(url, **options)
            closers.append(client.close)
            return client
        aclient = AsyncClient(url, **options)
        closers.append(lambda: runner.run(aclient.aclose()))
        return Blocking(aclient, runner)

    yield make
    for close in closers:
        close()
    runner.close()


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest, make_api: Callable[..., Any], live: ThreadedService) -> Any:
    """The client under test, on `live`: both flavours run every test that uses it."""
    return make_api(request.param, live.url)


@pytest.fixture
def sync_api(live: ThreadedService) -> Iterator[Client]:
    """A plain Client on `live`, for setting the scene of a test."""
    with Client(live.url) as client:
        yield client


def in_thread(function: Callable[[], Any]) -> Future[Any]:
    """Run `function` in a thread (say, a pull worker completing a task while the test
    waits for it); the future has its result."""
    done: Future[Any] = Future()

    def run() -> None:
        try:
            done.set_result(function())
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return done
