"""Every method of the client against the real service, through both `Client` and
`AsyncClient` (the `api` fixture runs each test once per flavour)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskstream_client import (
    Conflict,
    Delivery,
    Enqueued,
    NotFound,
    State,
    TaskRecord,
)
from tests.client.conftest import in_thread

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_enqueue_sends_every_field_and_get_reads_the_record(api):
    parent = api.enqueue("print(0)", eval_id="parent-1")
    assert parent == Enqueued("parent-1", "queued", "default", 1, raw=parent.raw)
    later = datetime.now(UTC) + timedelta(hours=1)
    answer = api.enqueue(
        "print(1)",
        eval_id="child-1",
        language="python",
        priority="high",
        timeout=timedelta(seconds=90),
        max_retries=4,
        retry_intervals=[1, timedelta(seconds=2)],
        run_at=later,
        metadata={"user": "ada", "n": 1},
        depends_on=["parent-1"],
        allow_failure=True,
        callback_url="http://127.0.0.1:9/hook",
        tenant="acme",
        dedup_key="child",
        dedup="active",
        dedup_ttl=60,
        expires=timedelta(hours=2),
        traceparent=TRACEPARENT,
    )
    assert (answer.eval_id, answer.status, answer.priority) == ("child-1", "deferred", "high")
    record = api.get("child-1")
    assert isinstance(record, TaskRecord)
    assert (record.status, record.priority, record.depends_on) == (
        "deferred",
        "high",
        ("parent-1",),
    )
    assert record.run_at is not None and abs((record.run_at - later).total_seconds()) < 0.01
    assert record.raw["allow_failure"] is True and not record.done
    assert isinstance(record.created_at, datetime) and record.attempts == 0


def test_delay_schedules_and_the_pulled_task_carries_its_fields(api):
    scheduled = api.enqueue("x", eval_id="later", delay=timedelta(minutes=5))
    assert scheduled.status == State.SCHEDULED
    api.enqueue(
        "print(2)",
        eval_id="now",
        metadata={"k": "v"},
        timeout=30,
        max_retries=1,
        traceparent=TRACEPARENT,
    )
    delivery = api.next()
    assert isinstance(delivery, Delivery)
    assert (delivery.eval_id, delivery.code, delivery.attempt) == ("now", "print(2)", 1)
    assert (delivery.metadata, delivery.timeout, delivery.max_retries) == ({"k": "v"}, 30.0, 1)
    assert delivery.traceparent == TRACEPARENT and delivery.lease and delivery.lease_timeout
    assert api.next() is None  # the other one is scheduled


def test_enqueue_batch_answers_each_task_and_refuses_a_duplicate_alone(api):
    api.enqueue("x", eval_id="taken")
    answers = api.enqueue_batch(
        [
            {"code": "a", "eval_id": "b1", "priority": "low"},
            {"code": "b", "eval_id": "taken"},
            {"code": "c", "eval_id": "b3", "depends_on": ["b1"], "delay": 60},
        ]
    )
    assert [a.eval_id for a in answers] == ["b1", "taken", "b3"]
    assert [a.ok for a in answers] == [True, False, True]
    assert answers[1].code == 409 and answers[1].error
    assert (answers[0].status, answers[2].status) == ("queued", "deferred")


def test_named_queues_and_templates(api):
    emails = api.queue("emails", priority="high")
    first = emails.enqueue("send()", eval_id="mail-1")
    assert first.priority == "high"
    assert api.get("mail-1").queue == "emails"
    urgent = api.task(max_retries=0, metadata={"via": "template"})
    urgent.delay("y", eval_id="tpl-1", priority="low")
    assert api.get("tpl-1").priority == "low"
    delivery = api.next(queue="emails")
    assert delivery.eval_id == "mail-1" and delivery.queue == "emails"
    assert api.next(wait=0.2) is not None  # tpl-1, from the default queue


def test_complete_and_wait(api, sync_api):
    api.enqueue("print(42)", eval_id="w1")

    def work():
        delivery = sync_api.next(wait=5)
        return sync_api.complete(delivery, {"status": "success", "output": "42\n"})

    completing = in_thread(work)
    record = api.wait("w1", timeout=10)
    assert record.status == State.COMPLETED and record.done
    assert record.result == {"status": "success", "output": "42\n"}
    assert completing.result(5).status == "completed"
    assert api.result("w1", timeout=5)["output"] == "42\n"  # done already: no stream


def test_wait_follows_a_named_queue_and_retries(api, sync_api):
    api.enqueue("x", eval_id="w2", queue="gpu")

    def work():
        first = sync_api.next(wait=5, queue="gpu")
        assert sync_api.fail(first, "flaky").status == "retrying"
        second = sync_api.next(wait=5, queue="gpu")
        return sync_api.complete(second, 7)

    in_thread(work)
    record = api.wait("w2", timeout=10)
    assert (record.status, record.attempts, record.result, record.queue) == (
        "completed",
        2,
        7,
        "gpu",
    )


def test_wait_times_out_and_result_raises_for_failures(api):
    from taskstream_client import TaskFailed, WaitTimeout

    api.enqueue("x", eval_id="slow")
    with pytest.raises(WaitTimeout):
        api.wait("slow", timeout=0.3)
    api.cancel("slow")
    with pytest.raises(TaskFailed) as failed:
        api.result("slow", timeout=5)
    assert failed.value.record.status == State.CANCELLED


def test_cancel_waiting_and_running_tasks(api):
    api.enqueue("x", eval_id="c1")
    assert api.cancel("c1").status == "cancelled"
    api.enqueue("x", eval_id="c2")
    delivery = api.next()
    with pytest.raises(Conflict) as refused:
        api.cancel("c2")
    assert "processing" in refused.value.error and refused.value.status == 409
    assert api.cancel("c2", terminate=True).status == "cancelled"
    with pytest.raises(Conflict):
        api.complete(delivery, "late")  # the delivery is no longer processing


def test_pull_calls_are_fenced_by_the_delivery(api):
    api.enqueue("x", eval_id="p1")
    delivery = api.next()
    renewed = api.renew(delivery)
    assert (renewed.status, renewed.queue) == ("processing", api.get("p1").queue)
    assert renewed.lease_timeout == delivery.lease_timeout
    with pytest.raises(Conflict):
        api.complete("p1", "stale", lease=delivery.lease, attempt=delivery.attempt + 1)
    failed = api.fail(delivery, "boom", traceback="Traceback ...")
    assert failed.status == "retrying" and failed.retry_at is not None
    with pytest.raises(Conflict):
        api.renew(delivery)  # attempt 1 is over
    with pytest.raises(NotFound):
        api.renew("nobody", lease="1-0", attempt=1)
    second = api.next(wait=5)
    assert (second.eval_id, second.attempt) == ("p1", 2)
    assert api.complete("p1", {"ok": True}, lease=second.lease, attempt=2).status == "completed"


def test_dead_letter_queue(api):
    for name in ("d1", "d2", "d3"):
        api.enqueue("x", eval_id=name)
        api.fail(api.next(), f"{name} broke", retry=False, traceback="Traceback: " + name)
    page = api.dlq(limit=2)
    assert page.count == 3 and [d.eval_id for d in page.tasks] == ["d3", "d2"]
    dead = page.tasks[0]
    assert (dead.error, dead.traceback, dead.attempts) == ("d3 broke", "Traceback: d3", 1)
    assert dead.task["code"] == "x" and dead.failed_at is not None
    assert api.dlq(offset=2).tasks[0].eval_id == "d1"
    assert api.dlq_retry("d1").status == "queued"
    assert api.get("d1").status == "queued"
    assert api.dlq_delete("d2") == 1
    with pytest.raises(NotFound):
        api.dlq_delete("d2")
    assert api.dlq_purge(older_than_days=1) == 0
    assert api.dlq_purge() == 1
    assert api.dlq().count == 0


def test_dead_letters_of_a_named_queue(api):
    api.enqueue("x", eval_id="n1", queue="batch")
    api.fail(api.next(queue="batch"), "no", retry=False)
    assert api.dlq().count == 0
    assert [d.eval_id for d in api.dlq(queue="batch").tasks] == ["n1"]
    assert api.dlq_retry("n1", queue="batch").status == "queued"
    assert api.get("n1").status == "queued"


def test_operator_calls(api, live):
    api.enqueue("x")
    health = api.health()
    assert health["status"] == "healthy" and health["queued"] == 1
    assert api.status()["queue"] == live.queue
    assert api.clear() >= 1
    with pytest.raises(NotFound):
        api.get("anything")
