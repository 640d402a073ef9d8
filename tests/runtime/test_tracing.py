"""W3C trace context (runtime/tracing.py) and its propagation with span export off: the
context a producer sends with `POST /tasks` (the HotPath), a batch or a PAI-EAS put
reaches the executor or target unchanged; none, or an invalid one, starts a new trace
(never an error); a retried task keeps its trace; a process with tracing off never
imports the OpenTelemetry SDK.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from structlog.testing import capture_logs

from app.runtime import tracing
from app.runtime.executors import ExecutorPool
from app.runtime.tracing import TraceContext, parse_traceparent, parse_tracestate
from app.settings import RetryPolicy, Settings, Tracing
from tests.conftest import ROOT, wait_for
from tests.eas.conftest import AUTH, eas_service, final_status, put

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID, SPAN_ID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


# --- parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        TP,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-09",  # unknown flag bits kept
    ],
)
def test_valid_traceparents_are_kept_as_they_are(value):
    assert parse_traceparent(value) == value


def test_a_higher_version_is_read_by_its_first_fields_and_passed_on_as_00():
    value = "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-adds"
    assert parse_traceparent(value) == TP
    assert parse_traceparent("cc-" + TP[3:]) == TP


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        "",
        "garbage",
        TP.upper(),  # hex is lower-case only
        TP + "-extra",  # version 00 is exactly 55 characters
        TP[:-1],
        "ff" + TP[2:],  # version ff is invalid
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero parent id
        "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01",
        "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
        "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",  # no `-` after 55
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nx: y",
    ],
)
def test_invalid_traceparents_are_ignored(value):
    assert parse_traceparent(value) is None


def test_tracestate_members_are_joined_and_bad_lists_dropped():
    assert parse_tracestate(["congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"]) == (
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    )
    assert parse_tracestate([" a=1 ,, b@sys=2 "]) == "a=1,b@sys=2"
    assert parse_tracestate(["a=1,a=2"]) == ""  # a repeated key
    assert parse_tracestate(["Upper=1"]) == ""
    assert parse_tracestate(["a=1\r\nx"]) == ""
    assert parse_tracestate([",".join(f"k{i}=v" for i in range(33))]) == ""  # > 32 members


def test_headers_give_a_context_only_for_exactly_one_valid_traceparent():
    one = [(b"traceparent", TP.encode()), (b"tracestate", b"a=1"), (b"tracestate", b"b=2")]
    assert tracing.from_headers(one) == TraceContext(TP, "a=1,b=2")
    assert tracing.from_headers([(b"traceparent", TP.encode())] * 2) is None
    assert tracing.from_headers([(b"tracestate", b"a=1")]) is None
    assert tracing.from_headers([(b"traceparent", b"bad"), (b"tracestate", b"a=1")]) is None


def test_a_new_context_is_a_valid_sampled_traceparent_with_a_new_trace_id():
    first, second = tracing.new_context(), tracing.new_context()
    assert parse_traceparent(first.traceparent) == first.traceparent
    assert first.traceparent.endswith("-01") and first.tracestate == ""
    assert first.trace_id != second.trace_id


def test_without_the_sdk_start_warns_and_propagation_goes_on(monkeypatch):
    for name in [m for m in sys.modules if m.startswith(("opentelemetry", "app.runtime.otel"))]:
        monkeypatch.delitem(sys.modules, name)  # put back after the test
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if the extra were missing
    settings = Settings(tracing=Tracing(endpoint="http://127.0.0.1:9/v1/traces"))
    with capture_logs() as logs:
        assert tracing.start(settings) is None
    [warning] = [e for e in logs if e["event"] == "tracing_unavailable"]
    assert "pip install taskstream[otel]" in warning["reason"]


def test_tracing_off_is_decided_once_and_never_imports_the_sdk(redis_url, queue):
    """A whole enqueue -> execute -> complete in a process with tracing off: the executor
    request carries the traceparent, and the tracing SDK was never imported."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        import httpx
        from tests.conftest import StubExecutor, serve_asgi
        from app.runtime.executors import ExecutorPool
        from app.settings import Settings
        from app.web.app import create_app

        async def main():
            stub = StubExecutor()
            stub.served = await serve_asgi(stub.app())
            settings = Settings(redis_url={redis_url!r}, queue={queue!r}, health_interval=0.2)
            served = await serve_asgi(create_app(settings, executors=ExecutorPool([stub.url])))
            async with httpx.AsyncClient(base_url=served.url) as http:
                headers = {{"traceparent": {TP!r}}}
                made = await http.post("/tasks", json={{"code": "x"}}, headers=headers)
                assert made.status_code == 201, made.text
                for _ in range(500):
                    if stub.headers:
                        break
                    await asyncio.sleep(0.02)
            await served.stop()
            await stub.served.stop()
            assert stub.headers[0]["traceparent"] == {TP!r}, stub.headers
            # redis-py imports opentelemetry's metrics SDK when it is installed; tracing is
            # ours, and with tracing off neither our glue nor the tracing SDK is loaded.
            ours = ("app.runtime.otel", "opentelemetry.sdk.trace", "opentelemetry.exporter")
            loaded = sorted(m for m in sys.modules if m.startswith(ours))
            assert not loaded, loaded
            print("ok")

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=25
    )
    assert done.stdout.strip().endswith("ok"), done.stderr[-3000:]


