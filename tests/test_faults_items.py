"""Faults of issue 11's items, kept fixed under load: the rig of tests/test_faults.py (two
`python -m app serve` replicas on one Redis, enqueue load through both, the recording
executor; tests/faultrig.py), one fault, a drain, the total-queue report and its check.

- item 2: stream entries deleted (XTRIM, XDEL) under queued and processing tasks while a
  replica holding some of them dies: every accepted task ends completed, or dead-lettered
  with "stream entry lost" when the fault destroyed its entry; `fsck --repair` dead-letters
  the queued orphans; nothing stays queued or processing.
- item 4: the executor resets the connection after reading a request: the record's
  `attempts` equals the distinct Idempotency-Keys the executor saw, and a key comes twice
  only as wire's re-send of a request whose connection was reset.
- item 5: one replica's clock 120 s off (faketime) next to a normal one: delayed tasks run
  on time by the real clock whichever replica accepted them.
- item 1: Redis out of memory (maxmemory, `noeviction`): every enqueue answered 201 or 503
  JSON, a refused one wrote nothing, the backlog drains meanwhile, all accepted complete.
- item 8: SIGTERM to a replica holding tasks: /readyz 503 and /livez 200 while it drains,
  every enqueue sent to it answered, exit 0, repeats only of what it held past the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.engine.client import connect
from app.redis_server import RedisServer, free_port
from tests.cli.test_main import run
from tests.conftest import ROOT, Process, wait_for
from tests.faultrig import (
    CONCURRENCY,
    FLOW,
    IN_FLIGHT,
    LEASE,
    WORK,
    RedisServers,
    Rig,
    Rigs,
    Spawn,
)
from tests.test_clock import base_env, clock_offset, faketime
from tests.test_refusals import assert_refused, out_of_memory
from tests.totalqueue import Execution, Reply

pytestmark = pytest.mark.timeout(120)

MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(spawn_service: Spawn, queue: str) -> AsyncIterator[MakeRig]:
    rigs = Rigs(spawn_service, queue)
    yield rigs.make
    await rigs.close()


# --- item 4: the executor resets the connection after reading the request ----------------------

# Network retries at once and many: a task whose every attempt was reset on a fresh connection
# (no re-send) must not run out of them.
FAST_NETWORK_RETRIES = {
    "NETWORK_RETRY_MAX_RETRIES": "20",
    "NETWORK_RETRY_BASE_DELAY": "0.02",
    "NETWORK_RETRY_MAX_DELAY": "0.1",
    "RETRY_JITTER": "false",
}


def reset_first_call_of_each_key(resets: list[Execution]) -> Callable[[Execution], Reply]:
    """Every third task: the first request of each Idempotency-Key is read, then its
    connection reset (no byte of an answer). Resets are listed in `resets`."""
    seen: set[str] = set()

    def decide(execution: Execution) -> Reply:
        first = execution.identity not in seen
        seen.add(execution.identity)
        if first and int(execution.eval_id.rsplit("-", 1)[1]) % 3 == 0:
            resets.append(execution)
            return Reply(reset=True)
        return Reply(delay=0.02)

    return decide


async def test_executor_connection_resets_count_one_attempt_per_key(
    make_rig: MakeRig, redis_url: str
):
    """A reset on a reused connection is re-sent once with the same key (wire's automatic
    re-send: the executor may have run it, the key lets it tell); on a fresh connection it
    is a network failure and the next attempt carries the next key. Either way each reset
    costs exactly one more execution, and `attempts` counts keys, not requests."""
    resets: list[Execution] = []
    rig = await make_rig(redis_url, reset_first_call_of_each_key(resets), FAST_NETWORK_RETRIES)
    await rig.more("accepted", 3 * FLOW)

    report = (await rig.report()).check(max_duplicates=len(resets))
    print(report.summary())
    assert rig.drained is not None
    assert report.completed == report.accepted >= 4 * FLOW
    assert report.executions == report.accepted + len(resets), report.summary()
    assert report.keyed == report.executions and not report.bad_keys

    runs: defaultdict[str, list[Execution]] = defaultdict(list)
    for execution in rig.executor.executions:
        runs[execution.eval_id].append(execution)
    attempts = {i: r["attempts"] for i, r in rig.drained.records.items() if r is not None}
    distinct = {i: len({e.key for e in runs[i]}) for i in rig.recorder.accepted}
    assert attempts == distinct
    per_key = Counter(e.identity for e in rig.executor.executions)
    reset_keys = {e.identity for e in resets}
    assert max(per_key.values()) == 2  # the re-send; never a third request of a key
    assert {k for k, n in per_key.items() if n == 2} <= reset_keys
    assert report.repeated_keys == sum(1 for n in per_key.values() if n == 2) > 0


# --- item 2: stream entries deleted under queued and processing tasks ---------------------------


def stream_key(queue: str) -> str:
    return f"ts:{{{queue}}}:stream:default"


async def test_stream_entries_deleted_under_pending_tasks_leave_no_task_stuck(
    make_rig: MakeRig, redis_url: str, queue: str
):
    """Both replicas hold CONCURRENCY tasks at the executor (so nothing is claimed while
    Redis is damaged) and a backlog is queued. An operator trims the stream's head (XTRIM
    MINID: every processing entry and the oldest queued ones) and XDELs every 4th queued
    entry after it; r0, holding some of the processing tasks, is killed; r1's hold is
    released. Then: r1's tasks complete (a live holder settles its task), r0's destroyed
    tasks are dead-lettered as lost at the takeover, its others run again on r1, and the
    background audit (CLEANUP_INTERVAL=1) dead-letters the queued orphans. Each loss is
    counted and logged once, and fsck finds nothing left."""
    held = asyncio.Event()
    release = asyncio.Event()
    holders: dict[str, set[str]] = {"/r0": set(), "/r1": set()}  # held at the executor

    async def decide(execution: Execution) -> Reply:
        if held.is_set():
            holders[execution.via].add(execution.eval_id)
            await (asyncio.Event() if execution.via == "/r0" else release).wait()
        return Reply(delay=WORK)

    # Only r1 audits (r0 could be killed between a repair and its log line).
    audits = [{"CLEANUP_INTERVAL": "3600"}, {"CLEANUP_INTERVAL": "1"}]
    rig = await make_rig(redis_url, decide, envs=audits)
    r0, r1 = rig.replicas
    held.set()
    client = connect(redis_url)
    try:
        destroyed = await destroy_entries(rig, client, queue, holders)
        r0.proc.kill()
        assert await asyncio.to_thread(r0.proc.wait, 10) == -signal.SIGKILL
        rig.load.targets.remove(r0.url)
        held.clear()
        release.set()
        await rig.more("accepted", FLOW, [r1.url])
        report = (await rig.report()).check(max_duplicates=CONCURRENCY, destroyed=destroyed)
        print(report.summary())
        assert await client.xlen(stream_key(queue)) == 0
    finally:
        await client.aclose()

    queued = destroyed - holders["/r0"] - holders["/r1"]
    assert queued and holders["/r0"] & destroyed and holders["/r1"] & destroyed
    assert set(report.dead_lettered_lost) == queued | (holders["/r0"] & destroyed)
    assert report.completed == report.accepted - len(report.dead_lettered_lost)
    assert all("was deleted while the task was" in e for e in report.dead_lettered_lost.values())
    async with httpx.AsyncClient(base_url=r1.url) as http:
        status = (await http.get("/status")).json()
    assert status["totals"]["lost"] == len(report.dead_lettered_lost)
    logged = Counter(line["eval_id"] for line in log_lines(r0, r1) if line["event"] == "task_lost")
    assert logged == Counter(set(report.dead_lettered_lost))  # each once
    audit = await asyncio.to_thread(run, "fsck", env={"REDIS_URL": redis_url, "QUEUE_NAME": queue})
    assert audit.returncode == 0, audit.stdout + audit.stderr


async def destroy_entries(
    rig: Rig, client: Any, queue: str, holders: dict[str, set[str]]
) -> set[str]:
    """Once both replicas hold CONCURRENCY tasks (`holders`: all their slots, so nothing is
    claimed meanwhile) and ~40 more are queued, delete the entries of the head (all
    processing ones, then queued ones) and every 4th queued one after it. Returns the
    eval_ids whose entries were deleted."""

    async def saturated() -> bool:
        full = all(len(held) == CONCURRENCY for held in holders.values())
        return full and await client.xlen(stream_key(queue)) >= IN_FLIGHT + 40

    await wait_for(saturated, timeout=15)
    entries = await client.xrange(stream_key(queue))
    ids = [(entry_id, fields[b"id"].decode()) for entry_id, fields in entries]
    head = IN_FLIGHT + 10
    trimmed = await client.xtrim(stream_key(queue), minid=ids[head][0], approximate=False)
    picked = ids[head::4]
    deleted = await client.xdel(stream_key(queue), *[entry_id for entry_id, _ in picked])
    assert (trimmed, deleted) == (head, len(picked))
    destroyed = {eval_id for _, eval_id in ids[:head] + picked}
    assert holders["/r0"] | holders["/r1"] <= destroyed  # the processing entries are the oldest
    return destroyed


def log_lines(*processes: Process) -> list[dict[str, Any]]:
    """The JSON log lines of replicas (other lines, say a traceback, are skipped)."""
    found = []
    for process in processes:
        for line in process.output().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                found.append(orjson.loads(line))
    return found


# --- item 5: a replica's clock 120 s off, delayed tasks through both ------------------------------

EARLY = 0.05  # Redis keeps milliseconds; the test's clock reads are a little apart
LATE = 2.0  # promotion, claim and the call, under load on a loaded machine


@pytest.fixture
def spawn_skewed(tmp_path: Path) -> Iterator[Callable[[int], Spawn]]:
    """`spawn_skewed(offset)` is a `Spawn` that starts `python -m app serve` under
    faketime, `offset` s off. faketime stays the parent of the program, so each runs in
    a session of its own and the whole group is killed at the end."""
    started: list[Process] = []

    def skewed(offset: int) -> Spawn:
        def spawn(env: dict[str, str], wait_ready: bool = True) -> Process:
            port = free_port()
            log = tmp_path / f"skewed{len(started)}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [*faketime(offset), sys.executable, "-m", "app", "serve"],
                    cwd=ROOT,
                    env=base_env(HOST="127.0.0.1", PORT=str(port), LOG_LEVEL="INFO", **env),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            started.append(Process(proc, f"http://127.0.0.1:{port}", log))
            return started[-1]

        return spawn

    yield skewed
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.proc.pid, signal.SIGKILL)
        process.proc.wait()


def delay_of(eval_id: str) -> float:
    """1.0, 1.25, … 2.0 s by the task's number."""
    return 1.0 + int(eval_id.rsplit("-", 1)[1]) % 5 * 0.25


