"""The client's methods for routes of CONTRACT.md "Flow control and scheduling" (issue 15):
schedules, progress, task listing, deduplication, tenants, expiry. Written against the
contract before the routes landed, each skipped until its routes did; all have now."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from taskstream_client import AsyncClient, Conflict, Job, NotFound, State, Worker
from tests.client.conftest import in_thread
from tests.conftest import wait_for


def test_schedules(api):
    created = api.create_schedule(
        "nightly",
        cron="0 3 * * *",
        timezone="Europe/Paris",
        task={"code": "print('backup')", "priority": "low", "max_retries": 1},
    )
    assert (created.name, created.cron, created.timezone, created.paused) == (
        "nightly",
        "0 3 * * *",
        "Europe/Paris",
        False,
    )
    assert created.task["code"] == "print('backup')" and created.next_run_at is not None
    with pytest.raises(Conflict):
        api.create_schedule("nightly", every=60, task={"code": "x"})
    api.create_schedule("often", every=timedelta(minutes=5), task={"code": "y"}, paused=True)
    assert sorted(s.name for s in api.schedules()) == ["nightly", "often"]
    assert api.schedule("often").every == 300.0 and api.schedule("often").paused
    updated = api.update_schedule("often", every=120, task={"code": "z"})
    assert (updated.every, updated.task["code"]) == (120.0, "z")
    api.resume_schedule("often")
    assert not api.schedule("often").paused
    api.pause_schedule("often")
    assert api.schedule("often").paused
    api.delete_schedule("often")
    with pytest.raises(NotFound):
        api.schedule("often")


def test_a_schedule_fires_tasks_named_after_its_tick(api):
    api.create_schedule("tick", every=1, task={"code": "x"})
    delivery = api.next(wait=5)
    assert delivery is not None and delivery.eval_id.startswith("tick:")
    assert delivery.eval_id.split(":")[1].isdigit()


def test_progress(api):
    api.enqueue("x", eval_id="pg")
    delivery = api.next()
    api.progress(delivery, 40, "halfway", data={"rows": 400})
    progress = api.get("pg").progress
    assert progress is not None
    assert (progress.progress, progress.message, progress.data) == (40.0, "halfway", {"rows": 400})
    with pytest.raises(Conflict):
        api.progress("pg", 50, lease=delivery.lease, attempt=delivery.attempt + 1)
    api.complete(delivery, None)
    with pytest.raises(Conflict):
        api.progress(delivery, 100)


async def test_a_worker_job_reports_progress(live):
    async with AsyncClient(live.url) as client:
        reported = asyncio.Event()

        async def work(job: Job) -> str:
            job.progress(75, "most of it")
            await reported.wait()
            return "ok"

        await client.enqueue("x", eval_id="wp")
        worker = Worker(work, client=client, poll=1)
        serving = asyncio.ensure_future(worker.serve(handle_signals=False))

        async def seen() -> bool:
            record = await client.get("wp")
            return record.progress is not None and record.progress.progress == 75.0

        await wait_for(seen)
        reported.set()
        assert await client.result("wp", timeout=5) == "ok"
        worker.stop()
        await asyncio.wait_for(serving, 10)


def test_list_tasks_pages_by_cursor(api):
    for n in range(5):
        api.enqueue("x", eval_id=f"l{n}", metadata={"owner": "ada" if n % 2 else "bob"})
    first = api.list_tasks("queued", limit=2)
    assert [r.eval_id for r in first.tasks] == ["l0", "l1"] and first.next_cursor
    rest = api.list_tasks("queued", limit=10, cursor=first.next_cursor)
    assert [r.eval_id for r in rest.tasks] == ["l2", "l3", "l4"] and rest.next_cursor is None
    assert [r.eval_id for r in api.list_tasks("queued", q="ada").tasks] == ["l1", "l3"]
    assert [r.eval_id for r in api.list_tasks("queued", q="l4").tasks] == ["l4"]


def test_deduplication_answers_the_surviving_task(api):
    first = api.enqueue("x", dedup_key="report-42")
    again = api.enqueue("y", dedup_key="report-42", dedup="active")
    assert again.deduplicated and again.eval_id == first.eval_id and not first.deduplicated
    answers = api.enqueue_batch([{"code": "z", "dedup_key": "report-42"}])
    assert answers[0].deduplicated and answers[0].eval_id == first.eval_id


def test_tenant_and_expiry(api):
    api.enqueue("x", eval_id="tn", tenant="acme")
    assert api.get("tn").tenant == "acme"
    api.cancel("tn")
    api.enqueue("x", eval_id="ex", expires=0.2)
    api.enqueue("x", eval_id="after")
    waiting = in_thread(lambda: api.wait("ex", timeout=10))
    time.sleep(0.4)  # "ex" is past its expiry when the next claim looks at it
    delivery = api.next()
    assert delivery is not None and delivery.eval_id == "after"
    record = waiting.result(10)
    assert record.status == State.EXPIRED and record.done
