"""PAI-EAS queues on the engine: items by index, long-polls, the imitation's status.

Each service has an input queue and a sink queue, both numbered engine queues (priority
streams, consumer group, leases, retries, DLQ; an `index` zset of the items still queued,
and for the sink an aliases hash, requestId -> index) under one hash tag `{eas:<service>}`.
An input item is put with the sink as its reply queue, so finishing a forwarded item and
appending its answer to the sink is one engine script. The PAI-EAS operations that the
engine has no transition for (put, index reads, delete, commit, truncate, attributes) are
this wing's own scripts, `eas/lua/*.lua`, run by the engine's script runner on the
engine's Lua library.

The services of the deployment are kept in the engine's registry `eas:services`, so every
replica finds those first used on another.

Imports: engine (public names), eas.items, models, settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from app.eas.items import Item, entry_item, stored_payload
from app.engine import views
from app.engine.arrivals import Arrivals
from app.engine.client import text, translate_errors
from app.engine.engine import Engine, Registry
from app.engine.fsck import Target, numbered
from app.engine.keys import GROUP, QueueKeys
from app.models import Priority, State
from app.settings import SERVICE_NAME_RE

SCRIPTS = ("eas_put", "eas_read", "eas_remove", "eas_attrs", "eas_frames")
SCAN_LIMIT = 2000  # items examined per read when filtering by tags
TRUNCATE_BATCH = 500
REGISTRY = "eas:services"  # the deployment's PAI-EAS services (beside its default queue)
SINK_STATUS = {
    State.QUEUED: "PENDING",
    State.SCHEDULED: "PENDING",
    State.PROCESSING: "STARTED",
    State.RETRYING: "RETRY",
    State.COMPLETED: "SUCCESS",
    State.FAILED: "FAILURE",
    State.CANCELLED: "FAILURE",
    State.EXPIRED: "FAILURE",  # (PAI-EAS items carry no expiry; a terminal state all the same)
}
FINAL = frozenset({"SUCCESS", "FAILURE"})


def load_scripts(engine: Engine) -> None:
    """Make this wing's scripts runnable by the engine's runner (after `_eas.lua`)."""
    confirmed = ("eas_put", "eas_remove")  # answered to clients (DURABILITY)
    engine.scripts.load("app.eas", SCRIPTS, ("_eas.lua",), confirmed)


def service_keys(service: str, sink: bool) -> QueueKeys:
    """The keys of a service's input queue or sink."""
    tag = f"eas:{service}"
    sink_keys = QueueKeys.numbered(tag, f"{service}/sink", part="sink")
    return sink_keys if sink else QueueKeys.numbered(tag, service, reply=sink_keys)


def registry(engine: Engine) -> Registry:
    return engine.registry(REGISTRY)


async def services(engine: Engine) -> list[str]:
    """The deployment's services (sorted), valid names only."""
    return [name for name in await registry(engine).members() if SERVICE_NAME_RE.fullmatch(name)]


async def audit_targets(engine: Engine) -> list[Target]:
    """fsck's targets of every service: its input (index) and its sink (index, aliases)."""
    return [
        numbered(service_keys(name, sink), aliased=sink)
        for name in await services(engine)
        for sink in (False, True)
    ]


