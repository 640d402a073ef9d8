"""fsck: a live consistency audit of every queue's Redis structures (issue 11, item 3).

It compares task records (and the dependants they mark), priority-stream entries, the
consumer group's pending entries, leases, schedules, the DLQ and its index, the index
zsets and aliases hashes of numbered queues, and the per-state counters, of the default
legacy queue, every
named queue and the numbered queues a wing above hands in (`numbered`: PAI-EAS services'
inputs and sinks). `CLASSES` lists what it finds; the classes of numbered queues keep the
names of their first user, PAI-EAS (they are output: CLI, /status, /metrics).

It runs while consumers work. Python only lists candidates (SCAN, ZSCAN, HSCAN, XRANGE,
XPENDING, each with a COUNT of BATCH); every check and every repair is one Lua script over
one batch (engine/lua/fsck_*.lua) that re-reads what it judges, so a transition made since
the listing is never taken for an orphan and a repair never races a live transition.

Two callers: `python -m app fsck [--repair] [--json]` (a whole audit), and the runtime's
hourly housekeeping (`audits.background`); audits.py keeps their summaries in Redis.

Imports: client, keys, engine, models.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.engine.client import is_missing_group, scan_page, text, translate_errors
from app.engine.engine import Engine
from app.engine.keys import GROUP, QueueKeys
from app.models import PRIORITY_ORDER, Priority, iso_ms

BATCH = 200  # candidates per listing (the COUNT) and per script call
LEASE_INDEX_LIMIT = 10_000  # leases read at once to judge pending entries whose entry is gone
COUNTER_LIMIT = 10_000  # items a counter check may read in one script

# The orphan classes: what each means. The repair of each is in docs/operations.md (*fsck*) and in
# the `action` every finding carries.
CLASSES: dict[str, str] = {
    "queued_without_entry": "queued task whose stream entry is gone",
    "queued_not_waiting": "queued task of a tenant missing from its waiting order",
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
    "expiry_missing": "waiting task with an expiry missing from its queue's expiries",
    "expiry_orphan": "expiries member that is not a waiting task",
    "dedup_orphan": "dedup_key naming no task that holds it",
    "dlq_index_orphan": "DLQ index field naming no dead letter",
    "dlq_unindexed": "dead letter missing from the DLQ index",
    "deps_orphan": "dependant mark of a parent that no deferred task waiting on it matches",
    "waiting_orphan": "fair-share waiting member that is no queued task of that tenant",
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
    """One queue: its keys, and the SCAN pattern of its task records; for a numbered
    queue, its index is checked too, and its aliases when it has some."""

    keys: QueueKeys
    records: str
    numbered: bool = False
    aliased: bool = False


def numbered(keys: QueueKeys, aliased: bool) -> Target:
    """The target of a numbered queue (its own records)."""
    return Target(keys, _glob(keys.task_prefix) + "*", numbered=True, aliased=aliased)


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
        self,
        engine: Engine,
        repair: bool,
        by: str = "cli",
        budget: int | None = None,
        more: Sequence[Target] = (),
    ) -> None:
        self.engine = engine
        self.root = engine.keys
        self.redis: Any = engine.client
        self.settings = engine.settings
        self.more = list(more)  # numbered queues of a wing above
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
        self.report.queues = list(dict.fromkeys(t.keys.queue for t in targets))
        fair = await self._fair_targets(targets)
        passes = [p for t in targets for p in self._passes(t, t in fair)]
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
        """The default queue, every named queue (each partition of a partitioned one),
        then the numbered queues handed in."""
        found = [
            Target(part.keys, _glob(part.keys.task_prefix) + "*")
            for queue in await self.engine.legacy_queues()
            for part in queue.parts
        ]
        return found + self.more

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

    async def _fair_targets(self, targets: list[Target]) -> list[Target]:
        """The queues where tenants' tasks exist (fair share): one EXISTS each, in one round
        trip; the others' audits skip the tenant streams and waiting orders."""
        pipe = self.redis.pipeline(transaction=False)
        for t in targets:
            pipe.exists(*t.keys.tenant_streams, *t.keys.waiting)
        found = await pipe.execute()
        return [t for t, n in zip(targets, found, strict=True) if n]

    def _passes(self, t: Target, fair: bool = False) -> list[Pass]:
        k, label = t.keys, t.keys.prefix
        passes = [Pass(f"{label}records", "0", self._scan(t.records), self._records_of(k))]
        for prio, stream in zip(PRIORITY_ORDER, k.streams, strict=True):
            for mode, fetch in (("entries", self._xrange), ("pending", self._pending)):
                check = self._entries_of(k, prio, mode)
                passes.append(Pass(f"{label}{mode}:{prio.value}", "-", fetch(stream), check))
        if fair:
            passes += self._fair_passes(t)
        for kind, key in (("leases", k.leases), ("scheduled", k.scheduled)):
            passes.append(Pass(f"{label}{kind}", "0", self._zscan(key), self._refs_of(k, kind)))
        passes.append(Pass(f"{label}expiries", "0", self._zscan(k.expiries), self._refs_of(k)))
        passes.append(Pass(f"{label}dedup", "0", self._hscan(k.dedup), self._dedup(k)))
        passes.append(
            Pass(f"{label}dlq:index", "0", self._hscan(k.dlq_index), self._dlq(k, "index"))
        )
        passes.append(Pass(f"{label}dlq", "-", self._xrange(k.dlq), self._dlq(k, "stream")))
        if t.numbered:
            index = self._numbered(k, "index")
            passes.append(Pass(f"{label}index", "0", self._zscan(k.index), index))
        if t.aliased:
            aliases = self._numbered(k, "rid")
            passes.append(Pass(f"{label}rid", "0", self._hscan(k.aliases), aliases))
        return passes

    def _fair_passes(self, t: Target) -> list[Pass]:
        """The tenant streams' entries and pending entries, and the waiting orders."""
        k, label, passes = t.keys, t.keys.prefix, []
        for prio, stream, wait in zip(PRIORITY_ORDER, k.tenant_streams, k.waiting, strict=True):
            for mode, fetch in (("entries", self._xrange), ("pending", self._pending)):
                check = self._entries_of(k, prio, mode, stream)
                passes.append(
                    Pass(f"{label}{mode}:{prio.value}:tenants", "-", fetch(stream), check)
                )
            check = self._waiting_of(k, prio)
            passes.append(Pass(f"{label}waiting:{prio.value}", "0", self._zscan(wait), check))
        return passes

    # --- listing -------------------------------------------------------------------------

    def _scan(self, pattern: str) -> Fetch:
        async def fetch(cursor: str) -> tuple[list[str], str | None]:
            # every primary of a cluster, one after the other (the cursor says which)
            following, keys = await scan_page(self.redis, cursor, pattern, BATCH)
            return [text(k) for k in keys], None if following == "0" else following

        return fetch

    def _zscan(self, key: str) -> Fetch:
        async def fetch(cursor: str) -> tuple[list[str], str | None]:
            following, pairs = await self.redis.zscan(key, int(cursor), count=BATCH)
            return [text(m) for m, _ in pairs], None if int(following) == 0 else str(following)

        return fetch

    def _hscan(self, key: str) -> Fetch:
        async def fetch(cursor: str) -> tuple[list[str], str | None]:
            following, fields = await self.redis.hscan(key, int(cursor), count=BATCH)
            return [text(f) for f in fields], None if int(following) == 0 else str(following)

        return fetch

    def _xrange(self, key: str) -> Fetch:
        async def fetch(cursor: str) -> tuple[list[str], str | None]:
            start = cursor if cursor == "-" else f"({cursor}"
            ids = [text(i) for i, _ in await self.redis.xrange(key, start, "+", count=BATCH)]
            return ids, ids[-1] if len(ids) == BATCH else None

        return fetch

    def _pending(self, key: str) -> Fetch:
        async def fetch(cursor: str) -> tuple[list[str], str | None]:
            start = cursor if cursor == "-" else f"({cursor}"
            try:
                rows = await self.redis.xpending_range(key, GROUP, start, "+", BATCH)
            except Exception as exc:
                if is_missing_group(exc):
                    return [], None  # no group yet: nothing is pending
                raise
            ids = [text(row["message_id"]) for row in rows]
            return ids, ids[-1] if len(ids) == BATCH else None

        return fetch

    # --- checking ------------------------------------------------------------------------

    async def _script(self, name: str, keys: list[str], argv: list[Any]) -> Any:
        return await self.engine.scripts.run(name, keys, [self.flag, *argv])

    @staticmethod
    def _orphans(queue: str, rows: Any) -> list[Orphan]:
        return [
            Orphan(queue, text(kind), text(ref), text(detail), text(action), bool(int(fixed)))
            for ref, kind, detail, action, fixed in rows
        ]

    def _records_of(self, k: QueueKeys) -> Check:
        async def check(task_keys: list[str]) -> list[Orphan]:
            return await self._records(k, [key.removeprefix(k.task_prefix) for key in task_keys])

        return check

    async def _records(self, k: QueueKeys, ids: list[str]) -> list[Orphan]:
        s = self.settings
        keys = [*k.streams, k.counters, k.leases, k.scheduled, k.dlq, k.dlq_index, *k.holes]
        keys += [k.events, k.expiries, *k.fair, *(k.task(i) for i in ids), *k.effects]
        argv = [GROUP, k.q, s.events_maxlen, s.failure_ttl, s.result_ttl, k.schedule_channel]
        (rows,) = await self._script("fsck_records", keys, [*argv, *ids])
        return self._orphans(k.queue, rows)

    def _entries_of(
        self, k: QueueKeys, prio: Priority, mode: str, stream: str | None = None
    ) -> Check:
        """Entries (or pending entries) of a priority stream, or of `stream`, its tenant
        stream (fair share: the same checks; its entries carry no sequence number)."""
        i = PRIORITY_ORDER.index(prio)

        async def check(ids: list[str]) -> list[Orphan]:
            keys = [stream or k.streams[i], k.counters, k.holes[i], k.leases]
            argv = [GROUP, k.task_prefix, prio.value, k.q, mode, LEASE_INDEX_LIMIT, *ids]
            return self._orphans(k.queue, await self._script("fsck_entries", keys, argv))

        return check

    def _waiting_of(self, k: QueueKeys, prio: Priority) -> Check:
        i = PRIORITY_ORDER.index(prio)

        async def check(members: list[str]) -> list[Orphan]:
            keys = [k.waiting[i], k.counters]
            argv = [k.task_prefix, k.q, prio.value, *members]
            return self._orphans(k.queue, await self._script("fsck_waiting", keys, argv))

        return check

    def _refs_of(self, k: QueueKeys, kind: str = "expiries") -> Check:
        async def check(ids: list[str]) -> list[Orphan]:
            key = {"leases": k.leases, "scheduled": k.scheduled}.get(kind, k.expiries)
            argv = [kind, k.task_prefix, k.q, *ids]
            keys = [key, *(k.task(i) for i in ids)]
            return self._orphans(k.queue, await self._script("fsck_refs", keys, argv))

        return check

    def _dlq(self, k: QueueKeys, mode: str) -> Check:
        async def check(ids: list[str]) -> list[Orphan]:
            keys = [k.dlq, k.dlq_index]
            return self._orphans(k.queue, await self._script("fsck_dlq", keys, [mode, *ids]))

        return check

    def _dedup(self, k: QueueKeys) -> Check:
        async def check(names: list[str]) -> list[Orphan]:
            keys, argv = [k.dedup, k.dedup_ttl], [k.task_prefix, *names]
            return self._orphans(k.queue, await self._script("fsck_dedup", keys, argv))

        return check

    def _numbered(self, k: QueueKeys, mode: str) -> Check:
        async def check(ids: list[str]) -> list[Orphan]:
            keys = [k.index if mode == "index" else k.aliases]
            argv = [mode, k.prefix, *ids]
            return self._orphans(k.queue, await self._script("fsck_numbered", keys, argv))

        return check

    async def _counters(self, t: Target) -> None:
        """Counters are judged once the structures agree: without --repair, a queue with
        other orphans is left out (their repairs change what the counters should say)."""
        k = t.keys
        if self.flag == "0" and any(o.queue == k.queue for o in self.report.orphans):
            self.report.skipped.append(f"{k.queue}: counters (other orphans first)")
            return
        keys = [*k.streams, k.counters, *k.holes, k.scheduled, *k.waiting]
        argv = [k.task_prefix, k.q, COUNTER_LIMIT]
        rows, skipped = await self._script("fsck_counters", keys, argv)
        self.report.orphans += self._orphans(k.queue, rows)
        too_large = f"more than {COUNTER_LIMIT} items to read"
        self.report.skipped += [f"{k.queue}: {text(name)} ({too_large})" for name in skipped]
