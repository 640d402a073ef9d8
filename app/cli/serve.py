"""`serve` and `worker`: the processes that run a `Runtime`, and what they start beside it.

serve: Settings -> logs.configure -> the example executor child (with --example-executor)
-> embedded Redis when REDIS_URL is unset -> web.app.create_app (whose lifespan builds the
Runtime) -> uvicorn.Server. uvicorn owns the process and its signals; `Server` makes its
first SIGTERM/SIGINT a drain (runtime/drain.py) and a second one an immediate exit.

worker: the same `Runtime` without the HTTP API, consuming the queues that have executors
here; with `--burst` it stops once they are drained (runtime/burst.py), else on SIGTERM or
Ctrl-C. Either way running tasks get SHUTDOWN_GRACE to finish.

Imports: everything below (and uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import structlog
import uvicorn

from app import example_executor
from app.cli.args import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from app.engine.client import fsync_problem
from app.errors import TaskstreamError
from app.logs import configure
from app.redis_server import RedisServer
from app.runtime import heap
from app.runtime.aio import first_completed
from app.runtime.burst import until_drained
from app.runtime.drain import Drain
from app.runtime.runtime import Runtime
from app.settings import Settings, SettingsError, environ

log = structlog.get_logger()


# --- serve -----------------------------------------------------------------------------


class Server(uvicorn.Server):
    """uvicorn with a not-ready phase before its shutdown.

    The first SIGTERM/SIGINT begins the drain: /readyz answers 503 at once while the
    listener stays open and every request is still answered (enqueues included: a
    draining replica only stops consuming), the consumers stop claiming and running
    tasks get SHUTDOWN_GRACE. After `delay` s (SHUTDOWN_DELAY) uvicorn's own shutdown
    runs: close the listener, finish open requests, then the lifespan waits for the
    consumers. A second signal exits at once (running tasks are left to their leases).

    uvicorn would re-raise the signal once done, ending a graceful stop with status -15
    and skipping our cleanup; the signal is not recorded, so a drain exits 0.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain, delay: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.delay = delay
        self.forced_by: int | None = None  # the signal that cut the drain short

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Called by signal.signal between two bytecodes of the main thread: set flags, and
        # leave the rest to the event loop (call_soon_threadsafe is safe here).
        if not self.drain.draining:
            self.drain.begin(f"draining: {signal.Signals(sig).name} received, shutting down")
            with contextlib.suppress(RuntimeError):  # no loop yet: on_tick does it
                asyncio.get_running_loop().call_soon_threadsafe(self._kick)
            return
        self.forced_by = sig
        self.should_exit = self.force_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # the lifespan (the runtime) is up: what exists now stays
            heap.settle()

    def _kick(self) -> None:
        if self.drain.kick():
            log.info("service_draining", reason=self.drain.reason, delay=self.delay)

    async def on_tick(self, counter: int) -> bool:
        if self.drain.draining:
            self._kick()  # when the signal came before the consumers were attached
            if self.drain.elapsed() >= self.delay:
                self.should_exit = True
        return await super().on_tick(counter)


def embedded_redis(settings: Settings) -> RedisServer:
    server = RedisServer(settings.data_dir, appendfsync=_appendfsync(settings))
    server.start()
    return server


def _appendfsync(settings: Settings) -> str:
    """DURABILITY=fsync on the embedded Redis: every write on disk before its reply."""
    return "always" if settings.durability == "fsync" else "everysec"


def embedded_durability(settings: Settings) -> Settings:
    """The settings of a process on the embedded Redis (REDIS_URL unset): under
    DURABILITY=fsync it fsyncs every write itself, so no WAITAOF is needed."""
    return dataclasses.replace(settings, server_fsyncs=settings.durability == "fsync")


def durability_refused(settings: Settings, url: str) -> str | None:
    """One line when DURABILITY=fsync cannot be kept on REDIS_URL's servers (exit 2)."""
    if settings.durability != "fsync" or settings.server_fsyncs:
        return None
    problem = asyncio.run(fsync_problem(url))
    return None if problem is None else f"DURABILITY=fsync: {problem}"


def start_example_executor(settings: Settings, port: int) -> Child | None:
    """The example executor child, unless EXECUTOR_URLS names executors already."""
    if settings.executor_urls:
        log.warning("example_executor_skipped", reason="EXECUTOR_URLS is set")
        return None
    child = spawn_example(port)
    log.info("example_executor", url=child.url, warning="a demo, NOT a sandbox")
    return child


