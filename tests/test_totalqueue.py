"""The total-queue checker (tests/totalqueue.py) catches what it must: a lost task, a
repeat execution, an execution nobody enqueued, a malformed Idempotency-Key, a task
dead-lettered as lost whose entry the fault did not destroy; tells a recovered write (an
indeterminate enqueue that ran) from an unexpected one; and records how answers looked."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.redis_server import free_port
from tests.conftest import ROOT, Service, wait_for
from tests.runtime.test_wire import RawServer
from tests.totalqueue import (
    Execution,
    Load,
    Recorder,
    RecordingExecutor,
    Reply,
    analyse,
    drain,
    http_lookup,
    read_executions,
)

MakeService = Callable[..., Awaitable[Service]]


@pytest.fixture
async def executor() -> Any:
    made = await RecordingExecutor().start()
    yield made
    await made.stop()


# --- end to end, through the service -------------------------------------------------------


async def test_a_lost_task_and_a_repeat_execution_fail_the_check(
    executor: RecordingExecutor, make_service: MakeService
):
    """Through a real service: 'gone' is cancelled before it runs (lost), 'later' is
    scheduled an hour ahead (never terminal within the drain: lost, last state shown),
    'dup' fails permanently and is retried from the DLQ (run twice)."""

    def decide(execution: Execution) -> Reply:
        if execution.eval_id == "dup" and not dup_failed:
            dup_failed.append(execution)
            return Reply(status=400, body={"error": "no"})
        return Reply()

    dup_failed: list[Execution] = []
    executor.decide = decide
    executor.healthy = False  # nothing runs until the plan is in place
    service = await make_service(executor_urls=(executor.url,), health_interval=0.05)
    recorder = Recorder()
    for eval_id in ("a", "b", "gone", "dup"):
        assert await recorder.enqueue(service.http, eval_id) == ("accepted", 201)
    assert await recorder.enqueue(service.http, "later", delay=3600) == ("accepted", 201)
    assert (await service.http.post("/tasks/gone/cancel")).status_code == 200
    executor.healthy = True

    async def dead_lettered() -> bool:
        return bool((await service.http.get("/tasks/dup")).json()["status"] == "failed")

    await wait_for(dead_lettered)
    assert (await service.http.post("/dlq/dup/retry")).status_code == 200
    drained = await drain(http_lookup(service.http), recorder.ids(), executor, 1.5, 0.2)
    assert drained.open == {"later"}

    report = analyse(recorder, executor.executions, drained.records)
    assert report.accepted == 5 and report.completed == 3  # a, b, dup
    assert dict(report.lost) == {"gone": "cancelled", "later": "scheduled"}
    assert dict(report.duplicated) == {"dup": 2} and report.extra_executions == 1
    assert report.executions == 4 and not report.unexpected and not report.recovered
    assert report.repeated_keys == 1  # the DLQ retry starts again at attempt 1
    with pytest.raises(AssertionError) as caught:
        report.check(max_duplicates=0)
    message = str(caught.value)
    assert "2 accepted task(s) never completed" in message
    assert "1 repeat execution(s), more than the 0" in message
    assert "lost: gone (cancelled), later (scheduled)" in message
    assert "duplicated: dup x2" in message
    with pytest.raises(AssertionError, match="never completed") as caught:
        report.check(max_duplicates=1)
    assert "repeat" not in str(caught.value).splitlines()[0]


async def test_a_clean_run_passes_and_an_indeterminate_write_that_ran_is_recovered(
    executor: RecordingExecutor, make_service: MakeService
):
    service = await make_service(executor_urls=(executor.url,), health_interval=0.05)
    recorder = Recorder()
    load = Load(recorder, [service.url], rate=200.0, prefix="load")
    load.start()
    await wait_for(lambda: _true(load.accepted_by(service.url) >= 20))
    await load.stop()
    # The client lost the answer of this one, but the service stored it.
    recorder.record("lost-answer", None, "ReadTimeout")
    assert await service.http.post("/tasks", json={"eval_id": "lost-answer", "code": "x"})
    drained = await drain(http_lookup(service.http), recorder.ids(), executor, 10.0, 0.2)
    assert not drained.open

    report = analyse(recorder, executor.executions, drained.records).check()
    assert report.accepted == load.sent == report.completed
    assert report.recovered == ["lost-answer"] and not report.unexpected
    assert report.indeterminate == 1 and report.extra_executions == 0
    assert report.executions == load.sent + 1
    assert report.max_duplicates == 0
    assert f"accepted {load.sent} (refused 0, indeterminate 1)" in report.summary()


# --- classes the service cannot produce on purpose ------------------------------------------


async def test_an_execution_nobody_enqueued_and_a_bad_key_fail_the_check(
    executor: RecordingExecutor,
):
    async with httpx.AsyncClient(base_url=executor.url) as http:
        for eval_id, attempt, key in [("a", 1, "a:1"), ("stray", 1, None), ("b", 2, "b:1")]:
            headers = {"Idempotency-Key": key} if key else {}
            answer = await http.post(
                "/r7/execute", json={"eval_id": eval_id, "attempt": attempt}, headers=headers
            )
            assert answer.status_code == 200
    assert [(e.eval_id, e.attempt, e.key, e.via) for e in executor.executions] == [
        ("a", 1, "a:1", "/r7"),
        ("stray", 1, None, "/r7"),
        ("b", 2, "b:1", "/r7"),
    ]
    recorder = Recorder()
    recorder.record("a", 201)
    recorder.record("b", 201)
    records: dict[str, Mapping[str, Any] | None] = {
        "a": {"status": "completed", "attempts": 1},
        "b": {"status": "completed"},
    }
    report = analyse(recorder, executor.executions, records)
    assert report.unexpected == ["stray"] and report.bad_keys == ["b:1"] and report.keyed == 2
    with pytest.raises(AssertionError) as caught:
        report.check(max_duplicates=5)
    first = str(caught.value).splitlines()[0]
    assert first == (
        "1 execution(s) of tasks nobody enqueued; 1 Idempotency-Key(s) not <eval_id>:<attempt>"
    )


def test_more_attempts_run_than_counted_fail_the_check():
    recorder = Recorder()
    recorder.record("t", 201)
    runs = [Execution("t", n, None, "", 0.0) for n in (1, 2, 3)]
    report = analyse(recorder, runs, {"t": {"status": "completed", "attempts": 2}})
    assert dict(report.uncounted) == {"t": (2, 3)}
    assert dict(report.duplicated) == {"t": 3} and report.repeated_keys == 0
    with pytest.raises(AssertionError, match=r"1 task\(s\) ran more attempts than they count"):
        report.check(max_duplicates=2)
    missing = analyse(recorder, [], {"t": None})
    assert dict(missing.lost) == {"t": "missing"}
    phantom = analyse(recorder, [], {"t": {"status": "completed", "attempts": 1}})
    assert dict(phantom.lost) == {"t": "completed, never executed"}


def test_the_recorder_keeps_the_best_outcome_of_an_id():
    recorder = Recorder()
    assert recorder.record("x", 503) == "indeterminate"
    assert recorder.record("x", 409) == "refused"  # the 503'd write may still exist
    assert recorder.indeterminate == {"x": "answered 503"} and not recorder.refused
    assert recorder.record("x", 201) == "accepted"
    assert recorder.record("x", None, "ReadTimeout") == "accepted"
    assert recorder.accepted == {"x"} and not recorder.indeterminate
    assert recorder.record("y", 422) == "refused"
    assert recorder.not_sent("z", "connect failed") == "refused"
    assert recorder.refused == {"y": "answered 422", "z": "connect failed"}
    assert recorder.ids() == {"x"}


# --- the executor's behaviours -------------------------------------------------------------


async def test_the_executor_holds_resets_and_notices_a_caller_gone(executor: RecordingExecutor):
    release = asyncio.Event()

    async def decide(execution: Execution) -> Reply:
        if execution.eval_id == "reset":
            return Reply(reset=True)
        await release.wait()
        return Reply(status=503, body={"error": "busy"})

    executor.decide = decide
    async with httpx.AsyncClient(base_url=executor.url + "/r1") as http:
        with pytest.raises(httpx.ReadError):  # ECONNRESET
            await http.post("/execute", json={"eval_id": "reset", "attempt": 1})
        held = asyncio.create_task(http.post("/execute", json={"eval_id": "held", "attempt": 1}))
        await wait_for(lambda: _true(executor.open("/r1")))
        assert [e.eval_id for e in executor.open()] == ["held"] and not executor.open("/r0")
        release.set()
        assert (await held).status_code == 503
    assert not executor.open()

    release.clear()
    gone = asyncio.create_task(_post_and_close(executor.url, "gone"))
    await wait_for(lambda: _true(executor.open()))
    await gone
    await asyncio.sleep(0.05)  # the connection's close reaches the executor
    release.set()
    await wait_for(lambda: _true(executor.unanswered))
    assert [e.eval_id for e in executor.unanswered] == ["gone"]


async def _post_and_close(url: str, eval_id: str) -> None:
    """Send a request and close the connection before its answer comes."""
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = f'{{"eval_id": "{eval_id}", "attempt": 1}}'.encode()
    head = f"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_the_executor_as_a_process_records_to_a_file(tmp_path: Path):
    record, port = tmp_path / "runs.jsonl", free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.totalqueue", "executor", "--port", str(port)]
        + ["--record", str(record)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.to_thread(process.stdout.readline)
        assert line.decode().strip() == f"executor listening on http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/r0/health")).status_code == 200
            answer = await http.post(
                "/r0/execute",
                json={"eval_id": "p", "attempt": 2},
                headers={"Idempotency-Key": "p:2"},
            )
            assert answer.json() == {"status": "success", "output": "ok", "exit_code": 0}
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
    assert read_executions(record) == [Execution("p", 2, "p:2", "/r0", 0.0)]


async def _true(value: object) -> bool:
    return bool(value)


def test_a_task_dead_lettered_as_lost_passes_only_when_the_fault_destroyed_it():
    recorder = Recorder()
    for eval_id in ("ok", "gone", "spared", "stuck"):
        recorder.record(eval_id, 201)
    lost_error = "stream entry lost: 1-0 (default) was deleted while the task was queued"
    records: dict[str, Mapping[str, Any] | None] = {
        "ok": {"status": "completed", "attempts": 1},
        "gone": {"status": "failed", "error": lost_error},
        "spared": {"status": "failed", "error": lost_error},
        "stuck": {"status": "queued"},
    }
    report = analyse(recorder, [Execution("ok", 1, "ok:1", "", 0.0)], records)
    assert dict(report.dead_lettered_lost) == {"gone": lost_error, "spared": lost_error}
    assert dict(report.lost) == {"stuck": "queued"} and report.completed == 1
    with pytest.raises(AssertionError) as caught:
        report.check(destroyed={"gone", "stuck"})
    first = str(caught.value).splitlines()[0]
    assert first == (
        "1 accepted task(s) never completed; 1 task(s) dead-lettered as lost whose stream "
        "entries the fault did not destroy"
    )
    assert "dead-lettered as lost 2 (stream entries the fault destroyed: 2)" in str(caught.value)
    assert "dead-lettered as lost, entry not destroyed: spared" in str(caught.value)
    del records["stuck"], records["spared"]
    recorder.accepted -= {"stuck", "spared"}
    passed = analyse(recorder, [Execution("ok", 1, "ok:1", "", 0.0)], records).check(
        destroyed={"gone"}
    )
    assert passed.destroyed == {"gone"} and passed.as_dict()["dead_lettered_lost"] == {
        "gone": lost_error
    }
    other = {"status": "failed", "error": "executor answered 400"}
    assert dict(analyse(recorder, [], {"ok": None, "gone": other}).lost) == {
        "ok": "missing",
        "gone": "failed",
    }


async def test_the_recorder_tells_how_each_answer_looked():
    """A raw loopback server answers by path: JSON, text, broken JSON, or no answer."""
    answers = {
        b"/json/": (503, b"application/json", b'{"error": "redis unavailable: OOM"}'),
        b"/text/": (500, b"text/plain; charset=utf-8", b"Internal Server Error"),
        b"/bad-json/": (500, b"application/json", b"{"),
    }

    async def reply(request: bytes) -> bytes | None:
        path = request.split(b" ", 2)[1].removesuffix(b"tasks")
        if path not in answers:
            return None  # closed without an answer
        status, kind, body = answers[path]
        head = b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
        return head % (status, kind, len(body)) + body

    raw = RawServer(reply)
    raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    recorder = Recorder()
    try:
        for path in ("json", "text", "bad-json", "cut"):
            async with httpx.AsyncClient(base_url=f"{raw.url}/{path}/") as http:
                await recorder.enqueue(http, path)
    finally:
        raw.server.close()
    assert recorder.answers == {
        "503 json": 1,
        "500 text/plain": 1,
        "500 application/json, not JSON": 1,
        "no answer: RemoteProtocolError": 1,
    }
    assert set(recorder.indeterminate) == {"json", "text", "bad-json", "cut"}
    assert set(recorder.timings) == {"json", "text", "bad-json"}
    sent, answered = recorder.timings["json"]
    assert sent <= answered
