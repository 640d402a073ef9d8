"""The audits kept in Redis, and the background audit of the hourly housekeeping.

Each audit leaves its summary in Redis (`<base>fsck:last`) and adds what it found and
repaired to `<base>fsck:found` / `<base>fsck:repaired` (fields `queue<TAB>class`), so
/status and /metrics of every replica show them. `background` is the runtime's hourly
audit: one process per CLEANUP_INTERVAL takes the lock and audits with repair on, bounded
to BACKGROUND_STEPS steps per run, resuming where the last run stopped.

Imports: client, keys, engine, fsck, errors (and structlog, orjson).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from app.engine.client import consumer_name, text, translate_errors
from app.engine.engine import Engine
from app.engine.fsck import Audit, Orphan, Report, Target
from app.engine.keys import QueueKeys
from app.errors import Unavailable

log = structlog.get_logger()

LOST = "dead-lettered as lost"  # the start of a repair that dead-lettered a lost task
# Steps one background run makes (a step: one listing of at most fsck.BATCH candidates, or
# one SCAN with COUNT BATCH, then at most one script call): ~2,000 round trips, ~200,000 keys.
BACKGROUND_STEPS = 1_000


# --- the last audit, in Redis ------------------------------------------------------------------


@translate_errors
async def record(engine: Engine, report: Report) -> None:
    """Keep the audit's summary and add its findings to the totals, in one transaction."""
    k = engine.keys
    pipe = engine.client.pipeline(transaction=True)
    pipe.set(k.fsck + "last", orjson.dumps(report.summary()))
    found = Counter(f"{o.queue}\t{o.kind}" for o in report.orphans)
    repaired = Counter(f"{o.queue}\t{o.kind}" for o in report.orphans if o.fixed)
    for name, n in found.items():
        pipe.hincrby(k.fsck + "found", name, n)
    for name, n in repaired.items():
        pipe.hincrby(k.fsck + "repaired", name, n)
    await pipe.execute()


@translate_errors
async def last_audit(engine: Engine) -> dict[str, Any] | None:
    """The summary of the last audit (any process, background or command line), or None."""
    raw = await engine.client.get(engine.keys.fsck + "last")
    return orjson.loads(raw) if raw else None


@dataclass(frozen=True)
class Totals:
    found: dict[tuple[str, str], int]  # (queue, class) -> orphans found by every audit
    repaired: dict[tuple[str, str], int]
    last: dict[str, Any] | None


@translate_errors
async def totals(engine: Engine) -> Totals:
    """What /metrics exports of the audits, in one round trip."""
    k = engine.keys
    pipe = engine.client.pipeline(transaction=False)
    pipe.hgetall(k.fsck + "found")
    pipe.hgetall(k.fsck + "repaired")
    pipe.get(k.fsck + "last")
    found, repaired, last = await pipe.execute()

    def split(raw: dict[bytes, bytes]) -> dict[tuple[str, str], int]:
        pairs = ((text(name).partition("\t"), int(n)) for name, n in raw.items())
        return {(queue, kind): n for (queue, _, kind), n in pairs}

    return Totals(split(found), split(repaired), orjson.loads(last) if last else None)


# --- the background audit ----------------------------------------------------------------------


async def background(engine: Engine, more: Sequence[Target] = ()) -> Report | None:
    """The audit of the hourly housekeeping, with repair: run by the one process that takes
    this interval's lock (None elsewhere), bounded to BACKGROUND_STEPS steps, resuming
    where the previous run stopped; one log line per orphan, one summary line. `more`:
    numbered queues of a wing above (see `Audit`)."""
    k, settings = engine.keys, engine.settings
    lock_ms = max(1, int(settings.cleanup_interval * 900))  # expires a little before the next
    try:
        if not await engine.client.set(k.fsck + "lock", consumer_name(), nx=True, px=lock_ms):
            return None
        report = await _bounded(engine, k, more)
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


async def _bounded(engine: Engine, k: QueueKeys, more: Sequence[Target]) -> Report:
    cursor_key = k.fsck + "cursor"
    saved = await engine.client.hmget(cursor_key, "pass", "cursor")
    resume = (text(saved[0]), text(saved[1])) if saved[0] and saved[1] else None
    audit = Audit(engine, repair=True, by="background", budget=BACKGROUND_STEPS, more=more)
    report = await audit.run(resume)
    if audit.stopped_at:
        name, cursor = audit.stopped_at
        await engine.client.hset(cursor_key, mapping={"pass": name, "cursor": cursor})
    else:
        await engine.client.delete(cursor_key)
    await record(engine, report)
    return report


def _log_orphan(orphan: Orphan) -> None:
    """One line per orphan; a task dead-lettered because its entry was lost is `task_lost`,
    as when a claim finds it."""
    fields = {"queue": orphan.queue, "class": orphan.kind, "detail": orphan.detail}
    if orphan.fixed and orphan.action.startswith(LOST):
        log.error("task_lost", eval_id=orphan.ref, reason=orphan.detail, **fields)
    else:
        log.warning("fsck_orphan", ref=orphan.ref, action=orphan.action, **fields)
