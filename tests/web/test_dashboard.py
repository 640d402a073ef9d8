"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): counts match
/status, a DLQ retry click re-queues the task, the flow-control table lists a queue's
waiting tenants, events appear live, pause/resume works, the
schedules list shows a schedule and its pause / resume buttons work; a screenshot is saved
in the test's temp dir. The other pages (task browser, task page, history) are in
test_dashboard_pages.py; the `page` fixture is in conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import wait_for


async def dead_letter(service, eval_id: str) -> None:
    """Enqueue, take it as a pull worker, fail it for good: it is in the DLQ."""
    assert (await service.http.post("/tasks", json={"eval_id": eval_id, "code": "x"})).is_success
    taken = await service.http.get("/tasks/next")
    assert taken.json()["eval_id"] == eval_id
    failed = await service.http.post(
        f"/tasks/{eval_id}/fail", json={"error": "boom", "retry": False}
    )
    assert failed.json()["status"] == "failed"


@pytest.mark.timeout(90)  # a dozen steps in Chromium, each waiting up to 10 s for the page
async def test_dashboard_in_chromium(service, page, tmp_path: Path):
    await dead_letter(service, "dead-1")
    for i in range(3):
        await service.http.post(
            "/tasks", json={"eval_id": f"q-{i}", "code": "x", "priority": "high"}
        )
    loaded: list[str] = []
    page.on("request", lambda request: loaded.append(request.url))
    await page.goto(service.url + "/dashboard")

    status = (await service.http.get("/status")).json()
    queued = page.locator("#count-queued td:nth-child(2)")
    await queued.wait_for()
    await wait_for(lambda: _text_is(queued, str(status["states"]["queued"])))
    assert await page.locator("#count-dlq").inner_text() == str(status["dlq"])

    # a DLQ retry click re-queues the task
    await page.click('button.retry[data-id="dead-1"]')

    async def requeued():
        return (await service.http.get("/tasks/dead-1")).json()["status"] == "queued"

    await wait_for(requeued)

    # an event appears live
    await service.http.post("/tasks", json={"eval_id": "live-event", "code": "x"})
    await page.locator('#events li[data-id="live-event"]').wait_for(timeout=10_000)

    # the plots can show a PAI-EAS queue too
    auth = {"Authorization": "any"}
    assert (await service.http.post("/api/predict/dash.svc", headers=auth)).is_success
    await page.locator('#plot-queue option[value="dash.svc/sink"]').wait_for(state="attached")
    await page.select_option("#plot-queue", "dash.svc")

    # named queues: a row of their own, and a choice for the plots
    gpu_task = {"eval_id": "dash-gpu", "code": "x", "queue": "gpu"}
    assert (await service.http.post("/tasks", json=gpu_task)).is_success
    row = page.locator("#named tbody tr", has_text="gpu")
    await row.wait_for(timeout=10_000)
    assert (await row.locator("td:nth-child(2)").inner_text()).strip() == "1"  # queued
    await page.locator('#plot-queue option[value="gpu"]').wait_for(state="attached")

    # fair share: tenants' waiting tasks per queue and priority, the tenants next in line
    acme = {"eval_id": "dash-acme", "code": "x", "queue": "gpu", "tenant": "acme"}
    assert (await service.http.post("/tasks", json=acme)).is_success
    flow_row = page.locator('#flow tbody tr[data-queue="gpu"]')
    await flow_row.wait_for(timeout=10_000)
    assert "default: 1 (acme 1)" in await flow_row.locator("td:nth-child(6)").inner_text()

    # pause and resume from the page
    await page.click("#pause")
    await page.locator("#paused", has_text="paused").wait_for(timeout=10_000)
    assert (await service.http.get("/status")).json()["paused"] is True
    await page.click("#resume")
    await page.locator("#paused", has_text="running").wait_for(timeout=10_000)
    assert (await service.http.get("/status")).json()["paused"] is False

    # the schedules list, and its pause / resume buttons
    nightly = {"name": "nightly", "cron": "30 2 * * *", "task": {"code": "x"}}
    assert (await service.http.post("/schedules", json=nightly)).status_code == 201
    schedule = page.locator('#schedules tr[data-name="nightly"]')
    await schedule.wait_for(timeout=10_000)
    assert "30 2 * * * (UTC)" in await schedule.inner_text()
    await page.click('button.schedule-pause[data-name="nightly"]')
    await page.locator('button.schedule-resume[data-name="nightly"]').wait_for(timeout=10_000)
    assert (await service.http.get("/schedules/nightly")).json()["paused"] is True
    assert "paused" in await schedule.inner_text()
    await page.click('button.schedule-resume[data-name="nightly"]')
    await page.locator('button.schedule-pause[data-name="nightly"]').wait_for(timeout=10_000)
    assert (await service.http.get("/schedules/nightly")).json()["paused"] is False

    await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    assert all(url.startswith(service.url) for url in loaded), loaded  # nothing from elsewhere


async def _text_is(locator, expected: str):
    return (await locator.inner_text()).strip() == expected


async def test_the_task_view_shows_the_last_progress_report(service, page):
    assert (await service.http.post("/tasks", json={"eval_id": "pg-view", "code": "x"})).is_success
    task = (await service.http.get("/tasks/next")).json()
    report = {"progress": 60, "message": "rows", "attempt": task["attempt"]}
    assert (await service.http.post("/tasks/pg-view/progress", json=report)).is_success
    await page.goto(service.url + "/dashboard")
    await page.fill("#lookup-id", "pg-view")
    await page.click("#lookup button")
    await page.locator("#lookup-progress").wait_for(state="visible", timeout=10_000)
    assert await page.locator("#lookup-bar").evaluate("bar => bar.value") == 60
    assert "60% rows (attempt 1" in await page.locator("#lookup-progress-text").inner_text()
