"""The transitions of one queue: enqueue, claim, complete, fail, renew, cancel, promote.

A `Queue` is its keys plus the engine it runs on (client, scripts, settings, observer);
every multi-key change is one Lua script from `engine/lua/`, and every script gets every
key it touches in KEYS (but the task records of this queue, which it reaches by ids read
from the queue's own structures). Storing a task that crosses hash tags (a named queue's
id directory entry, parents in other queues) is engine/links.py's.

By-id calls (get, complete, fail, cancel) are sent with this queue's keys as a hint: a
task of another legacy queue answers `{'queue', name}` (`wrong_queue` in _lib.lua: its
record, or its pointer in the default queue's key space, names its queue) and `_by_id`
re-sends the call once, to that queue; a named queue that has no such record asks the
default queue (the id directory) first. So callers need not know a task's queue: one
round trip with the right hint or for a task of the default queue, two for a task of a
named queue without one. Transitions are reported to the engine's observer with the
task's real priority, from the script's reply. Fair share, RATE_LIMITS and
QUEUE_MAX_IN_FLIGHT live in the claim script (docs/flow-control.md).

A partitioned queue (QUEUE_PARTITIONS) is its partition 0 holding the others in `parts`:
by-id calls go to the id's partition (`placed`), and claims, waits, renewals, promotion
and notifications span them through engine/partitions.py's `Spread`; each `*_one`
method is the plain one-queue operation. Unpartitioned, `parts` is `(self,)` and nothing
else is read or sent. Fair share works within each partition (its keys are under the
partition's tag); RATE_LIMITS and QUEUE_MAX_IN_FLIGHT are refused on a partitioned queue
(settings.py), and a partition > 0 never has limits.

Imports: client, intake, keys, links, partitions, records, scripts, settle, models, errors,
settings, flow_settings (and structlog, orjson); the engine module only for typing.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from app.engine import links, partitions
from app.engine.client import (
    MAX_BLOCK_SLICE,
    create_groups,
    subscribed,
    text,
    translate_errors,
)
from app.engine.intake import Intake
from app.engine.keys import GROUP, QueueKeys
from app.engine.links import MAX_DEPENDANTS
from app.engine.records import render_record
from app.engine.scripts import ANSWERING
from app.engine.settle import Completions
from app.errors import Conflict, Invalid, NotFound
from app.flow_settings import NO_LIMITS, Limits
from app.models import PRIORITY_ORDER, Priority, State, Task, TaskRequest, iso_ms
from app.settings import RetryPolicy

if TYPE_CHECKING:
    from app.engine.engine import Engine

log = structlog.get_logger()

PROMOTE_LIMIT = 200
__all__ = ["MAX_DEPENDANTS", "Claimed", "Queue", "enqueued"]
REFUSALS = {
    "missing": "no such task",
    "state": "task is {state}, not processing",
    "stale": "stale delivery: the task was handed to another worker",
    "expired": "lease expired: the task will be delivered again",
}
Decode = Callable[[bytes], dict[str, Any]]


@dataclass(frozen=True)
class Claimed:
    tasks: list[Task]
    wake_in: float | None  # seconds until the next scheduled task or lease expiry
    recreated: bool  # a consumer group was missing (Redis restarted empty, or cleared)
    tails: list[bytes] = field(default_factory=list)  # stream tails to block on when idle
    # a limit held tasks back ('rate', 'in_flight'; '' none): wait `wake_in` (or for a
    # 'release'), not for new entries (docs/flow-control.md)
    held: str = ""


def json_payload(payload: bytes) -> dict[str, Any]:
    """The payload decoder of legacy queues: the task's JSON document."""
    return orjson.loads(payload) if payload else {}


def start_arg(req: TaskRequest) -> str:
    """enqueue.lua's run time: '0' now, '+<ms>' a delay after the Redis server's clock,
    '<ms>' an absolute epoch time given by the client. Never this process's clock. A
    debounced task runs `dedup_ttl` after the (newest) request."""
    if req.dedup and req.dedup.mode == "debounce":
        return f"+{req.dedup.ttl_ms}"
    if req.delay:
        return f"+{math.ceil(req.delay * 1000)}"
    return str(int(req.run_at * 1000)) if req.run_at else "0"


