"""The /schedules routes (web/schedules.py) over real loopback HTTP: create, list, show,
replace, delete, pause, resume; 422 / 409 / 404 with nothing written; /status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import Service, wait_for
from tests.web.conftest import MakeService, assert_error

NIGHTLY = {
    "name": "nightly",
    "cron": "30 2 * * *",
    "timezone": "Europe/Paris",
    "task": {"code": "print('report')", "priority": "low", "metadata": {"kind": "report"}},
}


async def create(service: Service, **fields: Any) -> dict[str, Any]:
    body = {**NIGHTLY, **fields}
    response = await service.http.post("/schedules", json=body)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def parsed(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


async def test_create_answers_201_with_the_schedule(service: Service):
    answer = await create(service)
    assert answer["name"] == "nightly"
    assert answer["cron"] == "30 2 * * *" and "every" not in answer
    assert answer["timezone"] == "Europe/Paris"
    assert answer["task"] == NIGHTLY["task"]
    assert answer["paused"] is False
    assert answer["last_run_at"] is None and answer["last_eval_id"] is None
    local = parsed(answer["next_run_at"]).astimezone(ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute) == (2, 30) or local.hour == 3  # 03:00 on a spring-forward
    assert (await service.http.get("/schedules/nightly")).json() == answer


async def test_every_defaults_to_utc_and_lists_by_name(service: Service):
    await create(service, name="b-every", cron=None, every=3600, timezone=None)
    await create(service, name="a-cron")
    listing = (await service.http.get("/schedules")).json()["schedules"]
    assert [s["name"] for s in listing] == ["a-cron", "b-every"]
    every = listing[1]
    assert every["every"] == 3600 and "cron" not in every and every["timezone"] == "UTC"
    assert parsed(every["next_run_at"]).timestamp() % 3600 == 0  # multiples since the epoch


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cron": "61 * * * *"}, "bad minute"),
        ({"cron": "* * * *"}, "5 fields"),
        ({"cron": "0 0 30 2 *"}, "day-of-month"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"timezone": "../../etc/passwd"}, "IANA"),
        ({"every": 60}, "exactly one"),
        ({"cron": None}, "exactly one"),
        ({"cron": None, "every": 0}, "every"),
        ({"cron": None, "every": 1.5}, "every"),
        ({"task": {"priority": "high"}}, "code"),
        ({"task": {"code": "x", "priority": "urgent"}}, "priority"),
        ({"task": {"code": "x", "eval_id": "mine"}}, "eval_id"),
        ({"task": {"code": "x", "depends_on": "a"}}, "depends_on"),
        ({"task": "print(1)"}, "task"),
        ({"name": "a/b"}, "name"),
        ({"name": ".."}, "name"),
        ({"paused": "yes"}, "paused"),
        ({"repeat": 3}, "unknown field"),
    ],
)
async def test_invalid_schedules_are_422_and_write_nothing(
    service: Service, frozen: Callable[[], Awaitable[None]], change: dict[str, Any], message: str
):
    body = {k: v for k, v in {**NIGHTLY, **change}.items() if v is not None}
    error = assert_error(await service.http.post("/schedules", json=body), 422)
    assert message in error
    await frozen()


async def test_a_callback_host_outside_the_allowed_list_is_422(make_service: MakeService):
    svc = await make_service(callback_allowed_hosts=("hooks.example",))
    task = {"code": "x", "callback_url": "http://elsewhere.example/cb"}
    error = assert_error(await svc.http.post("/schedules", json={**NIGHTLY, "task": task}), 422)
    assert "CALLBACK_ALLOWED_HOSTS" in error


async def test_malformed_json_is_400(service: Service, frozen: Callable[[], Awaitable[None]]):
    response = await service.http.post("/schedules", content=b"{nope")
    assert_error(response, 400)
    await frozen()


async def test_a_taken_name_is_409_and_changes_nothing(service: Service, client: Any, queue: str):
    first = await create(service)
    stored = await client.hgetall(f"ts:{{{queue}}}:schedules")
    again = await service.http.post("/schedules", json={**NIGHTLY, "cron": "0 * * * *"})
    assert "already exists" in assert_error(again, 409)
    assert await client.hgetall(f"ts:{{{queue}}}:schedules") == stored
    assert (await service.http.get("/schedules/nightly")).json() == first


@pytest.mark.parametrize("name", ["absent", "..", "a" * 65])
async def test_unknown_schedules_are_404(
    service: Service, frozen: Callable[[], Awaitable[None]], name: str
):
    http = service.http
    assert_error(await http.get(f"/schedules/{name}"), 404)
    assert_error(await http.put(f"/schedules/{name}", json=NIGHTLY | {"name": name}), 404)
    assert_error(await http.delete(f"/schedules/{name}"), 404)
    assert_error(await http.post(f"/schedules/{name}/pause"), 404)
    assert_error(await http.post(f"/schedules/{name}/resume"), 404)
    await frozen()


async def test_pause_and_resume(service: Service):
    await create(service)
    paused = (await service.http.post("/schedules/nightly/pause")).json()
    assert paused["paused"] is True and paused["next_run_at"] is None
    assert (await service.http.get("/schedules/nightly")).json()["paused"] is True
    resumed = (await service.http.post("/schedules/nightly/resume")).json()
    assert resumed["paused"] is False and resumed["next_run_at"] is not None
    again = (await service.http.post("/schedules/nightly/resume")).json()
    assert again == resumed  # a running schedule keeps its tick


async def test_created_paused(service: Service):
    answer = await create(service, paused=True)
    assert answer["paused"] is True and answer["next_run_at"] is None


async def test_put_replaces_the_definition_and_keeps_the_pause_state(service: Service):
    await create(service, paused=True)
    changed = {"every": 60, "task": {"code": "print(2)"}}
    response = await service.http.put("/schedules/nightly", json=changed)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["every"] == 60 and "cron" not in body and body["task"] == {"code": "print(2)"}
    assert body["paused"] is True  # no `paused` in the body: as it was
    running = await service.http.put("/schedules/nightly", json={**changed, "paused": False})
    assert running.json()["paused"] is False
    assert parsed(running.json()["next_run_at"]).timestamp() % 60 == 0
    mismatch = await service.http.put("/schedules/nightly", json={**changed, "name": "other"})
    assert "path" in assert_error(mismatch, 422)


async def test_delete(service: Service, client: Any, queue: str):
    await create(service)
    response = await service.http.delete("/schedules/nightly")
    assert response.json() == {"name": "nightly", "deleted": True}
    assert_error(await service.http.get("/schedules/nightly"), 404)
    for key in ("schedules", "schedules:due", "schedules:last"):
        assert not await client.exists(f"ts:{{{queue}}}:{key}")


async def test_a_schedule_fires_its_task_with_the_tick_in_its_eval_id(service: Service):
    await create(service, name="tick", cron=None, every=1, timezone=None)

    async def fired() -> dict[str, Any] | None:
        found: dict[str, Any] = (await service.http.get("/schedules/tick")).json()
        return found if found["last_eval_id"] else None

    schedule = await wait_for(fired)
    eval_id = schedule["last_eval_id"]
    tick = int(eval_id.split(":")[1])
    assert eval_id == f"tick:{tick}"
    assert parsed(schedule["last_run_at"]).timestamp() == tick
    record = (await service.http.get(f"/tasks/{eval_id}")).json()
    assert record["status"] == "queued" and record["priority"] == "low"
    await service.http.post("/schedules/tick/pause")
    taken = (await service.http.get("/tasks/next")).json()  # the oldest tick's task
    assert taken["eval_id"].startswith("tick:") and taken["code"] == "print('report')"
    assert taken["metadata"] == {"kind": "report"} and taken["traceparent"]


async def test_status_shows_the_schedules(service: Service):
    await create(service, name="a")
    await create(service, name="b", paused=True)
    status = (await service.http.get("/status")).json()["schedules"]
    assert status["count"] == 2 and status["active"] == 1 and status["paused"] == 1
    assert status["next_name"] == "a"
    a = (await service.http.get("/schedules/a")).json()
    assert status["next_run_at"] == a["next_run_at"]
