"""One task in depth, for the dashboard's task page: what `GET /tasks/{eval_id}` leaves out.

- the payload (`code`, `language`, `metadata`, ...): in the task hash while scheduled,
  retrying or deferred, in its stream entry while queued or processing, in its dead letter
  once failed; gone once completed or cancelled (null then);
- the holder: the consumer (`host:pid`, or a pull worker's) of the last delivery, and
  while processing the lease's deadline;
- the dead letter of a failed task: error, traceback or executor answer, when;
- the timeline: the task's entries of its queue's events stream (state, attempt, time).
  That stream is capped (EVENTS_MAXLEN) and shared by every task of the queue, so it is
  read from the task's creation to its tail, in pages, at most `SCAN_LIMIT` entries;
  `timeline_complete` is false when the stream no longer reaches back to the creation or
  the scan stopped early.

Legacy queues only (default and named): the default queue's record key of the id is the
id directory (engine/keys.py), a pointer `{q, at}` for a task of a named queue, whose own
record is then read on that queue's tag; a partitioned queue's task is found in its
partition (engine/partitions.py `locate`). Read-only, a few round trips: an operator's page,
never a hot path.

Imports: client, partitions, engine, queue, records, models, errors.
"""

from __future__ import annotations

from typing import Any

from app.engine import partitions
from app.engine.client import text, translate_errors
from app.engine.engine import Engine
from app.engine.queue import Queue
from app.engine.records import created_ms
from app.errors import NotFound
from app.models import decode_json, iso_ms

SCAN_LIMIT = 20_000  # events stream entries read for one timeline, at most
PAGE = 1000
CREATED = ("queued", "scheduled", "deferred", "cancelled")  # a task's first event
# The creating script reads the clock once (TIME, the record's `created`; for a task queued
# at once, its stream entry's XADD, records.created_ms); its XADD of the creation event reads
# it again, so on a loaded server (descheduled mid-script) that event may carry a later
# millisecond. A creation-state event of the task this close after
# `created` is taken for the creation (a cancel or re-queue within it, with the creation
# trimmed away between the two, is what this could mistake).
CREATION_SLACK_MS = 1000


@translate_errors
async def detail(engine: Engine, eval_id: str) -> dict[str, Any]:
    """The payload, holder, dead letter and timeline of a task (see the module docstring);
    NotFound when its record is gone."""
    queue = await partitions.locate(engine, eval_id)  # the id directory, then partitions
    found: Any = await queue.redis.hgetall(queue.keys.task(eval_id)) if queue else {}
    rec: dict[bytes, bytes] = found  # bytes: the client does not decode replies
    if queue is None or not rec.get(b"state"):  # (a named queue's stale pointer: gone)
        raise NotFound(f"no such task: {eval_id}")
    payload, lease, dead = await _stored(queue, eval_id, rec)
    created = int(created_ms(rec) or 0)
    events, complete = await _timeline(queue, eval_id, created)
    return {
        "eval_id": eval_id,
        "queue": queue.keys.queue,
        "state": text(rec.get(b"state", b"")),
        "payload": payload if payload is not None else (dead or {}).pop("payload", None),
        "worker": text(rec[b"worker"]) if b"worker" in rec else None,
        "lease_expires_at": iso_ms(lease),
        "dead_letter": dead,
        "timeline": events,
        "timeline_complete": complete,
    }


async def _stored(
    queue: Queue, eval_id: str, rec: dict[bytes, bytes]
) -> tuple[Any, str | None, dict[str, Any] | None]:
    """The payload (hash or stream entry), the lease deadline (ms) and the dead letter."""
    k = queue.keys
    pipe = queue.redis.pipeline(transaction=False)
    entry, prio = rec.get(b"entry"), text(rec.get(b"prio", b"default"))
    if entry:  # a tenant's task (fair share): its entry is in its tenant stream
        stream = k.fair_at(prio)[0] if b"tenant" in rec else k.stream(prio)
        pipe.xrange(stream, entry, entry)
    else:
        pipe.echo(b"")  # keeps the replies in place: no entry, no payload there
    pipe.zscore(k.leases, eval_id)
    pipe.hget(k.dlq_index, eval_id)
    found, lease, dead_id = await pipe.execute()
    payload = decode_json(rec.get(b"payload"))
    if payload is None and found:
        payload = decode_json(found[0][1].get(b"payload"))
    dead = await _dead_letter(queue, dead_id) if dead_id else None
    return payload, str(int(lease)) if lease is not None else None, dead


async def _dead_letter(queue: Queue, entry: bytes) -> dict[str, Any] | None:
    found: Any = await queue.redis.xrange(queue.keys.dlq, entry, entry)
    if not found:
        return None
    fields = found[0][1]
    letter: dict[str, Any] = {
        "error": text(fields.get(b"error", b"")),
        "failed_at": iso_ms(fields.get(b"failed_at")),
        "payload": decode_json(fields.get(b"payload")),
    }
    detail = decode_json(fields.get(b"detail"))
    if isinstance(detail, dict) and "traceback" in detail:
        letter["traceback"] = detail["traceback"]
    elif detail is not None:
        letter["detail"] = detail
    return letter


async def _timeline(
    queue: Queue, eval_id: str, created_ms: int
) -> tuple[list[dict[str, Any]], bool]:
    """The task's events from its creation on, oldest first. Not cut at its `finished`
    time: the event of the last transition may carry a later millisecond than the time its
    script read, and a re-driven dead letter lives on."""
    first: Any = await queue.redis.xrange(queue.keys.events, "-", "+", count=1)
    start, end = f"{created_ms}-0" if created_ms else "-", "+"
    found, scanned = [], 0
    while scanned < SCAN_LIMIT:
        page: Any = await queue.redis.xrange(queue.keys.events, start, end, count=PAGE)
        scanned += len(page)
        found += [_event(i, f) for i, f in page if f.get(b"id") == eval_id.encode()]
        if len(page) < PAGE:
            return found, _whole(first, found, created_ms)
        start = f"({text(page[-1][0])}"
    return found, False


def _whole(first: Any, found: list[dict[str, Any]], created_ms: int) -> bool:
    """The stream still holds the task's creation: it reaches back past it, or (an entry
    of the same millisecond or later first) the task's first event found is its creation,
    written by the script that set the record's `created` (CREATION_SLACK_MS)."""
    if not first:
        return False
    first_ms = _ms(first[0][0])
    if first_ms < created_ms:
        return True
    if not found or found[0]["state"] not in CREATED:
        return False
    return 0 <= _ms(found[0]["id"]) - created_ms <= CREATION_SLACK_MS


def _ms(entry_id: bytes | str) -> int:
    return int(text(entry_id).split("-")[0])


def _event(entry_id: bytes, fields: dict[bytes, bytes]) -> dict[str, Any]:
    attempt = text(fields.get(b"attempt", b""))
    event: dict[str, Any] = {
        "state": text(fields.get(b"state", b"")),
        "attempt": int(attempt) if attempt.isdigit() else None,
        "at": iso_ms(text(entry_id).split("-")[0]),
        "id": text(entry_id),
    }
    if b"progress" in fields:  # a progress report (issue 16), not a state change
        event["progress"] = decode_json(fields[b"progress"])
    return event
