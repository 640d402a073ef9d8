"""Span export (runtime/otel.py) with the SDK's in-memory exporter, on a real service and
real loopback executors: span names, kinds, attributes and relations (send -> process by
link or as its child -> settle), the executor's parent span being the process span, the
settle spans of a retried and a dead-lettered task, batches, PAI-EAS forwards; and OTLP
over HTTP to a loopback receiver, configured by OTEL_EXPORTER_OTLP_ENDPOINT alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.runtime.executors import ExecutorPool
from app.runtime.otel import Otel
from app.runtime.tracing import TraceContext, parse_traceparent
from app.settings import RetryPolicy, Settings, Tracing
from app.web.app import create_app
from tests.conftest import Service, serve_asgi, wait_for
from tests.eas.conftest import final_status, put

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID, SPAN_ID = int("0af7651916cd43dd8448eb211c80319c", 16), int("b7ad6b7169203331", 16)
FAST_RETRY = RetryPolicy(3, 0.05, 2.0, 1.0, False)


@dataclasses.dataclass
class Traced:
    service: Service
    spans: InMemorySpanExporter

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name.startswith(prefix)]

    async def wait(self, prefix: str, count: int = 1) -> list[ReadableSpan]:
        async def enough() -> list[ReadableSpan] | None:
            found = self.named(prefix)
            return found if len(found) >= count else None

        found: list[ReadableSpan] = await wait_for(enough)
        return found


@pytest.fixture
async def traced(make_settings):
    """Start a service whose tracer exports into memory; stopped at teardown."""
    started: list[Traced] = []

    async def make(executors: ExecutorPool | None = None, parent: str = "link", **overrides):
        import httpx

        settings: Settings = make_settings(**overrides)
        spans = InMemorySpanExporter()
        tracer = Otel(Tracing(process_parent=parent), export=spans)
        served = await serve_asgi(create_app(settings, executors=executors, tracer=tracer))
        http = httpx.AsyncClient(base_url=served.url, timeout=40)
        started.append(Traced(Service(served, http, settings), spans))
        return started[-1]

    yield make
    for one in started:
        await one.service.http.aclose()
        await one.service.served.stop()


def context_of(header: str) -> TraceContext:
    parsed = parse_traceparent(header)
    assert parsed is not None, header
    return TraceContext(parsed)


def messaging(span: ReadableSpan) -> dict[str, Any]:
    return {k: v for k, v in (span.attributes or {}).items() if k.startswith("messaging.")}


async def enqueue(service: Service, headers: dict[str, str] | None = None, **task: Any) -> str:
    made = await service.http.post("/tasks", json={"code": "x", **task}, headers=headers)
    assert made.status_code == 201, made.text
    eval_id: str = made.json()["eval_id"]
    return eval_id


# --- one task, end to end -------------------------------------------------------------


async def test_send_process_complete_spans_and_the_executors_parent(traced, make_executor, queue):
    executor = await make_executor()
    one = await traced(ExecutorPool([executor.url]))
    eval_id = await enqueue(one.service, {"traceparent": TP, "tracestate": "congo=1"})
    [complete] = await one.wait("complete ")
    [send] = one.named("send ")
    [process] = one.named("process ")

    # send: a PRODUCER child of the producer's span, in the producer's trace
    assert send.name == f"send {queue}" and send.kind is SpanKind.PRODUCER
    assert send.parent is not None and send.parent.span_id == SPAN_ID
    assert send.context.trace_id == TRACE_ID
    assert messaging(send) == {
        "messaging.system": "taskstream",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": queue,
        "messaging.message.id": eval_id,
    }

    # process: a CONSUMER in a trace of its own, LINKED to the send span (the default)
    assert process.name == f"process {queue}" and process.kind is SpanKind.CONSUMER
    assert process.parent is None and process.context.trace_id != TRACE_ID
    [link] = process.links
    assert (link.context.trace_id, link.context.span_id) == (TRACE_ID, send.context.span_id)
    assert messaging(process) == {
        "messaging.system": "taskstream",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": queue,
        "messaging.message.id": eval_id,
        "messaging.consumer.group.name": "workers",
        "messaging.client.id": process.attributes["messaging.client.id"],
    }
    assert process.attributes["taskstream.task.attempt"] == 1
    assert process.attributes["taskstream.task.outcome"] == "success"
    assert process.attributes["http.response.status_code"] == 200
    assert process.status.status_code is StatusCode.UNSET

    # the executor's request stays in the producer's trace (the contract), under the send
    # span: the linked process span is a trace of its own
    sent = context_of(executor.headers[0]["traceparent"])
    assert int(sent.trace_id, 16) == send.context.trace_id == TRACE_ID
    assert int(sent.span_id, 16) == send.context.span_id
    assert process.context.trace_id != TRACE_ID
    assert executor.headers[0]["tracestate"] == "congo=1"

    # settle: a CLIENT child of the process span, named by what it did
    assert complete.name == f"complete {queue}" and complete.kind is SpanKind.CLIENT
    assert complete.parent is not None and complete.parent.span_id == process.context.span_id
    assert complete.attributes["messaging.operation.type"] == "settle"
    assert complete.attributes["messaging.operation.name"] == "complete"
    assert complete.attributes["taskstream.task.state"] == "completed"


async def test_child_mode_keeps_the_producers_trace(traced, make_executor, queue):
    executor = await make_executor()
    one = await traced(ExecutorPool([executor.url]), parent="child")
    await enqueue(one.service, {"traceparent": TP, "tracestate": "congo=1"})
    await one.wait("complete ")
    [send], [process] = one.named("send "), one.named("process ")
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == send.context.trace_id == TRACE_ID
    assert not process.links
    sent = context_of(executor.headers[0]["traceparent"])
    assert (sent.trace_id, int(sent.span_id, 16)) == (TP[3:35], process.context.span_id)
    assert executor.headers[0]["tracestate"] == "congo=1"  # the trace's vendor state goes on


async def test_without_a_producer_context_the_send_span_starts_the_trace(traced, make_executor):
    executor = await make_executor()
    one = await traced(ExecutorPool([executor.url]), parent="child")
    await enqueue(one.service, {"traceparent": "not-a-traceparent"})
    await one.wait("complete ")
    [send], [process] = one.named("send "), one.named("process ")
    assert send.parent is None
    assert process.context.trace_id == send.context.trace_id
    assert context_of(executor.headers[0]["traceparent"]).trace_id == (
        f"{send.context.trace_id:032x}"
    )


# --- retries and the dead-letter queue ------------------------------------------------


async def test_a_retried_task_settles_retry_then_complete(traced, make_executor, queue):
    async def flaky(body):
        return JSONResponse({"error": "busy"}, status_code=503 if body["attempt"] == 1 else 200)

    executor = await make_executor(flaky)
    one = await traced(ExecutorPool([executor.url]), retry=FAST_RETRY)
    await enqueue(one.service, {"traceparent": TP})
    await one.wait("complete ")
    [send] = one.named("send ")
    first, second = sorted(one.named("process "), key=lambda s: s.start_time or 0)
    [retry], [complete] = one.named("retry "), one.named("complete ")
    assert first.attributes["taskstream.task.attempt"] == 1
    assert second.attributes["taskstream.task.attempt"] == 2
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes["error.type"] == "retryable"
    assert first.attributes["http.response.status_code"] == 503
    assert retry.parent.span_id == first.context.span_id
    assert retry.attributes["taskstream.task.state"] == "retrying"
    assert complete.parent.span_id == second.context.span_id
    # each attempt is its own trace, both linked to the one send span
    assert first.context.trace_id != second.context.trace_id
    for attempt in (first, second):
        assert [link.context.span_id for link in attempt.links] == [send.context.span_id]
    sent = [context_of(h["traceparent"]) for h in executor.headers]  # the producer's trace
    assert [int(c.span_id, 16) for c in sent] == [send.context.span_id, send.context.span_id]
    assert {c.trace_id for c in sent} == {TP[3:35]}


async def test_retries_spent_settle_as_dead_letter(traced, make_executor, queue):
    async def broken(body):
        return JSONResponse({"error": "down"}, status_code=500)

    executor = await make_executor(broken)
    one = await traced(
        ExecutorPool([executor.url]), retry=dataclasses.replace(FAST_RETRY, max_retries=1)
    )
    await enqueue(one.service)
    [dead] = await one.wait("dead_letter ")
    assert dead.name == f"dead_letter {queue}"
    assert dead.attributes["messaging.operation.name"] == "dead_letter"
    assert dead.attributes["taskstream.task.state"] == "failed"
    assert len(one.named("process ")) == 2 and len(one.named("retry ")) == 1


async def test_a_permanent_failure_is_dead_lettered_at_once(traced, make_executor):
    async def refuse(body):
        return JSONResponse({"error": "bad code"}, status_code=400)

    executor = await make_executor(refuse)
    one = await traced(ExecutorPool([executor.url]))
    await enqueue(one.service)
    [dead] = await one.wait("dead_letter ")
    [process] = one.named("process ")
    assert process.attributes["error.type"] == "permanent"
    assert "bad code" in (process.status.description or "")
    assert not one.named("retry ")


async def test_a_refused_enqueue_marks_its_send_span_failed(traced):
    one = await traced()
    await enqueue(one.service, eval_id="dup")
    again = await one.service.http.post("/tasks", json={"code": "x", "eval_id": "dup"})
    assert again.status_code == 409
    first, second = one.named("send ")
    assert first.status.status_code is StatusCode.UNSET
    assert second.status.status_code is StatusCode.ERROR
    assert second.attributes["error.type"] == "Conflict"


# --- batches and PAI-EAS --------------------------------------------------------------


async def test_a_batch_is_one_send_with_a_create_span_per_task(traced, make_executor, queue):
    executor = await make_executor()
    one = await traced(ExecutorPool([executor.url]), parent="child")
    own = "00-11111111111111111111111111111111-2222222222222222-01"
    tasks = [{"eval_id": "a", "code": "a"}, {"eval_id": "b", "code": "b", "traceparent": own}]
    made = await one.service.http.post(
        "/tasks/batch", json={"tasks": tasks}, headers={"traceparent": TP}
    )
    assert made.status_code == 201, made.text
    await one.wait("complete ", 2)
    [send] = one.named("send ")
    assert send.name == f"send {queue}" and send.kind is SpanKind.CLIENT
    assert send.parent.span_id == SPAN_ID
    assert send.attributes["messaging.batch.message_count"] == 2
    creates = {s.attributes["messaging.message.id"]: s for s in one.named("create ")}
    assert {s.kind for s in creates.values()} == {SpanKind.PRODUCER}
    assert creates["a"].parent.span_id == send.context.span_id
    assert creates["b"].context.trace_id == int(own[3:35], 16)  # the item's own trace
    assert [link.context.span_id for link in creates["b"].links] == [send.context.span_id]
    processes = {s.attributes["messaging.message.id"]: s for s in one.named("process ")}
    for eval_id in "ab":  # child mode: each process span is its create span's child
        parent = processes[eval_id].parent
        assert parent is not None and parent.span_id == creates[eval_id].context.span_id


async def test_a_pai_eas_forward_stays_in_the_producers_trace(traced, make_target, svc):
    target = await make_target()
    one = await traced(eas_tokens=("tok",), eas_targets={svc: target.url}, retry=FAST_RETRY)
    index = await put(one.service, svc, b"hi", traceparent=TP)
    assert (await final_status(one.service, svc, index))["status"] == "SUCCESS"
    [complete] = await one.wait("complete ")
    [send], [process] = one.named("send "), one.named("process ")
    assert send.name == f"send {svc}" and send.attributes["messaging.message.id"] == str(index)
    assert send.parent.span_id == SPAN_ID
    assert process.name == f"process {svc}"
    assert process.attributes["messaging.message.id"] == str(index)
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    sent = context_of(target.calls[0]["traceparent"])
    assert (sent.trace_id, int(sent.span_id, 16)) == (TP[3:35], send.context.span_id)
    assert complete.parent.span_id == process.context.span_id


# --- OTLP over HTTP, end to end -------------------------------------------------------


@dataclasses.dataclass
class Receiver:
    """A loopback OTLP/HTTP collector: POST /v1/traces, protobuf (gzip or not)."""

    requests: list[ExportTraceServiceRequest] = dataclasses.field(default_factory=list)
    headers: list[dict[str, str]] = dataclasses.field(default_factory=list)

    async def traces(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.headers["content-type"] == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.requests.append(message)
        self.headers.append(dict(request.headers))
        return Response(b"", media_type="application/x-protobuf")

    def spans(self) -> dict[str, Any]:
        return {
            span.name: (span, resource.resource)
            for message in self.requests
            for resource in message.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        }


async def test_spans_reach_an_otlp_http_receiver(redis_url, queue, make_executor):
    receiver = Receiver()
    collector = await serve_asgi(
        Starlette(routes=[Route("/v1/traces", receiver.traces, methods=["POST"])])
    )
    executor = await make_executor()
    env = {
        "REDIS_URL": redis_url,
        "QUEUE_NAME": queue,
        "EXECUTOR_URLS": executor.url,
        "HEALTH_INTERVAL": "0.2",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=team%20a",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_SERVICE_NAME": "taskstream-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    settings = Settings.from_env(env)
    served = await serve_asgi(create_app(settings))  # the tracer the settings ask for
    try:
        import httpx

        async with httpx.AsyncClient(base_url=served.url) as http:
            made = await http.post("/tasks", json={"code": "x"}, headers={"traceparent": TP})
            assert made.status_code == 201

            async def exported() -> bool:
                return {f"send {queue}", f"process {queue}", f"complete {queue}"} <= set(
                    receiver.spans()
                )

            await wait_for(exported)
    finally:
        await served.stop()
        await collector.stop()
    spans = receiver.spans()
    send, resource = spans[f"send {queue}"]
    assert send.trace_id.hex() == TP[3:35] and send.parent_span_id.hex() == TP[36:52]
    service_name = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
    assert service_name == "taskstream-test"
    attributes = {a.key: a.value.string_value for a in send.attributes}
    assert attributes["messaging.system"] == "taskstream"
    assert attributes["messaging.message.id"] == made.json()["eval_id"]
    assert receiver.headers[0]["x-tenant"] == "team a"
    process, _ = spans[f"process {queue}"]
    assert [link.span_id for link in process.links] == [send.span_id]


async def test_spans_left_at_stop_are_exported(redis_url, queue):
    """Stopping flushes the batch processor: a span made just before the stop is sent."""
    receiver = Receiver()
    collector = await serve_asgi(
        Starlette(routes=[Route("/v1/traces", receiver.traces, methods=["POST"])])
    )
    env = {
        "REDIS_URL": redis_url,
        "QUEUE_NAME": queue,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{collector.url}/v1/traces",
        "OTEL_BSP_SCHEDULE_DELAY": "600000",  # never on its own within the test
    }
    served = await serve_asgi(create_app(Settings.from_env(env)))
    try:
        import httpx

        async with httpx.AsyncClient(base_url=served.url) as http:
            assert (await http.post("/tasks", json={"code": "x"})).status_code == 201
        await asyncio.sleep(0.05)
        assert not receiver.requests
    finally:
        await served.stop()
    await collector.stop()
    assert f"send {queue}" in receiver.spans()
