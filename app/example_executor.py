"""The example executor: `taskstream example-executor`, a demo of the executor protocol.

**A demo, NOT a sandbox.** It runs whatever Python code it is sent, as the user it runs as,
with that user's files and network. The limits below stop accidents (an endless loop, a
memory hog, a runaway fork, a flood of output), not an attacker. It listens on loopback
only unless `--allow-remote` is given, and in `compose.yaml` it runs in a container of its
own as a non-root user. Use a real isolation layer (gVisor, Firecracker, nsjail, a
throw-away VM) for untrusted code.

Protocol (docs/api.md, *Executor protocol*): `POST /execute` with `{"eval_id", "code",
"language", "attempt", "metadata"}` runs `code` with `python -I -` (the code on stdin) in
a fresh temporary directory, with an environment of `PATH` only, in a process group of its
own, under `setrlimit` limits (CPU seconds, address space, file size, processes, no core
files) and a wall-clock limit (`EXAMPLE_TIMEOUT`). Answers:

- 200 `{"status": "success" | "error", "output", "exit_code"}`: the code ran; stdout and
  stderr interleaved, cut at `OUTPUT_LIMIT` bytes; `exit_code` is negative when a signal
  ended it (e.g. -24, SIGXCPU, for the CPU limit).
- 200 `{"status": "timeout", "output", "exit_code": null}`: the wall-clock limit elapsed
  and the process group was killed. The run is over and its answer is final, so the
  service records the task `completed` with this result rather than retrying code that
  would most likely loop again (an executor that wants a retry answers 5xx or 408).
- 400 `{"error"}`: not JSON, no `code`, or a language other than Python; the service
  fails such a task at once (4xx is permanent).

A line `PROGRESS <n> [message]` in the output is reported to the request's `progress_url`
while the code runs (app/example_progress.py).

`GET /health` answers 200 `{"status": "ok", ...}`. At most `EXAMPLE_CONCURRENCY` runs at
a time; further requests wait for a slot.

`Idempotency-Key` (the service sends `<eval_id>:<attempt>`): a request repeating the key
and the body of an earlier one is the service's client re-sending it after a connection
broke, not a new attempt, so it is answered with the first run's answer (header
`Idempotent-Replayed: true`) and the code is not run again; a repeat arriving while the
first run is still going waits for it. `Replays` keeps the last `EXAMPLE_REPLAY_ENTRIES`
answers for `EXAMPLE_REPLAY_SECONDS` each (memory: at most that many outputs of 64 KiB).

`taskstream serve --example-executor` starts it as a child process (cli/serve.py).

Imports: settings (SettingsError, the environment), logs, and starlette/uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import ipaddress
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.example_progress import Progress, api_key
from app.logs import configure
from app.settings import LOG_FORMATS, SettingsError, environ

log = structlog.get_logger()

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8083
OUTPUT_LIMIT = 64 * 1024  # bytes of output kept per run
FILE_LIMIT = 16 * 1024 * 1024  # RLIMIT_FSIZE: largest file a run may write
PROCESS_LIMIT = 256  # RLIMIT_NPROC: counts ALL processes of the user (not enforced for root)
LANGUAGES = frozenset({"python", "python3"})
IDEMPOTENCY_HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
DRAIN_GRACE = 1.0  # seconds to finish reading output once the process group is gone
PR_SET_PDEATHSIG = 1


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


@dataclass(frozen=True)
class Limits:
    """What one run may use; read from EXAMPLE_* variables by `from_env`."""

    timeout: float = 10.0  # EXAMPLE_TIMEOUT, wall-clock seconds
    concurrency: int = 4  # EXAMPLE_CONCURRENCY, runs at a time
    memory_mb: int = 512  # EXAMPLE_MEMORY_MB, address space (RLIMIT_AS)
    replay_entries: int = 256  # EXAMPLE_REPLAY_ENTRIES, answers kept by Idempotency-Key
    replay_seconds: float = 300.0  # EXAMPLE_REPLAY_SECONDS, how long each is kept

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Limits:
        return cls(
            timeout=_env_number(env, "EXAMPLE_TIMEOUT", 10.0, float, 0.01, 86400),
            concurrency=_env_number(env, "EXAMPLE_CONCURRENCY", 4, int, 1, 1024),
            memory_mb=_env_number(env, "EXAMPLE_MEMORY_MB", 512, int, 32, 1 << 20),
            replay_entries=_env_number(env, "EXAMPLE_REPLAY_ENTRIES", 256, int, 0, 100_000),
            replay_seconds=_env_number(env, "EXAMPLE_REPLAY_SECONDS", 300.0, float, 0, 86400),
        )

    @property
    def cpu_seconds(self) -> int:
        return math.ceil(self.timeout) + 1


def _env_number(
    env: Mapping[str, str], name: str, default: Any, kind: type, low: float, high: float
) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        label = "an integer" if kind is int else "a number"
        raise SettingsError(f"{name}: not {label}: {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}: out of range [{low:g}, {high:g}]: {raw!r}")
    return value


# --- one run ---------------------------------------------------------------------------


def _lower_limit(kind: int, value: int) -> None:
    """Set soft and hard limit to `value`, or leave them when they are already lower."""
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(kind, (value, value))


def die_with_parent(sig: int) -> None:
    """PR_SET_PDEATHSIG, as app/redis_server.py does: `sig` when the parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)


