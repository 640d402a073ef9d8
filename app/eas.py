"""PAI-EAS queues on the engine: items, index reads, forwarding to targets, watchers.

Each service has an input queue and a sink queue, both ordinary engine queues (priority
streams, consumer group, leases, retries, DLQ) under one hash tag `{eas:<service>}`, so
finishing a forwarded input item and appending its answer to the sink is one script.
An item's PAI-EAS index is its eval_id, taken from a per-queue counter; the `index` zset
holds the items still in the queue, which is what index reads, `_attrs_` and truncation
look at. Items are stored as one header line of JSON (content type, tags, message), a
newline, and the body bytes unchanged.

Imports: consumers, executors, streams, models, errors, settings, wire, proto.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from google.protobuf import json_format

from app.consumers import Backoff, ConsumerPool, cancel
from app.errors import BadRequest, Invalid, Unavailable
from app.executors import Execution, Executor, ExecutorPool
from app.models import Outcome, Priority, State, Task
from app.proto.eas_queue_pb2 import DataFrameListProto, DataFrameProto
from app.settings import SERVICE_NAME_RE, Settings
from app.streams import (
    GROUP,
    Arrivals,
    Keys,
    Scripts,
    Streams,
    _text,
    consumers_of,
    counts_of,
    translate_errors,
)
from app.wire import ConnectFailed, WireError

log = structlog.get_logger()

DISCOVERY_INTERVAL = 2.0
MAX_LENGTH = 1000  # items per read
SCAN_LIMIT = 2000  # items examined per read when filtering by tags
TRUNCATE_BATCH = 500
MAX_TIMEOUT = 60.0
DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")
SINK_STATUS = {
    State.QUEUED: "PENDING",
    State.SCHEDULED: "PENDING",
    State.PROCESSING: "STARTED",
    State.RETRYING: "RETRY",
    State.COMPLETED: "SUCCESS",
    State.FAILED: "FAILURE",
    State.CANCELLED: "FAILURE",
}
FINAL = frozenset({"SUCCESS", "FAILURE"})


def check_service(name: str) -> str:
    """A PAI-EAS service name (already percent-decoded), or 422: one path segment of the
    forwarding URL, so never `.`/`..` nor anything with a `/`."""
    if not SERVICE_NAME_RE.fullmatch(name):
        raise Invalid("service name must be 1-64 characters of A-Z a-z 0-9 . _ -, not only dots")
    return name


def parse_duration(value: str | None, default: float = 0.0) -> float:
    """`_timeout_` as the SDK sends it ("5s", "500ms", "1m") or plain seconds."""
    if value is None or value == "":
        return default
    found = DURATION_RE.fullmatch(value.strip())
    if not found:
        raise BadRequest(f"_timeout_ must be a duration such as 5s or 500ms, got {value!r}")
    number, unit = float(found.group(1)), found.group(2) or "s"
    seconds = number / 1000 if unit == "ms" else number * 60 if unit == "m" else number
    return min(seconds, MAX_TIMEOUT)


def parse_index(value: str | None, name: str, default: int = 0) -> int:
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit()):
        raise BadRequest(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def parse_indexes(value: str | None) -> list[int]:
    parts = [p.strip() for p in (value or "").split(",") if p.strip()]
    if not parts or not all(p.isascii() and p.isdigit() for p in parts):
        raise BadRequest("_indexes_ must be a comma-separated list of indexes")
    if len(parts) > MAX_LENGTH:
        raise BadRequest(f"at most {MAX_LENGTH} indexes per request")
    return [int(p) for p in parts]


# --- items ------------------------------------------------------------------------------


@dataclass
class Item:
    """One PAI-EAS data frame."""

    index: int
    data: bytes
    tags: dict[str, str] = field(default_factory=dict)
    content_type: str = ""
    message: str = ""

    def encode(self) -> bytes:
        """Stored form: header JSON, newline, body (orjson never writes a raw newline)."""
        header: dict[str, Any] = {"tags": self.tags}
        if self.content_type:
            header["ct"] = self.content_type
        if self.message:
            header["msg"] = self.message
        return orjson.dumps(header) + b"\n" + self.data

    @classmethod
    def decode(cls, index: int, stored: bytes) -> Item:
        head, _, data = stored.partition(b"\n")
        try:
            header = orjson.loads(head) if head else {}
        except orjson.JSONDecodeError:
            header = {}
        tags = {str(k): str(v) for k, v in (header.get("tags") or {}).items()}
        tags.setdefault("requestId", str(index))  # an item's request id is its index
        return cls(index, data, tags, str(header.get("ct", "")), str(header.get("msg", "")))

    def proto(self, index_only: bool = False) -> DataFrameProto:
        frame = DataFrameProto(index=self.index, message=self.message)
        frame.tags.update(self.tags)
        if not index_only:
            frame.data = self.data
        return frame


def frame_list(items: Sequence[Item]) -> DataFrameListProto:
    answer = DataFrameListProto()
    answer.index.extend(item.proto() for item in items)
    return answer


def frames_json(items: Sequence[Item]) -> bytes:
    """The proto3 JSON form of DataFrameListProto (data base64, index a string)."""
    return orjson.dumps(json_format.MessageToDict(frame_list(items)))


def _entry_item(fields: dict[bytes, bytes]) -> Item:
    """The item of a queue stream entry (fields `id`, `payload`)."""
    return Item.decode(int(fields.get(b"id", b"0")), fields.get(b"payload", b""))


def _stored_payload(payload: bytes) -> dict[str, Any]:
    """Engine payload decoder for EAS queues: keep the stored bytes as they are."""
    return {"stored": payload}


def task_item(task: Task) -> Item:
    return Item.decode(int(task.eval_id), task.payload.get("stored", b""))


# --- one queue --------------------------------------------------------------------------


class EasQueue:
    """The input queue (`sink=False`) or the sink of one service."""

    def __init__(
        self, client: Any, settings: Settings, scripts: Scripts, service: str, sink: bool
    ) -> None:
        tag = f"eas:{service}"
        self.service = service
        self.sink = sink
        self.name = f"{service}/sink" if sink else service
        keys = Keys(tag, part="sink" if sink else None, name=self.name)
        self.streams = Streams(client, settings, keys=keys, scripts=scripts, decode=_stored_payload)
        self.keys = keys
        self.settings = settings
        self.sink_prefix = "" if sink else Keys(tag, part="sink").prefix
        # new items (for long-polls and watchers), state changes (for status waits)
        self.arrivals = Arrivals(client, keys.streams, _entry_item)
        self.changes = Arrivals(client, [keys.events], lambda fields: fields.get(b"id"))

    @translate_errors
    async def put(self, item: Item, priority: Priority = Priority.DEFAULT) -> int:
        k = self.keys
        keys = [k.counters, k.stream(priority), k.index, k.events]
        rid = item.tags.get("requestId", "") if self.sink else ""
        argv = [
            k.prefix,
            priority.value,
            item.encode(),
            self.settings.events_maxlen,
            self.sink_prefix,
            rid,
        ]
        return int(await self.streams.scripts.run("eas_put", keys, argv))

    @translate_errors
    async def read_once(
        self,
        start: int,
        length: int,
        auto_delete: bool,
        request_id: str = "",
        tags: dict[str, str] | None = None,
    ) -> tuple[list[Item], list[bytes]]:
        """Items from index `start` on (or the one with `request_id`), and stream tails."""
        k = self.keys
        argv: list[Any] = [
            k.prefix,
            start,
            length,
            SCAN_LIMIT if tags else length,
            "1" if auto_delete else "0",
            self.settings.events_maxlen,
            GROUP,
            request_id,
            "0" if self.sink else "1",
            self.settings.result_ttl,
        ]
        for name, value in (tags or {}).items():
            argv += [name, value]
        found, tails = await self.streams.scripts.run(
            "eas_read", [k.index, k.rid, *k.streams], argv
        )
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

    @translate_errors
    async def remove(self, mode: str, indexes: Sequence[int]) -> int:
        """`delete` or `commit` items by index; returns how many were still queued."""
        k = self.keys
        argv: list[Any] = [
            k.prefix,
            mode,
            self.settings.events_maxlen,
            GROUP,
            self.settings.result_ttl,
            0,
            0,
            *indexes,
        ]
        removed, _ = await self.streams.scripts.run(
            "eas_remove", [k.index, k.counters, k.events], argv
        )
        return int(removed)

    @translate_errors
    async def truncate(self, below: int) -> int:
        """Delete every item with an index below `below`, in bounded batches."""
        k = self.keys
        total = 0
        while True:
            argv: list[Any] = [
                k.prefix,
                "truncate",
                self.settings.events_maxlen,
                GROUP,
                self.settings.result_ttl,
                below,
                TRUNCATE_BATCH,
            ]
            removed, seen = await self.streams.scripts.run(
                "eas_remove", [k.index, k.counters, k.events], argv
            )
            total += int(removed)
            if int(seen) < TRUNCATE_BATCH:
                return total

    @translate_errors
    async def attributes(self, target: str | None) -> dict[str, str]:
        """`_attrs_=true`: PAI-EAS attribute names, every value a string."""
        k = self.keys
        pipe = self.streams.redis.pipeline(transaction=False)
        pipe.zcard(k.index)
        pipe.zrange(k.index, 0, 0)
        pipe.hget(k.counters, "index")
        for key in k.streams:
            pipe.xpending(key, GROUP)
        length, first, last, *pending = await pipe.execute(raise_on_error=False)
        consumers = await self.streams.consumers()
        in_flight = sum(int(p["pending"]) for p in pending if isinstance(p, dict))
        attrs = {
            "meta.name": self.name,
            "meta.type": "sink" if self.sink else "input",
            "meta.maxPayloadBytes": str(self.settings.max_body_bytes),
            "stream.length": str(int(length)),
            "stream.firstEntry": _text(first[0]) if first else "0",
            "stream.lastEntry": _text(last) if last else "0",
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

    @translate_errors
    async def sink_status(self, request_id: int) -> dict[str, Any]:
        """The imitation's JSON status document of one input item; NotFound when unknown."""
        record = await self.streams.get(str(request_id))
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


