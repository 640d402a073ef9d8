"""Task listing (engine/listing.py, listing.lua) on a real Redis: every state, position
order under mixed priorities, paging through more than a page with cursors, the `q` and
`tenant` filters, and the bound on the work of one page."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine import listing
from app.engine.listing import Page
from app.engine.queue import Queue
from app.errors import Invalid
from app.models import State
from tests.engine.conftest import claim_one, raw, req


async def page_of(streams: Queue, state: str, **given: Any) -> dict[str, Any]:
    limit = given.pop("limit", 50)
    page = Page.parse(state, limit, given.get("tenant"), given.get("q"), given.get("cursor"))
    return await listing.list_tasks(streams, page)


async def everything(streams: Queue, state: str, **given: Any) -> list[dict[str, Any]]:
    """Every page of a listing, followed through its cursors."""
    tasks, cursor, pages = [], None, 0
    while True:
        answer = await page_of(streams, state, cursor=cursor, **given)
        tasks += answer["tasks"]
        pages += 1
        cursor = answer["next_cursor"]
        if cursor is None:
            return tasks
        assert pages < 1000


def ids(tasks: list[dict[str, Any]]) -> list[str]:
    return [t["eval_id"] for t in tasks]


# --- queued: position order ----------------------------------------------------------------


async def test_queued_in_position_order_under_mixed_priorities(streams: Queue):
    order = [("d1", "default"), ("l1", "low"), ("h1", "high"), ("d2", "default")]
    order += [("h2", "high"), ("l2", "low"), ("d3", "default")]
    for eval_id, priority in order:
        await streams.enqueue(req(eval_id, priority=priority))
    await streams.cancel("d2")  # a hole: positions close up
    tasks = (await page_of(streams, "queued"))["tasks"]
    assert ids(tasks) == ["h1", "h2", "d1", "d3", "l1", "l2"]
    assert [t["position"] for t in tasks] == [1, 2, 3, 4, 5, 6]
    for task in tasks:  # the same positions GET /tasks/{id} gives
        assert (await streams.get(task["eval_id"]))["position"] == task["position"]
    assert tasks[0]["status"] == "queued" and tasks[0]["priority"] == "high"


async def test_queued_leaves_out_what_was_delivered(streams: Queue):
    for i in range(4):
        await streams.enqueue(req(f"t{i}"))
    await claim_one(streams)
    tasks = (await page_of(streams, "queued"))["tasks"]
    assert ids(tasks) == ["t1", "t2", "t3"]
    assert [t["position"] for t in tasks] == [1, 2, 3]


async def test_paging_through_more_than_a_page(streams: Queue):
    reqs = [req(f"p{i:03}", priority=("high", "default", "low")[i % 3]) for i in range(130)]
    for request in reqs:
        await streams.enqueue(request)
    first = await page_of(streams, "queued", limit=50)
    assert len(first["tasks"]) == 50 and first["next_cursor"]
    tasks = await everything(streams, "queued", limit=50)
    expected = sorted(reqs, key=lambda r: (("high", "default", "low").index(r.priority), r.eval_id))
    assert ids(tasks) == [r.eval_id for r in expected]
    assert [t["position"] for t in tasks] == list(range(1, 131))


async def test_a_page_goes_on_after_tasks_ahead_were_delivered(streams: Queue):
    for i in range(6):
        await streams.enqueue(req(f"m{i}"))
    first = await page_of(streams, "queued", limit=2)
    assert ids(first["tasks"]) == ["m0", "m1"]
    for _ in range(3):
        await claim_one(streams)  # m0, m1, m2 leave: the next page starts at m3
    rest = await page_of(streams, "queued", cursor=first["next_cursor"])
    assert ids(rest["tasks"]) == ["m3", "m4", "m5"]
    assert [t["position"] for t in rest["tasks"]] == [1, 2, 3]


# --- the other states ----------------------------------------------------------------------


async def test_processing_with_holder_and_elapsed(streams: Queue):
    for i in range(3):
        await streams.enqueue(req(f"r{i}", priority="low" if i == 0 else "high"))
    for _ in range(3):
        await claim_one(streams, consumer="holder-1")
    tasks = await everything(streams, "processing", limit=2)
    assert ids(tasks) == ["r1", "r2", "r0"]  # priority, then stream order
    assert all(t["worker"] == "holder-1" and t["elapsed_ms"] >= 0 for t in tasks)
    assert all(t["status"] == "processing" and t["attempts"] == 1 for t in tasks)


async def test_scheduled_and_retrying_in_due_order(streams: Queue):
    await streams.enqueue(req("late", delay=300))
    await streams.enqueue(req("soon", delay=100))
    await streams.enqueue(req("again"))
    task = await claim_one(streams)
    await streams.fail("again", "boom", task=task)  # retrying, due in 50 s (test policy)
    scheduled = await everything(streams, "scheduled", limit=1)
    assert ids(scheduled) == ["soon", "late"]
    assert scheduled[0]["due_at"] < scheduled[1]["due_at"]
    retrying = (await page_of(streams, "retrying"))["tasks"]
    assert ids(retrying) == ["again"] and retrying[0]["error"] == "boom"


async def test_equal_due_times_page_without_loss(streams: Queue):
    run_at = 4_000_000_000
    for i in range(7):
        await streams.enqueue(req(f"same{i}", run_at=run_at))
    tasks = await everything(streams, "scheduled", limit=3)
    assert ids(tasks) == [f"same{i}" for i in range(7)]


async def test_a_page_goes_on_when_its_last_task_left_the_schedule(streams: Queue):
    for i in range(6):
        await streams.enqueue(req(f"tie{i}", run_at=4_000_000_000))
    first = await page_of(streams, "scheduled", limit=3)
    assert ids(first["tasks"]) == ["tie0", "tie1", "tie2"]
    await streams.cancel("tie2")  # the cursor's member is gone: found again by its score
    rest = await page_of(streams, "scheduled", cursor=first["next_cursor"])
    assert ids(rest["tasks"]) == ["tie3", "tie4", "tie5"]


async def test_deferred_with_what_it_waits_for(streams: Queue):
    await streams.enqueue(req("parent"))
    await streams.enqueue(req("kid1", depends_on=["parent"]))
    await streams.enqueue(req("kid2", depends_on=["parent"], metadata={"k": "v"}))
    tasks = (await page_of(streams, "deferred"))["tasks"]
    assert ids(tasks) == ["kid1", "kid2"]
    assert tasks[0]["depends_on"] == ["parent"] and tasks[0]["waiting_on"] == 1
    assert tasks[1]["metadata"] == {"k": "v"}
    await streams.cancel("kid1")
    assert ids((await page_of(streams, "deferred"))["tasks"]) == ["kid2"]
    task = await claim_one(streams)
    await streams.complete("parent", 1, task)  # kid2 is released: queued
    assert (await page_of(streams, "deferred"))["tasks"] == []
    assert await raw(streams).zcard(streams.keys.deferred) == 0


async def test_finished_states_newest_first(streams: Queue):
    for i in range(3):
        await streams.enqueue(req(f"c{i}"))
        await streams.complete(f"c{i}", {"n": i}, await claim_one(streams))
    await streams.enqueue(req("x1"))
    await streams.cancel("x1")
    await streams.enqueue(req("f1", max_retries=0, metadata={"owner": "ann"}))
    await streams.fail("f1", "bad", task=await claim_one(streams))
    completed = await everything(streams, "completed", limit=2)
    assert ids(completed) == ["c2", "c1", "c0"]
    assert completed[0]["result"] == {"n": 2}
    assert ids((await page_of(streams, "cancelled"))["tasks"]) == ["x1"]
    failed = (await page_of(streams, "failed"))["tasks"]
    assert ids(failed) == ["f1"]
    assert failed[0]["error"] == "bad" and failed[0]["metadata"] == {"owner": "ann"}


async def test_a_failed_task_retried_from_the_dlq_and_failed_again_is_listed_once(
    streams: Queue,
):
    from app.engine import admin

    await streams.enqueue(req("twice", max_retries=0))
    await streams.fail("twice", "one", task=await claim_one(streams))
    await admin.dlq_retry(streams, "twice")
    await streams.fail("twice", "two", task=await claim_one(streams))
    failed = (await page_of(streams, "failed"))["tasks"]
    assert ids(failed) == ["twice"] and failed[0]["error"] == "two"


async def test_a_failed_task_whose_record_expired_is_listed_from_its_dead_letter(
    streams: Queue,
):
    await streams.enqueue(req("gone", max_retries=0, priority="high"))
    await streams.fail("gone", "lost", task=await claim_one(streams))
    await raw(streams).delete(streams.keys.task("gone"))
    (task,) = (await page_of(streams, "failed"))["tasks"]
    assert (task["eval_id"], task["status"], task["error"]) == ("gone", "failed", "lost")
    assert task["priority"] == "high" and task["completed_at"]


# --- filters -------------------------------------------------------------------------------


async def test_q_matches_an_eval_id_prefix_or_a_metadata_value(streams: Queue):
    await streams.enqueue(req("job-1", metadata={"user": "ann", "run": 7}))
    await streams.enqueue(req("job-2", metadata={"user": "bob"}))
    await streams.enqueue(req("other", metadata={"user": "ann", "flag": True}))
    await streams.enqueue(req("x", code="print('ann')"))  # the code is not metadata
    assert ids((await page_of(streams, "queued", q="job-"))["tasks"]) == ["job-1", "job-2"]
    assert ids((await page_of(streams, "queued", q="ann"))["tasks"]) == ["job-1", "other"]
    assert ids((await page_of(streams, "queued", q="7"))["tasks"]) == ["job-1"]
    assert ids((await page_of(streams, "queued", q="true"))["tasks"]) == ["other"]
    assert (await page_of(streams, "queued", q="an"))["tasks"] == []


async def test_q_with_quotes_is_matched_exactly(streams: Queue):
    await streams.enqueue(req("quote", metadata={"title": 'say "hi"\\'}))
    found = await page_of(streams, "queued", q='say "hi"\\')
    assert ids(found["tasks"]) == ["quote"]


async def test_tenant_filters_on_the_record_field(streams: Queue):
    await streams.enqueue(req("a1"))
    await streams.enqueue(req("b1", tenant="blue"))  # fair share: in its tenant's order
    assert ids((await page_of(streams, "queued", tenant="blue"))["tasks"]) == ["b1"]
    assert ids((await page_of(streams, "queued", tenant="default"))["tasks"]) == ["a1"]


async def test_a_filtered_page_stops_at_its_budget_with_a_cursor(
    streams: Queue, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(listing, "BUDGET", 10)
    for i in range(25):
        await streams.enqueue(req(f"n{i:02}", metadata={"hit": "yes" if i in (3, 21) else "no"}))
    first = await page_of(streams, "queued", q="yes", limit=5)
    assert ids(first["tasks"]) == ["n03"] and first["next_cursor"]
    found = await everything(streams, "queued", q="yes", limit=5)
    assert ids(found) == ["n03", "n21"]


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "limit", "cursor"),
    [
        (None, 10, None),
        ("nope", 10, None),
        ("queued", 0, None),
        ("queued", 501, None),
        ("queued", 10, "%%%"),
        ("queued", 10, "bm90IGpzb24"),
        ("queued", 10, listing.encode_cursor(State.COMPLETED, ("1-1", ""))),
        ("queued", 10, listing.encode_cursor(State.QUEUED, ("4", "1-1"))),
        ("queued", 10, listing.encode_cursor(State.QUEUED, ("1", "x"))),
        ("scheduled", 10, listing.encode_cursor(State.SCHEDULED, ("1.5", "a"))),
        ("completed", 10, listing.encode_cursor(State.COMPLETED, ("1-1", "x"))),
    ],
)
def test_bad_parameters_are_invalid(state: str | None, limit: int, cursor: str | None):
    with pytest.raises(Invalid):
        Page.parse(state, limit, None, None, cursor)


def test_a_bad_tenant_or_a_long_q_is_invalid():
    with pytest.raises(Invalid):
        Page.parse("queued", 10, "no spaces", None, None)
    with pytest.raises(Invalid):
        Page.parse("queued", 10, None, "x" * 257, None)
