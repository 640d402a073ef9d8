"""The engine's Redis client: the one factory, and the one translation of its errors.

`connect(url)` builds the client of REDIS_URL's topology (redis_target.RedisTarget): one
server (`redis://`, `rediss://`, `unix://`); the primary a set of sentinels names
(`redis+sentinel://`: redis-py's SentinelConnectionPool asks the sentinels on every new
connection, and turns READONLY from a demoted primary into a reconnect); or a Redis
Cluster (`redis+cluster://`: redis-py's RedisCluster, whose commands go to the node
owning their keys' slot and follow MOVED and ASK). Each pins the reply shapes (RESP2,
legacy responses) so stream replies never shift when redis-py is upgraded, and none
re-sends a command whose reply was lost (a cluster's single-key commands, all idempotent
or at-least-once here, are retried after a topology refresh). The rest of the engine sees
one handle; what differs per topology is here: `primaries` (SCAN on each),
`scan_page` (a cursor over every primary), `node_of` / `request_refresh` for the script
runner, `server_features`.

`redis_failure` is the one classification of a client exception: an outage or a refused
write becomes `errors.Unavailable` (HTTP 503) here, and nowhere else; `translate_errors`
applies it to a coroutine function.

Imports: errors, redis_target (and redis). Nothing above the engine.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, ParamSpec, TypeAlias, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
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
from app.redis_target import RedisTarget

P = ParamSpec("P")
R = TypeVar("R")

# The client type every engine module holds: one server (or a Sentinel's primary), or a
# cluster. Both answer the same commands; topology-specific code lives in this module.
Redis: TypeAlias = aioredis.Redis | RedisCluster
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


# Every topology's connections: RESP2 and legacy reply shapes pinned explicitly, binary
# replies; commands time out after COMMAND_TIMEOUT, so a hung Redis is a prompt 503.
CONNECTION: dict[str, Any] = {
    "protocol": 2,
    "legacy_responses": True,
    "decode_responses": False,
    "socket_timeout": COMMAND_TIMEOUT,
    "socket_connect_timeout": 2.0,
    "health_check_interval": 0,
}
SENTINEL_TIMEOUT = 1.0  # seconds per question to one sentinel (then the next is asked)


class SentinelRedis(aioredis.Redis):
    """The primary's client of a Sentinel deployment; closing it closes the sentinels'
    clients too."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


def connect(url: str) -> Redis:
    """The one Redis client factory (see the module docstring)."""
    target = RedisTarget.parse(url)
    if target.kind == "sentinel":
        return _sentinel_primary(target)
    if target.kind == "cluster":
        return _cluster(target)
    # No silent re-sends: a script re-run after a lost reply would answer "duplicate"
    # for a task that was stored. Callers see Unavailable and decide.
    return aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **CONNECTION)


def _sentinel_primary(target: RedisTarget) -> SentinelRedis:
    asked: dict[str, Any] = {"socket_timeout": SENTINEL_TIMEOUT, "ssl": target.tls}
    asked["socket_connect_timeout"] = SENTINEL_TIMEOUT
    if "sentinel_password" in target.options:
        asked["password"] = target.options["sentinel_password"]
    if "sentinel_username" in target.options:
        asked["username"] = target.options["sentinel_username"]
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=asked)
    client: SentinelRedis = sentinel.master_for(
        target.master,
        redis_class=SentinelRedis,
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.tls,
        retry=Retry(NoBackoff(), 0),
        **CONNECTION,
    )
    client.sentinels = sentinel
    return client


def _cluster(target: RedisTarget) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username,
        password=target.password,
        ssl=target.tls,
        # Single-key commands (reads, idempotent writes, XREADGROUP whose lost deliveries
        # are taken over after their lease) are tried again on a new topology; scripts
        # never are (engine/scripts.py routes them itself).
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        topology_refresh_min_interval=0.25,
        **CONNECTION,
    )


def is_cluster(client: Redis) -> bool:
    return isinstance(client, RedisCluster)


def primaries(client: Redis) -> list[ClusterNode | None]:
    """The nodes every key lives on: each primary of a cluster (by name), else [None]
    (the one server)."""
    if isinstance(client, RedisCluster):
        return list(cluster_primaries(client))
    return [None]


def cluster_primaries(client: RedisCluster) -> list[ClusterNode]:
    return sorted(client.get_primaries(), key=lambda node: node.name)


async def ready(client: Redis) -> None:
    """A cluster client's slot map, fetched when missing or asked for (a no-op else)."""
    if isinstance(client, RedisCluster):
        await client.initialize()


def request_refresh(client: Redis, failed: ClusterNode | None = None) -> None:
    """Ask a cluster client to fetch its slot map again before its next command (after a
    node failed: its replica may have taken over)."""
    if isinstance(client, RedisCluster):
        client._request_refresh(last_failed_node_name=failed.name if failed else None)


