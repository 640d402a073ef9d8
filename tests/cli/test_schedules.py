"""`python -m app schedules list|show|add|pause|resume|delete` as subprocesses against
the session's real Redis, on this test's queue."""

from __future__ import annotations

from typing import Any

import orjson

from app.engine.engine import Engine
from app.engine.schedules import Schedule, ScheduleStore
from app.settings import Settings
from tests.cli.test_commands import arun, env_of


async def test_add_list_show(redis_url: str, queue: str):
    env = env_of(redis_url, queue)
    code, out, err = await arun(
        "schedules",
        "add",
        "nightly",
        "print('report')",
        "--cron",
        "30 2 * * *",
        "--timezone",
        "Europe/Paris",
        "--priority",
        "low",
        "--metadata",
        '{"team": "data"}',
        env=env,
    )
    assert code == 0, err
    created = orjson.loads(out)
    assert created["name"] == "nightly" and created["cron"] == "30 2 * * *"
    assert created["task"] == {
        "code": "print('report')",
        "priority": "low",
        "metadata": {"team": "data"},
    }
    await add(redis_url, queue, "tick", every=60, paused=True)
    code, out, _ = await arun("schedules", "list", env=env)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "schedules 2"
    assert "nightly" in lines[1] and "cron '30 2 * * *' Europe/Paris" in lines[1]
    assert "active" in lines[1] and "paused" in lines[2] and "every 60s" in lines[2]
    code, out, _ = await arun("schedules", "show", "nightly", env=env)
    assert code == 0 and orjson.loads(out) == created


async def test_code_from_stdin_and_list_json(redis_url: str, queue: str):
    env = env_of(redis_url, queue)
    argv = ("schedules", "add", "tick", "-", "--every", "60", "--paused")
    code, out, _ = await arun(*argv, env=env, stdin=b"print(1)")
    assert code == 0 and orjson.loads(out)["paused"] is True
    code, out, _ = await arun("schedules", "list", "--json", env=env)
    assert [(s["name"], s["task"]["code"]) for s in orjson.loads(out)] == [("tick", "print(1)")]


async def test_pause_resume_delete(redis_url: str, queue: str):
    env = env_of(redis_url, queue)
    await add(redis_url, queue, "nightly", cron="0 3 * * *")
    code, out, _ = await arun("schedules", "pause", "nightly", env=env)
    assert code == 0 and orjson.loads(out)["paused"] is True
    code, out, _ = await arun("schedules", "resume", "nightly", env=env)
    assert code == 0 and orjson.loads(out)["paused"] is False
    code, out, _ = await arun("schedules", "delete", "nightly", env=env)
    assert code == 0 and orjson.loads(out) == {"name": "nightly", "deleted": True}
    code, _, err = await arun("schedules", "show", "nightly", env=env)
    assert code == 1 and "no such schedule: nightly" in err


async def test_invalid_definitions_exit_2(redis_url: str, queue: str):
    env = env_of(redis_url, queue)
    code, _, err = await arun("schedules", "add", "s", "x", "--cron", "61 * * * *", env=env)
    assert code == 2 and "bad minute" in err
    argv = ("schedules", "add", "s", "x", "--every", "5", "--timezone", "X/Y")
    code, _, err = await arun(*argv, env=env)
    assert code == 2 and "unknown time zone" in err
    code, _, err = await arun("schedules", "add", "s", "x", env=env)
    assert code == 2 and "--cron" in err  # argparse: one of them is required
    code, _, err = await arun("schedules", "pause", "no/such", env=env)
    assert code == 2 and "name" in err


async def test_conflicts_and_unknown_names_exit_1(redis_url: str, queue: str):
    env = env_of(redis_url, queue)
    await add(redis_url, queue, "s", every=5)
    code, _, err = await arun("schedules", "add", "s", "x", "--every", "5", env=env)
    assert code == 1 and "already exists" in err
    code, _, err = await arun("schedules", "pause", "absent", env=env)
    assert code == 1 and "no such schedule" in err


async def add(redis_url: str, queue: str, name: str, paused: bool = False, **cadence: Any):
    """Create a schedule straight through the engine (the CLI is what is tested)."""
    engine = Engine.connect(redis_url, Settings(redis_url=redis_url, queue=queue))
    try:
        parsed, _ = Schedule.parse({"name": name, "task": {"code": "x"}, **cadence})
        await ScheduleStore(engine).create(parsed, paused)
    finally:
        await engine.close()
