"""The Lua scripts and their runner: EVALSHA with automatic pipelining, on every topology.

One `engine/lua/<operation>.lua` per atomic transition; each opens with a header comment
listing KEYS and ARGV. Every script is compiled with a one-line header (`QUEUE_PUBLISH`,
below) and the engine's library prepended (`_lib.lua`, `_fence.lua`; the claim, enqueue,
status and listing scripts also `_fair.lua`, the two enqueue scripts then `_enqueue.lua`,
their shared per-task body, the audit's `_fsck.lua`), so each keeps one SHA per mode. A
wing above brings scripts of its own with `Scripts.load(package, names, prelude)`: they
are compiled on the same library, and run by the same runner, under their own names.

Each script carries only the part of the library it uses (`library_for`). Redis runs a
script's whole chunk on every EVALSHA, so every `local function` of the library makes a
closure on every call of every script, used or not: measured with callgrind, a handful of
extra definitions cost 5.5 % of Redis's instructions per task. The library files are cut
into their top-level statements (each with the comment above it); a script gets those
defining a name its body uses, then, transitively, those their own code uses, in library
order (a library function calls only what was defined above it, as Lua's `local` scoping
requires, so the order keeps that true). Names are matched as Lua identifiers outside
comments and strings, and not after `.` or `:` (fields): a false match only adds a
definition. Hence the library's rules: every top-level statement starts in column 0 and
its continuation lines are indented (or are the closing `end`, `}` or `)`); a top-level
`local` only defines (it has no side effect a script could miss); a statement that
defines no name (a bare call) goes to every script.

The header defines `QUEUE_PUBLISH`: `'SPUBLISH'` on a Redis Cluster whose servers have
sharded pub/sub (Redis >= 7), else `'PUBLISH'`. A script that publishes on a queue's own
channels (they carry the queue's hash tag) calls `redis.call(QUEUE_PUBLISH, channel, m)`;
the queue's subscriber (`Queue.notifications`) listens with SSUBSCRIBE exactly when the
scripts do so (`Scripts.sharded_pubsub`).

Imports: client, errors (and redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)

from app.engine.client import (
    COMMAND_TIMEOUT,
    Redis,
    raise_translated,
    ready,
    request_refresh,
    server_features,
)
from app.errors import Unavailable

LIBRARY = ("_lib.lua", "_fence.lua")  # the engine's helpers, before every script
# Scripts that share free slots among tenants or place a task under fair share also get
# `_fair.lua` (every function a library defines is made on each call of a script).
FAIR = ("claim", "status", "listing")
# The enqueue scripts share their per-task body (`_enqueue.lua`, after `_fair.lua`).
ENQUEUE = ("enqueue", "enqueue_batch")  # enqueue_batch: engine/intake.py
CORE = (
    "complete",
    "complete_batch",  # engine/settle.py
    "fail",
    "renew",
    "cancel",
    "clear",
    "promote",
    "dlq_retry",
    "dlq_purge",
    "callback_done",
    "progress",  # engine/progress.py
    "pace",  # engine/pace.py
    "rate_state",  # engine/flow.py
    "directory",
    "unpoint",
    "link",
    "relay",
    "expired",
    "upgrade",
)
AUDIT = (
    "fsck_records",
    "fsck_entries",
    "fsck_refs",
    "fsck_dlq",
    "fsck_numbered",
    "fsck_counters",
    "fsck_waiting",
    "fsck_dedup",
)
# Read-only or housekeeping scripts of engine/history.py: the oldest waiting entry of each
# priority stream, the hourly roll-up of the per-minute counters.
HISTORY = ("oldest", "rollup")
# Scripts whose writes are answered to a client (an HTTP request, a command line): under
# DURABILITY=replica|fsync their batch ends with WAIT / WAITAOF when issued while
# `answering()`. Claims and renewals never need it (a lost one is delivered again).
CONFIRMED = (
    "enqueue",
    "enqueue_batch",
    "directory",
    "link",
    "complete",
    "complete_batch",
    "fail",
    "cancel",
    "clear",
    "dlq_retry",
    "dlq_purge",
)
HEADER = "local QUEUE_PUBLISH = '{}'\n"
MAX_REDIRECTS = 16  # MOVED/ASK hops of one call (as redis-py's cluster client)
TRYAGAIN_FOR = 2.0  # seconds a call keeps being re-sent while its slot is migrating
TRYAGAIN_PAUSE = 0.02
CONFIRM_TIMEOUT_MS = 1000
MAX_KEPT = 8  # connections the runner keeps between exchanges (one server)
NOT_CONFIRMED = {
    "replica": "not confirmed by a replica within 1 s",
    "fsync": "not confirmed on disk within 1 s",
}

# Set while serving a client (web requests, command-line commands): see CONFIRMED.
ANSWERING: ContextVar[bool] = ContextVar("taskstream_answering", default=False)


@contextlib.contextmanager
def answering(flag: bool = True) -> Iterator[None]:
    """Scripts run inside are answered to a client (or, with False, are not)."""
    token = ANSWERING.set(flag)
    try:
        yield
    finally:
        ANSWERING.reset(token)


def lua_folder(package: str) -> Traversable:
    """The `lua/` folder of a package of app."""
    return resources.files(package) / "lua"


@functools.cache
def compile_scripts(
    package: str, names: tuple[str, ...], prelude: tuple[str, ...] = (), publish: str = "PUBLISH"
) -> dict[str, tuple[str, str]]:
    """name -> (source, sha1) of `<package>/lua/<name>.lua`, each with the header and the
    statements it uses (`library_for`) of the engine's library and then `prelude` (files of
    that folder) prepended. Read once per process and mode."""
    folder = lua_folder(package)
    head = HEADER.format(publish)
    library = "".join((lua_folder("app.engine") / name).read_text() for name in LIBRARY)
    library += "".join((folder / name).read_text() for name in prelude)
    compiled = {}
    for name in names:
        body = (folder / f"{name}.lua").read_text()
        source = head + library_for(library, body) + body
        compiled[name] = (source, hashlib.sha1(source.encode()).hexdigest())
    return compiled


# Comments and string literals (long forms too), blanked before looking for names.
_NOISE = re.compile(
    r"--\[(=*)\[.*?\]\1\]|--[^\n]*|\[(=*)\[.*?\]\2\]"  # comments, long strings
    r"|'(?:\\.|[^'\\\n])*'"  # quoted strings
    r'|"(?:\\.|[^"\\\n])*"',
    re.DOTALL,
)
# A name used: an identifier not preceded by a single `.` or `:` (a field or a method).
_NAME = re.compile(r"(?:(?<=\.\.)|(?<![\w.:]))[A-Za-z_]\w*")
# Column-0 lines that continue a statement rather than start one.
_CONTINUES = re.compile(r"(?:end|else|elseif|until)\b|[})\]]")
# What a top-level statement defines: `local function f`, `local a, b = …`, `function
# t.f(…)`, `a.b, c = …` (a forward-declared local assigned later): the base names.
_DEFINES = re.compile(r"(?:local\s+function|local|function)\s+([\w.:,\s]+?)\s*(?:[=(]|$)")
_ASSIGNS = re.compile(r"([\w.\[\]'\"]+(?:\s*,\s*[\w.\[\]'\"]+)*)\s*=(?!=)")


def _names(code: str) -> set[str]:
    return set(_NAME.findall(_NOISE.sub(" ", code)))


@dataclass(frozen=True)
class _Statement:
    text: str  # with the comment lines above it
    defines: frozenset[str]  # empty: kept for every script
    uses: frozenset[str]


@functools.lru_cache(maxsize=8)
def _statements(library: str) -> tuple[_Statement, ...]:
    """The library's top-level statements, in order (see the module docstring)."""
    pieces: list[list[str]] = [[]]
    comments: list[str] = []  # column-0 comment and blank lines, for the next statement
    for line in library.splitlines(keepends=True):
        if not line.strip() or line.startswith("--"):
            comments.append(line)
        elif line[0].isspace() or _CONTINUES.match(line):
            pieces[-1] += comments + [line]
            comments = []
        else:
            pieces.append(comments + [line])
            comments = []
    pieces[-1] += comments
    statements: list[_Statement] = []
    for lines in pieces:
        text = "".join(lines)
        code = _NOISE.sub(" ", text).strip()
        first = code.split("\n", 1)[0]
        match = _DEFINES.match(first) or _ASSIGNS.match(first)
        targets = match.group(1) if match else ""
        defines = {re.split(r"[.:\[]", t.strip())[0] for t in targets.split(",") if t.strip()}
        if text:
            statements.append(_Statement(text, frozenset(defines), frozenset(_names(code))))
    return tuple(statements)


