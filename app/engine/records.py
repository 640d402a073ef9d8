"""Task records as documents: a task hash or a dead letter, rendered as plain dicts.

`render_record` is the `GET /tasks/{eval_id}` document, `render_dead` one `GET /dlq`
entry; the web wing sends them as JSON, the CLI prints them. Plain data in, plain data out.

Imports: models, client (`text`).
"""

from __future__ import annotations

from typing import Any

from app.engine.client import text
from app.models import TERMINAL, State, decode_json, iso_ms


def render_dead(item: tuple[bytes, dict[bytes, bytes]]) -> dict[str, Any]:
    """One `GET /dlq` entry from a DLQ stream entry."""
    fields = item[1]
    eval_id = text(fields.get(b"id", b""))
    payload = decode_json(fields.get(b"payload")) or {}
    detail = decode_json(fields.get(b"detail"))
    dead: dict[str, Any] = {
        "eval_id": eval_id,
        "error": text(fields.get(b"error", b"")),
        "attempts": int(fields.get(b"attempts", 0)),
        "failed_at": iso_ms(fields.get(b"failed_at")),
        "task": {
            "eval_id": eval_id,
            "priority": text(fields.get(b"prio", b"default")),
            "tenant": text(fields.get(b"tenant", b"default")),
            "language": "python",
            "metadata": {},
            **payload,
        },
    }
    if isinstance(detail, dict) and "traceback" in detail:
        dead["traceback"] = detail["traceback"]
    elif detail is not None:
        dead["detail"] = detail
    return dead


def render_record(
    eval_id: str, rec: dict[bytes, bytes], position: int, queue: str
) -> dict[str, Any]:
    """The `GET /tasks/{eval_id}` document from a task hash (`queue`: the queue's name)."""
    state = text(rec.get(b"state", b""))
    view: dict[str, Any] = {
        "eval_id": eval_id,
        "status": state,
        "queue": queue,
        "priority": text(rec.get(b"prio", b"default")),
        "tenant": text(rec.get(b"tenant", b"default")),
        "attempts": int(rec.get(b"attempts", 0)),
        "created_at": iso_ms(created_ms(rec)),
        "started_at": iso_ms(rec.get(b"started")),
        "completed_at": iso_ms(rec.get(b"finished")),
        "result": decode_json(rec.get(b"result")),
        "error": text(rec[b"error"]) if b"error" in rec else None,
        "progress": render_progress(rec.get(b"progress")),
    }
    if state == State.QUEUED:
        view["position"] = position
    if b"run_at" in rec:
        view["run_at"] = iso_ms(rec[b"run_at"])
    if b"exp" in rec:
        view["expires_at"] = iso_ms(rec[b"exp"])
    if b"deps" in rec:
        view["depends_on"] = decode_json(rec[b"deps"])
        view["allow_failure"] = b"allow" in rec
    if b"cb" in rec and state in TERMINAL:
        view["callback"] = _callback_view(rec)
    return view


def _callback_view(rec: dict[bytes, bytes]) -> dict[str, Any]:
    """The outcome of a finished task's callbacks: pending until the sender is done."""
    if b"cb_status" not in rec:
        return {"status": "pending"}
    view: dict[str, Any] = {
        "status": text(rec[b"cb_status"]),
        "attempts": int(rec.get(b"cb_attempts", 0)),
    }
    if b"cb_error" in rec:
        view["error"] = text(rec[b"cb_error"])
    return view


def created_ms(rec: dict[bytes, bytes]) -> bytes | None:
    """A task's creation time (epoch ms): its record's `created`, or, for a task queued at
    its creation and still waiting, its stream entry's time (issue 14: the record gets
    `created` when the task leaves the queue; _lib.lua created_of)."""
    if b"created" in rec:
        return rec[b"created"]
    entry = rec.get(b"entry")
    return entry.partition(b"-")[0] if entry else None


def render_progress(stored: bytes | None) -> dict[str, Any] | None:
    """The last progress report (engine/progress.py) as `GET /tasks/{eval_id}` shows it:
    `{"progress", "message"?, "data"?, "attempt", "at"}`; None before the first."""
    kept = decode_json(stored)
    if not isinstance(kept, dict):
        return None
    kept["at"] = iso_ms(str(kept.get("at") or "") or None)
    return kept