@pytest.mark.parametrize("offset", [120, -120], ids=lambda o: f"clock{o:+d}s")
async def test_delayed_tasks_run_on_time_through_a_clock_skewed_replica(
    make_rig: MakeRig,
    spawn_service: Spawn,
    spawn_skewed: Callable[[int], Spawn],
    redis_url: str,
    offset: int,
):
    """r0 keeps the real clock, r1 runs `offset` s off; every task is delayed 1-2 s and
    enqueued through either. Each must run between its delay after it was sent and its
    delay after its 201 (plus LATE), by the test's clock, whichever replica accepted it
    and whichever ran it: due times are Redis's."""
    real_start = time.time()
    rig = await make_rig(
        redis_url,
        spawns=[spawn_service, spawn_skewed(offset)],
        fields=lambda i: {"delay": delay_of(i)},
    )
    r0, r1 = rig.replicas
    skew = clock_offset(r1, real_start)
    assert abs(skew - offset) < 10, f"faketime did not move the replica's clock: {skew:+.1f}s"
    await rig.more("accepted", 2 * FLOW)

    report = (await rig.report()).check()
    print(report.summary())
    assert report.completed == report.accepted >= 6 * FLOW
    first: dict[str, Execution] = {}
    for execution in rig.executor.executions:
        first.setdefault(execution.eval_id, execution)
    off: list[str] = []
    for eval_id in rig.recorder.accepted:
        sent, answered = rig.recorder.timings[eval_id]
        ran, due = first[eval_id].at, delay_of(eval_id)
        if not sent + due - EARLY <= ran <= answered + due + LATE:
            via = rig.load.target_of[eval_id] == r1.url and "skewed" or "normal"
            off.append(f"{eval_id} ({via}): ran {ran - sent - due:+.2f}s from due")
    assert not off, f"{len(off)} of {report.accepted} off time: {off[:10]}"
    accepted_by = Counter(rig.load.target_of[i] for i in rig.recorder.accepted)
    assert accepted_by[r0.url] > FLOW and accepted_by[r1.url] > FLOW
    assert {e.via for e in first.values()} == {"/r0", "/r1"}