@translate_errors
async def _services(client: Any, key: str) -> list[str]:
    names = [_text(raw) for raw in await client.smembers(key)]
    return [name for name in names if SERVICE_NAME_RE.fullmatch(name)]


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


# --- forwarding -------------------------------------------------------------------------


def classify_answer(request_id: str, status: int, body: bytes) -> Execution:
    """A target's answer: 2xx SUCCESS, 4xx FAILURE without retry, else retry. The body
    becomes the sink item, tagged with the request id and the status code."""
    frame = Item(0, body, {"requestId": request_id, "status": str(status)}).encode()
    try:
        text: str | None = body.decode()
        encoded = None
    except UnicodeDecodeError:
        text, encoded = None, base64.b64encode(body).decode()
    result: dict[str, Any] = {"status": "success", "target_status_code": status}
    result["body"] = text if text is not None else encoded
    if encoded is not None:
        result["body_encoding"] = "base64"
    if 200 <= status < 300:
        return Execution(Outcome.SUCCESS, result, status_code=status, frame=frame)
    result["status"] = "error"
    error = f"target answered {status}"
    if 400 <= status < 500:
        return Execution(Outcome.PERMANENT, result, error, status, frame=frame)
    return Execution(Outcome.RETRYABLE, result, error, status, frame=frame)


