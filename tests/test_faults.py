"""Faults that taskstream survives, kept that way: each test runs two `python -m app serve`
replicas on one Redis under enqueue load (through both) and execution, injects one fault,
drains, and ends with the total-queue report (tests/totalqueue.py) and its check: nothing
accepted is lost, nothing runs that nobody sent, and repeats stay within what the fault
may cause (the tasks in flight on what was killed or stalled).

Faults: a replica killed with SIGKILL; redis-server killed with SIGKILL and restarted on
its AOF; redis-server paused (SIGSTOP) past the command timeout and the lease; every Redis
connection cut, then black-holed, by a TCP proxy (tests/tcpproxy.py).

The executor, the proxy and the load all run in the test's event loop; each replica has
its own executor base URL (`/r0`, `/r1`), so the executor knows who sent each call (the
rig: tests/faultrig.py). Faults of issue 11's items: tests/test_faults_items.py. Longer
chaos runs: bench/chaos.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis

from app.redis_server import RedisServer
from tests.conftest import wait_for
from tests.faultrig import (
    CONCURRENCY,
    FLOW,
    IN_FLIGHT,
    REPLICAS,
    WORK,
    RedisServers,
    Rig,
    Rigs,
    Spawn,
    consumed_since,
)
from tests.tcpproxy import TcpProxy
from tests.totalqueue import Execution, Reply

pytestmark = pytest.mark.timeout(120)

# A stall of Redis (pause, black hole) makes every task in flight run again, once: its
# outcome could not be written within the lease. (A renewal answer the stall held back
# aborts only the attempt it was sent for, never a newer one: see
# test_consumers.test_a_late_lease_loss_of_an_old_attempt_spares_the_newer_one.)
STALL_REPEATS = IN_FLIGHT
MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(spawn_service: Spawn, queue: str) -> AsyncIterator[MakeRig]:
    rigs = Rigs(spawn_service, queue)
    yield rigs.make
    await rigs.close()


@pytest.fixture
def dedicated_redis(tmp_path: Path) -> Iterator[Callable[[bool], RedisServer]]:
    """A redis-server of the test's own on a loopback port, which the test may kill."""
    servers = RedisServers(tmp_path)
    yield servers.make
    servers.stop()


# --- the proxy itself -----------------------------------------------------------------------


async def test_the_proxy_cuts_black_holes_and_heals(redis_server: RedisServer):
    """Raw RESP over the proxy (redis-py's pool would hide a cut by reconnecting)."""
    proxy = await TcpProxy(redis_server.port).start()
    direct = redis.Redis.from_url(redis_server.url)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _ask(reader, writer, b"SET proxy-late 0") == b"+OK\r\n"
        assert proxy.connections == 1
        assert proxy.cut() == 1 and proxy.connections == 0
        cut = b""
        with contextlib.suppress(ConnectionError):  # a reset, or EOF (b"")
            cut = await _ask(reader, writer, b"PING")
        assert cut == b""

        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await _ask(reader, writer, b"PING") == b"+PONG\r\n"
        proxy.blackhole()
        late_reader, late_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        asked = [(reader, writer, b"SET proxy-late 1"), (late_reader, late_writer, b"PING")]
        for r, w, command in asked:
            with pytest.raises(TimeoutError):
                await _ask(r, w, command, timeout=0.3)
        assert direct.get("proxy-late") == b"0"  # held in the proxy, not delivered
        proxy.heal()
        assert await asyncio.wait_for(reader.read(100), 5) == b"+OK\r\n"  # delivered late
        assert await asyncio.wait_for(late_reader.read(100), 5) == b"+PONG\r\n"
        assert direct.get("proxy-late") == b"1"
        for w in (writer, late_writer):
            w.close()
    finally:
        direct.close()
        await proxy.stop()


async def _ask(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, command: bytes, timeout: float = 5
) -> bytes:
    writer.write(command + b"\r\n")
    await writer.drain()
    return await asyncio.wait_for(reader.read(100), timeout)


# --- replica killed -------------------------------------------------------------------------


