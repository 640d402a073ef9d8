"""The Lua scripts and their runner: EVALSHA with automatic pipelining.

One `engine/lua/<operation>.lua` per atomic transition; each opens with a header comment
listing KEYS and ARGV. Every script is compiled with the engine's library prepended
(`_lib.lua`, `_fence.lua`; the audit's also `_fsck.lua`), so each keeps one SHA. A wing
above brings scripts of its own with `Scripts.load(package, names, prelude)`: they are
compiled on the same library, and run by the same runner, under their own names.

Imports: client (and redis).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from redis.exceptions import NoScriptError, RedisError, ResponseError

from app.engine.client import COMMAND_TIMEOUT, Redis, raise_translated

LIBRARY = ("_lib.lua", "_fence.lua")  # the engine's helpers, before every script
CORE = (
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
    "callback_done",
)
AUDIT = (
    "fsck_records",
    "fsck_entries",
    "fsck_refs",
    "fsck_dlq",
    "fsck_deps",
    "fsck_numbered",
    "fsck_counters",
)


def lua_folder(package: str) -> Traversable:
    """The `lua/` folder of a package of app."""
    return resources.files(package) / "lua"


@functools.cache
def compile_scripts(
    package: str, names: tuple[str, ...], prelude: tuple[str, ...] = ()
) -> dict[str, tuple[str, str]]:
    """name -> (source, sha1) of `<package>/lua/<name>.lua`, each with the engine's library
    and then `prelude` (files of that folder) prepended. Read once per process."""
    folder = lua_folder(package)
    head = "".join((lua_folder("app.engine") / name).read_text() for name in LIBRARY)
    head += "".join((folder / name).read_text() for name in prelude)
    compiled = {}
    for name in names:
        source = head + (folder / f"{name}.lua").read_text()
        compiled[name] = (source, hashlib.sha1(source.encode()).hexdigest())
    return compiled


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

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.sources: dict[str, str] = {}
        self.shas: dict[str, str] = {}
        self._pending: list[_Call] = []
        self._jobs: set[asyncio.Task[None]] = set()
        self.load("app.engine", CORE)
        self.load("app.engine", AUDIT, ("_fsck.lua",))

    def load(self, package: str, names: Iterable[str], prelude: Iterable[str] = ()) -> None:
        """Make `<package>/lua/<name>.lua` runnable by name (see the module docstring)."""
        for name, (source, sha) in compile_scripts(package, tuple(names), tuple(prelude)).items():
            self.sources[name], self.shas[name] = source, sha

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
        shas = self.shas
        packed = b"".join(
            _resp(("EVALSHA", shas[c.name], len(c.keys), *c.keys, *c.args)) for c in batch
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
                await self.client.script_load(self.sources[name])
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