# --- propagation with span export off (no SDK involved) -------------------------------


async def test_the_producers_context_reaches_the_executor_unchanged(make_service, make_executor):
    executor = await make_executor()
    service = await make_service(executors=ExecutorPool([executor.url]))
    headers = {"traceparent": TP, "tracestate": "congo=t61rcWkgMzE"}
    made = await service.http.post("/tasks", json={"code": "x"}, headers=headers)
    assert made.status_code == 201, made.text
    await wait_for(lambda: _truthy(executor.headers))
    sent = executor.headers[0]
    assert sent["traceparent"] == TP
    assert sent["tracestate"] == "congo=t61rcWkgMzE"
    assert sent["idempotency-key"] == f"{made.json()['eval_id']}:1"


async def test_a_task_without_a_context_gets_a_new_trace_kept_across_retries(
    make_service, make_executor
):
    async def flaky(body):
        from starlette.responses import JSONResponse

        return JSONResponse({"error": "busy"}, status_code=503 if body["attempt"] == 1 else 200)

    executor = await make_executor(flaky)
    service = await make_service(
        executors=ExecutorPool([executor.url]), retry=RetryPolicy(3, 0.05, 2.0, 1.0, False)
    )
    made = await service.http.post("/tasks", json={"code": "x"})
    assert made.status_code == 201
    await wait_for(lambda: _truthy(len(executor.headers) == 2))
    first, second = (parse_traceparent(h["traceparent"]) for h in executor.headers)
    assert first is not None and second is not None
    assert first == second  # one trace, one parent: the task's, for every attempt
    assert "tracestate" not in executor.headers[0]


@pytest.mark.parametrize(
    "bad", ["garbage", TP.upper(), "00-00000000000000000000000000000000-b7ad6b7169203331-01"]
)
async def test_an_invalid_traceparent_is_ignored_never_an_error(make_service, make_executor, bad):
    executor = await make_executor()
    service = await make_service(executors=ExecutorPool([executor.url]))
    headers = {"traceparent": bad, "tracestate": "a=1"}
    made = await service.http.post("/tasks", json={"code": "x"}, headers=headers)
    assert made.status_code == 201, made.text
    batch = await service.http.post(
        "/tasks/batch", json={"tasks": [{"code": "y", "traceparent": bad}]}, headers=headers
    )
    assert batch.status_code == 201, batch.text
    await wait_for(lambda: _truthy(len(executor.headers) == 2))
    for sent in executor.headers:
        assert parse_traceparent(sent["traceparent"]) == sent["traceparent"] != bad
        assert "tracestate" not in sent  # it went with the invalid traceparent


async def test_a_batch_carries_the_requests_context_and_an_items_own(make_service, make_executor):
    executor = await make_executor()
    service = await make_service(executors=ExecutorPool([executor.url]))
    own = "00-11111111111111111111111111111111-2222222222222222-00"
    tasks = [
        {"eval_id": "plain", "code": "a"},
        {"eval_id": "own", "code": "b", "traceparent": own, "tracestate": "x=1"},
    ]
    made = await service.http.post(
        "/tasks/batch", json={"tasks": tasks}, headers={"traceparent": TP}
    )
    assert made.status_code == 201, made.text
    await wait_for(lambda: _truthy(len(executor.headers) == 2))
    sent = {call["eval_id"]: h for call, h in zip(executor.calls, executor.headers, strict=True)}
    assert sent["plain"]["traceparent"] == TP
    assert (sent["own"]["traceparent"], sent["own"]["tracestate"]) == (own, "x=1")


async def test_a_pull_worker_gets_the_tasks_context(service):
    made = await service.http.post("/tasks", json={"code": "x"}, headers={"traceparent": TP})
    assert made.status_code == 201
    pulled = (await service.http.get("/tasks/next")).json()
    assert pulled["traceparent"] == TP
    assert "tracestate" not in pulled


async def test_a_pai_eas_forward_carries_the_puts_context(make_service, make_target, svc):
    target = await make_target()
    service = await eas_service(make_service, svc, target)
    index = await put(service, svc, b"hi", traceparent=TP, tracestate="rojo=1")
    assert (await final_status(service, svc, index))["status"] == "SUCCESS"
    assert (target.calls[0]["traceparent"], target.calls[0]["tracestate"]) == (TP, "rojo=1")
    plain = await put(service, svc, b"again", traceparent="nonsense")
    assert (await final_status(service, svc, plain))["status"] == "SUCCESS"
    assert parse_traceparent(target.calls[1]["traceparent"]) not in (None, TP)


async def test_pai_eas_clients_never_see_the_kept_context(make_service, svc):
    service = await eas_service(make_service, svc)  # no target: the item stays queued
    index = await put(service, svc, b"hi", traceparent=TP)
    frames = await service.http.get(f"/api/predict/{svc}?_index_={index}", headers=AUTH)
    assert frames.status_code == 200, frames.text
    [frame] = frames.json()["index"]
    assert frame["tags"] == {"requestId": str(index)}
    assert TP not in frames.text


async def _truthy(value: object) -> bool:
    return bool(value)