def serve(settings: Settings, example_port: int | None = None) -> int:
    """`taskstream serve`: the exit status."""
    configure(settings.log_level, settings.log_format)
    child = embedded = None
    try:
        if example_port is not None:
            try:
                example_executor.Limits.from_env(environ())
                child = start_example_executor(settings, example_port)
            except SettingsError as exc:
                print(f"taskstream: {exc}", file=sys.stderr)
                return EXIT_USAGE
            except (OSError, RuntimeError) as exc:
                print(f"taskstream: example executor: {exc}", file=sys.stderr)
                return EXIT_FAILURE
            if child is not None:
                settings = dataclasses.replace(settings, executor_urls=(child.url,))
        if settings.redis_url and (refused := durability_refused(settings, settings.redis_url)):
            print(f"taskstream: {refused}", file=sys.stderr)
            return EXIT_USAGE
        if not settings.redis_url:
            settings = embedded_durability(settings)
        embedded = None if settings.redis_url else embedded_redis(settings)
        return _run_server(settings, settings.redis_url or (embedded.url if embedded else None))
    finally:
        if embedded:
            embedded.stop()
        if child:
            child.stop()


def _run_server(settings: Settings, redis_url: str | None) -> int:
    from app.web.app import create_app  # imported here: the operator commands start faster

    drain = Drain()
    app = create_app(settings, redis_url=redis_url, drain=drain)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 5,
    )
    server = Server(config, drain, settings.shutdown_delay)
    server.run()
    if server.forced_by is not None:
        return 128 + server.forced_by  # as a shell reports a death by that signal
    return EXIT_OK if server.started else EXIT_FAILURE


# --- worker ----------------------------------------------------------------------------


class NothingToConsume(Exception):
    """The selection names no queue this process could execute."""


def _answers(path: Path) -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1.0)
        sock.connect(str(path))
        return True
    return False


def run_worker(settings: Settings, burst: bool) -> int:
    """`taskstream worker`: the exit status."""
    configure(settings.log_level, settings.log_format)
    embedded = None
    url = settings.redis_url
    if url and (refused := durability_refused(settings, url)):
        print(f"taskstream: {refused}", file=sys.stderr)
        return EXIT_USAGE
    if not url:
        settings = embedded_durability(settings)
        server = RedisServer(settings.data_dir, appendfsync=_appendfsync(settings))
        if not _answers(server.socket_path):  # no service runs there: start our own
            embedded = server
            embedded.start()
        url = server.url
    try:
        asyncio.run(work(settings, url, burst))
        return EXIT_OK
    except NothingToConsume as exc:
        print(f"taskstream: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TaskstreamError as exc:
        print(f"taskstream: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if embedded:
            embedded.stop()


async def work(settings: Settings, redis_url: str, burst: bool) -> int:
    """Consume until drained (`burst`) or stopped; returns how many tasks were settled."""
    runtime = Runtime(settings, redis_url, runnable_only=True)
    try:
        await runtime.engine.ping()
        if not runtime.workers.pools:
            raise NothingToConsume(
                "no selected queue has executors (EXECUTOR_URLS, QUEUE_EXECUTORS, CONSUME)"
            )
    except BaseException:
        await runtime.engine.close()
        raise
    await runtime.start()
    heap.settle()
    queues = sorted(runtime.workers.pools)
    log.info("worker_started", queues=queues, burst=burst, consume=settings.consume.text)
    try:
        stop = _stop_on_signals()
        if burst:
            await first_completed(until_drained(runtime), stop.wait())
        else:
            await stop.wait()
    finally:
        await runtime.stop(settings.shutdown_grace)
    settled = runtime.workers.settled
    log.info("worker_stopped", burst=burst, settled=settled)
    return settled


def _stop_on_signals() -> asyncio.Event:
    """SIGTERM and SIGINT end the wait (then running tasks get SHUTDOWN_GRACE)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


# --- the example executor as a child process ------------------------------------------------


@dataclass
class Child:
    """The example executor as a child process of the service."""

    process: subprocess.Popen[bytes]
    url: str

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def spawn_example(port: int, timeout: float = 15.0) -> Child:
    """Start `python -m app example-executor` on 127.0.0.1:`port` (0: a free port) and wait
    until it answers /health. The socket is bound here and handed over, so a port in use
    fails at once (OSError) and the URL is known before the child runs. The child gets
    PR_SET_PDEATHSIG and a session of its own: a Ctrl-C reaches the service only, which
    stops the executor after its own graceful shutdown."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((example_executor.DEFAULT_HOST, port))
        sock.listen(128)
        url = f"http://{example_executor.DEFAULT_HOST}:{sock.getsockname()[1]}"
        fd = sock.fileno()
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "example-executor", "--fd", str(fd)],
            pass_fds=(fd,),
            start_new_session=True,
            preexec_fn=functools.partial(example_executor.die_with_parent, signal.SIGTERM),
        )
    child = Child(process, url)
    try:
        _wait_healthy(child, timeout)
    except BaseException:
        child.stop()
        raise
    return child


def _wait_healthy(child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if child.process.poll() is not None:
            raise RuntimeError(f"example executor exited with status {child.process.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{child.url}/health", timeout=1) as answer,
        ):
            if answer.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"example executor did not answer /health within {timeout:g}s")
        time.sleep(0.05)