def library_for(library: str, body: str) -> str:
    """The statements of `library` that `body` uses, directly or through each other, in
    library order (see the module docstring)."""
    statements = _statements(library)
    kept = [not s.defines for s in statements]
    wanted = _names(body)
    for s in statements:  # names used by statements every script gets
        if not s.defines:
            wanted |= s.uses
    changed = True
    while changed:
        changed = False
        for i, s in enumerate(statements):
            if not kept[i] and s.defines & wanted:
                kept[i] = changed = True
                wanted |= s.uses
    return "".join(s.text for s, keep in zip(statements, kept, strict=True) if keep)


@dataclass(eq=False)
class _Call:
    name: str
    keys: Sequence[Any]
    args: Sequence[Any]
    future: asyncio.Future[Any]
    confirm: bool = False  # answered to a client: the durability check follows it
    hops: int = 0  # MOVED / ASK redirects followed
    reloaded: bool = False  # NOSCRIPT answered once already (the script was loaded)
    asking: ClusterNode | None = None  # ASK: send to this node, after ASKING
    since: float = 0.0  # first TRYAGAIN (monotonic), 0: none


@dataclass
class _Outcome:
    """What one exchange with one server leaves to do."""

    again: list[_Call]  # to route and send again (MOVED, TRYAGAIN, NOSCRIPT)
    missing: set[str]  # scripts to load on that server first (NOSCRIPT)


