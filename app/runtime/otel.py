"""The OpenTelemetry SDK glue: span export over OTLP/HTTP (the `otel` extra).

Imported by `tracing.start` only when the settings turn export on, so a process without
tracing never imports the SDK. One `Otel` per process (the `Runtime`'s) owns its own
`TracerProvider` (never the global one) built from `settings.Tracing`, and makes the
spans of the messaging semantic conventions (docs/tracing.md):

- `send {queue}` (PRODUCER) when a task is enqueued; a batch is one `send` (CLIENT) with a
  `create {queue}` (PRODUCER) per task. The context stored with the task is that span's.
- `process {queue}` (CONSUMER) per attempt, around the executor call and the settle; it
  LINKS to the stored context (a new trace per attempt), or is its child when
  OTEL_TASKSTREAM_PROCESS_PARENT=child. The executor request stays in the producer's
  trace either way (the contract): the stored context when linked, the process span's as
  a child.
- `complete|retry|dead_letter {queue}` (CLIENT, operation type `settle`), the outcome's
  write, a child of the process span.

`messaging.system` is "taskstream": the destination is a taskstream queue, the message
id an eval_id and the consumer group a taskstream one, all of which this service defines;
Redis Streams is its storage, which no producer or executor sees.

Imports: runtime.tracing, engine.keys (GROUP), models, settings (typing), and the
OpenTelemetry SDK (the only module that does).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from app import __version__
from app.engine.keys import GROUP
from app.models import Task
from app.runtime.tracing import TRACESTATE, TraceContext, stored

if TYPE_CHECKING:
    from app.runtime.executors import Execution
    from app.settings import Tracing

SYSTEM = "taskstream"
SETTLED = {"completed": "complete", "retrying": "retry", "failed": "dead_letter"}


def span_context(context: TraceContext) -> SpanContext:
    """A W3C context as the SDK's remote span context."""
    state = TraceState.from_header([context.tracestate]) if context.tracestate else None
    return SpanContext(
        int(context.trace_id, 16),
        int(context.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(context.flags),
        trace_state=state,
    )


def trace_context(span: Span) -> TraceContext:
    """A span's context in W3C form (what is stored with a task, or sent to an executor)."""
    sc = span.get_span_context()
    traceparent = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"
    return TraceContext(traceparent, sc.trace_state.to_header() if sc.trace_state else "")


def _parent(context: TraceContext | None) -> Context:
    """The SDK context whose span is `context` (empty: a root span, never an ambient one)."""
    if context is None:
        return Context()
    return set_span_in_context(NonRecordingSpan(span_context(context)), Context())


@contextmanager
def _ending(span: Span) -> Iterator[None]:
    """End `span` on the way out; an exception (a cancel too) marks it failed."""
    try:
        yield
    except BaseException as exc:
        name = "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__name__
        span.set_attribute("error.type", name)
        span.set_status(Status(StatusCode.ERROR, str(exc) or name))
        raise
    finally:
        span.end()


def sampler(config: Tracing) -> Sampler:
    """OTEL_TRACES_SAMPLER (and _ARG), as the SDK would read them."""
    name = config.sampler.removeprefix("parentbased_")
    root: Sampler = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF}.get(name) or (
        TraceIdRatioBased(config.ratio)
    )
    return ParentBased(root) if config.sampler.startswith("parentbased_") else root


def exporter(config: Tracing) -> OTLPSpanExporter:
    """The OTLP/HTTP exporter, every option given (so the SDK reads no environment)."""
    ca, key, cert = config.tls
    return OTLPSpanExporter(
        endpoint=config.endpoint,
        certificate_file=ca,
        client_key_file=key,
        client_certificate_file=cert,
        headers=dict(config.headers),
        timeout=config.timeout,  # type: ignore[arg-type]  # seconds; float is fine for requests
        compression=Compression.Gzip if config.compression == "gzip" else Compression.NoCompression,
    )


class Otel:
    """This process's tracer (see the module docstring). `export`: a span exporter to use
    instead of OTLP, each span exported as it ends (tests: the SDK's in-memory exporter)."""

    def __init__(self, config: Tracing, export: SpanExporter | None = None) -> None:
        self.config = config
        self.link = config.process_parent == "link"
        resource = Resource.create(dict(config.resource))
        self.provider = TracerProvider(sampler=sampler(config), resource=resource)
        processor: SpanProcessor
        if export is None:
            delay, queue, batch, timeout = config.batch
            processor = BatchSpanProcessor(
                exporter(config),
                max_queue_size=queue,
                schedule_delay_millis=delay,
                max_export_batch_size=batch,
                export_timeout_millis=timeout,
            )
        else:
            processor = SimpleSpanProcessor(export)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("taskstream", __version__)

    async def shutdown(self) -> None:
        """Export what is left (the batch processor's thread), then stop."""
        await asyncio.to_thread(self.provider.shutdown)

    def _span(
        self,
        name: str,
        kind: SpanKind,
        parent: Context,
        attributes: dict[str, Any],
        links: Sequence[Link] = (),
    ) -> Span:
        return self.tracer.start_span(name, parent, kind, attributes, links)

    # --- producers ----------------------------------------------------------------------

    @contextmanager
    def send(
        self, queue: str, parent: TraceContext | None, message_id: str = "", priority: str = ""
    ) -> Iterator[Sending]:
        """`send {queue}` around one enqueue; the task stores `Sending.context`."""
        attributes = _attributes(queue, "send", "send", message_id)
        if priority:
            attributes["taskstream.task.priority"] = priority
        span = self._span(f"send {queue}", SpanKind.PRODUCER, _parent(parent), attributes)
        with _ending(span):
            yield Sending(span)

    @contextmanager
    def batch(self, parent: TraceContext | None, queues: Sequence[str]) -> Iterator[Batch]:
        """One `send` span (CLIENT) around a batch; `Batch.create` makes each task's context."""
        one = len(set(queues)) == 1
        attributes = _attributes(queues[0] if one else "", "send", "send")
        attributes["messaging.batch.message_count"] = len(queues)
        name = f"send {queues[0]}" if one else "send"
        span = self._span(name, SpanKind.CLIENT, _parent(parent), attributes)
        with _ending(span):
            yield Batch(self, span)

    # --- consumers ----------------------------------------------------------------------

    @contextmanager
    def process(self, queue: str, consumer: str, task: Task) -> Iterator[Attempt]:
        """`process {queue}` around one attempt (its executor call and its settle)."""
        kept = stored(task.payload)
        attributes = _attributes(queue, "process", "process", task.eval_id)
        attributes["messaging.consumer.group.name"] = GROUP
        attributes["messaging.client.id"] = consumer
        attributes["taskstream.task.attempt"] = task.attempt
        attributes["taskstream.task.priority"] = task.priority.value
        if task.waited_ms is not None:
            attributes["taskstream.task.waited_ms"] = task.waited_ms
        if kept is None or self.link:
            links = [Link(span_context(kept))] if kept else []
            span = self._span(f"process {queue}", SpanKind.CONSUMER, Context(), attributes, links)
        else:
            span = self._span(f"process {queue}", SpanKind.CONSUMER, _parent(kept), attributes)
        with _ending(span):
            yield Attempt(self, span, attributes)