# --- item 1: Redis out of memory -------------------------------------------------------------


@pytest.fixture
def dedicated_redis(tmp_path: Path) -> Iterator[Callable[[bool], RedisServer]]:
    """A redis-server of the test's own, which it reconfigures."""
    servers = RedisServers(tmp_path)
    yield servers.make
    servers.stop()


async def test_redis_out_of_memory_under_load_answers_503_json_and_writes_nothing(
    make_rig: MakeRig, dedicated_redis: Callable[[bool], RedisServer], queue: str
):
    """maxmemory below what is used, `noeviction` (tests/test_refusals.py's fault), until
    each replica answered enqueues 503; then lifted. Every enqueue is answered 201 or 503
    JSON (never a 500, never a closed connection), a refused enqueue left nothing (404),
    the backlog accepted before drains meanwhile (settling is let through; every tenth
    task runs 1.5 leases, so its lease is renewed out of memory), and everything accepted
    completes once, none run twice."""
    release = asyncio.Event()

    async def decide(execution: Execution) -> Reply:
        await release.wait()  # a backlog builds up until Redis is out of memory
        return Reply(delay=1.5 * LEASE if execution.eval_id.endswith("7") else WORK)

    server = dedicated_redis(False)
    release.set()
    rig = await make_rig(server.url, decide)
    release.clear()
    await rig.more("accepted", FLOW)
    admin = connect(server.url)
    try:
        async with out_of_memory(admin):
            await rig.more("indeterminate", 5)
            backlog = set(rig.recorder.accepted) - {e.eval_id for e in rig.executor.executions}
            release.set()
            for url in rig.urls:
                async with httpx.AsyncClient(base_url=url) as http:
                    refused = await http.post("/tasks", json={"eval_id": "probe", "code": "x"})
                    health = await http.get("/health")
                assert_refused(refused, "out of memory", url)
                assert health.status_code == 503 and health.json()["redis"] == "refusing writes"

            async def backlog_drained() -> bool:
                ran = {e.eval_id for e in rig.executor.executions}
                return backlog <= ran and not backlog & {e.eval_id for e in rig.executor.open()}

            await wait_for(backlog_drained, timeout=10)
            await rig.more("indeterminate", 5)
        await rig.more("accepted", FLOW)
        report = (await rig.report()).check()
    finally:
        await admin.aclose()
    print(report.summary(), dict(rig.recorder.answers))
    assert set(rig.recorder.answers) == {"201 json", "503 json"}, rig.recorder.answers
    assert len(backlog) >= FLOW
    assert report.completed == report.accepted >= 4 * FLOW
    assert rig.drained is not None
    written = {i: r for i, r in rig.drained.records.items() if i in rig.recorder.indeterminate}
    assert len(written) == report.indeterminate >= 10 and not any(written.values())
    audit = await asyncio.to_thread(run, "fsck", env={"REDIS_URL": server.url, "QUEUE_NAME": queue})
    assert audit.returncode == 0, audit.stdout + audit.stderr


