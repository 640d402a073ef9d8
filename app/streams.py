"""The only module that speaks Redis: key layout, client factory, Lua scripts, queue operations.

Every multi-key change is one Lua script from `app/lua/` (loaded once, run by EVALSHA).
Redis outages and refused writes become `errors.Unavailable` here, in one place
(`redis_failure`).

Imports: models, errors, settings (and redis, structlog: it logs tasks lost with their entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import os
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, NoReturn, ParamSpec, TypeVar

import orjson
import redis.asyncio as aioredis
import structlog
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    DataError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from app.errors import Conflict, Invalid, NotFound, Unavailable, WritesRefused
from app.models import (
    PRIORITY_ORDER,
    TERMINAL,
    Priority,
    State,
    Task,
    TaskRequest,
    decode_json,
    iso_ms,
)
from app.settings import RetryPolicy, Settings

P = ParamSpec("P")
R = TypeVar("R")

log = structlog.get_logger()

GROUP = "workers"
CALLBACK_GROUP = "senders"  # consumer group of the callbacks stream (app/callbacks.py)
SCRIPT_NAMES = (
    "enqueue",
    "claim",
    "complete",
    "fail",
    "renew",
    "cancel",
    "status",
    "clear",
    "promote",
    "dlq_retry",
    "dlq_purge",
    "eas_put",
    "eas_read",
    "eas_remove",
    "callback_done",
    "fsck_records",
    "fsck_entries",
    "fsck_refs",
    "fsck_dlq",
    "fsck_deps",
    "fsck_eas",
    "fsck_counters",
)
PROMOTE_LIMIT = 200
MAX_DEPENDANTS = 10000  # deferred children per parent (enqueue.lua): its release is one script
COMMAND_TIMEOUT = 3.0  # seconds; Lua scripts here are bounded and take well under that
MAX_BLOCK_SLICE = 1.0  # longest single XREAD BLOCK; must stay below COMMAND_TIMEOUT
PROBE_TTL_MS = 60_000  # the /health write probe's key (one per process) expires after this
# Error replies that mean "the server cannot take this now", not "your command is wrong",
# by their code. Writes refused (the server answers, reads still work):
REFUSED_WRITES = {
    "OOM": "out of memory",
    "NOREPLICAS": "not enough replicas",
    "READONLY": "read-only replica",
    "MISCONF": "cannot persist to disk",
}
# The server cannot serve at all for now:
UNAVAILABLE_REPLIES = {
    "LOADING": "loading its dataset",
    "MASTERDOWN": "replica without its primary",
    "BUSY": "busy running a script",
    "CLUSTERDOWN": "cluster down",
    "TRYAGAIN": "cluster resharding",
}
# redis-py strips the code from these replies and says it with the class instead.
STRIPPED_CODES: dict[type[RedisError], str] = {
    OutOfMemoryError: "OOM",
    ReadOnlyError: "READONLY",
    BusyLoadingError: "LOADING",
    MasterDownError: "MASTERDOWN",
}
# The code opens the reply; or, in a script on Redis 6.2, follows " -" inside
# "Error running script (call to f_<sha>): @user_script:7: @user_script: 7: -OOM command ..."
# (7.x keeps the code and appends " script: <sha>, on @user_script:7."); or, re-raised by a
# script after redis.pcall (claim.lua), follows the Lua position: "user_script:414: OOM ...".
REPLY_CODE = re.compile(rf"(?:^|\s-|: )({'|'.join([*REFUSED_WRITES, *UNAVAILABLE_REPLIES])})\b")
SCRIPT_SUFFIX = re.compile(r"\s+script: \w+, on @user_script:\d+\.$")
PIPELINE_PREFIX = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)
REFUSALS = {
    "missing": "no such task",
    "state": "task is {state}, not processing",
    "stale": "stale delivery: the task was handed to another worker",
    "expired": "lease expired: the task will be delivered again",
}


def _start_arg(req: TaskRequest) -> str:
    """enqueue.lua's run time: '0' now, '+<ms>' a delay after the Redis server's clock,
    '<ms>' an absolute epoch time given by the client. Never this process's clock."""
    if req.delay:
        return f"+{math.ceil(req.delay * 1000)}"
    return str(int(req.run_at * 1000)) if req.run_at else "0"