async def test_a_replica_killed_under_load_loses_nothing(make_rig: MakeRig, redis_url: str):
    """r0 is killed with SIGKILL while it holds CONCURRENCY tasks at the executor (their
    answers are held back so the moment is exact). r1 takes each of them over after the
    lease and runs it again (attempt 2); those are the only repeats."""
    hold = asyncio.Event()
    never = asyncio.Event()

    async def decide(execution: Execution) -> Reply:
        if execution.via == "/r0" and hold.is_set():
            await never.wait()
        return Reply(delay=WORK)

    rig = await make_rig(redis_url, decide)
    r0, r1 = rig.replicas
    hold.set()

    async def full() -> bool:
        return len(rig.executor.open("/r0")) == CONCURRENCY

    await wait_for(full, timeout=10)
    held = {e.eval_id for e in rig.executor.open("/r0")}
    r0.proc.kill()
    assert await asyncio.to_thread(r0.proc.wait, 10) == -signal.SIGKILL
    rig.load.targets.remove(r0.url)
    await rig.more("accepted", FLOW, [r1.url])

    report = (await rig.report()).check(max_duplicates=CONCURRENCY)
    print(report.summary())
    assert dict(report.duplicated) == dict.fromkeys(held, 2), report.summary()
    again = {(e.eval_id, e.attempt) for e in rig.executor.executions if e.via == "/r1"}
    assert {(eval_id, 2) for eval_id in held} <= again
    assert report.completed == report.accepted > 2 * FLOW


# --- Redis faults ---------------------------------------------------------------------------


async def test_redis_killed_and_restarted_on_its_aof_under_load(
    make_rig: MakeRig, dedicated_redis: Callable[[bool], RedisServer]
):
    """Enqueues during the outage answer 503 (not accepted); both replicas reconnect on
    their own; every task accepted before or after the crash completes."""
    server = dedicated_redis(True)
    rig = await make_rig(server.url)
    await asyncio.to_thread(server.kill)
    await rig.more("indeterminate", 1)
    await asyncio.to_thread(server.start)
    restarted = time.monotonic()
    await rig.more("accepted", FLOW)

    async def both_consume() -> bool:  # each after its own reconnect backoff (<= 5 s)
        return consumed_since(rig, restarted) == {"/r0", "/r1"}

    await wait_for(both_consume, timeout=20)
    report = (await rig.report()).check(max_duplicates=IN_FLIGHT)
    print(report.summary())
    assert report.completed == report.accepted > 3 * FLOW
    assert not report.refused  # every failed enqueue was a 503, not a refused connection
    assert all(replica.proc.poll() is None for replica in rig.replicas)


async def test_redis_paused_past_the_lease_under_load(
    make_rig: MakeRig, dedicated_redis: Callable[[bool], RedisServer]
):
    """SIGSTOP until both replicas answered an enqueue 503 (the 3 s command timeout, well
    past the 1 s lease), then SIGCONT. Writes sent during the pause run when Redis
    resumes: an enqueue answered 503 may exist after all (recovered, legal)."""
    server = dedicated_redis(False)
    rig = await make_rig(server.url)
    server.pause()
    try:
        await rig.more("indeterminate", 1)
    finally:
        server.resume()
    await rig.more("accepted", FLOW)

    report = (await rig.report()).check(max_duplicates=STALL_REPEATS)
    print(report.summary())
    assert report.completed == report.accepted > 3 * FLOW
    assert len(report.duplicated) <= IN_FLIGHT


# --- Redis connections cut or black-holed ---------------------------------------------------


@pytest.fixture
async def proxy(redis_server: RedisServer) -> AsyncIterator[TcpProxy]:
    made = await TcpProxy(redis_server.port).start()
    yield made
    await made.stop()


async def test_every_redis_connection_cut_under_load(make_rig: MakeRig, proxy: TcpProxy):
    """Three cuts of every connection (pools, blocking reads, pub/sub), 0.3 s apart; the
    replicas reconnect at once and lose nothing."""
    rig = await make_rig(f"redis://127.0.0.1:{proxy.port}/0")

    async def reconnected() -> bool:
        return proxy.connections >= REPLICAS

    for _ in range(3):
        # the replicas reconnected after the last cut (at once, but a loaded machine may
        # take a moment): at least one connection of each replica is cut
        await wait_for(reconnected, timeout=10)
        assert proxy.cut() >= REPLICAS
        await asyncio.sleep(0.3)
    await rig.more("accepted", FLOW)

    report = (await rig.report()).check(max_duplicates=IN_FLIGHT)
    print(report.summary())
    assert report.completed == report.accepted > 3 * FLOW


async def test_every_redis_connection_black_holed_under_load(make_rig: MakeRig, proxy: TcpProxy):
    """No byte moves between the replicas and Redis until both replicas answered an
    enqueue 503; then the partition heals and what was held is delivered late."""
    rig = await make_rig(f"redis://127.0.0.1:{proxy.port}/0")
    proxy.blackhole()
    try:
        await rig.more("indeterminate", 1)
    finally:
        proxy.heal()
    await rig.more("accepted", FLOW)

    report = (await rig.report()).check(max_duplicates=STALL_REPEATS)
    print(report.summary())
    assert report.completed == report.accepted > 3 * FLOW
    assert len(report.duplicated) <= IN_FLIGHT