async def scan_page(client: Redis, cursor: str, match: str, count: int) -> tuple[str, list[bytes]]:
    """One SCAN page of the keys matching `match`, over every primary. The cursor is
    SCAN's on one server; on a cluster `<primary>:<cursor>` (primaries in name order), so
    an audit can stop and resume it. "0" starts, and is returned when done."""
    if not isinstance(client, RedisCluster):
        page: Any = await client.scan(int(cursor), match=match, count=count)
        return str(page[0]), list(page[1])
    await ready(client)
    nodes = cluster_primaries(client)
    index, _, at = cursor.partition(":") if ":" in cursor else ("0", "", cursor)
    i = int(index)
    if i >= len(nodes):
        return "0", []
    node = nodes[i]
    found: Any = await client.scan(int(at), match=match, count=count, target_nodes=node)
    cursors, keys = found
    following = int(next(iter(cursors.values()))) if isinstance(cursors, dict) else int(cursors)
    if following:
        return f"{i}:{following}", list(keys)
    return ("0" if i + 1 >= len(nodes) else f"{i + 1}:0"), list(keys)


async def subscribed(
    client: Redis, channels: Sequence[str], sharded: bool
) -> AsyncGenerator[tuple[str, str], None]:
    """(channel, message) of `channels`, as they come (pub/sub: at-most-once). `sharded`:
    SSUBSCRIBE on the primary owning their slot (they share a hash tag; a cluster whose
    scripts SPUBLISH), which redis-py's cluster pub/sub moves when the slot does; else
    SUBSCRIBE (on a cluster, PUBLISH reaches every node). Any failure raises
    `Unavailable`: the caller subscribes again (after a failover, on the new primary)."""
    await ready(client)
    pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
    try:
        if sharded:
            await pubsub.ssubscribe(*channels)
            receive = functools.partial(pubsub.get_sharded_message, timeout=1.0)
        else:
            await pubsub.subscribe(*channels)
            receive = functools.partial(pubsub.get_message, timeout=1.0)
        while True:
            message = await receive()
            if message is not None and text(message["type"]) in ("message", "smessage"):
                yield text(message["channel"]), text(message["data"])
    except (RedisError, OSError) as exc:
        # Subscribing and reading need no write: anything here is the connection's fault.
        failure = redis_failure(exc) or Unavailable(f"redis pub/sub: {exc}")
        request_refresh(client)
        raise failure from exc
    finally:
        with contextlib.suppress(RedisError, OSError):
            await pubsub.aclose()


async def publish(client: Redis, channel: str, message: str, sharded: bool) -> None:
    """PUBLISH, or SPUBLISH (routed to the primary owning the channel's slot)."""
    if sharded and isinstance(client, RedisCluster):
        await client.execute_command("SPUBLISH", channel, message)
    else:
        await client.publish(channel, message)


@dataclass(frozen=True)
class Features:
    """What the server (every primary of a cluster) offers that the engine may use."""

    version: tuple[int, ...]
    sharded_pubsub: bool  # SSUBSCRIBE / SPUBLISH (Redis >= 7.0)
    waitaof: bool  # WAITAOF (Redis >= 7.2, Valkey)


async def server_features(client: Redis) -> Features:
    """The features of the oldest server (every primary of a cluster is asked)."""
    await ready(client)
    found = []
    for node in primaries(client):
        if node is None:
            info: Any = await client.info("server")
        else:
            info = await client.info("server", target_nodes=node)
            info = next(iter(info.values())) if "redis_version" not in info else info
        found.append(tuple(int(p) for p in str(info["redis_version"]).split(".")[:3]))
    version = min(found)
    return Features(version, version >= (7, 0), version >= (7, 2))


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


async def fsync_problem(url: str) -> str | None:
    """Why DURABILITY=fsync cannot be kept on `url`'s servers (no WAITAOF: Redis < 7.2;
    appendonly off), or None; None too when Redis does not answer now (the writes will
    tell). For the command line's check at start."""
    client = connect(url)
    try:
        features = await server_features(client)
        if not features.waitaof:
            version = ".".join(str(p) for p in features.version)
            return (
                f"needs WAITAOF (Redis >= 7.2, or Valkey); this server is {version}: "
                "leave REDIS_URL unset (the embedded Redis then fsyncs every write) or use "
                "DURABILITY=replica"
            )
        for node in primaries(client):
            kwargs = {} if node is None else {"target_nodes": node}
            await client.execute_command("WAITAOF", 1, 0, 100, **kwargs)
    except ResponseError as exc:
        return f"the server refuses WAITAOF: {exc}"
    except (RedisError, OSError):
        return None
    finally:
        await client.aclose()
    return None