def _limit_child(limits: Limits) -> None:
    """preexec_fn of a run: runs in the forked child just before exec."""
    _lower_limit(resource.RLIMIT_CPU, limits.cpu_seconds)
    _lower_limit(resource.RLIMIT_AS, limits.memory_mb * 1024 * 1024)
    _lower_limit(resource.RLIMIT_FSIZE, FILE_LIMIT)
    _lower_limit(resource.RLIMIT_NPROC, PROCESS_LIMIT)
    _lower_limit(resource.RLIMIT_CORE, 0)
    die_with_parent(signal.SIGKILL)


class _Run(asyncio.SubprocessProtocol):
    """One run's output (kept up to `limit` bytes, the rest counted) and its exit.

    A protocol of our own rather than `create_subprocess_exec`: `Process.wait()` also
    waits for the pipes to close, which a process left in the background keeps open."""

    def __init__(self, limit: int, progress: Progress | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.limit = limit
        self.progress = progress  # PROGRESS lines are reported (app/example_progress.py)
        self.kept = bytearray()
        self.total = 0
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()  # every pipe closed

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.total += len(data)
        if self.progress is not None:
            self.progress.feed(data)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def output(self) -> str:
        text = self.kept.decode(errors="replace")
        if self.total > len(self.kept):
            text += f"\n[output truncated: {self.total} bytes, the first {len(self.kept)} kept]"
        return text


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_python(code: str, limits: Limits, progress: Progress | None = None) -> dict[str, Any]:
    """Run `code` with the limits; the answer of `POST /execute`."""
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(
        prefix="taskstream-example-", ignore_cleanup_errors=True
    ) as workdir:
        transport, run = await loop.subprocess_exec(
            lambda: _Run(OUTPUT_LIMIT, progress),
            sys.executable,
            "-I",  # isolated: no PYTHON* variables, no user site-packages, no cwd on sys.path
            "-",  # the program comes on stdin: no argument length limit
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={"PATH": environ().get("PATH", os.defpath)},
            start_new_session=True,  # setsid: its own process group, killed as a whole
            preexec_fn=functools.partial(_limit_child, limits),
        )
        try:
            finished = await _supervise(transport, run, code.encode(), limits.timeout)
        finally:
            if transport.get_returncode() is None:  # cancelled: the client hung up
                _kill_group(transport.get_pid())
            transport.close()
    if not finished:
        return {"status": "timeout", "output": run.output(), "exit_code": None}
    exit_code = transport.get_returncode()
    return {
        "status": "success" if exit_code == 0 else "error",
        "output": run.output(),
        "exit_code": exit_code,
    }


async def _supervise(
    transport: asyncio.SubprocessTransport, run: _Run, code: bytes, timeout: float
) -> bool:
    """Feed the code, wait for the exit; False when `timeout` elapsed (the group is killed)."""
    stdin = transport.get_pipe_transport(0)
    assert isinstance(stdin, asyncio.WriteTransport)
    stdin.write(code)
    stdin.close()
    finished = True
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(run.exited)
    except TimeoutError:
        finished = False
    # On a timeout the leader is still alive (not reaped), so the group id is certainly
    # its own. After a normal exit this ends what the code left running in the
    # background (the group id stays taken while any member lives).
    _kill_group(transport.get_pid())
    await run.exited
    with contextlib.suppress(TimeoutError):  # a process outside the group may hold the pipe
        await asyncio.wait_for(asyncio.shield(run.closed), DRAIN_GRACE)
    return finished


# --- answers by Idempotency-Key ------------------------------------------------------------

Answer = dict[str, Any]


@dataclass
class _Kept:
    digest: bytes  # of the request body: a key reused for other code is not a re-send
    answer: Answer | None  # None while running, or when the run ended without an answer
    done: asyncio.Event = field(default_factory=asyncio.Event)
    at: float = 0.0  # when the run ended (Replays.clock)


@dataclass
class Replays:
    """The answers of recent runs by `Idempotency-Key`, so that a re-sent request (same key,
    same body) gets the first run's answer instead of running the code again.

    Bounded: at most `max_entries` finished answers, each for `max_age` seconds (the
    service re-sends at once, so minutes are plenty); the oldest go first. Runs still
    going are not counted: a repeat waits for them. A key whose body differs (an eval_id
    reused after its record expired) is a new request and runs."""

    max_entries: int = 256
    max_age: float = 300.0
    clock: Callable[[], float] = time.monotonic
    entries: OrderedDict[str, _Kept] = field(default_factory=OrderedDict)  # oldest end first
    running: dict[str, _Kept] = field(default_factory=dict)

    async def answer(
        self, key: str | None, body: bytes, run: Callable[[], Awaitable[Answer]]
    ) -> tuple[Answer | None, bool]:
        """(the answer, replayed?); the answer is None when the first run of this key
        ended without one (it failed or was cancelled), so no answer can be repeated."""
        if key is None:
            return await run(), False
        self._expire()
        digest = hashlib.blake2b(body, digest_size=16).digest()
        first = self.running.get(key) or self.entries.get(key)
        if first is not None and first.digest == digest:
            await first.done.wait()
            return first.answer, True
        return await self._run(key, _Kept(digest, None), run), False

    async def _run(self, key: str, kept: _Kept, run: Callable[[], Awaitable[Answer]]) -> Answer:
        self.running[key] = kept
        try:
            kept.answer = await run()
        finally:
            if self.running.get(key) is kept:
                del self.running[key]
            kept.at = self.clock()
            kept.done.set()
            if kept.answer is not None:
                self._keep(key, kept)
        return kept.answer

    def _keep(self, key: str, kept: _Kept) -> None:
        self.entries.pop(key, None)
        self.entries[key] = kept
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def _expire(self) -> None:
        horizon = self.clock() - self.max_age
        while self.entries and next(iter(self.entries.values())).at < horizon:
            self.entries.popitem(last=False)


# --- the HTTP app ----------------------------------------------------------------------


def error(status: int, message: str) -> JSON:
    return JSON({"error": message}, status_code=status)


def _parse(raw: bytes) -> tuple[str, Any] | JSON:
    """The code and the request, or the 400 answer of a request that cannot run."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return error(400, f"malformed JSON: {exc}")
    if not isinstance(body, dict):
        return error(400, "the body must be a JSON object")
    code, language = body.get("code"), body.get("language", "python")
    if not isinstance(code, str) or not code:
        return error(400, "code must be a non-empty string")
    if not isinstance(language, str) or language.lower() not in LANGUAGES:
        return error(400, f"unsupported language {language!r}: this executor runs python")
    return code, body


def create_app(limits: Limits, api_key: str | None = None) -> Starlette:
    slots = asyncio.Semaphore(limits.concurrency)
    state = {"running": 0, "waiting": 0}
    replays = Replays(limits.replay_entries, limits.replay_seconds)

    async def run(code: str, body: dict[str, Any]) -> Answer:
        state["waiting"] += 1
        try:
            await slots.acquire()
        finally:
            state["waiting"] -= 1
        state["running"] += 1
        started = time.monotonic()
        progress = Progress(body.get("progress_url"), body.get("attempt"), api_key)
        try:
            result = await run_python(code, limits, progress)
        finally:
            state["running"] -= 1
            slots.release()
            await progress.close()
        log.info(
            "example_execute",
            eval_id=body.get("eval_id"),
            attempt=body.get("attempt"),
            status=result["status"],
            exit_code=result["exit_code"],
            seconds=round(time.monotonic() - started, 3),
        )
        return result

    async def execute(request: Request) -> Response:
        raw = await request.body()
        parsed = _parse(raw)
        if isinstance(parsed, JSON):
            return parsed
        code, body = parsed
        key = request.headers.get(IDEMPOTENCY_HEADER)
        result, replayed = await replays.answer(key, raw, functools.partial(run, code, body))
        if result is None:
            return error(503, f"the first run with Idempotency-Key {key} ended without an answer")
        if not replayed:
            return JSON(result)
        log.info("example_replayed", idempotency_key=key)
        return JSON(result, headers={REPLAYED_HEADER: "true"})

    async def health(request: Request) -> Response:
        return JSON({"status": "ok", **state, "concurrency": limits.concurrency})

    return Starlette(
        routes=[
            Route("/execute", execute, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


# --- the command -----------------------------------------------------------------------


class Server(uvicorn.Server):
    """Exit 0 after a graceful SIGTERM/SIGINT instead of re-raising the signal (as
    app/__main__.Server does for the service)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


REFUSAL = (
    "taskstream: refusing to listen on {host}: the example executor runs any Python code it "
    "is sent with this user's rights; it is a demo, NOT a sandbox. Listen on 127.0.0.1, or "
    "pass --allow-remote where only trusted clients can reach it (e.g. a container network)."
)


def main(
    host: str,
    port: int,
    allow_remote: bool = False,
    fd: int | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """`taskstream example-executor`; `fd` is a listening socket from `spawn_example` in
    cli/serve.py (hidden); `env`: the process environment by default."""
    env = environ() if env is None else env
    sock = socket.socket(fileno=fd) if fd is not None else None
    if sock is not None:
        host = str(sock.getsockname()[0])
    if not allow_remote and not is_loopback(host):
        print(REFUSAL.format(host=host), file=sys.stderr)
        return 2
    try:
        limits = Limits.from_env(env)
    except SettingsError as exc:
        print(f"taskstream: {exc}", file=sys.stderr)
        return 2
    fmt = env.get("LOG_FORMAT", "json").strip().lower()
    configure("INFO", fmt if fmt in LOG_FORMATS else "json")
    config = uvicorn.Config(
        create_app(limits, api_key(env)),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        loop="asyncio",  # run_python needs preexec_fn, which asyncio's subprocesses support
        lifespan="off",
        timeout_graceful_shutdown=math.ceil(limits.timeout) + 1,
    )
    where = sock.getsockname()[1] if sock is not None else port
    log.info(
        "example_executor_started",
        url=f"http://{host}:{where}",
        warning="a demo, NOT a sandbox: it runs any code it is sent",
        timeout=limits.timeout,
        concurrency=limits.concurrency,
        memory_mb=limits.memory_mb,
        root=os.geteuid() == 0,
    )
    server = Server(config)
    server.run(sockets=[sock] if sock is not None else None)
    return 0 if server.started else 1