class Scripts:
    """Runs the Lua scripts by EVALSHA with automatic pipelining.

    Calls issued in the same event-loop turn (concurrent requests, a batch, a burst of
    completions) go out in one write per server, and their replies are read back in
    order. This skips redis-py's per-command machinery, which profiling showed to be a
    third of the service's CPU on the enqueue path.

    On a cluster the calls of a turn are grouped by the primary owning each call's slot
    (all KEYS of one call share a hash tag): one write per node, concurrently. MOVED
    patches the slot map and sends the call to the new owner; ASK sends ASKING and the
    call to the node importing the slot, map unchanged; TRYAGAIN (keys of a migrating
    slot split between two nodes) sends it again shortly, for up to TRYAGAIN_FOR s. Each
    of those means the script did not run. NOSCRIPT (a restarted, flushed or promoted
    server) loads the scripts on that server and re-sends once. A call whose reply was
    lost after the write (a connection error, a timeout) is never re-sent: it fails with
    `Unavailable` (no silent duplicates), and a cluster's slot map is fetched again.

    `durability` "replica" / "fsync": a write that will be answered to a client (a
    CONFIRMED script run while `answering()`) makes its batch end with `WAIT 1 1000` /
    `WAITAOF 1 0 1000` on the same connection; when that answers 0, its callers get
    `Unavailable` (the write may exist anyway). `server_fsyncs`: the server fsyncs every
    write before answering (the embedded Redis with appendfsync always), so fsync needs
    no WAITAOF.
    """

    def __init__(
        self, client: Redis, durability: str = "async", server_fsyncs: bool = False
    ) -> None:
        self.client = client
        self.durability = "async" if durability == "fsync" and server_fsyncs else durability
        self.sources: dict[str, str] = {}
        self.shas: dict[str, str] = {}
        self.confirmed: set[str] = set(CONFIRMED)
        self.redirects: Counter[str] = Counter()  # moved, ask, tryagain, noscript
        self.publish = "PUBLISH"
        self._loaded: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = []
        self._pending: list[_Call] = []
        self._jobs: set[asyncio.Task[None]] = set()
        self._prepared = False
        self._preparing = asyncio.Lock()
        self._confirm: bytes | None = None
        self._cluster = isinstance(client, RedisCluster)
        self._idle: list[Any] = []  # connections of the one server, between exchanges
        self.load("app.engine", FAIR, ("_fair.lua",))
        self.load("app.engine", ENQUEUE, ("_fair.lua", "_enqueue.lua"))
        self.load("app.engine", CORE)
        self.load("app.engine", AUDIT, ("_fsck.lua",))
        self.load("app.engine", HISTORY)

    def load(
        self,
        package: str,
        names: Iterable[str],
        prelude: Iterable[str] = (),
        confirmed: Iterable[str] = (),
    ) -> None:
        """Make `<package>/lua/<name>.lua` runnable by name (see the module docstring);
        `confirmed`: those of them whose writes are answered to clients (CONFIRMED)."""
        entry = (package, tuple(names), tuple(prelude))
        self._loaded.append(entry)
        self.confirmed.update(confirmed)
        self._compile(*entry)

    def _compile(self, package: str, names: tuple[str, ...], prelude: tuple[str, ...]) -> None:
        for name, (source, sha) in compile_scripts(package, names, prelude, self.publish).items():
            self.sources[name], self.shas[name] = source, sha

    @property
    def sharded_pubsub(self) -> bool:
        """The scripts publish on queue channels with SPUBLISH (so subscribe with
        SSUBSCRIBE): a cluster of Redis >= 7, and scripts that use QUEUE_PUBLISH."""
        return self.publish == "SPUBLISH" and any(
            "redis.call(QUEUE_PUBLISH" in source for source in self.sources.values()
        )

    async def prepare(self) -> None:
        """Learn what the servers offer, once (a cluster's sharded pub/sub, WAITAOF for
        DURABILITY=fsync); the first batch does it when nobody did before. Raises
        `Unavailable` when Redis cannot be asked (the next call asks again)."""
        if self._prepared:
            return
        async with self._preparing:
            if self._prepared:
                return
            try:
                await self._learn()
            except (RedisError, OSError) as exc:
                raise_translated(exc)
            self._prepared = True

    async def _learn(self) -> None:
        needs_features = isinstance(self.client, RedisCluster) or self.durability == "fsync"
        features = await server_features(self.client) if needs_features else None
        if isinstance(self.client, RedisCluster) and features and features.sharded_pubsub:
            self.publish = "SPUBLISH"
            for entry in self._loaded:
                self._compile(*entry)
        if self.durability == "replica":
            self._confirm = _resp(("WAIT", 1, CONFIRM_TIMEOUT_MS))
        elif self.durability == "fsync":
            # Without WAITAOF (Redis < 7.2) `taskstream serve` refuses to start (see
            # client.fsync_problem); an engine made so all the same answers 503 to every
            # write a client waits for (the server's error reply says why).
            self._confirm = _resp(("WAITAOF", 1, 0, CONFIRM_TIMEOUT_MS))

    async def run(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's reply; an outage or a refused write raises `Unavailable`."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        confirm = self.durability != "async" and name in self.confirmed and ANSWERING.get()
        self._pending.append(_Call(name, keys, args, future, confirm))
        try:
            return await future
        except (RedisError, OSError) as exc:
            raise_translated(exc)

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        job = asyncio.create_task(self._send(batch))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            if not self._prepared:
                await self.prepare()
            if self._cluster:
                await ready(self.client)
        except BaseException as exc:
            _fail_all(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        while batch:
            groups = self._route(batch)
            if len(groups) == 1:  # one server: no task of its own for the exchange
                ((node, calls),) = groups.items()
                batch = await self._send_to(node, calls)
            else:
                outcomes = await asyncio.gather(
                    *(self._send_to(node, calls) for node, calls in groups.items())
                )
                batch = [call for again in outcomes for call in again]
            if any(call.since for call in batch):
                await asyncio.sleep(TRYAGAIN_PAUSE)

    def _route(self, batch: list[_Call]) -> dict[ClusterNode | None, list[_Call]]:
        """The calls per server: one group (None) off a cluster; else per owning primary
        (or the node an ASK named)."""
        client = self.client
        if not isinstance(client, RedisCluster):
            return {None: batch}
        groups: defaultdict[ClusterNode | None, list[_Call]] = defaultdict(list)
        for call in batch:
            try:
                node = call.asking or _owner(client, call.keys)
            except RedisError as exc:  # no node serves the slot now (a failover)
                _fail_all([call], exc)
                request_refresh(client)
                continue
            groups[node].append(call)
        return groups

    async def _send_to(self, node: ClusterNode | None, calls: list[_Call]) -> list[_Call]:
        """One pipelined exchange with one server; the calls to send again."""
        try:
            conn = await self._connection(node)
        except (RedisError, OSError) as exc:
            _fail_all(calls, exc)
            request_refresh(self.client, node)
            return []
        try:
            outcome = await self._exchange(conn, calls, node)
            if outcome.missing:
                await self._load_scripts(conn, outcome.missing)
        except (RedisError, OSError) as exc:
            await conn.disconnect()
            _fail_all(calls, exc)
            request_refresh(self.client, node)
            return []
        except BaseException as exc:  # a bug, or cancelled: no caller may wait forever
            await conn.disconnect()
            _fail_all(calls, exc)
            raise
        finally:
            await self._release(node, conn)
        return outcome.again

    async def _connection(self, node: ClusterNode | None) -> Any:
        if node is None:
            assert not isinstance(self.client, RedisCluster)
            while self._idle:  # kept by `_release`, checked as the pool checks its own
                conn = self._idle.pop()
                if await _clean(conn):
                    return conn
                await self.client.connection_pool.release(conn)
            return await self.client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        conn = node.acquire_connection()
        await node.disconnect_if_needed(conn)
        return conn

    async def _release(self, node: ClusterNode | None, conn: Any) -> None:
        """Back to the pool; a connection of the one server that is still connected is kept
        for the next exchange instead (the pool's lock and bookkeeping cost ~6 µs an
        exchange, i.e. per script call on the enqueue path). Kept connections stay the
        pool's (in use), so closing the client closes them too."""
        if node is not None:
            node.release(conn)
        elif not isinstance(self.client, RedisCluster):
            if conn.is_connected and len(self._idle) < MAX_KEPT:
                self._idle.append(conn)
            else:
                await self.client.connection_pool.release(conn)

    async def _exchange(self, conn: Any, calls: list[_Call], node: ClusterNode | None) -> _Outcome:
        shas = self.shas
        packed = [
            (b"*1\r\n$6\r\nASKING\r\n" if c.asking else b"")
            + _resp(("EVALSHA", shas[c.name], len(c.keys), *c.keys, *c.args))
            for c in calls
        ]
        confirming = self._confirm is not None and any(c.confirm for c in calls)
        if confirming:
            assert self._confirm is not None
            packed.append(self._confirm)
        outcome = _Outcome([], set())
        held: list[tuple[_Call, Any]] = []  # replies waiting for the durability check
        async with asyncio.timeout(COMMAND_TIMEOUT):
            await _write(conn, b"".join(packed))
            for call in calls:
                if call.asking:
                    await conn.read_response(timeout=math.inf)  # ASKING's +OK
                    call.asking = None
                try:
                    reply = await conn.read_response(timeout=math.inf)
                except ResponseError as exc:
                    await self._refused(call, exc, outcome, node)
                    continue
                if call.confirm and confirming:
                    held.append((call, reply))
                else:
                    _settle(call, reply)
            if confirming:
                await self._confirmed(conn, held)
        return outcome

    async def _refused(
        self, call: _Call, exc: ResponseError, outcome: _Outcome, node: ClusterNode | None
    ) -> None:
        """An error reply: the call's own, or a redirect to follow (see the class)."""
        if isinstance(exc, NoScriptError) and not call.reloaded:
            self.redirects["noscript"] += 1
            call.reloaded = True
            outcome.missing.add(call.name)
            outcome.again.append(call)
        elif isinstance(exc, MovedError | AskError) and call.hops < MAX_REDIRECTS:
            call.hops += 1
            await self._redirect(call, exc, node)
            outcome.again.append(call)
        elif isinstance(exc, TryAgainError) and _may_try_again(call):
            self.redirects["tryagain"] += 1
            outcome.again.append(call)
        elif isinstance(exc, NoScriptError):
            _fail_all([call], ResponseError("NOSCRIPT after reload"))
        else:
            _fail_all([call], exc)

    async def _redirect(
        self, call: _Call, exc: MovedError | AskError, node: ClusterNode | None
    ) -> None:
        client = self.client
        assert isinstance(client, RedisCluster) and node is not None
        manager = client.nodes_manager
        if not exc.host:  # a node that announces no address: the one that answered
            exc.host = node.host
        if isinstance(exc, MovedError):  # (a subclass of AskError in redis-py)
            self.redirects["moved"] += 1
            await manager.move_slot(exc)
            return
        self.redirects["ask"] += 1
        host, port = manager.remap_host_port(exc.host, exc.port)
        call.asking = manager.get_node(host=host, port=port) or ClusterNode(
            host, port, "primary", **manager.connection_kwargs
        )

    async def _confirmed(self, conn: Any, held: list[tuple[_Call, Any]]) -> None:
        """Read the durability check's answer, then settle the calls it covers."""
        try:
            answer = await conn.read_response(timeout=math.inf)
        except ResponseError as exc:  # say, WAITAOF with appendonly off
            answer = exc
        if _confirmation_held(answer):
            for call, reply in held:
                _settle(call, reply)
            return
        detail = NOT_CONFIRMED[self.durability]
        if isinstance(answer, Exception):
            detail += f" ({answer})"
        _fail_all([call for call, _ in held], Unavailable(f"redis: write {detail}"))

    async def _load_scripts(self, conn: Any, names: set[str]) -> None:
        """SCRIPT LOAD on the connection that answered NOSCRIPT (its server)."""
        await conn.send_packed_command(
            b"".join(_resp(("SCRIPT", "LOAD", self.sources[name])) for name in names),
            check_health=False,
        )
        for _ in names:
            await conn.read_response(timeout=math.inf)


async def _clean(conn: Any) -> bool:
    """A kept connection may carry the next exchange: connected, nothing unread, not closed
    by the server meanwhile (what the pool's `ensure_connection` checks)."""
    try:
        return bool(conn.is_connected) and not await conn.can_read()
    except (RedisError, OSError):
        return False


async def _write(conn: Any, data: bytes) -> None:
    """Send `data` on a redis-py connection, inside the caller's timeout. Its own
    `send_packed_command` wraps each write in `asyncio.wait_for` (a task and a timer, ~7 µs
    on every batch), which the exchange's timeout makes redundant; a write that fails
    closes the connection the same way (the caller disconnects it)."""
    if not conn.is_connected:  # as send_packed_command does
        await conn.connect_check_health(check_health=False)
    try:
        await conn._send_packed_command((data,))
    except OSError as exc:  # as send_packed_command reports it (the caller disconnects)
        raise RedisConnectionError(f"Error while writing to socket: {exc!r}") from exc


def _owner(client: RedisCluster, keys: Sequence[Any]) -> ClusterNode:
    if not keys:
        return client.get_random_primary_node()
    return client.nodes_manager.get_node_from_slot(client.keyslot(keys[0]))


def _may_try_again(call: _Call) -> bool:
    now = time.monotonic()
    call.since = call.since or now
    return now - call.since < TRYAGAIN_FOR


def _confirmation_held(answer: Any) -> bool:
    """WAIT's count of replicas, or WAITAOF's [local, replicas]: at least one."""
    if isinstance(answer, list):
        return bool(answer) and int(answer[0]) >= 1
    return isinstance(answer, int) and answer >= 1


def _settle(call: _Call, reply: Any) -> None:
    if not call.future.done():
        call.future.set_result(reply)


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