def options_arg(req: TaskRequest, weights: str = "") -> str:
    """enqueue.lua's options (issue 15): '' when the task has no expiry, no dedup_key and no
    tenant and TENANT_WEIGHTS is unset, so the script's plain path reads no option at all;
    else a small JSON object (`weights`: TENANT_WEIGHTS, for a position under fair share)."""
    opts: dict[str, Any] = {}
    if req.tenant:
        opts["n"] = req.tenant
    if weights:
        opts["w"] = weights
    if (expiry := req.expiry.arg()) is not None:
        opts["x"] = expiry
    if req.dedup:
        opts |= {"k": req.dedup.key, "m": req.dedup.mode, "t": req.dedup.ttl_ms}
    return orjson.dumps(opts).decode() if opts else ""


def enqueued(req: TaskRequest, reply: Sequence[Any]) -> dict[str, Any]:
    """The answer to an enqueue from enqueue.lua's reply; Conflict or Invalid if refused.
    A deduplicated request is answered with the task that holds its dedup_key (status
    None once that task's record expired)."""
    state = text(reply[0])
    if state == "deduplicated":
        status = text(reply[2]) if reply[2] else None
        return {"eval_id": text(reply[1]), "status": status, "deduplicated": True}
    if state == "duplicate":
        raise Conflict(f"eval_id already exists: {req.eval_id}")
    if state == "unknown":
        raise Invalid(f"unknown parent(s): {', '.join(text(p) for p in reply[1])}")
    if state == "unpartitionable":
        raise Invalid(
            "dedup_key is not supported on a partitioned queue (QUEUE_PARTITIONS): tasks are "
            "placed by eval_id, so choose the eval_id from the key instead (a second task "
            "with that eval_id is refused with 409), or use an unpartitioned queue"
        )
    if state == "crowded":
        raise Invalid(
            f"parent {text(reply[1])} already has {MAX_DEPENDANTS} deferred dependants "
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
        answer["error"] = text(reply[1])
    return answer


def refusal(reply: Sequence[Any]) -> Exception:
    """NotFound or Conflict from a fenced script's refusal (see _fence.lua)."""
    kind = text(reply[0])
    state = text(reply[1]) if len(reply) > 1 else ""
    if kind == "missing":
        return NotFound(REFUSALS["missing"])
    return Conflict(REFUSALS[kind].format(state=state))


def _fence_args(task: Task | None) -> list[Any]:
    return [task.entry, task.attempt] if task else ["", ""]


def _redirected(reply: Any) -> str | None:
    """The queue a by-id script named (`{'queue', name}`, see wrong_queue), or None."""
    if isinstance(reply, list) and len(reply) == 2 and reply[0] == b"queue":
        return text(reply[1])
    return None


def _missing(reply: Any) -> bool:
    """A by-id script's "no such task" (status: an empty reply; the others: `missing`)."""
    return not reply or reply[0] == b"missing"


class Queue:
    """The operations of one queue (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        keys: QueueKeys,
        decode: Decode | None = None,
        limits: Limits = NO_LIMITS,
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.decode = decode or json_payload
        self.redis = engine.client
        self.scripts = engine.scripts
        self.settings = engine.settings
        self.observer = engine.observer
        self.limits = limits  # RATE_LIMITS, QUEUE_MAX_IN_FLIGHT (legacy queues)
        self.weights = engine.settings.flow.weights_arg  # TENANT_WEIGHTS, as scripts take it
        # complete.lua's and complete_batch.lua's wake channel: told 'release' when slots free
        # under a cap
        self.release_channel = keys.schedule_channel if limits.max_in_flight else ""
        self.parts: tuple[Queue, ...] = (self,)  # a partitioned queue's partitions
        self.whole: Queue = self  # the queue this partition belongs to
        self.spread: partitions.Spread | None = None  # set when partitioned
        self.counts: tuple[int, ...] = (1,)  # partition counts: now, then earlier ones
        self.completions = Completions(self)
        self.intake = Intake(self)  # enqueues batched per event-loop turn (engine/intake.py)

    def spread_over(self, parts: Sequence[Queue], counts: Sequence[int]) -> None:
        """Make this queue partition 0 of a queue spread over itself and `parts`, placing
        new tasks by `counts[0]` (the others: earlier counts still being drained)."""
        self.parts = (self, *parts)
        self.counts = tuple(counts)
        for part in parts:
            part.whole = self
        self.spread = partitions.Spread(self.parts)

    def placed(self, eval_id: str) -> Queue:
        """The partition of this queue that holds (or will hold) `eval_id`."""
        whole = self.whole
        return whole.parts[partitions.place(eval_id, whole.counts[0])] if whole.parts[1:] else self

    def candidates(self, eval_id: str) -> list[Queue]:
        """Every partition `eval_id` may be in: one per partition count of the history."""
        whole = self.whole
        found = [whole.parts[partitions.place(eval_id, n)] for n in whole.counts]
        return list(dict.fromkeys(found))

    # --- producers -----------------------------------------------------------------

    def enqueue_args(
        self, req: TaskRequest, local: Sequence[str] = (), remote: str = ""
    ) -> tuple[list[str], list[Any]]:
        """enqueue.lua's KEYS and ARGV for `req` in this queue: `local`, its parents in this
        queue; `remote`, those of other queues as linking them answered (engine/links.py)."""
        k, s = self.keys, self.settings
        keys = [k.task(req.eval_id), k.stream(req.priority), k.counters, k.scheduled, k.events]
        keys += [*k.holes, k.stats, k.callbacks, k.expiring]
        argv: list[Any] = [req.eval_id, req.priority.value, req.encoded_payload(), start_arg(req)]
        argv += [s.events_maxlen, k.schedule_channel, k.q, self._callback_mark(req)]
        argv.append(options_arg(req, self.weights))
        if req.depends_on:
            allow = "1" if req.allow_failure else "0"
            argv += [allow, s.result_ttl, remote, *local]
        keys += [k.expiries, k.dedup, k.dedup_ttl, k.deferred, *k.fair_at(req.priority)]
        if req.depends_on:
            keys += [k.task(p) for p in local]
        return keys, argv

    def enqueue_batch_args(self, reqs: Sequence[TaskRequest]) -> tuple[list[str], list[Any]]:
        """enqueue_batch.lua's KEYS and ARGV for `reqs` (none with parents) in this queue
        (engine/intake.py)."""
        k, s = self.keys, self.settings
        keys = [k.counters, k.scheduled, k.events, k.stats, *k.streams, *k.holes, k.expiries]
        keys += [k.dedup, k.dedup_ttl]
        keys += [key for prio in PRIORITY_ORDER for key in k.fair_at(prio)]
        keys += [k.task(req.eval_id) for req in reqs]
        argv: list[Any] = [s.events_maxlen, k.schedule_channel, k.q, self.weights, len(reqs)]
        for req in reqs:
            argv += [req.eval_id, req.priority.value, req.encoded_payload(), start_arg(req)]
            argv += [self._callback_mark(req), options_arg(req)]
        return keys, argv

    def _callback_mark(self, req: TaskRequest) -> str:
        """The enqueue scripts' callback mark: '' none (no field at all), else '+' and the
        task's callback_url ('+' alone when only STORAGE_SERVICE_URL applies)."""
        marked = req.callback_url is not None or self.settings.storage_service_url
        return "+" + (req.callback_url or "") if marked else ""

    @translate_errors
    async def enqueue(self, req: TaskRequest) -> dict[str, Any]:
        """Store one task (in its partition, when partitioned); 409 (Conflict) when its
        eval_id is already known. A request its dedup_key's holder answers stores nothing
        (`deduplicated` in the answer). A task without parents is stored with the other
        enqueues of its queue (partition) in the same event-loop turn, by one script call
        (engine/intake.py)."""
        answer = enqueued(req, await links.enqueue(self.placed(req.eval_id), req))
        if "deduplicated" not in answer:
            self.observer.enqueued(self.keys.queue, req.priority.value)
        return answer

    # --- consumers -----------------------------------------------------------------

    async def claim(
        self, consumer: str, count: int, lease: float, priorities: Iterable[str] = ()
    ) -> Claimed:
        """Take up to `count` tasks (due ones promoted, lapsed leases first), leased `lease` s,
        of `priorities` only when given (CONSUME); over every partition when partitioned."""
        if self.spread is not None:
            return Claimed(*await self.spread.claim(consumer, count, lease, priorities))
        claimed, _ = await self.claim_one(consumer, count, lease, priorities)
        return claimed

    @translate_errors
    async def claim_one(
        self, consumer: str, count: int, lease: float, priorities: Iterable[str] = ()
    ) -> tuple[Claimed, str]:
        """`claim` in this queue (partition) alone, and, for a partition, the best priority
        still waiting in it (claim.lua's hint; '' none)."""
        k, s = self.keys, self.settings
        keys = [*k.streams, k.counters, k.leases, k.events, k.scheduled, k.dlq, *k.holes]
        keys += [k.dlq_index, k.paused, k.expiries, k.rate, *k.fair, *k.effects]
        argv: list[Any] = [GROUP, consumer, count, int(lease * 1000), s.lease_max_lapses]
        argv += [s.events_maxlen, k.task_prefix, s.failure_ttl, PROMOTE_LIMIT]
        argv += [",".join(priorities), s.result_ttl, self.weights, *self.limits.args()]
        if self.whole.parts[1:]:
            argv.append("1")
        reply = await self.scripts.run("claim", keys, argv)
        items, wake_ms, recreated, tails, lost, expired, held, *hint = reply
        for eval_id, reason in lost:
            self._log_lost(eval_id, reason)
        self._expired(expired)
        tasks = [
            Task(
                eval_id=text(eval_id),
                entry=text(entry),
                attempt=int(attempt),
                priority=Priority(text(prio)),
                payload=self.decode(payload),
                waited_ms=int(waited),
                part=k.part,
            )
            for eval_id, entry, attempt, prio, payload, waited in items
        ]
        wake_in = None if int(wake_ms) < 0 else int(wake_ms) / 1000
        if held:
            self.observer.throttled(self.keys.queue, text(held))
        claimed = Claimed(tasks, wake_in, bool(recreated), list(tails), text(held))
        return claimed, text(hint[0]) if hint else ""

    async def wait_for_work(
        self, timeout: float, tails: Sequence[bytes], priorities: Iterable[str] = ()
    ) -> None:
        """Block (XREAD) until an entry is added after `tails` (from `claim`: the priority
        streams', then the tenant streams' while tenants' tasks exist), or `timeout`; only on
        the streams of `priorities` when given; on every partition's."""
        if self.spread is not None:
            return await self.spread.wait_for_work(timeout, tails, priorities)
        return await self.wait_one(timeout, tails, priorities)

    @translate_errors
    async def wait_one(
        self, timeout: float, tails: Sequence[bytes], priorities: Iterable[str] = ()
    ) -> None:
        """`wait_for_work` on this queue's (partition's) own streams."""
        streams = (*self.keys.streams, *self.keys.tenant_streams)[: len(tails)]
        prios = (*PRIORITY_ORDER, *PRIORITY_ORDER)
        taken = set(priorities)
        last: dict[Any, Any] = {
            key: tail
            for prio, key, tail in zip(prios, streams, tails, strict=False)
            if tail and (not taken or prio in taken)
        }
        deadline = time.monotonic() + timeout
        while last and (remaining := deadline - time.monotonic()) > 0:
            # Blocks are cut into slices shorter than the socket timeout, so one client
            # serves both: a hung Redis still fails fast, and long-polls still work.
            block_ms = max(1, int(min(remaining, MAX_BLOCK_SLICE) * 1000))
            if await self.redis.xread(last, block=block_ms, count=1):
                return

    def _expired(self, expired: Iterable[Sequence[Any]]) -> None:
        """Report the tasks a script found expired ({eval_id, prio} each, issue 15)."""
        for _, prio in expired:
            self.observer.settled(self.keys.queue, text(prio), State.EXPIRED.value)

    def _log_lost(self, eval_id: Any, reason: Any) -> None:
        """One line per task dead-lettered because its stream entry was deleted (issue 11);
        the script that buried it names it once, so this is logged once."""
        log.error("task_lost", queue=self.keys.queue, eval_id=text(eval_id), reason=text(reason))

    async def _by_id(
        self, eval_id: str, send: Callable[[Queue], Awaitable[Any]], task: Task | None = None
    ) -> tuple[Queue, Any]:
        """Run a by-id script in the partition of this queue that would hold `eval_id`
        (this queue itself, unpartitioned); when the task belongs to another legacy queue
        (the reply `{'queue', name}`), once more with that queue's; when it is not there,
        ask the id directory, then the partitioned queues (`_located`)."""
        parts = self.whole.parts
        known = task.part if task and task.part is not None and task.part < len(parts) else None
        first = parts[known] if known is not None else self.placed(eval_id)
        reply = await send(first)
        if (name := _redirected(reply)) is not None:
            other = self.engine.queue(name or None)
            return other, await send(other)
        if not _missing(reply):
            return first, reply
        if first is not self.engine.default:
            pointed, found = await self._via_directory(send, first)
            if pointed is not None:
                return pointed, found
        if self.settings.queue_partitions:
            held = await partitions.elsewhere(self.engine, eval_id, first)
            if held is not None:
                return held, await send(held)
        return first, reply

    async def _via_directory(
        self, send: Callable[[Queue], Awaitable[Any]], tried: Queue
    ) -> tuple[Queue | None, Any]:
        """Ask the default queue (the id directory) for a task `tried` lacks: its record,
        or a pointer to its queue (then once more there); None when neither helps."""
        home = self.engine.default
        found = await send(home)
        if (name := _redirected(found)) is None:
            return (None if _missing(found) else home), found
        if name == tried.keys.q:  # a stale pointer back here: the task is gone
            return None, found
        other = self.engine.queue(name or None)
        return other, await send(other)

    @translate_errors
    async def complete(
        self, eval_id: str, result: Any, task: Task | None = None, answer: bytes = b""
    ) -> str:
        """Record success; fenced by the delivery token when `task` is given. `answer`: what
        the task's reply queue gets (a numbered queue's item). Returns the task's queue."""
        payload = orjson.dumps(result)

        def send(q: Queue) -> Awaitable[Any]:
            k, s = q.keys, q.settings
            keys = [k.task(eval_id), k.leases, k.events, k.counters, *k.streams]
            keys += [*k.tenant_streams, *k.effects]
            argv = [eval_id, *_fence_args(task), payload, s.result_ttl, GROUP, s.events_maxlen]
            return q.scripts.run("complete", keys, [*argv, answer, k.q, q.release_channel])

        queue, reply = await self._by_id(eval_id, send, task)
        if text(reply[0]) != "ok":
            raise refusal(reply)
        self.observer.settled(queue.keys.queue, text(reply[1]), "completed")
        return queue.keys.queue

    async def complete_soon(
        self, eval_id: str, result: Any, task: Task | None = None, answer: bytes = b""
    ) -> str:
        """`complete`, settled with the other completions of its queue (partition) in the same
        event-loop turn by one script call (engine/settle.py), tenants' tasks (fair share)
        and capped queues' (QUEUE_MAX_IN_FLIGHT: one 'release' per batch) included. Calls
        answered to a client (`answering()`, where durability may add a check) and tasks
        of another queue take `complete`'s path."""
        target = self.placed(eval_id)  # a partitioned queue's task: its partition's batch
        if ANSWERING.get():
            return await self.complete(eval_id, result, task, answer)
        reply = await target.completions.complete(eval_id, orjson.dumps(result), task, answer)
        elsewhere = target.keys.q or target.whole.parts[1:]  # (where `complete` looks further)
        if _redirected(reply) is not None or (elsewhere and _missing(reply)):
            return await self.complete(eval_id, result, task, answer)
        if text(reply[0]) != "ok":
            raise refusal(reply)
        self.observer.settled(target.keys.queue, text(reply[1]), "completed")
        return target.keys.queue

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
        answer: bytes = b"",
    ) -> dict[str, Any]:
        """Record a failed attempt: `retrying` with backoff, or `failed` into the DLQ."""
        policy = policy or self.settings.retry
        published = orjson.dumps({"status": "failed", "output": error, "exit_code": exit_code})
        argv: list[Any] = [eval_id, *_fence_args(task), error, "1" if retry else "0"]
        argv += [policy.max_retries, policy.base_delay * 1000, policy.exponential_base]
        argv += [policy.max_delay * 1000, random.random() if policy.jitter else -1]
        argv += [self.settings.failure_ttl, GROUP, self.settings.events_maxlen, published]
        argv.append(orjson.dumps(detail) if detail is not None else "")
        intervals = ",".join(str(int(i * 1000)) for i in policy.intervals)

        def send(q: Queue) -> Awaitable[Any]:
            k = q.keys
            keys = [k.task(eval_id), k.leases, k.events, k.counters, k.scheduled, k.dlq]
            keys += [*k.streams, k.dlq_index, k.expiries, *k.tenant_streams, *k.effects]
            argv_q = [k.schedule_channel, answer, intervals, k.q, "1" if q.release_channel else "0"]
            return q.scripts.run("fail", keys, [*argv, *argv_q])

        queue, reply = await self._by_id(eval_id, send, task)
        return queue._failed(eval_id, reply)

    def _failed(self, eval_id: str, reply: Sequence[Any]) -> dict[str, Any]:
        state = text(reply[0])
        if state == State.RETRYING:
            self.observer.settled(self.keys.queue, text(reply[1]), state)
            retry_at = iso_ms(reply[2])
            return {
                "eval_id": eval_id,
                "status": state,
                "retry_at": retry_at,
                "queue": self.keys.queue,
            }
        if state == State.FAILED:
            if len(reply) == 4:  # {'failed', prio, 'lost', reason}: no payload to retry with
                self._log_lost(eval_id, reply[3])
            self.observer.settled(self.keys.queue, text(reply[1]), state)
            return {"eval_id": eval_id, "status": state, "queue": self.keys.queue}
        raise refusal(reply)

    async def renew(self, consumer: str, tasks: Iterable[Task], lease: float) -> list[str]:
        """Extend the leases of running tasks; returns the eval_ids this consumer lost."""
        if self.spread is not None:
            return await self.spread.renew(consumer, list(tasks), lease)
        return await self.renew_one(consumer, tasks, lease)

    @translate_errors
    async def renew_one(self, consumer: str, tasks: Iterable[Task], lease: float) -> list[str]:
        """`renew` of tasks of this queue (partition)."""
        k, held = self.keys, list(tasks)
        argv: list[Any] = [GROUP, consumer, int(lease * 1000), k.task_prefix, k.schedule_channel]
        for task in held:
            argv += [task.eval_id, task.entry, task.attempt]
        if not held:
            return []
        keys = [*k.streams, k.leases, *k.tenant_streams, *(k.task(t.eval_id) for t in held)]
        lost = await self.scripts.run("renew", keys, argv)
        return [text(x) for x in lost]

    # --- by id, for operators -----------------------------------------------------------

    @translate_errors
    async def cancel(self, eval_id: str, terminate: bool = False) -> dict[str, Any]:
        """Cancel a waiting task, or a running one when `terminate` is set."""
        s = self.settings
        argv: list[Any] = [eval_id, "1" if terminate else "0", GROUP, s.events_maxlen, s.result_ttl]

        def send(q: Queue) -> Awaitable[Any]:
            k = q.keys
            keys = [k.task(eval_id), *k.streams, *k.holes, k.scheduled, k.leases, k.events]
            keys += [k.counters, k.expiries, *k.fair, *k.effects]
            return q.scripts.run("cancel", keys, [*argv, k.cancel_channel, k.q])

        queue, reply = await self._by_id(eval_id, send)
        if text(reply[0]) != State.CANCELLED:
            if text(reply[0]) == "state":
                raise Conflict(f"task is {text(reply[1])}; cannot cancel")
            raise refusal(reply)
        self.observer.settled(queue.keys.queue, text(reply[2]), "cancelled")
        return {"eval_id": eval_id, "status": State.CANCELLED.value, "queue": queue.keys.queue}

    @translate_errors
    async def get(self, eval_id: str) -> dict[str, Any]:
        """The task's record and, when queued, its position; NotFound when unknown."""

        def send(q: Queue) -> Awaitable[Any]:
            k = q.keys
            keys = [k.task(eval_id), k.counters, *k.holes, *k.fair]
            return q.scripts.run("status", keys, [k.q, q.weights])

        queue, reply = await self._by_id(eval_id, send)
        if not reply:
            raise NotFound(f"no such task: {eval_id}")
        flat, position = reply
        rec = dict(zip(flat[::2], flat[1::2], strict=True))
        if int(position) and queue.whole.parts[1:]:
            position = await partitions.position(queue, rec, int(position))
        return render_record(eval_id, rec, int(position), queue.keys.queue)

    # --- the schedule, groups, notifications --------------------------------------------

    async def promote(self) -> float | None:
        """Queue the scheduled/retrying tasks that are due, expire the waiting tasks whose
        expiry came, let go of lapsed throttle windows; seconds until the next due time or
        expiry (0.0: a batch was full, call again). In every partition when partitioned."""
        if self.spread is not None:
            return await self.spread.promote()
        return await self.promote_one()

    @translate_errors
    async def promote_one(self) -> float | None:
        """`promote` in this queue (partition)."""
        k, s = self.keys, self.settings
        keys = [k.scheduled, k.counters, k.events, *k.streams, *k.holes]
        keys += [k.expiries, k.dedup, k.dedup_ttl, *k.fair, *k.effects]
        argv: list[Any] = [k.task_prefix, PROMOTE_LIMIT, s.events_maxlen, s.result_ttl]
        _, wait_ms, expired, full = await self.scripts.run("promote", keys, argv)
        self._expired(expired)
        if int(full):
            return 0.0
        return None if int(wait_ms) < 0 else int(wait_ms) / 1000

    async def ensure_groups(self) -> None:
        """Create the priority streams and their consumer group if missing (each partition's,
        after the partition count history was read: engine/partitions.py `history`)."""
        if self.whole is self and (self.keys.q or self is self.engine.default):
            await partitions.history(self)
        for part in self.parts:
            await create_groups(self.redis, part.keys.streams, GROUP)

    async def notifications(self) -> AsyncIterator[tuple[str, str]]:
        """("cancel", eval_id) for terminate=true cancels, ("schedule", due ms or "release")
        for new due times and released leases, from any process (pub/sub: at-most-once, so
        consumers also re-check on their own). Sharded pub/sub when the scripts publish so
        (a cluster of Redis >= 7, see engine/scripts.py); `Unavailable` on any failure.
        Every partition's, merged, when partitioned."""
        if self.spread is not None:
            async for item in self.spread.notifications():
                yield item
            return
        async for item in self.own_notifications():
            yield item

    async def own_notifications(self) -> AsyncIterator[tuple[str, str]]:
        """`notifications` of this queue (partition)'s own channels."""
        kinds = {self.keys.cancel_channel: "cancel", self.keys.schedule_channel: "schedule"}
        await self.scripts.prepare()
        async for channel, data in subscribed(self.redis, list(kinds), self.scripts.sharded_pubsub):
            yield kinds[channel], data