class ForwardPool(ExecutorPool):
    """The executor pool of one service: its single "executor" is the target URL.

    Targets have no health protocol, so they always count as healthy; a target that is
    down shows as network errors, retried under the network policy."""

    async def start(self) -> None:
        for executor in self.executors:
            executor.healthy = True
        self._update_available()

    async def _attempt(self, executor: Executor, task: Task, timeout: float) -> Execution:
        item = task_item(task)
        headers = {"X-Eas-Queueservice-Request-Id": task.eval_id}
        try:
            async with asyncio.timeout(timeout):
                answer = await executor.origin.request(
                    "POST",
                    "",
                    item.data,
                    item.content_type or "application/octet-stream",
                    headers,
                )
        except TimeoutError:
            return Execution(Outcome.RETRYABLE, error=f"target timed out after {timeout:g}s")
        except ConnectFailed as exc:
            return Execution(Outcome.NETWORK, error=f"target unreachable: {exc}")
        except WireError as exc:
            return Execution(Outcome.NETWORK, error=f"target connection failed: {exc}")
        return classify_answer(task.eval_id, answer.status, answer.body)


# --- the services of this process ---------------------------------------------------------


@dataclass
class Service:
    name: str
    input: EasQueue
    sink: EasQueue
    target: str | None
    pool: ConsumerPool | None = None


