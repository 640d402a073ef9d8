"""The callbacks streams: what finishing a task leaves to do after the transition.

Each legacy queue has one (`<prefix>callbacks`, on its hash tag). The terminal scripts
append, in the same step as the transition, one self-contained entry per finished task
with a callback mark (`notify_callback` in engine/lua/_lib.lua): an outcome to POST to its
receivers; and one relay entry per dependant in another queue (`release_children`): a
parent's end, to apply to that dependant (engine/links.py). The runtime's `CallbackSender`
reads every queue's stream as a consumer of the group `senders` through this module,
which is all of its Redis side: read, take over, renew, relay, finish, outstanding.

Imports: client, keys, links, scripts (and redis); the engine only for typing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.engine import links
from app.engine.client import (
    MAX_BLOCK_SLICE,
    Redis,
    create_groups,
    is_missing_group,
    text,
    translate_errors,
)
from app.engine.keys import CALLBACK_GROUP, QueueKeys

if TYPE_CHECKING:
    from app.engine.engine import Engine


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


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

    @property
    def relay(self) -> bool:
        """A dependency relay (a parent's end for a dependant of another queue), not a
        callback."""
        return "relay" in self.fields


def _callback_entries(found: Any) -> list[CallbackEntry]:
    return [
        CallbackEntry(text(entry), {text(k): text(v) for k, v in fields.items()})
        for entry, fields in found or ()
        if fields is not None  # Redis 6.2's XAUTOCLAIM names deleted entries with nil
    ]


class CallbackStream:
    """The callbacks stream of one legacy queue and its group `senders`: what the terminal
    scripts append (see the module docstring) and runtime/callbacks.py delivers. Held
    entries are renewed with XCLAIM JUSTID and taken over with XAUTOCLAIM once idle longer
    than the lease (one holder kind, one lease: no leases zset needed here)."""

    def __init__(self, engine: Engine, keys: QueueKeys) -> None:
        self.engine = engine
        self.redis: Redis = engine.client
        self.keys = keys
        self.scripts = engine.scripts
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
        except Exception as exc:
            if not is_missing_group(exc):
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
        except Exception as exc:
            if not is_missing_group(exc):
                raise
            return []
        self._cursor = text(reply[0])  # 6.2 answers [next, entries], 7.x adds [deleted]
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
        keys = [self.key, self.keys.counters, self.keys.task(item.eval_id)]
        argv = [CALLBACK_GROUP, item.entry, delivered, failed, status, attempts, error]
        return bool(await self.scripts.run("callback_done", keys, argv))

    @translate_errors
    async def relay(self, item: CallbackEntry) -> str:
        """Apply a relay entry to its dependant (engine/links.py), then remove it; what the
        dependant's queue answered (`skipped` when a previous delivery applied it)."""
        verdict = await links.relay(self.engine, item.fields)
        await self.finish(item, 0, 0, "", 0)
        return verdict

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
            (text(g["last-delivered-id"]) for g in groups if text(g["name"]) == CALLBACK_GROUP),
            "0-0",
        )
        return bool(last) and _stream_id(text(last[0][0])) > _stream_id(delivered)