# --- item 8: SIGTERM to a replica with tasks in flight -------------------------------------------

DRAIN = {"SHUTDOWN_GRACE": "2", "SHUTDOWN_DELAY": "2.5"}


async def test_sigterm_to_a_replica_with_tasks_in_flight_under_load(
    make_rig: MakeRig, redis_url: str
):
    """r0 holds CONCURRENCY tasks at the executor when it gets SIGTERM. It drains: /readyz
    503 at once, /livez 200, enqueues still 201 (the test, as a load balancer would, stops
    sending once it saw the 503 and r0 answered FLOW more). Two of its tasks are answered
    within SHUTDOWN_GRACE and complete there; two are still held at the end of the grace,
    aborted and released, and r1 runs them again: the only repeats. r0 exits 0; every
    enqueue sent was answered 201 and nothing is lost."""
    held = asyncio.Event()
    finish = asyncio.Event()
    holding: list[str] = []

    async def decide(execution: Execution) -> Reply:
        if held.is_set() and execution.via == "/r0":
            holding.append(execution.eval_id)
            await (finish if len(holding) <= 2 else asyncio.Event()).wait()
        return Reply(delay=WORK)

    rig = await make_rig(redis_url, decide, DRAIN)
    r0, r1 = rig.replicas
    held.set()

    async def full() -> bool:
        return len(holding) == CONCURRENCY

    await wait_for(full, timeout=10)
    r0.proc.send_signal(signal.SIGTERM)
    async with httpx.AsyncClient(base_url=r0.url, timeout=5) as http:
        readyz = await wait_for(lambda: answered(http, "/readyz", 503), timeout=2)
        assert "SIGTERM" in readyz.json()["error"]
        await rig.more("accepted", FLOW, [r0.url])
        assert (await http.get("/livez")).status_code == 200
        rig.load.targets.remove(r0.url)
        finish.set()
    assert await asyncio.to_thread(r0.proc.wait, 15) == 0, r0.output()
    await rig.more("accepted", FLOW, [r1.url])

    report = (await rig.report()).check(max_duplicates=CONCURRENCY)
    print(report.summary())
    assert set(rig.recorder.answers) == {"201 json"}, rig.recorder.answers
    assert report.completed == report.accepted >= 4 * FLOW
    finished, released = holding[:2], holding[2:CONCURRENCY]
    assert dict(report.duplicated) == dict.fromkeys(released, 2), report.summary()
    runs = {(e.eval_id, e.attempt, e.via) for e in rig.executor.executions}
    assert {(i, 1, "/r0") for i in finished} | {(i, 2, "/r1") for i in released} <= runs


async def answered(http: httpx.AsyncClient, path: str, status: int) -> httpx.Response | None:
    response = await http.get(path)
    return response if response.status_code == status else None
