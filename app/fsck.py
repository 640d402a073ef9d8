"""fsck: a live consistency audit of every queue's Redis structures (issue 11, item 3).

It compares task records, priority-stream entries, the consumer group's pending entries,
leases, schedules, the DLQ and its index, `deps:<parent>` sets, the PAI-EAS index zsets
and requestId hashes, and the per-state counters, of the default legacy queue, every
named queue and every PAI-EAS service (input and sink). `CLASSES` lists what it finds.

It runs while consumers work. Python only lists candidates (SCAN, ZSCAN, HSCAN, XRANGE,
XPENDING, each with a COUNT of BATCH); every check and every repair is one Lua script over
one batch (app/lua/fsck_*.lua) that re-reads what it judges, so a transition made since
the listing is never taken for an orphan and a repair never races a live transition.

Two callers: `python -m app fsck [--repair] [--json]` (a whole audit), and `background`,
run from the consumers' cleanup loop by one process per CLEANUP_INTERVAL (a lock), with
repair on, bounded to BACKGROUND_STEPS steps per run and resuming where the last
run stopped. Each audit leaves its summary in Redis (`<base>fsck:last`) and adds what it
found and repaired to `<base>fsck:found` / `<base>fsck:repaired` (fields `queue<TAB>class`),
so /status and /metrics of every replica show them.

Imports: streams, models, settings, errors (and structlog); no HTTP.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from redis.exceptions import ResponseError

from app.errors import Unavailable
from app.models import PRIORITY_ORDER, Priority, iso_ms
from app.streams import GROUP, Keys, Streams, _text, consumer_name, translate_errors

log = structlog.get_logger()

BATCH = 200  # candidates per listing (the COUNT) and per script call
LEASE_INDEX_LIMIT = 10_000  # leases read at once to judge pending entries whose entry is gone
COUNTER_LIMIT = 10_000  # items a counter check may read in one script
# Steps one background run makes (a step: one listing of at most BATCH candidates, or one
# SCAN with COUNT BATCH, then at most one script call): ~2,000 round trips, ~200,000 keys.
BACKGROUND_STEPS = 1_000

LOST = "dead-lettered as lost"  # the start of a repair that dead-lettered a lost task

# The orphan classes: what each means. The repair of each is in the README (*fsck*) and in
# the `action` every finding carries.
CLASSES: dict[str, str] = {
    "queued_without_entry": "queued task whose stream entry is gone",
    "processing_without_entry": "processing task whose stream entry is gone",
    "processing_without_lease": "processing task without a lease",
    "processing_not_pending": "processing task whose entry is not in the group's pending list",
    "schedule_missing": "scheduled or retrying task missing from the schedule",
    "deferred_stuck": "deferred task that no finishing parent will release",
    "eas_index_missing": "PAI-EAS item missing from its queue's index",
    "entry_orphan": "stream entry no queued or processing task names",
    "pel_orphan": "pending entry no processing task holds",
    "lease_orphan": "lease of a task that is not processing",
    "schedule_orphan": "schedule member that is not a scheduled or retrying task",
    "dlq_index_orphan": "DLQ index field naming no dead letter",
    "dlq_unindexed": "dead letter missing from the DLQ index",
    "deps_orphan": "deps:<parent> member that is not a deferred task waiting on it",
    "eas_index_orphan": "PAI-EAS index member whose item is gone or finished",
    "eas_rid_orphan": "PAI-EAS requestId naming no item in the sink",
    "counter_drift": "per-state counter that disagrees with the structures",
}


@dataclass(frozen=True)
class Orphan:
    queue: str
    kind: str  # one of CLASSES
    ref: str  # eval_id, stream entry id, requestId, or counter name
    detail: str
    action: str = ""  # what the repair did, or why it did nothing ('' when only reporting)
    fixed: bool = False

    def view(self) -> dict[str, Any]:
        found: dict[str, Any] = {"queue": self.queue, "class": self.kind, "ref": self.ref}
        found["detail"] = self.detail
        if self.action:
            found |= {"action": self.action, "repaired": self.fixed}
        return found


@dataclass
class Report:
    repair: bool
    by: str  # "cli" or "background"
    started_ms: int = 0  # Redis server time
    orphans: list[Orphan] = field(default_factory=list)
    checked: int = 0  # candidates examined
    queues: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # counter checks left out, and why
    complete: bool = True  # False: a bounded run stopped before the end (it resumes next time)
    duration_ms: int = 0

    @property
    def consistent(self) -> bool:
        return not self.orphans

    def found(self) -> dict[str, int]:
        return dict(Counter(o.kind for o in self.orphans))

    def repaired(self) -> int:
        return sum(o.fixed for o in self.orphans)

    def summary(self) -> dict[str, Any]:
        """What /status shows of the last audit (kept in Redis)."""
        return {
            "at": iso_ms(str(self.started_ms)),
            "at_ms": self.started_ms,
            "by": self.by,
            "repair": self.repair,
            "complete": self.complete,
            "duration_ms": self.duration_ms,
            "queues": len(self.queues),
            "checked": self.checked,
            "found": self.found(),
            "repaired": self.repaired(),
            "skipped": self.skipped,
        }

    def view(self) -> dict[str, Any]:
        """`fsck --json`."""
        return {
            "consistent": self.consistent,
            **self.summary(),
            "queues": self.queues,
            "orphans": [o.view() for o in self.orphans],
        }


@dataclass(frozen=True)
class Target:
    """One queue: its keys, and the SCAN pattern of the task records its scan covers (None
    for named legacy queues, whose records share the default queue's namespace)."""

    keys: Keys
    records: str | None
    eas: bool = False
    sink: bool = False


Fetch = Callable[[str], Awaitable[tuple[list[str], str | None]]]
Check = Callable[[list[str]], Awaitable[list[Orphan]]]


@dataclass(frozen=True)
class Pass:
    """One structure walked in batches: `fetch(cursor)` lists candidates and the next
    cursor (None at the end), `check(candidates)` runs the script over them."""

    name: str
    start: str
    fetch: Fetch
    check: Check


def _glob(text: str) -> str:
    """`text` as a literal SCAN MATCH prefix."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class Audit:
    """One audit of the whole deployment (see the module docstring)."""

    def __init__(
        self, streams: Streams, repair: bool, by: str = "cli", budget: int | None = None
    ) -> None:
        settings = streams.settings
        self.root = Streams(streams.redis, settings, scripts=streams.scripts)
        self.redis: Any = streams.redis
        self.settings = settings
        self.flag = "1" if repair else "0"
        self.budget = budget
        self.report = Report(repair, by)
        self.stopped_at: tuple[str, str] | None = None  # (pass, cursor) of a bounded run
        self.steps = 0  # listings made (each with at most one script call)

    @translate_errors
    async def run(self, resume: tuple[str, str] | None = None) -> Report:
        """Walk every pass (from `resume`, a (pass, cursor) a bounded run stopped at), then,
        once the walk reached the end, check every queue's counters."""
        started = time.monotonic()
        seconds, micros = await self.redis.time()
        self.report.started_ms = int(seconds) * 1000 + int(micros) // 1000
        targets = await self.targets()
        self.report.queues = [t.keys.queue for t in targets]
        passes = [p for t in targets for p in self._passes(t)] + [self._deps_pass()]
        names = [p.name for p in passes]
        resumed = resume is not None and resume[0] in names
        first = names.index(resume[0]) if resume and resumed else 0
        cursor = resume[1] if resume and resumed else None
        for p in passes[first:]:
            stopped = await self._walk(p, cursor or p.start)
            cursor = None
            if stopped is not None:
                self.report.complete = False
                self.stopped_at = (p.name, stopped)
                break
        else:
            for target in targets:
                await self._counters(target)
        self.report.duration_ms = int((time.monotonic() - started) * 1000)
        return self.report

    async def targets(self) -> list[Target]:
        """The default queue, every named queue, every PAI-EAS service's input and sink."""
        root, settings = self.root, self.settings
        names = sorted({*settings.queue_executors, *await root.named_queues()} - {settings.queue})
        found = [Target(root.keys, _glob(root.keys.task_prefix) + "*")]
        found += [Target(root.for_queue(name).keys, None) for name in names]
        services = sorted(_text(s) for s in await self.redis.smembers(root.keys.eas_services))
        for service in services:
            tag = f"eas:{service}"
            for keys in (Keys(tag, name=service), Keys(tag, part="sink", name=f"{service}/sink")):
                pattern = _glob(keys.task_prefix) + "*"
                found.append(Target(keys, pattern, eas=True, sink=keys.prefix != keys.base))
        return found

    async def _walk(self, p: Pass, cursor: str) -> str | None:
        """Steps of one pass until its end (None) or the budget (the cursor to resume at)."""
        while True:
            if self.budget is not None and self.steps >= self.budget:
                return cursor
            self.steps += 1
            candidates, following = await p.fetch(cursor)
            if candidates:
                self.report.checked += len(candidates)
                self.report.orphans += await p.check(candidates)
            if following is None:
                return None
            cursor = following

    # --- the passes of one queue ---------------------------------------------------------

    def _passes(self, t: Target) -> list[Pass]:
        k, label = t.keys, t.keys.prefix
        passes = []
        if t.records is not None:
            pattern = t.records
            passes.append(Pass(f"{label}records", "0", self._scan(pattern), self._records_of(k)))
        for prio, stream in zip(PRIORITY_ORDER, k.streams, strict=True):
            for mode, fetch in (("entries", self._xrange), ("pending", self._pending)):
                check = self._entries_of(k, prio, mode)
                passes.append(Pass(f"{label}{mode}:{prio.value}", "-", fetch(stream), check))
        for kind, key in (("leases", k.leases), ("scheduled", k.scheduled)):
            passes.append(Pass(f"{label}{kind}", "0", self._zscan(key), self._refs_of(k, kind)))
        passes.append(
            Pass(f"{label}dlq:index", "0", self._hscan(k.dlq_index), self._dlq(k, "index"))
        )
        passes.append(Pass(f"{label}dlq", "-", self._xrange(k.dlq), self._dlq(k, "stream")))
        if t.eas:
            passes.append(Pass(f"{label}index", "0", self._zscan(k.index), self._eas(k, "index")))
        if t.sink:
            passes.append(Pass(f"{label}rid", "0", self._hscan(k.rid), self._eas(k, "rid")))
        return passes

    def _deps_pass(self) -> Pass:
        pattern = _glob(self.root.keys.deps_prefix) + "*"
        return Pass(f"{self.root.keys.base}deps", "0", self._scan(pattern), self._deps_sets)

    # --- listing -------------------------------------------------------------------------

    def _scan(self, pattern: str) -> Fetch:
        async def fetch(cursor: str) -> tuple[list[str], str | None]:
            following, keys = await self.redis.scan(int(cursor), match=pattern, count=BATCH)
            return [_text(k) for k in keys], None if int(following) == 0 else str(following)

        return fetch

    def _zscan(self, key: str) -> Fetch:
        async def fetch(cursor: str) -> tuple[list[str], str | None]:
            following, pairs = await self.redis.zscan(key, int(cursor), count=BATCH)
            return [_text(m) for m, _ in pairs], None if int(following) == 0 else str(following)

        return fetch

    def _hscan(self, key: str) -> Fetch:
        async def fetch(cursor: str) -> tuple[list[str], str | None]:
            following, fields = await self.redis.hscan(key, int(cursor), count=BATCH)
            return [_text(f) for f in fields], None if int(following) == 0 else str(following)

        return fetch

    def _xrange(self, key: str) -> Fetch:
        async def fetch(cursor: str) -> tuple[list[str], str | None]:
            start = cursor if cursor == "-" else f"({cursor}"
            ids = [_text(i) for i, _ in await self.redis.xrange(key, start, "+", count=BATCH)]
            return ids, ids[-1] if len(ids) == BATCH else None

        return fetch

    def _pending(self, key: str) -> Fetch:
        async def fetch(cursor: str) -> tuple[list[str], str | None]:
            start = cursor if cursor == "-" else f"({cursor}"
            try:
                rows = await self.redis.xpending_range(key, GROUP, start, "+", BATCH)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    return [], None  # no group yet: nothing is pending
                raise
            ids = [_text(row["message_id"]) for row in rows]
            return ids, ids[-1] if len(ids) == BATCH else None

        return fetch

    # --- checking ------------------------------------------------------------------------

    async def _script(self, name: str, keys: list[str], argv: list[Any]) -> Any:
        return await self.root.scripts.run(name, keys, [self.flag, *argv])

    @staticmethod
    def _orphans(queue: str, rows: Any) -> list[Orphan]:
        return [
            Orphan(queue, _text(kind), _text(ref), _text(detail), _text(action), bool(int(fixed)))
            for ref, kind, detail, action, fixed in rows
        ]

    def _records_of(self, k: Keys) -> Check:
        async def check(task_keys: list[str]) -> list[Orphan]:
            return await self._records(k, [key.removeprefix(k.task_prefix) for key in task_keys])

        return check

    async def _records(self, k: Keys, ids: list[str], rerouted: bool = False) -> list[Orphan]:
        s = self.settings
        keys = [*k.streams, k.counters, k.leases, k.scheduled, k.dlq, k.dlq_index, *k.holes]
        keys += [k.events, *(k.task(i) for i in ids)]
        argv = [GROUP, k.named, s.events_maxlen, s.failure_ttl, s.result_ttl, k.schedule_channel]
        rows, misrouted = await self._script("fsck_records", keys, [*argv, *ids])
        found = self._orphans(k.queue, rows)
        by_queue: dict[str, list[str]] = {}
        for eval_id, queue in misrouted:
            by_queue.setdefault(_text(queue), []).append(_text(eval_id))
        for queue, moved in by_queue.items():
            if not rerouted:  # a record of a named queue, found by the default queue's scan
                found += await self._records(self.root.for_queue(queue or None).keys, moved, True)
        return found

    def _entries_of(self, k: Keys, prio: Priority, mode: str) -> Check:
        i = PRIORITY_ORDER.index(prio)

        async def check(ids: list[str]) -> list[Orphan]:
            keys = [k.streams[i], k.counters, k.holes[i], k.leases]
            argv = [GROUP, k.task_prefix, prio.value, k.named, mode, LEASE_INDEX_LIMIT, *ids]
            return self._orphans(k.queue, await self._script("fsck_entries", keys, argv))

        return check

    def _refs_of(self, k: Keys, kind: str) -> Check:
        async def check(ids: list[str]) -> list[Orphan]:
            key = k.leases if kind == "leases" else k.scheduled
            argv = [kind, k.task_prefix, k.named, *ids]
            return self._orphans(k.queue, await self._script("fsck_refs", [key], argv))

        return check

    def _dlq(self, k: Keys, mode: str) -> Check:
        async def check(ids: list[str]) -> list[Orphan]:
            keys = [k.dlq, k.dlq_index]
            return self._orphans(k.queue, await self._script("fsck_dlq", keys, [mode, *ids]))

        return check

    def _eas(self, k: Keys, mode: str) -> Check:
        async def check(ids: list[str]) -> list[Orphan]:
            keys = [k.index if mode == "index" else k.rid]
            argv = [mode, k.prefix, *ids]
            return self._orphans(k.queue, await self._script("fsck_eas", keys, argv))

        return check

    async def _deps_sets(self, set_keys: list[str]) -> list[Orphan]:
        """Every member of each `deps:<parent>` set (at most MAX_DEPENDANTS), in batches."""
        k, s = self.root.keys, self.settings
        found: list[Orphan] = []
        for key in set_keys:
            parent, cursor = key.removeprefix(k.deps_prefix), 0
            while True:
                cursor, members = await self.redis.sscan(key, cursor, count=BATCH)
                if members:
                    argv = [parent, k.task_prefix, s.events_maxlen, s.result_ttl]
                    argv += [_text(m) for m in members]
                    rows = await self._script("fsck_deps", [key], argv)
                    found += self._orphans(k.queue, rows)
                if int(cursor) == 0:
                    break
        return found

    async def _counters(self, t: Target) -> None:
        """Counters are judged once the structures agree: without --repair, a queue with
        other orphans is left out (their repairs change what the counters should say)."""
        k = t.keys
        if self.flag == "0" and any(o.queue == k.queue for o in self.report.orphans):
            self.report.skipped.append(f"{k.queue}: counters (other orphans first)")
            return
        keys = [*k.streams, k.counters, *k.holes, k.scheduled]
        argv = [k.task_prefix, k.named, COUNTER_LIMIT]
        rows, skipped = await self._script("fsck_counters", keys, argv)
        self.report.orphans += self._orphans(k.queue, rows)
        too_large = f"more than {COUNTER_LIMIT} items to read"
        self.report.skipped += [f"{k.queue}: {_text(name)} ({too_large})" for name in skipped]


# --- the last audit, in Redis ------------------------------------------------------------------


def _root(streams: Streams) -> Keys:
    return Keys(streams.settings.queue)


@translate_errors
async def record(streams: Streams, report: Report) -> None:
    """Keep the audit's summary and add its findings to the totals, in one transaction."""
    k = _root(streams)
    pipe = streams.redis.pipeline(transaction=True)
    pipe.set(k.fsck + "last", orjson.dumps(report.summary()))
    found = Counter(f"{o.queue}\t{o.kind}" for o in report.orphans)
    repaired = Counter(f"{o.queue}\t{o.kind}" for o in report.orphans if o.fixed)
    for name, n in found.items():
        pipe.hincrby(k.fsck + "found", name, n)
    for name, n in repaired.items():
        pipe.hincrby(k.fsck + "repaired", name, n)
    await pipe.execute()


@translate_errors
async def last_audit(streams: Streams) -> dict[str, Any] | None:
    """The summary of the last audit (any process, background or command line), or None."""
    raw = await streams.redis.get(_root(streams).fsck + "last")
    return orjson.loads(raw) if raw else None


@dataclass(frozen=True)
class Totals:
    found: dict[tuple[str, str], int]  # (queue, class) -> orphans found by every audit
    repaired: dict[tuple[str, str], int]
    last: dict[str, Any] | None


@translate_errors
async def totals(streams: Streams) -> Totals:
    """What /metrics exports of the audits, in one round trip."""
    k = _root(streams)
    pipe = streams.redis.pipeline(transaction=False)
    pipe.hgetall(k.fsck + "found")
    pipe.hgetall(k.fsck + "repaired")
    pipe.get(k.fsck + "last")
    found, repaired, last = await pipe.execute()

    def split(raw: dict[bytes, bytes]) -> dict[tuple[str, str], int]:
        pairs = ((_text(name).partition("\t"), int(n)) for name, n in raw.items())
        return {(queue, kind): n for (queue, _, kind), n in pairs}

    return Totals(split(found), split(repaired), orjson.loads(last) if last else None)


# --- the background audit ----------------------------------------------------------------------


async def background(streams: Streams) -> Report | None:
    """The audit of the hourly housekeeping, with repair: run by the one process that takes
    this interval's lock (None elsewhere), bounded to BACKGROUND_STEPS steps, resuming
    where the previous run stopped; one log line per orphan, one summary line."""
    k, settings = _root(streams), streams.settings
    lock_ms = max(1, int(settings.cleanup_interval * 900))  # expires a little before the next
    try:
        if not await streams.redis.set(k.fsck + "lock", consumer_name(), nx=True, px=lock_ms):
            return None
        report = await _bounded(streams, k)
    except Unavailable:
        raise
    except Exception:  # a bug: say so, and keep the housekeeping loop alive
        log.exception("fsck_failed")
        return None
    for orphan in report.orphans:
        _log_orphan(orphan)
    log.info(
        "fsck",
        found=report.found(),
        repaired=report.repaired(),
        checked=report.checked,
        complete=report.complete,
        duration_ms=report.duration_ms,
    )
    return report


async def _bounded(streams: Streams, k: Keys) -> Report:
    cursor_key = k.fsck + "cursor"
    saved = await streams.redis.hmget(cursor_key, "pass", "cursor")
    resume = (_text(saved[0]), _text(saved[1])) if saved[0] and saved[1] else None
    audit = Audit(streams, repair=True, by="background", budget=BACKGROUND_STEPS)
    report = await audit.run(resume)
    if audit.stopped_at:
        name, cursor = audit.stopped_at
        await streams.redis.hset(cursor_key, mapping={"pass": name, "cursor": cursor})
    else:
        await streams.redis.delete(cursor_key)
    await record(streams, report)
    return report


def _log_orphan(orphan: Orphan) -> None:
    """One line per orphan; a task dead-lettered because its entry was lost is `task_lost`,
    as when a claim finds it."""
    fields = {"queue": orphan.queue, "class": orphan.kind, "detail": orphan.detail}
    if orphan.fixed and orphan.action.startswith(LOST):
        log.error("task_lost", eval_id=orphan.ref, reason=orphan.detail, **fields)
    else:
        log.warning("fsck_orphan", ref=orphan.ref, action=orphan.action, **fields)
