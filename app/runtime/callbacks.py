"""Result callbacks: POST each finished task's outcome to its `callback_url` and to
`STORAGE_SERVICE_URL` (what the old Celery worker's storage service received).

The terminal scripts append one self-contained entry per finished task with a callback
mark to its queue's callbacks stream (`notify_callback` in engine/lua/_lib.lua), in the
same atomic step as the transition, so no outcome is lost between finishing a task and
telling anyone. One `CallbackSender` per process reads every legacy queue's stream (one
read loop each, the queues found again every DISCOVER_EVERY s) as a consumer of the group
`senders`, holds each entry while it delivers it (every target on its own, retried under
the network policy), renews what it holds every LEASE_TIMEOUT / 3 (XCLAIM JUSTID) and
takes over entries another process left idle for LEASE_TIMEOUT (XAUTOCLAIM). Finishing an
entry (ack, delete, count, record on the task) is one script, `callback_done.lua`.
Delivery is at-least-once: after a takeover a receiver can see a callback twice.

The same streams carry dependency relays (a parent's end, for a dependant in another
queue: engine/links.py); the sender applies each in the dependant's queue and removes it,
as at-least-once and, there, idempotent.

It runs beside the consumers, never in their way: a dead or slow receiver costs a POST
slot (MAX_IN_FLIGHT, CALLBACK_TIMEOUT) and memory for the waiting entry, never a task slot.
Retries wait `aio.backoff_delay` under NETWORK_RETRY (fail.lua's formula, in Python).

POSTs go through `wire.Origin` (keep-alive HTTP/1.1 on httptools, as executor calls do),
one per receiver origin (scheme, host, port), the MAX_ORIGINS most recently used kept open:
httpx spent ~2,200 µs of CPU per callback (~450/s), this ~130 µs (~7,500/s; `bench.callbacks`).
Never a redirect followed (wire follows none), TLS verified against the system's CA store.

Imports: engine (the callbacks stream), runtime.aio, runtime.wire, runtime.metrics
(typing), models, settings.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import os
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import orjson
import structlog

from app import __version__
from app.errors import Unavailable
from app.models import decode_json, iso_ms
from app.runtime.aio import Backoff, RedisWatch, backoff_delay, cancel
from app.runtime.wire import ConnectFailed, Origin, WireError

if TYPE_CHECKING:
    from app.engine.callbacks import CallbackEntry, CallbackStream
    from app.runtime.metrics import Metrics
    from app.settings import Settings

log = structlog.get_logger()

MAX_IN_FLIGHT = 32  # POSTs open at a time per process (16: ~6 % fewer/s in bench.callbacks)
MAX_HELD = 1000  # entries held per process (being delivered or waiting out a retry)
READ_COUNT = 100  # entries per XREADGROUP / XAUTOCLAIM
READ_BLOCK = 1.0  # seconds; also how often a takeover scan can come due while idle
DISCOVER_EVERY = 2.0  # seconds between looks for legacy queues used since (their streams)
MAX_ANSWER = 65536  # bytes of a receiver's answer read (for keep-alive); the rest is dropped
MAX_ERROR = 300  # characters of an error kept on the task
MAX_ORIGINS = 64  # receiver origins with connections kept open (least recently used closed)
USER_AGENT = f"taskstream/{__version__}"  # Content-Type: application/json is wire's default
SAFE_IN_TARGET = "!$&'()*+,/:;=?@[]~%"  # kept as written; other characters are %-encoded


class _Abandoned(Exception):
    """The sender is stopping: the entry stays pending and another sender takes it over."""


@dataclass(frozen=True)
class Target:
    name: str  # "callback_url" or "storage_service": how errors name it (URLs may hold secrets)
    url: str


@dataclass(frozen=True)
class Route:
    """Where one URL's POSTs go: its origin and the request target and headers."""

    origin: str  # scheme://host[:port], the key of the Origin that serves it
    target: str  # path?query, as httpx sent it (fragment dropped, non-ASCII %-encoded)
    headers: dict[str, str]  # User-Agent; Authorization (Basic) from user:password@ if any


