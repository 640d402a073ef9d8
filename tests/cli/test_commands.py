"""The operator commands of `python -m app`: info --interval, dlq, task, enqueue.

Each runs as a subprocess against the session's real Redis, on this test's queue.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from app.engine import admin
from app.engine.engine import Engine
from app.engine.queue import Queue
from app.models import TaskRequest
from app.settings import Settings
from tests.cli.test_main import dead_redis_url, one_line, run
from tests.conftest import ROOT, wait_for


def env_of(redis_url: str, queue: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "QUEUE_NAME": queue}


async def arun(*args: str, env: dict[str, str], stdin: bytes | None = None) -> tuple[int, str, str]:
    """`python -m app ARGS` without blocking the event loop (a test worker runs beside it)."""
    proc = await start(*args, env=env, stdin=stdin is not None)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def start(*args: str, env: dict[str, str], stdin: bool = False) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        *args,
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env},
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def add(streams: Queue, eval_id: str, **data: Any) -> None:
    await streams.enqueue(TaskRequest.parse({"eval_id": eval_id, "code": "x", **data}))


async def dead_letter(streams: Queue, eval_id: str, error: str = "boom") -> None:
    """A task in the DLQ: enqueued, claimed, failed without retry."""
    await add(streams, eval_id)
    claimed = await streams.claim("test-worker", 1, 30)
    assert [t.eval_id for t in claimed.tasks] == [eval_id]
    answer = await streams.fail(eval_id, error, retry=False, task=claimed.tasks[0])
    assert answer["status"] == "failed"


@pytest.fixture
async def qstreams(streams: Queue) -> Queue:
    await streams.ensure_groups()
    return streams


# --- task ---------------------------------------------------------------------------


async def test_task_json_prints_the_record(redis_url: str, queue: str, qstreams: Queue):
    await add(qstreams, "t1", priority="high")
    code, out, err = await arun("task", "t1", "--json", env=env_of(redis_url, queue))
    assert code == 0, err
    record = orjson.loads(out)
    assert record["eval_id"] == "t1"
    assert record["status"] == "queued"
    assert record["priority"] == "high"
    assert record["position"] == 1


async def test_task_text_has_one_line_per_field(redis_url: str, queue: str, qstreams: Queue):
    await add(qstreams, "t1")
    code, out, err = await arun("task", "t1", env=env_of(redis_url, queue))
    assert code == 0, err
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert rows["eval_id"] == "t1"
    assert rows["status"] == "queued"
    assert rows["result"] == "-"


def test_task_unknown_exits_1_with_one_line(redis_url: str, queue: str):
    result = run("task", "nope", env=env_of(redis_url, queue))
    assert result.returncode == 1, result
    assert "no such task" in one_line(result.stderr)
    assert result.stdout == ""


def test_task_with_an_invalid_id_exits_2(redis_url: str, queue: str):
    result = run("task", "a b", env=env_of(redis_url, queue))
    assert result.returncode == 2, result
    assert "eval_id" in one_line(result.stderr)


# --- enqueue ------------------------------------------------------------------------


async def test_enqueue_prints_the_answer_and_stores_the_task(
    redis_url: str, queue: str, qstreams: Queue
):
    code, out, err = await arun(
        "enqueue",
        "print(6*7)",
        "--priority",
        "high",
        "--eval-id",
        "e1",
        env=env_of(redis_url, queue),
    )
    assert code == 0, err
    answer = orjson.loads(out)
    assert answer == {"eval_id": "e1", "status": "queued", "priority": "high", "position": 1}
    claimed = await qstreams.claim("test-worker", 1, 30)
    assert claimed.tasks[0].eval_id == "e1"
    assert claimed.tasks[0].payload["code"] == "print(6*7)"


async def test_enqueue_with_delay_is_scheduled(redis_url: str, queue: str, qstreams: Queue):
    code, out, err = await arun("enqueue", "x", "--delay", "60", env=env_of(redis_url, queue))
    assert code == 0, err
    answer = orjson.loads(out)
    assert answer["status"] == "scheduled"
    assert (await qstreams.get(answer["eval_id"]))["status"] == "scheduled"


async def test_enqueue_with_a_tenant(redis_url: str, queue: str, qstreams: Queue):
    code, out, err = await arun("enqueue", "x", "--tenant", "acme", env=env_of(redis_url, queue))
    assert code == 0, err
    assert (await qstreams.get(orjson.loads(out)["eval_id"]))["tenant"] == "acme"


async def test_enqueue_reads_code_from_stdin(redis_url: str, queue: str, qstreams: Queue):
    code, out, err = await arun(
        "enqueue",
        "-",
        "--eval-id",
        "s1",
        env=env_of(redis_url, queue),
        stdin=b"print(1)\nprint(2)\n",
    )
    assert code == 0, err
    claimed = await qstreams.claim("test-worker", 1, 30)
    assert claimed.tasks[0].payload["code"] == "print(1)\nprint(2)\n"


@pytest.mark.parametrize(
    "args",
    [
        ("--priority", "urgent"),
        ("--delay", "-1"),
        ("--wait", "0"),
        ("--wait", "soon"),
    ],
)
def test_enqueue_bad_arguments_exit_2_with_usage(redis_url: str, queue: str, args: tuple[str, ...]):
    result = run("enqueue", "x", *args, env=env_of(redis_url, queue))
    assert result.returncode == 2, result
    assert "usage" in result.stderr.lower()
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--eval-id", "bad id"), "eval_id"), (("--eval-id", "next"), "reserved")],
)
def test_enqueue_invalid_task_exits_2_with_one_line(
    redis_url: str, queue: str, args: tuple[str, ...], message: str
):
    result = run("enqueue", "x", *args, env=env_of(redis_url, queue))
    assert result.returncode == 2, result
    assert message in one_line(result.stderr)


async def test_enqueue_duplicate_id_exits_1(redis_url: str, queue: str, qstreams: Queue):
    await add(qstreams, "dup")
    code, out, err = await arun("enqueue", "x", "--eval-id", "dup", env=env_of(redis_url, queue))
    assert code == 1
    assert "already exists" in one_line(err)
    assert out == ""


async def claim_when_queued(streams: Queue, eval_id: str) -> Any:
    async def claimed() -> Any:
        batch = await streams.claim("test-worker", 1, 30)
        return batch.tasks[0] if batch.tasks else None

    task = await wait_for(claimed, timeout=15)
    assert task.eval_id == eval_id
    return task


async def test_enqueue_wait_prints_the_completed_record_and_exits_0(
    redis_url: str, queue: str, qstreams: Queue
):
    proc = await start(
        "enqueue", "print(6*7)", "--eval-id", "w1", "--wait", "15", env=env_of(redis_url, queue)
    )
    task = await claim_when_queued(qstreams, "w1")
    await qstreams.complete("w1", {"status": "success", "output": "42\n", "exit_code": 0}, task)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    answer, record = (orjson.loads(line) for line in out.decode().splitlines())
    assert answer["status"] == "queued"
    assert record["status"] == "completed"
    assert record["result"]["output"] == "42\n"


async def test_enqueue_wait_exits_1_when_the_task_failed(
    redis_url: str, queue: str, qstreams: Queue
):
    proc = await start(
        "enqueue", "x", "--eval-id", "w2", "--wait", "15", env=env_of(redis_url, queue)
    )
    task = await claim_when_queued(qstreams, "w2")
    await qstreams.fail("w2", "boom", retry=False, task=task)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1, err
    record = orjson.loads(out.decode().splitlines()[-1])
    assert record["status"] == "failed"
    assert record["error"] == "boom"


async def test_enqueue_wait_gives_up_after_the_time(redis_url: str, queue: str, qstreams: Queue):
    started = time.monotonic()
    code, out, err = await arun(
        "enqueue", "x", "--eval-id", "w3", "--wait", "0.5", env=env_of(redis_url, queue)
    )
    assert code == 1
    assert "still queued" in one_line(err)
    assert orjson.loads(out.splitlines()[-1])["status"] == "queued"
    assert time.monotonic() - started < 10


# --- dlq ----------------------------------------------------------------------------


async def test_dlq_list_json_newest_first(redis_url: str, queue: str, qstreams: Queue):
    await dead_letter(qstreams, "d1", "first")
    await dead_letter(qstreams, "d2", "second")
    code, out, err = await arun("dlq", "list", "--json", env=env_of(redis_url, queue))
    assert code == 0, err
    page = orjson.loads(out)
    assert page["count"] == 2
    assert [t["eval_id"] for t in page["tasks"]] == ["d2", "d1"]
    assert page["tasks"][1]["error"] == "first"
    code, out, err = await arun(
        "dlq", "list", "--json", "--limit", "1", "--offset", "1", env=env_of(redis_url, queue)
    )
    assert code == 0, err
    assert [t["eval_id"] for t in orjson.loads(out)["tasks"]] == ["d1"]


async def test_dlq_list_text(redis_url: str, queue: str, qstreams: Queue):
    await dead_letter(qstreams, "d1", "it\nbroke")
    code, out, err = await arun("dlq", "list", env=env_of(redis_url, queue))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("dlq 1")
    assert "d1" in lines[1] and "attempts=1" in lines[1] and "it broke" in lines[1]
    assert len(lines) == 2


async def test_dlq_retry_queues_the_task_again(redis_url: str, queue: str, qstreams: Queue):
    await dead_letter(qstreams, "d1")
    code, out, err = await arun("dlq", "retry", "d1", env=env_of(redis_url, queue))
    assert code == 0, err
    assert orjson.loads(out) == {"eval_id": "d1", "status": "queued"}
    assert (await qstreams.get("d1"))["status"] == "queued"
    assert (await admin.dlq_list(qstreams))["count"] == 0
    code, out, err = await arun("dlq", "retry", "d1", env=env_of(redis_url, queue))
    assert code == 1
    assert "not in the dead-letter queue" in one_line(err)


async def test_dlq_purge_one_old_and_all(redis_url: str, queue: str, qstreams: Queue):
    for eval_id in ("d1", "d2", "d3"):
        await dead_letter(qstreams, eval_id)
    env = env_of(redis_url, queue)
    code, out, err = await arun("dlq", "purge", "d2", env=env)
    assert (code, orjson.loads(out)) == (0, {"removed": 1}), err
    code, out, err = await arun("dlq", "purge", "d2", env=env)
    assert code == 1
    assert "not in the dead-letter queue" in one_line(err)
    code, out, err = await arun("dlq", "purge", "--older-than-days", "1", env=env)
    assert (code, orjson.loads(out)) == (0, {"removed": 0}), err
    code, out, err = await arun("dlq", "purge", env=env)
    assert (code, orjson.loads(out)) == (0, {"removed": 2}), err
    assert (await admin.dlq_list(qstreams))["count"] == 0


@pytest.mark.parametrize(
    "args",
    [
        ("dlq",),
        ("dlq", "frob"),
        ("dlq", "retry"),
        ("dlq", "list", "--limit", "0"),
        ("dlq", "list", "--offset", "-1"),
        ("dlq", "purge", "--older-than-days", "soon"),
    ],
)
def test_dlq_bad_arguments_exit_2(args: tuple[str, ...]):
    result = run(*args)
    assert result.returncode == 2, result
    assert "usage" in result.stderr.lower()


def test_dlq_purge_with_id_and_age_exits_2(redis_url: str, queue: str):
    result = run("dlq", "purge", "--older-than-days", "1", "d1", env=env_of(redis_url, queue))
    assert result.returncode == 2, result
    assert "not both" in one_line(result.stderr)


# --- Redis unreachable --------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("task", "t1"),
        ("enqueue", "print(1)"),
        ("enqueue", "print(1)", "--wait", "5"),
        ("dlq", "list"),
        ("dlq", "retry", "d1"),
        ("dlq", "purge"),
        ("dlq", "purge", "d1"),
        ("info", "--interval", "0.1"),
    ],
)
def test_every_command_against_a_dead_redis_exits_1_with_one_line(args: tuple[str, ...]):
    started = time.monotonic()
    result = run(*args, env={"REDIS_URL": dead_redis_url()})
    assert result.returncode == 1, result
    assert "redis" in one_line(result.stderr).lower()
    assert result.stdout == ""
    assert time.monotonic() - started < 10


def test_a_bad_setting_exits_2_for_the_operator_commands():
    result = run("dlq", "list", env={"QUEUE_NAME": "no spaces allowed"})
    assert result.returncode == 2, result
    assert "QUEUE_NAME" in one_line(result.stderr)


# --- info --interval ----------------------------------------------------------------


def reports(text: str, queue: str) -> list[str]:
    return [line for line in text.splitlines() if line == f"queue {queue}"]


async def test_info_interval_refreshes(redis_url: str, queue: str, qstreams: Queue):
    await add(qstreams, "i1")
    started = time.monotonic()
    code, out, err = await arun(
        "info", "--interval", "0.3", "--count", "2", env=env_of(redis_url, queue)
    )
    assert code == 0, err
    assert len(reports(out, queue)) == 2
    assert "\x1b" not in out  # not a terminal: no screen clearing
    assert time.monotonic() - started >= 0.3
    queued = [line.split() for line in out.splitlines() if line.startswith("  queued")]
    assert [row[1] for row in queued] == ["1", "1"]


async def test_info_interval_json_prints_one_document_per_line(
    redis_url: str, queue: str, qstreams: Queue
):
    await add(qstreams, "i1")
    code, out, err = await arun(
        "info", "--json", "--interval", "0.1", "--count", "3", env=env_of(redis_url, queue)
    )
    assert code == 0, err
    documents = [orjson.loads(line) for line in out.splitlines()]
    assert len(documents) == 3
    assert all(doc["states"]["queued"] == 1 for doc in documents)


async def test_info_interval_stops_on_ctrl_c_with_status_0(redis_url: str, queue: str):
    proc = await start("info", "--interval", "0.2", env=env_of(redis_url, queue))
    assert proc.stdout is not None
    seen: list[str] = []

    async def refreshed_twice() -> bool:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)  # type: ignore[union-attr]
        assert line, "info --interval ended on its own"
        seen.append(line.decode().rstrip("\n"))
        return len(reports("\n".join(seen), queue)) >= 2

    await wait_for(refreshed_twice, timeout=15, interval=0)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err
    assert "Traceback" not in err.decode()


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_info_bad_interval_exits_2(value: str):
    result = run("info", "--interval", value)
    assert result.returncode == 2
    assert "usage" in result.stderr.lower()


# --- help ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), ("serve", "info", "dlq", "task", "enqueue", "example-executor", "exit status")),
        (("dlq",), ("list", "retry", "purge")),
        (("dlq", "purge"), ("--older-than-days", "EVAL_ID")),
        (("enqueue",), ("--priority", "--eval-id", "--delay", "--wait")),
        (("info",), ("--json", "--interval")),
        (("serve",), ("--example-executor", "--example-executor-port")),
        (("example-executor",), ("--host", "--port", "--allow-remote", "NOT a sandbox")),
    ],
)
def test_help_texts(args: tuple[str, ...], expected: tuple[str, ...]):
    result = run(*args, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for word in expected:
        assert word in text, (word, result.stdout)
    assert "--count" not in result.stdout and "--fd" not in result.stdout


# --- main() in-process --------------------------------------------------------------


def test_main_task_in_process(
    redis_url: str,
    queue: str,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    from app.__main__ import main
    from app.engine.client import connect

    async def setup() -> None:
        client = connect(redis_url)
        try:
            streams = Engine(client, make_settings()).default
            await streams.ensure_groups()
            await add(streams, "m1")
        finally:
            await client.aclose()

    asyncio.run(setup())
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("QUEUE_NAME", queue)
    assert main(["task", "m1", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["status"] == "queued"
    assert main(["task", "m2"]) == 1
    assert "no such task" in one_line(capsys.readouterr().err)


def test_info_interval_clears_the_screen_on_a_terminal(redis_url: str, queue: str):
    import pty

    leader, follower = pty.openpty()
    chunks = []
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "app", "info", "--interval", "0.1", "--count", "2"],
            cwd=ROOT,
            env={"PATH": os.environ.get("PATH", ""), **env_of(redis_url, queue)},
            stdout=follower,
            stderr=subprocess.DEVNULL,
        ) as proc:
            os.close(follower)
            while True:  # read while it runs: a full terminal buffer would block it
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the other end is closed and drained
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            assert proc.wait(20) == 0
    finally:
        os.close(leader)
    text = b"".join(chunks).decode()
    assert text.count("\x1b[H\x1b[2J") == 2
    assert text.count(f"queue {queue}") == 2
    assert "every 0.1s" in text
