"""Cron schedules across real replicas: two `python -m app serve` processes on one Redis.

Each tick fires once across both (its task `<name>:<tick>` exists, and exactly one
replica logged its firing), with both running, with one killed and started again across
ticks, and while paused none fires; ticks missed while no replica ran fire once, for the
latest; the schedule survives the restarts (it lives in Redis). Every-second schedules
keep this to seconds; waits poll the Redis clock with deadlines.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Process, wait_for

Spawn = Callable[..., Process]
pytestmark = pytest.mark.timeout(90)  # up to three service processes start in a test
SCHEDULE = {"name": "s", "every": 1, "task": {"code": "print(1)"}}


@pytest.fixture
def replica(spawn_service: Spawn, redis_url: str, queue: str) -> Callable[[], Process]:
    """Start one more replica of this test's deployment (same Redis, same QUEUE_NAME)."""

    def start() -> Process:
        env = {
            "REDIS_URL": redis_url,
            "QUEUE_NAME": queue,
            "SHUTDOWN_GRACE": "1",
            "SHUTDOWN_DELAY": "0",
        }
        return spawn_service(env)

    return start


async def call(process: Process, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request to a replica. A connection refused while the replica runs (a loaded
    machine; the request was not sent, so any method is safe to send again) is tried
    again for up to 15 s; a replica that exited fails the test with its log."""
    deadline = time.monotonic() + 15
    while True:
        try:
            async with httpx.AsyncClient(base_url=process.url, timeout=10) as http:
                return await http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            if process.proc.poll() is not None:
                raise AssertionError(f"replica exited:\n{process.output()}") from exc
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def api(process: Process, method: str, path: str, **kwargs: Any) -> Any:
    response = await call(process, method, path, **kwargs)
    assert response.status_code < 300, response.text
    return response.json()


async def redis_now(client: Any) -> int:
    seconds, _ = await client.time()
    return int(seconds)


async def clock_past(client: Any, tick: int) -> None:
    async def past() -> bool:
        return await redis_now(client) > tick

    await wait_for(past, timeout=15, interval=0.05)


async def last_tick(process: Process) -> int | None:
    shown = await api(process, "GET", "/schedules/s")
    return int(shown["last_eval_id"].split(":")[1]) if shown["last_eval_id"] else None


async def fired_past(process: Process, tick: int) -> int:
    """Wait until the schedule fired a tick after `tick`; that tick."""

    async def later() -> int | None:
        last = await last_tick(process)
        return last if last is not None and last > tick else None

    found: int = await wait_for(later, timeout=15, interval=0.05)
    return found


async def tasks_of(process: Process, ticks: Iterable[int]) -> list[int]:
    """The ticks whose task `s:<tick>` exists."""
    return [t for t in ticks if (await call(process, "GET", f"/tasks/s:{t}")).status_code == 200]


def firings(*processes: Process) -> Counter[int]:
    """Ticks of `s` each replica's log says it fired (its enqueue created the task)."""
    fired: Counter[int] = Counter()
    for process in processes:
        for line in process.output().splitlines():
            if '"schedule_fired"' in line:
                event = orjson.loads(line)
                if event.get("schedule") == "s":
                    fired[int(event["tick"])] += 1
    return fired


async def test_two_replicas_fire_each_tick_once_and_pause_for_both(replica, client):
    one, two = replica(), replica()
    await api(one, "POST", "/schedules", json=SCHEDULE)
    first = await fired_past(two, 0)
    last = await fired_past(two, first + 4)
    await api(two, "POST", "/schedules/s/pause")
    stop = await last_tick(one)
    assert stop is not None
    window = range(first, stop + 1)
    assert await tasks_of(one, window) == list(window)  # no tick skipped
    fired = firings(one, two)
    assert {t: fired[t] for t in window} == dict.fromkeys(window, 1)  # none twice
    assert sum(fired.values()) == len(window)
    assert last >= first + 5

    # paused: no replica fires, for two ticks and more
    paused_at = await redis_now(client)
    await clock_past(client, paused_at + 2)
    assert await last_tick(two) == stop
    resumed = await api(one, "POST", "/schedules/s/resume")
    assert resumed["paused"] is False
    again = await fired_past(two, paused_at + 2)
    assert await tasks_of(two, range(stop + 1, paused_at + 3)) == []  # paused ticks: none
    assert again <= paused_at + 5


async def test_replicas_killed_and_started_again_across_ticks(replica, client):
    """One of two killed (the other goes on alone), started again, then the other killed
    (the restarted one goes on alone): every tick of the window fires, none twice."""
    one, two = replica(), replica()
    await api(one, "POST", "/schedules", json=SCHEDULE)
    first = await fired_past(two, 0)
    kill(one)
    await fired_past(two, await redis_now(client) + 1)  # ticks go by with one replica down
    three = replica()  # the killed one, started again
    kill(two)
    stop = await fired_past(three, await redis_now(client) + 1)
    await api(three, "POST", "/schedules/s/pause")
    stop = await last_tick(three) or stop
    window = range(first, stop + 1)
    assert await tasks_of(three, window) == list(window)
    fired = firings(one, two, three)
    assert all(fired[t] <= 1 for t in window), fired  # never twice, SIGKILL or not
    assert sum(fired[t] for t in window) >= len(window) - 2  # a kill mid-log loses a line
    assert firings(three)  # the restarted replica fired once alone


def kill(process: Process) -> None:
    process.proc.send_signal(signal.SIGKILL)
    process.proc.wait()


async def test_ticks_missed_while_no_replica_ran_fire_once_for_the_latest(
    replica, client, queue: str
):
    one = replica()
    await api(one, "POST", "/schedules", json=SCHEDULE)
    await fired_past(one, 0)
    one.proc.send_signal(signal.SIGTERM)
    assert one.proc.wait(20) == 0
    stopped = int(await client.hget(f"ts:{{{queue}}}:schedules:last", "s"))
    await clock_past(client, stopped + 4)  # no replica runs while 4 ticks or more go by
    two = replica()  # the schedule survived in Redis
    caught_up = await fired_past(two, stopped)
    await fired_past(two, caught_up)  # and it goes on at its pace
    await api(two, "POST", "/schedules/s/pause")
    end = await last_tick(two)
    assert end is not None
    tasks = await tasks_of(two, range(stopped, end + 1))
    assert tasks[0] == stopped
    assert tasks[1] >= stopped + 4  # the missed ones, stopped+1 … stopped+3, never fired
    assert tasks[1:] == list(range(tasks[1], end + 1))  # one for the missed, then each tick
    assert firings(two)[tasks[1]] == 1
