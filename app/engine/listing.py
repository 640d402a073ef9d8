"""Task listing (issue 15, item 7): `GET /tasks?state=S`, one page of one state's tasks.

Each state is read from a structure of its own, in its own order, by `listing.lua`; a page
looks at a bounded number of candidates (`BUDGET`, matching or not), never at every task:

- queued: per priority (high, default, low), the priority stream after the group's last
  delivered id, in position order (XINFO GROUPS, XRANGE, and per task one HGETALL and one
  ZCOUNT, its position), then the tenants' waiting order (fair share,
  docs/flow-control.md: by tenant, FIFO within; ZRANGEBYLEX, per task one HGETALL, one
  XRANGE of its entry and its position under fair share, O(tenants waiting) reads);
- processing: the group's pending entries (XPENDING) of the priority streams, then of the
  tenant streams (entries still waiting there, parked, are skipped), by stream then stream
  order: per task one XPENDING step, one XRANGE of its entry, one HGETALL;
- scheduled, retrying: the schedule zset they share, by due time: ZRANK, ZRANGE, one
  HGETALL per member (members of the other state count as candidates);
- deferred: the queue's `deferred` zset (engine/keys.py), by creation time: as scheduled;
- failed: the DLQ stream, newest first: XREVRANGE, one HGETALL per dead letter;
- completed, cancelled (and any other final state): the events stream, newest first:
  XREVRANGE, one HGETALL per event of that state.

The finished states other than `failed` have no structure of their own: their recent
history is the events stream every state change already goes to, so listing them adds
nothing to the hot path; they reach back as far as the stream's cap (about EVENTS_MAXLEN
/ 3 tasks: each task leaves queued, processing and a final event). With a filter (`tenant`,
`q`) a page may hold fewer than `limit` tasks and still have a `next_cursor`: the budget
ran out first. The cursor is opaque (base64url of JSON) and names its state.

Imports: client, partitions, queue (typing), records, models, errors, settings (and orjson).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from app.engine import partitions
from app.engine.client import text, translate_errors
from app.engine.keys import GROUP
from app.engine.records import render_record
from app.errors import Invalid
from app.models import State, decode_json, iso_ms
from app.settings import MAX_PARTITIONS

if TYPE_CHECKING:
    from app.engine.queue import Queue

MAX_LIMIT = 500
BUDGET = 500  # candidates looked at per page, matching or not (bench/listing.py)
MAX_Q = 256
TENANT_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
ENTRY_RE = re.compile(r"^\d{1,20}-\d{1,20}$")
WAITING_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}\|\d{15}\|[A-Za-z0-9._:-]{1,128}$")
SCORE_RE = re.compile(r"^-?\d{1,20}$")
EVAL_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# The mode of listing.lua that serves each state (final states not named: the events stream)
MODES = {
    State.QUEUED: "queued",
    State.PROCESSING: "processing",
    State.SCHEDULED: "zset",
    State.RETRYING: "zset",
    State.DEFERRED: "zset",
    State.FAILED: "dlq",
}


@dataclass(frozen=True)
class Page:
    """What one call asks for: `limit` tasks of `state` after `cursor` (None: the start)."""

    state: State
    limit: int = 50
    tenant: str | None = None
    q: str | None = None
    cursor: tuple[str, str] | None = None
    part: int = 0  # a partitioned queue's partition the cursor is in (engine/partitions.py)

    @classmethod
    def parse(
        cls, state: str | None, limit: int, tenant: str | None, q: str | None, cursor: str | None
    ) -> Page:
        """Validate the request's parameters (`limit` already a number); Invalid names them."""
        if not state:
            raise Invalid(f"state is required: one of {', '.join(s.value for s in State)}")
        try:
            chosen = State(state)
        except ValueError:
            raise Invalid(f"state must be one of {', '.join(s.value for s in State)}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise Invalid(f"limit must be an integer from 1 to {MAX_LIMIT}")
        if tenant and not TENANT_RE.fullmatch(tenant):
            raise Invalid("tenant must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        if q and len(q) > MAX_Q:
            raise Invalid(f"q must be at most {MAX_Q} characters")
        parts, part = decode_cursor(cursor, chosen)
        return cls(chosen, limit, tenant or None, q or None, parts, part)

    @property
    def mode(self) -> str:
        return MODES.get(self.state, "events")


def encode_cursor(state: State, parts: tuple[str, str] | None, part: int = 0) -> str:
    """`parts`: where listing.lua stopped (None: the start of partition `part`, a
    partitioned queue's next one); `part` is left out for partition 0."""
    doc: dict[str, Any] = {"s": state.value, "p": list(parts) if parts else None}
    if part:
        doc["i"] = part
    raw = orjson.dumps(doc)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, state: State) -> tuple[tuple[str, str] | None, int]:
    """The cursor's two parts (None: a partition's start) and its partition; Invalid unless
    it is one this listing handed out."""
    if not cursor:
        return None, 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        found = orjson.loads(raw)
    except (binascii.Error, ValueError):
        found = None
    parts = found.get("p") if isinstance(found, dict) else None
    part = found.get("i", 0) if isinstance(found, dict) else None
    if (
        not isinstance(found, dict)
        or found.get("s") != state.value
        or not isinstance(part, int)
        or isinstance(part, bool)
        or not 0 <= part < MAX_PARTITIONS
        or not (parts is None and part > 0 or isinstance(parts, list) and len(parts) == 2)
        or parts is not None
        and not _parts_fit(MODES.get(state, "events"), parts)
    ):
        raise Invalid(f"cursor is malformed or not one of a listing of {state.value} tasks")
    return ((str(parts[0]), str(parts[1])) if parts is not None else None), part


def _parts_fit(mode: str, parts: list[Any]) -> bool:
    """The shapes listing.lua hands out (a forged cursor must never reach Redis)."""
    first, second = parts
    if not isinstance(first, str) or not isinstance(second, str):
        return False
    if mode == "queued" and first in ("4", "5", "6"):  # a tenants' waiting order (fair share)
        return bool(WAITING_RE.fullmatch(second))
    if mode in ("queued", "processing"):
        return first in ("1", "2", "3", "4", "5", "6") and bool(ENTRY_RE.fullmatch(second))
    if mode == "zset":
        return bool(SCORE_RE.fullmatch(first) and EVAL_ID_RE.fullmatch(second))
    return bool(ENTRY_RE.fullmatch(first)) and second == ""


def _keys(queue: Queue, page: Page) -> list[str]:
    k = queue.keys
    if page.mode == "queued":
        return [*k.streams, k.counters, *k.holes, *k.fair]
    if page.mode == "processing":
        return [*k.streams, *k.tenant_streams]
    if page.mode == "zset":
        return [k.deferred if page.state == State.DEFERRED else k.scheduled]
    return [k.dlq if page.mode == "dlq" else k.events]


@translate_errors
async def list_tasks(queue: Queue, page: Page) -> dict[str, Any]:
    """`{"tasks": [records], "next_cursor"}`: one page of `page.state` in `queue`. A
    partitioned queue is listed partition after partition (each in its own order), the
    cursor naming the partition; queued tasks' positions are then estimated across the
    partitions (engine/partitions.py), from one read of every partition's counters."""
    parts = queue.parts
    if page.part >= len(parts):
        raise Invalid(f"cursor is malformed or not one of a listing of {page.state.value} tasks")
    tasks: list[dict[str, Any]] = []
    rows = await partitions.waiting(queue) if parts[1:] and page.mode == "queued" else None
    at, cursor = page.part, page.cursor
    while True:
        found, more = await _one(parts[at], page, page.limit - len(tasks), cursor, rows)
        tasks += found
        if more is not None:
            return {"tasks": tasks, "next_cursor": encode_cursor(page.state, more, at)}
        at, cursor = at + 1, None
        if at == len(parts):
            return {"tasks": tasks, "next_cursor": None}
        if len(tasks) >= page.limit:
            return {"tasks": tasks, "next_cursor": encode_cursor(page.state, None, at)}


@translate_errors
async def _one(
    queue: Queue,
    page: Page,
    limit: int,
    cursor: tuple[str, str] | None,
    rows: list[list[int]] | None,
) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """One page of `queue` (a partition), and where it stopped (None: at the end)."""
    argv: list[Any] = [page.mode, page.state.value, queue.keys.task_prefix, limit]
    argv += [BUDGET, page.tenant or "", page.q or "", GROUP]
    argv += [*(cursor or ("", "")), queue.weights]
    items, first, second, now = await queue.scripts.run("listing", _keys(queue, page), argv)
    tasks = [_render(queue, page, item, int(now), rows) for item in items]
    more = text(first)
    return tasks, ((more, text(second)) if more else None)


def _render(
    queue: Queue, page: Page, item: list[Any], now: int, rows: list[list[int]] | None
) -> dict[str, Any]:
    """One record of the page, with what its state adds (see docs/api.md)."""
    eval_id, flat, extra, payload = text(item[0]), item[1], item[2], item[3]
    rec = dict(zip(flat[::2], flat[1::2], strict=True))
    if page.mode == "dlq" and not rec:
        view = _dead_view(eval_id, extra, queue.keys.queue)
    else:
        position = int(extra) if page.mode == "queued" else 0
        if position and rows is not None:
            position = partitions.estimate(rows, queue.keys.part, rec, position)
        view = render_record(eval_id, rec, position, queue.keys.queue)
    if page.mode == "processing":
        view["worker"] = text(rec.get(b"worker", extra))
        started = int(rec.get(b"started", now))
        view["elapsed_ms"] = max(0, now - started)
    elif page.mode == "zset":
        if page.state != State.DEFERRED:  # (a deferred task's score is its created_at)
            view["due_at"] = iso_ms(text(extra).split(".")[0])
        if b"waiting" in rec:
            view["waiting_on"] = int(rec[b"waiting"])
    metadata = _metadata(payload or rec.get(b"payload"))
    if metadata is not None:
        view["metadata"] = metadata
    return view


def _dead_view(eval_id: str, flat: list[Any], queue: str) -> dict[str, Any]:
    """A failed task whose record expired (FAILURE_TTL) while its dead letter stays."""
    dead = {text(k): v for k, v in zip(flat[::2], flat[1::2], strict=True)}
    return {
        "eval_id": eval_id,
        "status": State.FAILED.value,
        "queue": queue,
        "priority": text(dead.get("prio", b"default")),
        "attempts": int(dead.get("attempts", 0)),
        "created_at": None,
        "started_at": None,
        "completed_at": iso_ms(dead.get("failed_at")),
        "result": None,
        "error": text(dead.get("error", b"")),
        "progress": None,
    }


def _metadata(payload: bytes | None) -> Any:
    """The task's metadata, where its payload is still kept (not once it finished)."""
    if not payload:
        return None
    try:
        doc = decode_json(payload)
    except orjson.JSONDecodeError:
        return None
    return doc.get("metadata", {}) if isinstance(doc, dict) else None