class EasQueue:
    """The input queue (`sink=False`) or the sink of one service."""

    def __init__(self, engine: Engine, service: str, sink: bool) -> None:
        self.service = service
        self.sink = sink
        self.name = f"{service}/sink" if sink else service
        self.keys = keys = service_keys(service, sink)
        self.queue = engine.queue_at(keys, stored_payload)
        self.scripts = engine.scripts
        self.settings = engine.settings
        self.reply_prefix = "" if sink else service_keys(service, True).prefix
        # new items (for long-polls and watchers), state changes (for status waits)
        self.arrivals = Arrivals(engine.client, keys.streams, entry_item)
        self.changes = Arrivals(engine.client, [keys.events], lambda fields: fields.get(b"id"))

    async def put(self, item: Item, priority: Priority = Priority.DEFAULT) -> int:
        k = self.keys
        keys = [k.counters, k.stream(priority), k.index, k.events, k.aliases, k.stats]
        rid = item.tags.get("requestId", "") if self.sink else ""
        argv = [k.prefix, priority.value, item.encode(), self.settings.events_maxlen]
        argv += [self.reply_prefix, rid]
        return int(await self.scripts.run("eas_put", keys, argv))

    async def read_once(
        self,
        start: int,
        length: int,
        auto_delete: bool,
        request_id: str = "",
        tags: dict[str, str] | None = None,
    ) -> tuple[list[Item], list[bytes]]:
        """Items from index `start` on (or the one with `request_id`), and stream tails."""
        k, s = self.keys, self.settings
        argv: list[Any] = [k.prefix, start, length, SCAN_LIMIT if tags else length]
        argv += ["1" if auto_delete else "0", s.events_maxlen, GROUP, request_id]
        argv += ["0" if self.sink else "1", s.result_ttl]
        for name, value in (tags or {}).items():
            argv += [name, value]
        keys = [k.index, k.aliases, *k.streams, *self._dropped]
        found, tails = await self.scripts.run("eas_read", keys, argv)
        items = [Item.decode(int(index), stored) for index, stored in found]
        return items, list(tails)

    async def read(
        self,
        start: int,
        length: int,
        auto_delete: bool,
        timeout: float,
        request_id: str = "",
        tags: dict[str, str] | None = None,
    ) -> list[Item]:
        """`read_once`, long-polling up to `timeout` s for a matching item to arrive.

        The empty answer comes a little early (10 %, at most 0.5 s): the SDK's read timeout
        equals its default `_timeout_`, and an answer at that very moment would be lost."""
        if timeout <= 0:
            return (await self.read_once(start, length, auto_delete, request_id, tags))[0]
        deadline = time.monotonic() + timeout - min(0.5, timeout / 10)
        filters = tags or {}

        def wanted(item: Item) -> bool:
            if request_id:
                return item.tags.get("requestId") == request_id
            return item.index >= start and all(item.tags.get(k) == v for k, v in filters.items())

        async with self.arrivals.waiting(wanted) as arrived:
            while True:
                arrived.clear()
                items, _ = await self.read_once(start, length, auto_delete, request_id, tags)
                remaining = deadline - time.monotonic()
                if items or remaining <= 0:
                    return items
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), remaining)

    async def _remove(self, mode: str, below: int, limit: int, indexes: Sequence[int]) -> Any:
        k, s = self.keys, self.settings
        argv: list[Any] = [k.prefix, mode, s.events_maxlen, GROUP, s.result_ttl, below, limit]
        keys = [k.index, k.counters, k.events, *k.streams, *self._dropped]
        keys += [k.task(str(i)) for i in indexes]
        return await self.scripts.run("eas_remove", keys, argv + [*indexes])

    @property
    def _dropped(self) -> list[str]:
        """What taking items out of the queue touches beyond the index and the streams
        (eas_drop in eas/lua/_eas.lua), declared to the scripts that do."""
        k = self.keys
        return [*k.holes, k.scheduled, k.counters, k.leases, k.events, k.aliases, k.stats]

    async def remove(self, mode: str, indexes: Sequence[int]) -> int:
        """`delete` or `commit` items by index; returns how many were still queued."""
        removed, _ = await self._remove(mode, 0, 0, indexes)
        return int(removed)

    async def truncate(self, below: int) -> int:
        """Delete every item with an index below `below`, in bounded batches."""
        total = 0
        while True:
            removed, seen = await self._remove("truncate", below, TRUNCATE_BATCH, ())
            total += int(removed)
            if int(seen) < TRUNCATE_BATCH:
                return total

    async def stats(self) -> tuple[int, str, str, int]:
        """Items in the index, first index, last index given ('' for none), in flight."""
        k = self.keys
        length, first, last, pending = await self.scripts.run(
            "eas_attrs", [k.index, k.counters, *k.streams], [GROUP]
        )
        return int(length), text(first), text(last), int(pending)

    async def attributes(self, target: str | None) -> dict[str, str]:
        """`_attrs_=true`: PAI-EAS attribute names, every value a string."""
        length, first, last, in_flight = await self.stats()
        consumers = await views.consumers(self.queue)
        attrs = {
            "meta.name": self.name,
            "meta.type": "sink" if self.sink else "input",
            "meta.maxPayloadBytes": str(self.settings.max_body_bytes),
            "stream.length": str(length),
            "stream.firstEntry": first or "0",
            "stream.lastEntry": last or "0",
            "stream.pending": str(in_flight),
            "groups.list.[0]": f"Id: {GROUP}, Pending: {in_flight}, Consumers: {len(consumers)}",
            "consumers.stats.total": str(len(consumers)),
        }
        if not self.sink:
            attrs["meta.target"] = target or ""
        for i, consumer in enumerate(consumers):
            attrs[f"consumers.list.[{i}]"] = (
                f"Id: {consumer['name']}, Pending: {consumer['pending']}, "
                f"Idle: {consumer['idle_ms']}ms"
            )
        return attrs

    async def error_frames(self, indexes: Sequence[str]) -> list[bytes]:
        """The stored forms of claimed items whose payload was empty: the error frames of
        answer-less failures ('' for an item that is none)."""
        keys = [self.keys.task(i) for i in indexes]
        return [bytes(frame) for frame in await self.scripts.run("eas_frames", keys, [])]

    @translate_errors
    async def sink_status(self, request_id: int) -> dict[str, Any]:
        """The imitation's JSON status document of one input item; NotFound when unknown."""
        record = await self.queue.get(str(request_id))
        status = SINK_STATUS[State(record["status"])]
        document: dict[str, Any] = {
            "request_id": str(request_id),
            "status": status,
            "service_name": self.service,
            "message": _status_message(record),
            "attempts": record["attempts"],
            "created_at": record["created_at"],
        }
        if status == "SUCCESS":
            document["result"] = record["result"] or {
                "status": "success",
                "target_status_code": None,
                "body": None,
            }
        elif status == "FAILURE":
            document["error_info"] = record["error"] or record["status"]
        return document

    async def wait_status(self, request_id: int, timeout: float) -> dict[str, Any]:
        """`sink_status`, waiting up to `timeout` s for SUCCESS or FAILURE: woken by the
        request's own entries on the queue's events stream (every state change is there)."""
        deadline = time.monotonic() + timeout
        wanted = str(request_id).encode()
        async with self.changes.waiting(lambda eval_id: eval_id == wanted) as changed:
            while True:
                changed.clear()
                document = await self.sink_status(request_id)
                remaining = deadline - time.monotonic()
                if document["status"] in FINAL or remaining <= 0:
                    return document
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)


def _status_message(record: dict[str, Any]) -> str:
    state = record["status"]
    if state == State.QUEUED:
        return f"queued, position {record.get('position')}"
    if state == State.PROCESSING:
        return f"forwarding, attempt {record['attempts']}"
    if state == State.RETRYING:
        return f"retrying at {record.get('run_at')}: {record['error']}"
    if state == State.SCHEDULED:
        return f"scheduled for {record.get('run_at')}"
    if state == State.COMPLETED:
        return f"completed at {record['completed_at']}"
    return f"{state}: {record['error'] or ''}".strip()