def consumer_name() -> str:
    """host:pid, so XINFO CONSUMERS shows one consumer per service process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def connect(url: str) -> aioredis.Redis:
    """The one Redis client factory: RESP2 and legacy reply shapes pinned explicitly.

    Commands time out after COMMAND_TIMEOUT, so a hung Redis becomes a prompt 503.
    """
    return aioredis.Redis.from_url(
        url,
        protocol=2,
        legacy_responses=True,
        decode_responses=False,
        socket_timeout=COMMAND_TIMEOUT,
        socket_connect_timeout=2.0,
        health_check_interval=0,
        # No silent re-sends: a script re-run after a lost reply would answer "duplicate"
        # for a task that was stored. Callers see Unavailable and decide.
        retry=Retry(NoBackoff(), 0),
    )


def redis_failure(exc: BaseException) -> Unavailable | None:
    """The one classification of a Redis client exception. A refused write (OOM,
    NOREPLICAS, READONLY, MISCONF) becomes `WritesRefused` naming the cause; a server that
    cannot serve now (LOADING, MASTERDOWN, BUSY, …) or cannot be reached (connection
    error, timeout) becomes `Unavailable`. None for a `DataError` (a bad argument: our
    bug, or input a route should have refused with 422) and for any other error reply (a
    wrong command, a script error): those are no outage, and must not look like one."""
    if isinstance(exc, ResponseError | BusyLoadingError):
        code = next((c for cls, c in STRIPPED_CODES.items() if isinstance(exc, cls)), "")
        reply = PIPELINE_PREFIX.sub("", str(exc))  # redis-py's note on a pipeline's error
        text = f"{code} {reply}" if code else reply
        if found := REPLY_CODE.search(text):
            return _refusal_of(found.group(1), text[found.start(1) :])
        if isinstance(exc, ResponseError):
            return None
    if isinstance(exc, DataError):
        return None
    if isinstance(exc, RedisError | OSError):
        return Unavailable(f"redis unavailable: {exc.__class__.__name__}")
    return None


def _refusal_of(code: str, reply: str) -> Unavailable:
    """`WritesRefused`/`Unavailable` with the reply's first sentence (scripts' suffix cut)."""
    reply = SCRIPT_SUFFIX.sub("", reply.strip())
    first, dot, _ = reply.partition(". ")
    detail = first + dot.strip()
    if code in REFUSED_WRITES:
        return WritesRefused(f"redis refusing writes: {REFUSED_WRITES[code]} ({detail})")
    return Unavailable(f"redis unavailable: {UNAVAILABLE_REPLIES[code]} ({detail})")


def raise_translated(exc: BaseException) -> NoReturn:
    """Raise `redis_failure(exc)` from `exc`, or `exc` itself when it is no outage."""
    if (failure := redis_failure(exc)) is None:
        raise exc
    raise failure from exc


def translate_errors(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn Redis outages and refused writes into `Unavailable` (HTTP 503); see
    `redis_failure`."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await func(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise_translated(exc)

    return wrapper


class Keys:
    """Key names of one queue; `{queue}` is the Redis Cluster hash tag of all of them.

    `part` nests a second queue under the same tag (a PAI-EAS sink beside its input
    queue), so one script can finish an input item and append its answer to the sink.
    """

    def __init__(self, queue: str, part: str | None = None, name: str | None = None) -> None:
        self.queue = name or queue
        self.base = f"ts:{{{queue}}}:"
        self.prefix = self.base + (f"{part}:" if part else "")
        self.named = ""  # a named legacy queue's name (its task hashes carry it as `q`)
        self.task_prefix = f"{self.prefix}task:"
        self.registry = f"{self.base}queues"  # named legacy queues ever used
        self.deps_prefix = f"{self.base}deps:"  # deps:<parent> = set of dependants
        self.counters = f"{self.prefix}counters"
        self.leases = f"{self.prefix}leases"
        self.scheduled = f"{self.prefix}scheduled"
        self.dlq = f"{self.prefix}dlq"
        self.dlq_index = f"{self.prefix}dlq:index"
        self.events = f"{self.prefix}events"
        self.cancel_channel = f"{self.prefix}cancel"
        self.schedule_channel = f"{self.prefix}schedule"
        self.cleanup_lock = f"{self.prefix}cleanup-lock"
        self.streams = [f"{self.prefix}stream:{p.value}" for p in PRIORITY_ORDER]
        self.holes = [f"{self.prefix}holes:{p.value}" for p in PRIORITY_ORDER]
        self.paused = f"{self.prefix}paused"  # set: consumers and pull workers get nothing
        self.index = f"{self.prefix}index"  # PAI-EAS queues only
        self.rid = f"{self.prefix}rid"  # PAI-EAS sinks only
        self.callbacks = f"{self.base}callbacks"  # result callbacks of every legacy queue
        self.eas_services = f"{self.base}eas:services"  # the deployment's PAI-EAS services
        self.fsck = f"{self.base}fsck:"  # the audit's summary, totals, lock and cursor (fsck.py)

    @classmethod
    def named_queue(cls, default: str, name: str) -> Keys:
        """A named legacy queue: its own streams, counters, schedule, leases, DLQ, events
        and pause flag under `ts:{default}:q:<name>:`, beside the default queue under the
        same hash tag; task records stay shared (`ts:{default}:task:<id>`), so eval_ids
        are unique across queues and dependencies may cross them."""
        keys = cls(default, part=f"q:{name}", name=name)
        keys.named = name
        keys.task_prefix = f"{keys.base}task:"
        return keys

    def task(self, eval_id: str) -> str:
        return self.task_prefix + eval_id

    def stream(self, priority: Priority | str) -> str:
        return f"{self.prefix}stream:{Priority(priority).value}"


def read_scripts() -> dict[str, str]:
    """Read app/lua once; each script gets the shared helpers prepended (the fsck scripts
    also theirs, `_fsck.lua`)."""
    folder = resources.files("app") / "lua"
    lib = (folder / "_lib.lua").read_text() + (folder / "_fence.lua").read_text()
    audit = (folder / "_fsck.lua").read_text()
    return {
        name: lib
        + (audit if name.startswith("fsck_") else "")
        + (folder / f"{name}.lua").read_text()
        for name in SCRIPT_NAMES
    }


SOURCES = read_scripts()
SHAS = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in SOURCES.items()}


@dataclass(eq=False)
class _Call:
    name: str
    keys: Sequence[Any]
    args: Sequence[Any]
    future: asyncio.Future[Any]


class Scripts:
    """Runs the Lua scripts by EVALSHA with automatic pipelining.

    Calls issued in the same event-loop turn (concurrent requests, a batch, a burst of
    completions) go out in one write on one pooled connection, and their replies are read
    back in order. This skips redis-py's per-command machinery, which profiling showed to
    be a third of the service's CPU on the enqueue path. NOSCRIPT (a restarted or flushed
    Redis) loads the scripts and re-sends once.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._pending: list[_Call] = []
        self._jobs: set[asyncio.Task[None]] = set()

    async def run(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's reply; an outage or a refused write raises `Unavailable`."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(_Call(name, keys, args, future))
        try:
            return await future
        except (RedisError, OSError) as exc:
            raise_translated(exc)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        job = asyncio.create_task(self._send(batch))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _send(self, batch: list[_Call], reloaded: bool = False) -> None:
        pool = self.client.connection_pool
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as exc:
            _fail_all(batch, exc)
            return
        try:
            missing = await self._exchange(conn, batch)
        except (RedisError, OSError) as exc:
            await conn.disconnect()
            _fail_all(batch, exc)
            return
        except BaseException as exc:  # a bug, or cancelled: no caller may wait forever
            await conn.disconnect()
            _fail_all(batch, exc)
            raise
        finally:
            await pool.release(conn)
        if missing and not reloaded:
            await self._reload(missing)
        elif missing:
            _fail_all(missing, ResponseError("NOSCRIPT after reload"))

    async def _exchange(self, conn: Any, batch: list[_Call]) -> list[_Call]:
        packed = b"".join(
            _resp(("EVALSHA", SHAS[c.name], len(c.keys), *c.keys, *c.args)) for c in batch
        )
        missing: list[_Call] = []
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await conn.send_packed_command(packed, check_health=False)
            for call in batch:
                try:
                    reply = await conn.read_response(timeout=math.inf)
                except ResponseError as exc:
                    if isinstance(exc, NoScriptError):
                        missing.append(call)
                    elif not call.future.done():
                        call.future.set_exception(exc)
                    continue
                if not call.future.done():
                    call.future.set_result(reply)
        return missing

    async def _reload(self, missing: list[_Call]) -> None:
        try:
            for name in {c.name for c in missing}:
                await self.client.script_load(SOURCES[name])
        except (RedisError, OSError) as exc:
            _fail_all(missing, exc)
            return
        await self._send(missing, reloaded=True)


def _resp(args: Iterable[Any]) -> bytes:
    """RESP-encode one command. Our arguments are only str, bytes, int and float, so this
    is a fraction of the cost of redis-py's general-purpose packer."""
    encoded = [arg if type(arg) is bytes else str(arg).encode() for arg in args]
    body = b"".join([b"$%d\r\n%b\r\n" % (len(data), data) for data in encoded])
    return b"*%d\r\n%b" % (len(encoded), body)


def _fail_all(batch: Iterable[_Call], exc: BaseException) -> None:
    for call in batch:
        if call.future.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            call.future.cancel()
        else:
            call.future.set_exception(exc)


@dataclass(frozen=True)
class Claimed:
    tasks: list[Task]
    wake_in: float | None  # seconds until the next scheduled task or lease expiry
    recreated: bool  # a consumer group was missing (Redis restarted empty, or cleared)
    tails: list[bytes] = field(default_factory=list)  # stream tails to block on when idle


def _json_payload(payload: bytes) -> dict[str, Any]:
    return orjson.loads(payload) if payload else {}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _refusal(reply: Sequence[Any]) -> Exception:
    kind = _text(reply[0])
    state = _text(reply[1]) if len(reply) > 1 else ""
    if kind == "missing":
        return NotFound(REFUSALS["missing"])
    return Conflict(REFUSALS[kind].format(state=state))


def render_dead(item: tuple[bytes, dict[bytes, bytes]]) -> dict[str, Any]:
    """One `GET /dlq` entry from a DLQ stream entry."""
    fields = item[1]
    eval_id = _text(fields.get(b"id", b""))
    payload = decode_json(fields.get(b"payload")) or {}
    detail = decode_json(fields.get(b"detail"))
    dead: dict[str, Any] = {
        "eval_id": eval_id,
        "error": _text(fields.get(b"error", b"")),
        "attempts": int(fields.get(b"attempts", 0)),
        "failed_at": iso_ms(fields.get(b"failed_at")),
        "task": {
            "eval_id": eval_id,
            "priority": _text(fields.get(b"prio", b"default")),
            "language": "python",
            "metadata": {},
            **payload,
        },
    }
    if isinstance(detail, dict) and "traceback" in detail:
        dead["traceback"] = detail["traceback"]
    elif detail is not None:
        dead["detail"] = detail
    return dead


def render_record(
    eval_id: str, rec: dict[bytes, bytes], position: int, queue: str
) -> dict[str, Any]:
    """The `GET /tasks/{eval_id}` document from a task hash (`queue`: the queue's name)."""
    state = _text(rec.get(b"state", b""))
    view: dict[str, Any] = {
        "eval_id": eval_id,
        "status": state,
        "queue": queue,
        "priority": _text(rec.get(b"prio", b"default")),
        "attempts": int(rec.get(b"attempts", 0)),
        "created_at": iso_ms(rec.get(b"created")),
        "started_at": iso_ms(rec.get(b"started")),
        "completed_at": iso_ms(rec.get(b"finished")),
        "result": decode_json(rec.get(b"result")),
        "error": _text(rec[b"error"]) if b"error" in rec else None,
    }
    if state == State.QUEUED:
        view["position"] = position
    if b"run_at" in rec:
        view["run_at"] = iso_ms(rec[b"run_at"])
    if b"deps" in rec:
        view["depends_on"] = decode_json(rec[b"deps"])
        view["allow_failure"] = b"allow" in rec
    if b"cb" in rec and state in TERMINAL:
        view["callback"] = _callback_view(rec)
    return view


def _callback_view(rec: dict[bytes, bytes]) -> dict[str, Any]:
    """The outcome of a finished task's callbacks: pending until the sender is done."""
    if b"cb_status" not in rec:
        return {"status": "pending"}
    view: dict[str, Any] = {
        "status": _text(rec[b"cb_status"]),
        "attempts": int(rec.get(b"cb_attempts", 0)),
    }
    if b"cb_error" in rec:
        view["error"] = _text(rec[b"cb_error"])
    return view


class Streams:
    """The operations of one queue. Stateless apart from the client and loaded scripts."""

    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        queue: str | None = None,
        scripts: Scripts | None = None,
        keys: Keys | None = None,
        decode: Callable[[bytes], dict[str, Any]] | None = None,
    ) -> None:
        self.redis = client
        self.settings = settings
        self.keys = keys or Keys(queue or settings.queue)
        self.scripts = scripts or Scripts(client)
        self.decode = decode or _json_payload
        self._family: dict[str, Streams] = {self.keys.queue: self}

    def for_queue(self, name: str | None) -> Streams:
        """The Streams of a legacy queue by name (None or QUEUE_NAME: the default queue),
        sharing this one's client and scripts."""
        if not name:
            name = self.settings.queue
        found = self._family.get(name)
        if found is None:
            keys = Keys.named_queue(self.settings.queue, name)
            found = Streams(self.redis, self.settings, scripts=self.scripts, keys=keys)
            found._family = self._family
            self._family[name] = found
        return found

    def _routed(self, reply: Any) -> Streams | None:
        """The Streams to re-send a by-id call to, when the script answered that the task
        belongs to another legacy queue (see `wrong_queue` in _lib.lua)."""
        if isinstance(reply, list) and len(reply) == 2 and reply[0] == b"queue":
            return self.for_queue(_text(reply[1]))
        return None

    async def queues_overview(self) -> dict[str, dict[str, Any]]:
        """Counts and consumers of every named legacy queue (QUEUE_EXECUTORS, or used), in
        three round trips however many there are."""
        names = sorted({*self.settings.queue_executors, *await self.named_queues()})
        keys = [self.for_queue(name).keys for name in names if name != self.settings.queue]
        counts = await counts_of(self.redis, keys)
        consumers = await consumers_of(self.redis, keys)
        return {
            k.queue: {**c, "consumers": who}
            for k, c, who in zip(keys, counts, consumers, strict=True)
        }

    async def known_queue(self, name: str | None) -> Streams | None:
        """The default queue (no name, or QUEUE_NAME) or a named queue this deployment
        knows; None for any other name, so a typo creates nothing."""
        if not name or name == self.settings.queue:
            return self.for_queue(None)
        return self.for_queue(name) if await self.knows(name) else None

    @translate_errors
    async def knows(self, name: str) -> bool:
        """A named queue of this deployment: in QUEUE_EXECUTORS, seen by this process, or in
        the registry (one SISMEMBER the first time)."""
        if name in self.settings.queue_executors or name in self._family:
            return True
        return bool(await self.redis.sismember(self.keys.registry, name))

    @translate_errors
    async def named_queues(self) -> list[str]:
        """Named legacy queues ever used (SMEMBERS of the registry), sorted."""
        return sorted(_text(n) for n in await self.redis.smembers(self.keys.registry))

    # --- producers -----------------------------------------------------------------

    def _enqueue_args(self, req: TaskRequest) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [k.task(req.eval_id), k.stream(req.priority), k.counters, k.scheduled, k.events]
        argv: list[Any] = [req.eval_id, req.priority.value, req.encoded_payload(), _start_arg(req)]
        argv += [self.settings.events_maxlen, k.schedule_channel, k.named]
        # the callback mark: '' none (no field at all), else '+' and the task's callback_url
        marked = req.callback_url is not None or self.settings.storage_service_url
        argv.append("+" + (req.callback_url or "") if marked else "")
        if req.depends_on:
            allow = "1" if req.allow_failure else "0"
            argv += [allow, self.settings.result_ttl, *req.depends_on]
        return [*keys, *k.holes, k.registry], argv

    @staticmethod
    def _enqueued(req: TaskRequest, reply: Sequence[Any]) -> dict[str, Any]:
        state = _text(reply[0])
        if state == "duplicate":
            raise Conflict(f"eval_id already exists: {req.eval_id}")
        if state == "unknown":
            raise Invalid(f"unknown parent(s): {', '.join(_text(p) for p in reply[1])}")
        if state == "crowded":
            raise Invalid(
                f"parent {_text(reply[1])} already has {MAX_DEPENDANTS} deferred dependants "
                "(chain wider fan-outs through intermediate tasks)"
            )
        answer: dict[str, Any] = {
            "eval_id": req.eval_id,
            "status": state,
            "priority": req.priority.value,
        }
        if state == State.QUEUED:
            answer["position"] = int(reply[1])
        elif state == State.CANCELLED:
            answer["error"] = _text(reply[1])
        return answer

    @translate_errors
    async def enqueue(self, req: TaskRequest) -> dict[str, Any]:
        """Store one task; 409 (Conflict) when its eval_id is already known."""
        keys, argv = self._enqueue_args(req)
        return self._enqueued(req, await self.scripts.run("enqueue", keys, argv))

    @translate_errors
    async def enqueue_many(self, reqs: Sequence[TaskRequest]) -> list[dict[str, Any]]:
        """Store several tasks in one round trip; each is atomic on its own."""
        # Issued together, the calls share one pipelined write (see Scripts).
        replies = await asyncio.gather(
            *(
                self.scripts.run("enqueue", *self.for_queue(req.queue)._enqueue_args(req))
                for req in reqs
            )
        )
        answers: list[dict[str, Any]] = []
        for req, reply in zip(reqs, replies, strict=True):
            try:
                answers.append(self._enqueued(req, reply))
            except Conflict as exc:
                answers.append({"eval_id": req.eval_id, "error": str(exc), "code": 409})
            except Invalid as exc:
                answers.append({"eval_id": req.eval_id, "error": str(exc), "code": 422})
        return answers

    # --- consumers -----------------------------------------------------------------

    @translate_errors
    async def claim(
        self, consumer: str, count: int, lease: float, priorities: Iterable[str] = ()
    ) -> Claimed:
        """Take up to `count` tasks (due ones promoted, lapsed leases first), leased `lease` s,
        of `priorities` only when given (CONSUME)."""
        k = self.keys
        keys = [
            *k.streams,
            k.counters,
            k.leases,
            k.events,
            k.scheduled,
            k.dlq,
            *k.holes,
            k.dlq_index,
            k.paused,
        ]
        argv: list[Any] = [
            GROUP,
            consumer,
            count,
            int(lease * 1000),
            self.settings.lease_max_lapses,
            self.settings.events_maxlen,
            k.task_prefix,
            self.settings.failure_ttl,
            PROMOTE_LIMIT,
            ",".join(priorities),
        ]
        items, wake_ms, recreated, tails, lost = await self.scripts.run("claim", keys, argv)
        for eval_id, reason in lost:
            self._log_lost(eval_id, reason)
        tasks = [
            Task(
                eval_id=_text(eval_id),
                entry=_text(entry),
                attempt=int(attempt),
                priority=Priority(_text(prio)),
                payload=self.decode(payload),
                waited_ms=int(waited),
            )
            for eval_id, entry, attempt, prio, payload, waited in items
        ]
        wake_in = None if int(wake_ms) < 0 else int(wake_ms) / 1000
        return Claimed(tasks, wake_in, bool(recreated), list(tails))

    @translate_errors
    async def wait_for_work(
        self, timeout: float, tails: Sequence[bytes], priorities: Iterable[str] = ()
    ) -> None:
        """Block (XREAD) until an entry is added after `tails` (from `claim`), or `timeout`;
        only on the streams of `priorities` when given."""
        last: dict[Any, Any] = dict(zip(self.keys.streams, tails, strict=True))
        if tails and (taken := set(priorities)):
            last = {
                key: tail
                for prio, key, tail in zip(PRIORITY_ORDER, self.keys.streams, tails, strict=True)
                if prio in taken
            }
        deadline = time.monotonic() + timeout
        while tails and (remaining := deadline - time.monotonic()) > 0:
            # Blocks are cut into slices shorter than the socket timeout, so one client
            # serves both: a hung Redis still fails fast, and long-polls still work.
            block_ms = max(1, int(min(remaining, MAX_BLOCK_SLICE) * 1000))
            if await self.redis.xread(last, block=block_ms, count=1):
                return

    def _log_lost(self, eval_id: Any, reason: Any) -> None:
        """One line per task dead-lettered because its stream entry was deleted (issue 11);
        the script that buried it names it once, so this is logged once."""
        log.error("task_lost", queue=self.keys.queue, eval_id=_text(eval_id), reason=_text(reason))

    def _fence_args(self, task: Task | None) -> list[Any]:
        return [task.entry, task.attempt] if task else ["", ""]

    @translate_errors
    async def complete(
        self, eval_id: str, result: Any, task: Task | None = None, frame: bytes = b""
    ) -> str:
        """Record success; fenced by the delivery token when `task` is given. `frame` is
        the sink item of a forwarded PAI-EAS request. Returns the task's queue name."""
        k = self.keys
        keys = [k.task(eval_id), k.leases, k.events, k.counters, *k.streams]
        argv = [
            eval_id,
            *self._fence_args(task),
            orjson.dumps(result),
            self.settings.result_ttl,
            GROUP,
            self.settings.events_maxlen,
            frame,
            k.named,
        ]
        reply = await self.scripts.run("complete", keys, argv)
        if routed := self._routed(reply):
            return await routed.complete(eval_id, result, task, frame)
        if _text(reply[0]) != "ok":
            raise _refusal(reply)
        return self.keys.queue

    @translate_errors
    async def fail(
        self,
        eval_id: str,
        error: str,
        *,
        retry: bool = True,
        policy: RetryPolicy | None = None,
        task: Task | None = None,
        detail: Any = None,
        exit_code: int | None = None,
        frame: bytes = b"",
    ) -> dict[str, Any]:
        """Record a failed attempt: `retrying` with backoff, or `failed` into the DLQ."""
        k = self.keys
        policy = policy or self.settings.retry
        keys = [k.task(eval_id), k.leases, k.events, k.counters, k.scheduled, k.dlq, *k.streams]
        keys.append(k.dlq_index)
        published = {"status": "failed", "output": error, "exit_code": exit_code}
        argv = [
            eval_id,
            *self._fence_args(task),
            error,
            "1" if retry else "0",
            policy.max_retries,
            policy.base_delay * 1000,
            policy.exponential_base,
            policy.max_delay * 1000,
            random.random() if policy.jitter else -1,
            self.settings.failure_ttl,
            GROUP,
            self.settings.events_maxlen,
            orjson.dumps(published),
            orjson.dumps(detail) if detail is not None else "",
            k.schedule_channel,
            frame,
            ",".join(str(int(i * 1000)) for i in policy.intervals),
            k.named,
        ]
        reply = await self.scripts.run("fail", keys, argv)
        if routed := self._routed(reply):
            return await routed.fail(
                eval_id,
                error,
                retry=retry,
                policy=policy,
                task=task,
                detail=detail,
                exit_code=exit_code,
                frame=frame,
            )
        state = _text(reply[0])
        if state == State.RETRYING:
            return {
                "eval_id": eval_id,
                "status": state,
                "retry_at": iso_ms(reply[1]),
                "queue": self.keys.queue,
            }
        if state == State.FAILED:
            if len(reply) == 3:  # {'failed', 'lost', reason}: no payload left to retry with
                self._log_lost(eval_id, reply[2])
            return {"eval_id": eval_id, "status": state, "queue": self.keys.queue}
        raise _refusal(reply)

    @translate_errors
    async def renew(self, consumer: str, tasks: Iterable[Task], lease: float) -> list[str]:
        """Extend the leases of running tasks; returns the eval_ids this consumer lost."""
        k = self.keys
        argv: list[Any] = [GROUP, consumer, int(lease * 1000), k.task_prefix, k.schedule_channel]
        for task in tasks:
            argv += [task.eval_id, task.entry, task.attempt]
        if len(argv) == 5:
            return []
        lost = await self.scripts.run("renew", [*self.keys.streams, self.keys.leases], argv)
        return [_text(x) for x in lost]

    # --- operators -----------------------------------------------------------------

    @translate_errors
    async def cancel(self, eval_id: str, terminate: bool = False) -> dict[str, Any]:
        """Cancel a waiting task, or a running one when `terminate` is set."""
        k = self.keys
        keys = [
            k.task(eval_id),
            *k.streams,
            *k.holes,
            k.scheduled,
            k.leases,
            k.events,
            k.counters,
        ]
        argv = [
            eval_id,
            "1" if terminate else "0",
            GROUP,
            self.settings.events_maxlen,
            self.settings.result_ttl,
            k.cancel_channel,
            k.named,
        ]
        reply = await self.scripts.run("cancel", keys, argv)
        if routed := self._routed(reply):
            return await routed.cancel(eval_id, terminate)
        if _text(reply[0]) != State.CANCELLED:
            if _text(reply[0]) == "state":
                raise Conflict(f"task is {_text(reply[1])}; cannot cancel")
            raise _refusal(reply)
        return {"eval_id": eval_id, "status": State.CANCELLED.value, "queue": self.keys.queue}

    @translate_errors
    async def get(self, eval_id: str) -> dict[str, Any]:
        """The task's record and, when queued, its position; NotFound when unknown."""
        k = self.keys
        reply = await self.scripts.run("status", [k.task(eval_id), k.counters, *k.holes], [k.named])
        if not reply:
            raise NotFound(f"no such task: {eval_id}")
        if routed := self._routed(reply):
            return await routed.get(eval_id)
        flat, position = reply
        rec = dict(zip(flat[::2], flat[1::2], strict=True))
        return render_record(eval_id, rec, int(position), self.keys.queue)

    @translate_errors
    async def clear(self) -> int:
        """Admin: remove every task, queue entry and DLQ entry of this queue and, from the
        default queue, of every named queue too (their task records are shared)."""
        k = self.keys
        keys = [*k.streams, k.counters, k.leases, k.scheduled, k.dlq, *k.holes, k.dlq_index]
        removed = int(await self.scripts.run("clear", keys, [GROUP, k.task_prefix]))
        if k.named:
            return removed
        for name in await self.named_queues():
            removed += await self.for_queue(name).clear()
        await self.redis.xtrim(k.callbacks, maxlen=0)  # callbacks of cleared tasks: dropped
        # Finished and deferred records are not reachable from any structure; they are found
        # by SCAN (an admin operation, never on a hot path) and unlinked in batches, and so
        # are the dependants sets (not counted: they are not tasks).
        removed += await self._unlink_matching(f"{k.task_prefix}*")
        await self._unlink_matching(f"{k.deps_prefix}*")
        return removed

    async def _unlink_matching(self, pattern: str) -> int:
        removed, batch = 0, []
        async for key in self.redis.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += await self.redis.unlink(*batch)
                batch = []
        if batch:
            removed += await self.redis.unlink(*batch)
        return removed

    @translate_errors
    async def promote(self) -> float | None:
        """Queue the scheduled/retrying tasks that are due; seconds until the next one."""
        k = self.keys
        keys = [k.scheduled, k.counters, k.events, *k.streams]
        argv: list[Any] = [k.task_prefix, PROMOTE_LIMIT, self.settings.events_maxlen]
        moved, wait_ms = await self.scripts.run("promote", keys, argv)
        if int(moved) >= PROMOTE_LIMIT:
            return 0.0
        return None if int(wait_ms) < 0 else int(wait_ms) / 1000

    @translate_errors
    async def dlq_list(self, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """Dead letters, newest first."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(self.keys.dlq)
        pipe.xrevrange(self.keys.dlq, "+", "-", count=offset + limit)
        count, entries = await pipe.execute()
        return {"count": int(count), "tasks": [render_dead(e) for e in entries[offset:]]}

    @translate_errors
    async def dlq_retry(self, eval_id: str) -> dict[str, Any]:
        """Queue a dead letter again with a fresh attempt count."""
        k = self.keys
        keys = [k.task(eval_id), k.dlq, k.dlq_index, k.counters, k.events, *k.streams]
        argv = [eval_id, self.settings.events_maxlen, k.named]
        reply = await self.scripts.run("dlq_retry", keys, argv)
        if _text(reply[0]) == "missing":
            raise NotFound(f"not in the dead-letter queue: {eval_id}")
        if _text(reply[0]) == "state":
            raise Conflict(f"a live task uses this eval_id ({_text(reply[1])})")
        if _text(reply[0]) == "lost":
            raise Conflict("its payload was lost with its stream entry: nothing to run again")
        return {"eval_id": eval_id, "status": State.QUEUED.value}

    @translate_errors
    async def dlq_purge(self, older_than: float | None = None, eval_id: str | None = None) -> int:
        """Remove dead letters: one, those older than `older_than` seconds, or all."""
        k = self.keys
        if eval_id is not None:
            return int(
                await self.scripts.run("dlq_purge", [k.dlq, k.dlq_index], ["one", eval_id, 1])
            )
        mode, cutoff = "all", "0"
        if older_than is not None:
            now_s, now_us = await self.redis.time()
            cutoff_ms = int(now_s) * 1000 + int(now_us) // 1000 - int(older_than * 1000)
            if cutoff_ms <= 0:  # before the epoch: nothing is that old (and no stream id is)
                return 0
            cutoff = str(cutoff_ms)
            mode = "before"
        removed = 0
        while True:
            batch = int(
                await self.scripts.run("dlq_purge", [k.dlq, k.dlq_index], [mode, cutoff, 500])
            )
            removed += batch
            if batch < 500:
                return removed

    @translate_errors
    async def cleanup(self) -> dict[str, int] | None:
        """Hourly housekeeping; a lock lets one process per interval do it (None: not us)."""
        s = self.settings
        lock_ms = max(1, int(s.cleanup_interval * 900))  # expires a little before the next run
        if not await self.redis.set(self.keys.cleanup_lock, consumer_name(), nx=True, px=lock_ms):
            return None
        removed = await self.dlq_purge(older_than=s.dlq_max_age_days * 86400)
        trimmed = await self.redis.xtrim(self.keys.events, maxlen=s.events_maxlen, approximate=True)
        done = {"dlq_removed": removed, "events_trimmed": int(trimmed)}
        if not self.keys.named:  # named queues too, consumed here or not (each has its lock)
            for name in await self.named_queues():
                more = await self.for_queue(name).cleanup()
                for key, value in (more or {}).items():
                    done[key] += value
        return done

    async def ensure_groups(self) -> None:
        """Create the priority streams and their consumer group if missing."""
        await create_groups(self.redis, self.keys.streams, GROUP)

    @translate_errors
    async def counts(self) -> dict[str, Any]:
        """Counts per state and priority, totals and consumers; O(priorities + consumers)."""
        return (await counts_of(self.redis, [self.keys]))[0]

    @translate_errors
    async def health(self) -> dict[str, Any]:
        """`counts`, plus a probe write (this process's probe key, expiring), so a Redis
        that refuses writes raises `WritesRefused`, in the same round trip."""
        probe = f"{self.keys.base}probe:{consumer_name()}"
        return (await counts_of(self.redis, [self.keys], probe))[0]

    @translate_errors
    async def consumers(self) -> list[dict[str, Any]]:
        """XINFO CONSUMERS of every priority stream, merged by consumer name."""
        return (await consumers_of(self.redis, [self.keys]))[0]

    async def notifications(self) -> AsyncIterator[tuple[str, str]]:
        """("cancel", eval_id) for terminate=true cancels, ("schedule", due ms or "release")
        for new due times and released leases, from any process (pub/sub: at-most-once, so
        consumers also re-check on their own)."""
        kinds = {self.keys.cancel_channel: "cancel", self.keys.schedule_channel: "schedule"}
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*kinds)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    yield kinds[_text(message["channel"])], _text(message["data"])
        except (RedisError, OSError) as exc:
            # Subscribing and reading need no write: anything here is the connection's fault.
            failure = redis_failure(exc) or Unavailable(f"redis pub/sub: {exc}")
            raise failure from exc
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    @translate_errors
    async def events_after(self, start: str, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries of the events stream after id `start` ("$": none yet, from its tail)."""
        if start == "$":
            return []
        found: Any = await self.redis.xrange(self.keys.events, f"({start}", "+", count=count)
        return list(found)

    @translate_errors
    async def set_paused(self, paused: bool) -> None:
        """Pause: claims hand out nothing (in-process consumers and `GET /tasks/next`),
        running tasks finish. Resume wakes idle consumers everywhere at once."""
        if paused:
            await self.redis.set(self.keys.paused, "1")
        else:
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(self.keys.paused)
            pipe.publish(self.keys.schedule_channel, "release")
            await pipe.execute()

    @translate_errors
    async def minute_stats(self, minutes: int) -> list[dict[str, int]]:
        """State changes per minute over the last `minutes` (oldest first), from the
        per-minute counters the scripts keep beside the events stream (2 h)."""
        now_s, _ = await self.redis.time()
        current = int(now_s) // 60
        pipe = self.redis.pipeline(transaction=False)
        for minute in range(current - minutes + 1, current + 1):
            pipe.hgetall(f"{self.keys.events}:m:{minute}")
        rows = await pipe.execute()
        first = current - minutes + 1
        return [
            {"minute": (first + i) * 60, **{_text(k): int(v) for k, v in row.items()}}
            for i, row in enumerate(rows)
        ]

    @translate_errors
    async def events_tail(self) -> str:
        last: Any = await self.redis.xrevrange(self.keys.events, "+", "-", count=1)
        return _text(last[0][0]) if last else "0-0"

    @translate_errors
    async def ping(self) -> bool:
        return bool(await self.redis.ping())


@translate_errors
async def create_groups(client: Any, streams: Sequence[str], group: str) -> None:
    """Create the streams and their consumer group where missing, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for key in streams:
        pipe.xgroup_create(key, group, id="0", mkstream=True)
    for reply in await pipe.execute(raise_on_error=False):
        if isinstance(reply, ResponseError) and "BUSYGROUP" not in str(reply):
            raise reply


@translate_errors
async def counts_of(
    client: Any, queues: Sequence[Keys], probe: str | None = None
) -> list[dict[str, Any]]:
    """`Streams.counts` of several queues in two round trips, however many queues. With
    `probe` (a key name), one tiny write rides along in the first: a Redis that refuses
    writes raises `WritesRefused` although every read works."""
    pipe: Pipeline = client.pipeline(transaction=False)
    for k in queues:
        pipe.hgetall(k.counters)
        pipe.xlen(k.dlq)
        pipe.exists(k.paused)
        for key in k.streams:
            pipe.xpending(key, GROUP)
    if probe is not None:
        pipe.set(probe, b"1", px=PROBE_TTL_MS)
    first = await pipe.execute(raise_on_error=False)
    if probe is not None and isinstance(wrote := first.pop(), Exception):
        raise_translated(wrote)
    per = 3 + len(PRIORITY_ORDER)
    rows = [first[i * per : (i + 1) * per] for i in range(len(queues))]
    pipe = client.pipeline(transaction=False)
    counters_of = []
    for k, (counters_raw, *_) in zip(queues, rows, strict=True):
        counters = {_text(a): int(b) for a, b in counters_raw.items()}
        counters_of.append(counters)
        for prio, key in zip(PRIORITY_ORDER, k.holes, strict=True):
            pipe.zcount(key, f"({counters.get(f'head:{prio.value}', 0)}", "+inf")
    holes = await pipe.execute()
    answers = []
    for i, (counters, (_, dlq, paused, *pending)) in enumerate(zip(counters_of, rows, strict=True)):
        queue_holes = holes[i * len(PRIORITY_ORDER) : (i + 1) * len(PRIORITY_ORDER)]
        summary = _summarise(counters, int(dlq), queue_holes, pending)
        answers.append({**summary, "paused": bool(paused)})
    return answers


@translate_errors
async def consumers_of(client: Any, queues: Sequence[Keys]) -> list[list[dict[str, Any]]]:
    """XINFO CONSUMERS of every priority stream of several queues in one round trip, merged
    per queue by consumer name."""
    pipe: Pipeline = client.pipeline(transaction=False)
    for k in queues:
        for key in k.streams:
            pipe.xinfo_consumers(key, GROUP)
    replies = await pipe.execute(raise_on_error=False)
    answers = []
    for i in range(len(queues)):
        merged: dict[str, dict[str, Any]] = {}
        for j, prio in enumerate(PRIORITY_ORDER):
            rows = replies[i * len(PRIORITY_ORDER) + j]
            if isinstance(rows, Exception):
                continue  # no group yet
            for row in rows:
                name = _text(row["name"])
                entry = merged.setdefault(name, {"name": name, "pending": 0, "idle_ms": None})
                entry["pending"] += int(row["pending"])
                idle = int(row["idle"])
                entry["idle_ms"] = idle if entry["idle_ms"] is None else min(idle, entry["idle_ms"])
                entry.setdefault("priorities", []).append(prio.value)
        answers.append(list(merged.values()))
    return answers


def _in_flight(reply: Any) -> int:
    """Pending count from XPENDING's summary form (an error when the group is missing)."""
    if isinstance(reply, Exception) or not reply:
        return 0
    return int(reply["pending"])


def _summarise(
    counters: dict[str, int], dlq: int, holes: list[int], pending: list[Any]
) -> dict[str, Any]:
    waiting = (State.QUEUED, State.PROCESSING, State.SCHEDULED, State.RETRYING, State.DEFERRED)
    by_state: dict[str, dict[str, int]] = {s.value: {} for s in waiting}
    for prio, prio_holes, prio_pending in zip(PRIORITY_ORDER, holes, pending, strict=True):
        p = prio.value
        head = counters.get(f"head:{p}", 0)
        by_state["queued"][p] = counters.get(f"seq:{p}", 0) - head - int(prio_holes)
        by_state["processing"][p] = _in_flight(prio_pending)
        by_state["scheduled"][p] = counters.get(f"scheduled:{p}", 0)
        by_state["retrying"][p] = counters.get(f"retrying:{p}", 0)
        by_state["deferred"][p] = counters.get(f"deferred:{p}", 0)
    totals = {
        name.removeprefix("total:"): value
        for name, value in counters.items()
        if name.startswith("total:")
    }
    return {
        "states": {state: sum(v.values()) for state, v in by_state.items()},
        "by_priority": by_state,
        "dlq": dlq,
        "totals": totals,
    }


# --- waiting for new entries ------------------------------------------------------------


Accept = Callable[[Any], bool]


@dataclass(eq=False)
class _Waiter:
    accept: Accept
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Arrivals:
    """New entries of some streams, read by one XREAD loop per process and handed to the
    long-polls waiting there. A write wakes only the waits it can satisfy (each says which
    entries it wants), and waiting holds no Redis connection of its own; the loop stops
    when nobody has waited for a while.

    A wait is registered, and the loop's start position taken, before the waiter's first
    look, so an entry added between that look and the wait is never missed."""

    IDLE_STOP = 30.0
    BLOCK_MS = 250  # also how long close() may wait: the loop is never cancelled mid-command

    def __init__(
        self, client: Any, keys: Sequence[str], decode: Callable[[dict[bytes, bytes]], Any]
    ) -> None:
        self.client = client
        self.keys = list(keys)
        self.decode = decode  # once per entry; waiters judge the decoded entry
        self.waiters: set[_Waiter] = set()
        self._job: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closing = False
        self.positions: dict[str, Any] = {}  # stream key -> last entry id read

    @contextlib.asynccontextmanager
    async def waiting(self, accept: Accept) -> AsyncIterator[asyncio.Event]:
        waiter = _Waiter(accept)
        self.waiters.add(waiter)
        try:
            if self._job is None and not self._closing:
                self._ready = asyncio.get_running_loop().create_future()
                self._job = asyncio.create_task(self._run(self._ready), name="eas-arrivals")
            if self._ready is not None:
                await asyncio.shield(self._ready)
            yield waiter.event
        finally:
            self.waiters.discard(waiter)

    async def close(self) -> None:
        """Stop the loop at its next turn and wake every waiter."""
        self._closing = True
        for waiter in self.waiters:
            waiter.event.set()
        if self._job is not None:
            await asyncio.gather(self._job, return_exceptions=True)

    async def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            self.positions = last = await _tails(self.client, self.keys)
        except Unavailable as exc:
            self._job = None
            ready.set_exception(exc)
            return
        ready.set_result(None)
        idle_since = time.monotonic()
        while True:
            if self.waiters:
                idle_since = time.monotonic()
            if self._closing or time.monotonic() - idle_since > self.IDLE_STOP:
                self._job = None  # no await between this and the return: no wait is lost
                return
            try:
                found = await self.client.xread(last, block=self.BLOCK_MS, count=1000)
            except (RedisError, OSError):
                for waiter in self.waiters:
                    waiter.event.set()  # they look again and meet the error themselves
                await asyncio.sleep(0.5)
                continue
            for key, entries in found or ():
                last[_text(key)] = entries[-1][0]  # replies name keys in bytes
                for _, fields in entries:
                    self._wake(fields)

    def _wake(self, fields: dict[bytes, bytes]) -> None:
        waiting = [w for w in self.waiters if not w.event.is_set()]
        if not waiting:
            return
        entry = self.decode(fields)
        for waiter in waiting:
            if waiter.accept(entry):
                waiter.event.set()


@translate_errors
async def _tails(client: Any, keys: Sequence[str]) -> dict[Any, Any]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.xrevrange(key, "+", "-", count=1)
    return {
        key: found[0][0] if found else b"0-0"
        for key, found in zip(keys, await pipe.execute(), strict=True)
    }


# --- result callbacks ---------------------------------------------------------------------


@dataclass(frozen=True)
class CallbackEntry:
    """One entry of the callbacks stream: a finished task's outcome, self-contained."""

    entry: str
    fields: dict[str, str]

    @property
    def eval_id(self) -> str:
        return self.fields.get("id", "")

    @property
    def queue(self) -> str:
        return self.fields.get("queue", "")  # a named queue's name; '' = the legacy queue


def _callback_entries(found: Any) -> list[CallbackEntry]:
    return [
        CallbackEntry(_text(entry), {_text(k): _text(v) for k, v in fields.items()})
        for entry, fields in found or ()
        if fields is not None  # Redis 6.2's XAUTOCLAIM names deleted entries with nil
    ]


class CallbackStream:
    """The callbacks stream `<base>callbacks` and its group `senders`: what the terminal
    scripts append (`notify_callback` in app/lua/_lib.lua) and app/callbacks.py delivers.
    Held entries are renewed with XCLAIM JUSTID and taken over with XAUTOCLAIM once idle
    longer than the lease (one holder kind, one lease: no leases zset needed here)."""

    def __init__(self, client: aioredis.Redis, keys: Keys, scripts: Scripts) -> None:
        self.redis = client
        self.keys = keys
        self.scripts = scripts
        self.key = keys.callbacks
        self._cursor = "0-0"  # XAUTOCLAIM scan position; back to the start when a scan ends

    async def ensure_group(self) -> None:
        await create_groups(self.redis, [self.key], CALLBACK_GROUP)

    @translate_errors
    async def read(self, consumer: str, count: int, block: float) -> list[CallbackEntry]:
        """New entries for `consumer` (XREADGROUP >), waiting up to `block` s for one."""
        block_ms = max(1, int(min(block, MAX_BLOCK_SLICE) * 1000))
        try:
            found: Any = await self.redis.xreadgroup(
                CALLBACK_GROUP, consumer, {self.key: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()  # Redis restarted empty, or the stream was deleted
            return []
        return [e for _, entries in found or () for e in _callback_entries(entries)]

    @translate_errors
    async def take_over(self, consumer: str, idle: float, count: int) -> list[CallbackEntry]:
        """Entries whose holder has not renewed them for `idle` s (it died), now ours."""
        try:
            reply: Any = await self.redis.xautoclaim(
                self.key, CALLBACK_GROUP, consumer, int(idle * 1000), self._cursor, count=count
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return []
        self._cursor = _text(reply[0])  # 6.2 answers [next, entries], 7.x adds [deleted]
        return _callback_entries(reply[1])

    @translate_errors
    async def renew(self, consumer: str, entries: Sequence[str]) -> None:
        """Reset the idle time of the entries this consumer holds (XCLAIM … JUSTID)."""
        if entries:
            await self.redis.xclaim(
                self.key, CALLBACK_GROUP, consumer, 0, list(entries), justid=True
            )

    @translate_errors
    async def finish(
        self,
        item: CallbackEntry,
        delivered: int,
        failed: int,
        status: str,
        attempts: int,
        error: str = "",
    ) -> bool:
        """Ack and delete the entry, count its targets, record the outcome on the task.
        False when another sender had already finished it (nothing counted twice)."""
        counters = Keys.named_queue(self.keys.queue, item.queue) if item.queue else self.keys
        keys = [self.key, counters.counters, self.keys.task(item.eval_id)]
        argv = [CALLBACK_GROUP, item.entry, delivered, failed, status, attempts, error]
        return bool(await self.scripts.run("callback_done", keys, argv))

    @translate_errors
    async def outstanding(self, consumer: str) -> bool:
        """Entries not read by any sender yet, or held by `consumer`: what a burst worker
        waits for (others' held entries are theirs to finish)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xinfo_groups(self.key)
        pipe.xrevrange(self.key, "+", "-", count=1)
        pipe.xpending_range(self.key, CALLBACK_GROUP, "-", "+", 1, consumer)
        groups, last, held = await pipe.execute(raise_on_error=False)
        if isinstance(groups, Exception) or isinstance(last, Exception):
            return False  # no stream or group yet: nothing was ever appended
        if held and not isinstance(held, Exception):
            return True
        delivered = next(
            (_text(g["last-delivered-id"]) for g in groups if _text(g["name"]) == CALLBACK_GROUP),
            "0-0",
        )
        return bool(last) and _stream_id(_text(last[0][0])) > _stream_id(delivered)