class EasHub:
    """Every PAI-EAS service this process has seen, with a forwarding consumer pool per
    service that has a target (its own slots: a hung target blocks only its service)."""

    def __init__(
        self, client: Any, settings: Settings, scripts: Scripts, consumer: str, forward: bool = True
    ) -> None:
        self.client = client
        self.forward = forward  # False: look only (`taskstream info`)
        self.settings = settings
        self.scripts = scripts
        self.consumer = consumer
        self.services: dict[str, Service] = {}
        # The deployment's services (beside its default queue), so replicas find them all.
        self.registry = Keys(settings.queue).prefix + "eas:services"
        self._jobs: set[asyncio.Task[None]] = set()
        self.wake: dict[str, asyncio.Event] = {}  # per queue: local put/commit wakes watchers
        self._registered: set[str] = set()
        self._discovery: asyncio.Task[None] | None = None
        self._stopping = False

    def service(self, name: str) -> Service:
        found = self.services.get(name)
        if found is None:
            found = Service(
                name,
                EasQueue(self.client, self.settings, self.scripts, name, sink=False),
                EasQueue(self.client, self.settings, self.scripts, name, sink=True),
                self.settings.eas_target(name),
            )
            self.services[name] = found
        return found

    def queue(self, name: str, sink: bool) -> EasQueue:
        service = self.service(name)
        return service.sink if sink else service.input

    async def register(self, name: str) -> Service:
        """Record the service in Redis once, so other replicas start forwarding it too."""
        service = self.service(name)
        if name not in self._registered:
            await _sadd(self.client, self.registry, name)
            await service.input.streams.ensure_groups()
            await service.sink.streams.ensure_groups()
            self._registered.add(name)
            self._start_pool(service)
        return service

    def notify(self, queue: EasQueue) -> None:
        event = self.wake.get(queue.keys.prefix)
        if event is not None:
            event.set()

    def wake_event(self, queue: EasQueue) -> asyncio.Event:
        return self.wake.setdefault(queue.keys.prefix, asyncio.Event())

    def _start_pool(self, service: Service) -> None:
        if service.target is None or service.pool or self._stopping or not self.forward:
            return
        if not self.settings.consume.forwards(service.name):  # CONSUME leaves it to others
            return
        executors = ForwardPool([service.target], self.settings.health_interval)
        settings = dataclasses.replace(self.settings, concurrency=self.settings.eas_concurrency)
        service.pool = ConsumerPool(service.input.streams, executors, settings, self.consumer)
        job = asyncio.get_running_loop().create_task(self._run_pool(service.pool))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    @staticmethod
    async def _run_pool(pool: ConsumerPool) -> None:
        with contextlib.suppress(Unavailable):
            await pool.streams.ensure_groups()
        await pool.executors.start()
        pool.start()
        log.info("eas_forwarding", queue=pool.streams.keys.queue)

    async def start(self) -> None:
        self._discovery = asyncio.create_task(self._discover(), name="eas-discovery")

    async def _discover(self) -> None:
        """Pick up services first used on other replicas (and after a restart)."""
        backoff = Backoff()
        while True:
            try:
                names = await _services(self.client, self.registry)
                backoff.reset()
            except Unavailable:
                await backoff.sleep()
                continue
            for name in names:
                if name not in self._registered:
                    self._registered.add(name)
                    self._start_pool(self.service(name))
            await asyncio.sleep(DISCOVERY_INTERVAL)

    async def stop(self, grace: float) -> None:
        self._stopping = True
        if self._discovery:
            await cancel(self._discovery)
        queues = [q for s in self.services.values() for q in (s.input, s.sink)]
        await asyncio.gather(*(a.close() for q in queues for a in (q.arrivals, q.changes)))
        pools = [s.pool for s in self.services.values() if s.pool]
        await asyncio.gather(*(p.stop(grace) for p in pools), return_exceptions=True)
        await asyncio.gather(*(p.executors.close() for p in pools), return_exceptions=True)

    async def overview(self) -> list[dict[str, Any]]:
        """Counts, consumers and target of every known service, for /status and `info`: four
        round trips however many services there are."""
        for name in await _services(self.client, self.registry):
            self.service(name)
        services = [self.services[name] for name in sorted(self.services)]
        queues = [q for service in services for q in (service.input, service.sink)]
        keys = [q.keys for q in queues]
        counts = await counts_of(self.client, keys)
        consumers = await consumers_of(self.client, keys)
        lengths = await _cardinalities(self.client, [k.index for k in keys])
        rows = []
        for i, service in enumerate(services):
            row: dict[str, Any] = {"service": service.name, "target": service.target}
            for j, label in enumerate(("input", "sink")):
                n = 2 * i + j
                row[label] = {
                    "length": lengths[n],
                    **counts[n]["states"],
                    "dlq": counts[n]["dlq"],
                    "totals": counts[n]["totals"],
                    "consumers": consumers[n],
                }
            if service.pool:
                row["forwarding"] = {
                    "concurrency": service.pool.settings.concurrency,
                    "running": len(service.pool.running),
                    "target": service.pool.executors.views(),
                }
            rows.append(row)
        return rows