@functools.lru_cache(maxsize=256)
def route_of(url: str) -> Route:
    """Split a (validated) callback URL once; most tasks share a few URLs."""
    parts = urlsplit(url)
    target = quote(parts.path or "/", safe=SAFE_IN_TARGET)
    if parts.query:
        target += "?" + quote(parts.query, safe=SAFE_IN_TARGET)
    headers = {"User-Agent": USER_AGENT}
    if parts.username is not None:  # as httpx did with a URL's userinfo
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(secret).decode()
    netloc = parts.netloc.rsplit("@", 1)[-1].lower()
    if not netloc.isascii():  # an internationalised host name: its ASCII (IDNA) form
        netloc = netloc.encode("idna").decode()
    return Route(f"{parts.scheme.lower()}://{netloc}", target, headers)


def connect_error(exc: ConnectFailed) -> str:
    """Why a connect failed, without the host or the URL (ConnectFailed's own text names the
    address; the asyncio OSError's does too)."""
    cause = exc.__cause__
    if isinstance(cause, TimeoutError):
        reason = "connect timed out"
    elif isinstance(cause, ssl.SSLError):
        reason = f"TLS: {cause.reason or cause.__class__.__name__}"
    elif isinstance(cause, socket.gaierror):
        reason = str(cause.strerror)
    elif isinstance(cause, OSError) and cause.errno:
        reason = os.strerror(cause.errno)
    else:
        reason = cause.__class__.__name__ if cause is not None else "failed"
    return f"ConnectError: {reason}"


@dataclass(frozen=True)
class Delivery:
    """How one target's delivery ended."""

    delivered: bool
    attempts: int
    error: str = ""


def body_of(item: CallbackEntry) -> bytes:
    """The JSON POSTed to every target: like `GET /tasks/{id}`'s fields of the same name."""
    fields = item.fields
    body: dict[str, Any] = {"eval_id": item.eval_id, "status": fields.get("status", "")}
    if "result" in fields:
        body["result"] = decode_json(fields["result"].encode())
    else:
        body["error"] = fields.get("error", "")
    body["attempts"] = int(fields.get("attempts") or 0)
    body["completed_at"] = iso_ms(fields.get("finished"))
    if item.queue:
        body["queue"] = item.queue
    return orjson.dumps(body)