def _attributes(queue: str, kind: str, name: str, message_id: str = "") -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": kind,
        "messaging.operation.name": name,
    }
    if queue:
        attributes["messaging.destination.name"] = queue
    if message_id:
        attributes["messaging.message.id"] = message_id
    return attributes


class Sending:
    """The `send` span of one enqueue: its context (stored with the task) and, once known,
    the message id (a PAI-EAS item's index is given by its queue)."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.context = trace_context(span)

    def identify(self, message_id: str) -> None:
        self.span.set_attribute("messaging.message.id", message_id)


class Batch:
    """The `send` span of a batch, making one `create` span per task."""

    def __init__(self, otel: Otel, span: Span) -> None:
        self.otel = otel
        self.span = span

    def create(self, queue: str, message_id: str, own: TraceContext | None) -> TraceContext:
        """A task's creation context: a `create {queue}` span under the batch's send span,
        or under the task's own context (linked to the batch) when the item named one."""
        attributes = _attributes(queue, "create", "create", message_id)
        if own is None:
            parent, links = set_span_in_context(self.span, Context()), []
        else:
            parent, links = _parent(own), [Link(self.span.get_span_context())]
        span = self.otel._span(f"create {queue}", SpanKind.PRODUCER, parent, attributes, links)
        span.end()
        return trace_context(span)

    def refused(self, count: int) -> None:
        if count:
            self.span.set_attribute("taskstream.batch.refused", count)


class Attempt:
    """The `process` span of one attempt."""

    def __init__(self, otel: Otel, span: Span, attributes: dict[str, Any]) -> None:
        self.otel = otel
        self.span = span
        self.attributes = attributes

    def carrying(self, task: Task) -> Task:
        """`task` as the executor call sends it. The contract wants the executor in the
        producer's trace: linked (the default), the process span is a trace of its own, so
        the executor gets the task's stored context (the producer's trace, under its
        `send` span) unchanged; as a child, the process span is in that trace, and the
        executor's own spans nest under it."""
        if self.otel.link:
            return task
        payload = dict(task.payload)
        payload.pop(TRACESTATE, None)
        payload.update(trace_context(self.span).fields())
        return dataclasses.replace(task, payload=payload)

    def executed(self, execution: Execution) -> None:
        """The executor's answer on the span; a failed attempt marks it failed."""
        if execution.executor:
            self.span.set_attribute("taskstream.executor", execution.executor)
        if execution.status_code is not None:
            self.span.set_attribute("http.response.status_code", execution.status_code)
        self.span.set_attribute("taskstream.task.outcome", execution.outcome.value)
        if execution.error:
            self.span.set_attribute("error.type", execution.outcome.value)
            self.span.set_status(Status(StatusCode.ERROR, execution.error))

    @contextmanager
    def settle(self) -> Iterator[Settling]:
        """The outcome's write, named by what it did (`Settling.done`)."""
        queue = self.attributes["messaging.destination.name"]
        attributes = {**self.attributes, "messaging.operation.type": "settle"}
        parent = set_span_in_context(self.span, Context())
        span = self.otel._span(f"settle {queue}", SpanKind.CLIENT, parent, attributes)
        with _ending(span):
            yield Settling(span, queue)


class Settling:
    def __init__(self, span: Span, queue: str) -> None:
        self.span = span
        self.queue = queue

    def done(self, status: str) -> None:
        """`status`: the consumer's settle answer (`completed`, `retrying`, `failed`, or
        `discarded: why` when the write was refused or Redis stayed away)."""
        operation = SETTLED.get(status)
        if operation is None:
            self.span.set_attribute("messaging.operation.name", "discard")
            self.span.set_attribute("error.type", "discarded")
            self.span.set_status(Status(StatusCode.ERROR, status))
            return
        self.span.update_name(f"{operation} {self.queue}")
        self.span.set_attribute("messaging.operation.name", operation)
        self.span.set_attribute("taskstream.task.state", status)