@translate_errors
async def _cardinalities(client: Any, keys: Sequence[str]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.zcard(key)
    return [int(n) for n in await pipe.execute()]


@translate_errors
async def _sadd(client: Any, key: str, name: str) -> None:
    await client.sadd(key, name)


# --- watchers -----------------------------------------------------------------------------

RENEW_TICK = 0.5  # how often a watcher with uncommitted items looks for remote commits


@dataclass
class Watch:
    """One `_watch_=true` subscriber: at most `window` delivered-but-uncommitted items.

    Items are claimed from the queue's consumer group like any consumer's, leased and
    renewed while the socket lives; commits (here with `auto_commit`, or `PUT _indexes_`
    from anywhere) free window slots; on hang-up the uncommitted items are released at once
    so other watchers get them."""

    queue: EasQueue
    hub: EasHub
    consumer: str
    window: int
    auto_commit: bool = False
    index_only: bool = False
    held: dict[str, Task] = field(default_factory=dict)

    async def run(self, send: Any) -> None:
        """Deliver until cancelled (the socket closed) or `send` fails; then release."""
        try:
            await self._deliver(send)
        finally:
            if self.held:
                with contextlib.suppress(Unavailable):
                    await asyncio.shield(
                        self.queue.streams.renew(self.consumer, list(self.held.values()), 0)
                    )

    async def _deliver(self, send: Any) -> None:
        async with self.queue.arrivals.waiting(lambda item: True) as arrived:
            await self._deliver_loop(send, arrived)

    async def _deliver_loop(self, send: Any, arrived: asyncio.Event) -> None:
        streams, lease = self.queue.streams, self.queue.settings.lease_timeout
        wake = self.hub.wake_event(self.queue)
        renewed = time.monotonic()
        while True:
            wake.clear()
            arrived.clear()
            if len(self.held) < self.window:
                free = self.window - len(self.held)
                claimed = await streams.claim(self.consumer, free, lease)
                if claimed.tasks:
                    await self._send(send, claimed.tasks)
                    continue
            await _first([wake.wait(), arrived.wait()], RENEW_TICK)
            if self.held and (wake.is_set() or time.monotonic() - renewed >= RENEW_TICK):
                renewed = time.monotonic()
                lost = await streams.renew(self.consumer, list(self.held.values()), lease)
                for eval_id in lost:
                    self.held.pop(eval_id, None)

    async def _send(self, send: Any, tasks: list[Task]) -> None:
        for task in tasks:
            self.held[task.eval_id] = task
            await send(task_item(task).proto(self.index_only).SerializeToString())
        if self.auto_commit:
            streams = self.queue.streams
            await asyncio.gather(*(streams.complete(t.eval_id, None, t) for t in tasks))
            for task in tasks:
                self.held.pop(task.eval_id, None)


async def _first(waits: list[Any], timeout: float) -> None:
    jobs = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(jobs, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
