"""PAI-EAS items: one data frame, its stored form, and its protobuf and JSON renderings.

Items are stored as one header line of JSON (content type, tags, message, and the W3C
trace context of the request that put it: `tp`, `ts`), a newline, and the body bytes
unchanged. An item's PAI-EAS index is its number in its queue (the engine's numbered
queues), and its request id, unless tagged otherwise, is that index. The trace context is
never shown to PAI-EAS clients; it is sent with the item's forward (eas/forward.py).

Imports: models, runtime.tracing, eas.proto (and orjson, protobuf).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf import json_format

from app.eas.proto.eas_queue_pb2 import DataFrameListProto, DataFrameProto
from app.models import Task
from app.runtime.tracing import TRACEPARENT, TRACESTATE, TraceContext

MAX_LENGTH = 1000  # items per read (and per window, per commit)


@dataclass
class Item:
    """One PAI-EAS data frame."""

    index: int
    data: bytes
    tags: dict[str, str] = field(default_factory=dict)
    content_type: str = ""
    message: str = ""
    trace: TraceContext | None = None

    def encode(self) -> bytes:
        """Stored form: header JSON, newline, body (orjson never writes a raw newline)."""
        header: dict[str, Any] = {"tags": self.tags}
        if self.content_type:
            header["ct"] = self.content_type
        if self.message:
            header["msg"] = self.message
        if self.trace is not None:
            header["tp"] = self.trace.traceparent
            if self.trace.tracestate:
                header["ts"] = self.trace.tracestate
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
        trace = TraceContext(header["tp"], header.get("ts", "")) if header.get("tp") else None
        content_type, message = str(header.get("ct", "")), str(header.get("msg", ""))
        return cls(index, data, tags, content_type, message, trace)

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


def frames_document(items: Sequence[Item]) -> dict[str, Any]:
    """The proto3 JSON form of DataFrameListProto (data base64, index a string)."""
    document: dict[str, Any] = json_format.MessageToDict(frame_list(items))
    return document


def entry_item(fields: dict[bytes, bytes]) -> Item:
    """The item of a queue stream entry (fields `id`, `payload`)."""
    return Item.decode(int(fields.get(b"id", b"0")), fields.get(b"payload", b""))


def stored_payload(payload: bytes) -> dict[str, Any]:
    """The engine's payload decoder for PAI-EAS queues: keep the stored bytes as they are,
    with the item's trace context beside them, where a claimed task keeps it."""
    head = payload[: payload.find(b"\n")]
    if b'"tp"' not in head:
        return {"stored": payload}
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError:
        return {"stored": payload}
    trace = {TRACEPARENT: header.get("tp"), TRACESTATE: header.get("ts")}
    return {"stored": payload, **{k: v for k, v in trace.items() if isinstance(v, str)}}


def task_item(task: Task) -> Item:
    """The item a claimed task carries."""
    return Item.decode(int(task.eval_id), task.payload.get("stored", b""))
