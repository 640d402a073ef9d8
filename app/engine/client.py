"""The engine's Redis client: the one factory, and the one translation of its errors.

`connect(url)` pins the reply shapes (RESP2, legacy responses) so stream replies never
shift when redis-py is upgraded. `redis_failure` is the one classification of a client
exception: an outage or a refused write becomes `errors.Unavailable` (HTTP 503) here, and
nowhere else; `translate_errors` applies it to a coroutine function. Topologies (Sentinel,
Cluster) will be built here too.

Imports: errors (and redis). Nothing above the engine.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    DataError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from app.errors import Unavailable, WritesRefused

P = ParamSpec("P")
R = TypeVar("R")

Redis = aioredis.Redis  # the client type every engine module holds
COMMAND_TIMEOUT = 3.0  # seconds; Lua scripts here are bounded and take well under that
MAX_BLOCK_SLICE = 1.0  # longest single XREAD BLOCK; must stay below COMMAND_TIMEOUT
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


def consumer_name() -> str:
    """host:pid, so XINFO CONSUMERS shows one consumer per service process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def connect(url: str) -> Redis:
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


def text(value: Any) -> str:
    """A reply value (bytes, or a number) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


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
        found_text = f"{code} {reply}" if code else reply
        if found := REPLY_CODE.search(found_text):
            return _refusal_of(found.group(1), found_text[found.start(1) :])
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


def is_missing_group(exc: BaseException) -> bool:
    """A NOGROUP reply: the stream or its consumer group is gone (Redis restarted empty,
    or the queue was cleared)."""
    return isinstance(exc, ResponseError) and "NOGROUP" in str(exc)


@translate_errors
async def create_groups(client: Redis, streams: Sequence[str], group: str) -> None:
    """Create the streams and their consumer group where missing, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for key in streams:
        pipe.xgroup_create(key, group, id="0", mkstream=True)
    for reply in await pipe.execute(raise_on_error=False):
        if isinstance(reply, ResponseError) and "BUSYGROUP" not in str(reply):
            raise reply