class CallbackSender:
    """Delivers the entries of the callbacks streams; `start()` / `stop(grace)`. `stream`:
    the default queue's; `discover`: every legacy queue's, looked for again every
    DISCOVER_EVERY s (None: `stream` only)."""

    def __init__(
        self,
        stream: CallbackStream,
        settings: Settings,
        consumer: str,
        *,
        metrics: Metrics | None = None,
        discover: Callable[[], Awaitable[list[CallbackStream]]] | None = None,
    ) -> None:
        self.stream = stream
        self.streams: dict[str, CallbackStream] = {}
        self.discover = discover
        self.settings = settings
        self.consumer = consumer
        self.metrics = metrics
        self.held: dict[tuple[str, str], asyncio.Task[None]] = {}  # (stream, entry) -> job
        self.redis_watch = RedisWatch("callbacks_")
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._room = asyncio.Event()
        self._room.set()
        self._closing = asyncio.Event()
        self._takeover_at: dict[str, float] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._renewer: asyncio.Task[None] | None = None
        self.origins: OrderedDict[str, Origin] = OrderedDict()  # most recently used last

    def start(self) -> None:
        """Start reading the streams and renewing what is held."""
        self._follow(self.stream)
        if self.discover is not None:
            self._readers.append(asyncio.create_task(self._discover_loop(), name="callbacks-find"))
        self._renewer = asyncio.create_task(self._renew_loop(), name="callbacks-renew")

    def _follow(self, stream: CallbackStream) -> None:
        if stream.key in self.streams:
            return
        self.streams[stream.key] = stream
        job = asyncio.create_task(self._read_loop(stream), name=f"callbacks-read-{stream.key}")
        self._readers.append(job)

    async def stop(self, grace: float) -> None:
        """Stop reading; POSTs under way get `grace` s; the rest stay pending for a takeover."""
        self._closing.set()  # deliveries waiting out a retry give up their entry at once
        for reader in self._readers:
            await cancel(reader)
        jobs = list(self.held.values())
        if jobs:
            await asyncio.wait(jobs, timeout=grace)
        for job in jobs:
            await cancel(job)
        if self._renewer is not None:
            await cancel(self._renewer)
        for origin in self.origins.values():
            origin.close()
        self.origins.clear()

    async def outstanding(self) -> bool:
        """Entries of a followed stream not read by any sender yet, or held here (a burst
        worker waits for them)."""
        for stream in list(self.streams.values()):
            if await stream.outstanding(self.consumer):
                return True
        return False

    # --- reading ---------------------------------------------------------------------

    async def _discover_loop(self) -> None:
        """Follow the streams of legacy queues used since the last look."""
        assert self.discover is not None
        while True:
            with contextlib.suppress(Unavailable):
                for stream in await self.discover():
                    if stream.key not in self.streams:
                        await stream.ensure_group()
                        self._follow(stream)
            await asyncio.sleep(DISCOVER_EVERY)

    async def _read_loop(self, stream: CallbackStream) -> None:
        while True:
            await self._room.wait()
            try:
                items = await self._fetch(stream, min(READ_COUNT, MAX_HELD - len(self.held)))
                self.redis_watch.back()
            except Unavailable as exc:
                await self.redis_watch.lost(exc)
                continue
            except Exception:  # a bug or an unexpected reply must not end the loop for good
                log.exception("callbacks_read_failed")
                await self.redis_watch.backoff.sleep()
                continue
            for item in items:
                self._spawn(stream, item)

    async def _fetch(self, stream: CallbackStream, count: int) -> list[CallbackEntry]:
        """Entries left by a dead sender first (a scan every LEASE_TIMEOUT / 3), then new ones."""
        if time.monotonic() >= self._takeover_at.get(stream.key, 0.0):
            lease = self.settings.lease_timeout
            taken = await stream.take_over(self.consumer, lease, count)
            taken = [item for item in taken if (stream.key, item.entry) not in self.held]
            if taken:
                log.info("callbacks_taken_over", entries=len(taken))
                return taken
            self._takeover_at[stream.key] = time.monotonic() + lease / 3
        return await stream.read(self.consumer, count, READ_BLOCK)

    def _spawn(self, stream: CallbackStream, item: CallbackEntry) -> None:
        held = (stream.key, item.entry)
        job = asyncio.create_task(self._deliver(stream, item), name=f"callback-{item.eval_id}")
        self.held[held] = job
        if len(self.held) >= MAX_HELD:
            self._room.clear()
        job.add_done_callback(lambda _: self._release(held))

    def _release(self, held: tuple[str, str]) -> None:
        self.held.pop(held, None)
        self._room.set()

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_timeout / 3)
            for key, stream in list(self.streams.items()):
                entries = [entry for (held_in, entry) in self.held if held_in == key]
                try:
                    await stream.renew(self.consumer, entries)
                except Unavailable as exc:
                    log.warning("callbacks_renew_failed", error=str(exc), held=len(entries))

    # --- delivering ------------------------------------------------------------------

    def targets(self, item: CallbackEntry) -> list[Target]:
        """The task's own callback_url (if any) and STORAGE_SERVICE_URL (if set)."""
        found = []
        if item.fields.get("url"):
            found.append(Target("callback_url", item.fields["url"]))
        if self.settings.storage_service_url:
            found.append(Target("storage_service", self.settings.storage_service_url))
        return found

    async def _deliver(self, stream: CallbackStream, item: CallbackEntry) -> None:
        if item.relay:
            with contextlib.suppress(_Abandoned):
                await self._relay(stream, item)
            return
        body, targets = body_of(item), self.targets(item)
        try:
            results = await asyncio.gather(*(self._post(t, body) for t in targets))
        except _Abandoned:
            return
        with contextlib.suppress(_Abandoned):
            await self._finish(stream, item, list(results))

    async def _relay(self, stream: CallbackStream, item: CallbackEntry) -> None:
        """Apply a dependency relay (retried while Redis is unavailable)."""
        backoff = Backoff()
        while True:
            try:
                verdict = await stream.relay(item)
                break
            except Unavailable:
                await backoff.sleep()
                if self._closing.is_set():
                    raise _Abandoned from None
        fields = item.fields
        log.info(
            "dependency_relayed",
            eval_id=fields.get("child"),
            queue=fields.get("relay"),
            parent=item.eval_id,
            parent_status=fields.get("status"),
            verdict=verdict,
        )

    async def _post(self, target: Target, body: bytes) -> Delivery:
        """Deliver to one target: retried under the network policy until a 2xx answer."""
        policy = self.settings.network_retry
        attempts = 0
        while True:
            attempts += 1
            error = await self._attempt(target, body)
            if not error:
                return Delivery(True, attempts)
            if attempts > policy.max_retries:
                return Delivery(False, attempts, f"{target.name}: {error}"[:MAX_ERROR])
            await self._pause(backoff_delay(policy, attempts))

    async def _attempt(self, target: Target, body: bytes) -> str:
        """One POST; '' when answered 2xx, else what went wrong (never the URL)."""
        timeout = self.settings.callback_timeout
        async with self._slots:
            try:
                route = route_of(target.url)
                origin = self._origin(route.origin)
                async with asyncio.timeout(timeout):
                    answer = await origin.request("POST", route.target, body, headers=route.headers)
            except TimeoutError:
                return f"timed out after {timeout:g}s"
            except ConnectFailed as exc:
                return connect_error(exc)
            except WireError as exc:
                return f"{exc.__class__.__name__}: {exc}"
            except ValueError as exc:  # a URL that urlsplit refuses (a bad port, say)
                return f"InvalidURL: {exc.__class__.__name__}"
        status = answer.status
        return "" if 200 <= status < 300 else f"answered {status}"

    def _origin(self, key: str) -> Origin:
        """The Origin for scheme://host[:port]; the least recently used closed beyond
        MAX_ORIGINS (its POSTs under way finish, their connections are not kept)."""
        origin = self.origins.get(key)
        if origin is not None:
            self.origins.move_to_end(key)
            return origin
        timeout = self.settings.callback_timeout
        origin = Origin(key, connect_timeout=min(timeout, 5.0), max_body=MAX_ANSWER)
        self.origins[key] = origin
        if len(self.origins) > MAX_ORIGINS:
            _, oldest = self.origins.popitem(last=False)
            oldest.close()
        return origin

    async def _pause(self, seconds: float) -> None:
        """Wait out a retry delay, unless the sender stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        if self._closing.is_set():
            raise _Abandoned

    async def _finish(
        self, stream: CallbackStream, item: CallbackEntry, results: list[Delivery]
    ) -> None:
        delivered = sum(1 for r in results if r.delivered)
        failed = len(results) - delivered
        # no target: marked for STORAGE_SERVICE_URL where this process has none
        status = "skipped" if not results else "failed" if failed else "delivered"
        if not results:
            log.warning("callback_skipped", eval_id=item.eval_id, reason="no target here")
        attempts = max((r.attempts for r in results), default=0)
        error = "; ".join(r.error for r in results if r.error)
        backoff = Backoff()
        while True:
            try:
                await stream.finish(item, delivered, failed, status, attempts, error)
                break
            except Unavailable:
                await backoff.sleep()
                if self._closing.is_set():
                    raise _Abandoned from None
        if self.metrics is not None:
            self.metrics.count_callbacks("delivered", delivered)
            self.metrics.count_callbacks("failed", failed)
        event = "callback_failed" if failed else "callback_delivered"
        log.info(event, eval_id=item.eval_id, attempts=attempts, targets=len(results), error=error)
