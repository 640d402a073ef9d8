"""The dashboard's pages in Debian's headless Chromium (Playwright): the overview's oldest
waiting ages, the history plot, a task's page with its retry / cancel / terminate buttons,
and the task browser's list per state with search and paging.

Each page is screenshotted into the test's temp dir and the PNG checked: a PNG of the
window's size, and pixels of what must be drawn (the header's colour, the plot's lines),
besides the DOM (the task ids listed, an SVG path per series). With
TASKSTREAM_SCREENSHOTS=<dir> the screenshots are also copied there (docs/img/ is made so).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Service, wait_for
from tests.web import png
from tests.web.conftest import VIEWPORT

SHOTS = os.environ.get("TASKSTREAM_SCREENSHOTS")
HEADER = (0x1F, 0x29, 0x37)  # dashboard.css header background
BLUE, RED, ORANGE = (0x25, 0x63, 0xEB), (0xB9, 0x1C, 0x1C), (0xD9, 0x77, 0x06)  # history.js


async def shoot(page: Any, tmp_path: Path, name: str, selector: str | None = None) -> Path:
    """A screenshot of the window (or of one element), checked to be a real PNG."""
    path = tmp_path / f"{name}.png"
    target = page.locator(selector) if selector else page
    await target.screenshot(path=str(path))
    assert path.stat().st_size > 2_000, name
    if selector is None:
        assert png.size(path) == (VIEWPORT["width"], VIEWPORT["height"])
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / path.name)
    return path


async def post(service: Service, path: str, body: Any = None) -> Any:
    response = await service.http.post(path, json=body if body is not None else {})
    assert response.is_success, response.text
    return response.json()


async def pulled(service: Service, eval_id: str) -> dict[str, Any]:
    task: dict[str, Any] = (await service.http.get("/tasks/next")).json()
    assert task["eval_id"] == eval_id
    return task


async def status_of(service: Service, eval_id: str) -> str:
    return str((await service.http.get(f"/tasks/{eval_id}")).json()["status"])


async def text_of(page: Any, selector: str) -> str:
    return str(await page.locator(selector).inner_text()).strip()


async def shows(page: Any, selector: str, wanted: str) -> None:
    async def check() -> bool:
        return wanted in await text_of(page, selector)

    await wait_for(check)


# --- overview ------------------------------------------------------------------------------


async def test_the_overview_shows_the_oldest_waiting_task(service: Service, page, tmp_path):
    await post(service, "/tasks", {"eval_id": "ow-h", "code": "x", "priority": "high"})
    await post(service, "/tasks", {"eval_id": "ow-g", "code": "x", "queue": "gpu"})
    await page.goto(service.url + "/dashboard")
    row = page.locator("#oldest-waiting")
    await row.wait_for()

    async def aged() -> bool:  # refreshed every 2 s: a real age, in a unit
        cells: list[str] = await row.locator("td").all_inner_texts()
        return cells[0] == "oldest waiting" and cells[2] != "–" and cells[4] == "–"

    await wait_for(aged)
    assert await row.locator("td:nth-child(3)").get_attribute("title") == "ow-h"
    gpu = page.locator("#named tbody tr", has_text="gpu")
    await gpu.wait_for()

    async def gpu_aged() -> bool:
        return str(await gpu.locator("td:nth-child(7)").inner_text()).endswith(("ms", "s"))

    await wait_for(gpu_aged)
    await shoot(page, tmp_path, "overview")
    header = png.read(await shoot(page, tmp_path, "overview-header", "header"))
    assert header.count(HEADER, 4) > header.width * header.height // 2


# --- history -------------------------------------------------------------------------------


async def test_the_history_plots_completed_failed_and_retried(service: Service, page, tmp_path):
    for i in range(3):
        await post(service, "/tasks", {"eval_id": f"hc-{i}", "code": "x"})
        await pulled(service, f"hc-{i}")
        await post(service, f"/tasks/hc-{i}/complete", {"result": i})
    for i in range(2):
        await post(service, "/tasks", {"eval_id": f"hf-{i}", "code": "x"})
        await pulled(service, f"hf-{i}")
        await post(service, f"/tasks/hf-{i}/fail", {"error": "boom", "retry": False})
    await post(service, "/tasks", {"eval_id": "hr", "code": "x"})
    await pulled(service, "hr")
    assert (await post(service, "/tasks/hr/fail", {"error": "again"}))["status"] == "retrying"

    await page.goto(service.url + "/dashboard/history")
    await page.locator("#chart svg").wait_for()
    await page.select_option("#span", "minute:60")
    await shows(page, '#sums tr[data-series="completed"] td:nth-child(2)', "3")
    assert await text_of(page, '#sums tr[data-series="failed"] td:nth-child(2)') == "2"
    assert await text_of(page, '#sums tr[data-series="retrying"] td:nth-child(1)') == "retried"
    assert await text_of(page, '#sums tr[data-series="retrying"] td:nth-child(2)') == "1"
    for series in ("completed", "failed", "retrying"):
        d = await page.locator(f'#chart path[data-series="{series}"]').get_attribute("d")
        assert d is not None and d.startswith("M") and d.count("L") == 59, series  # 60 minutes
    await shoot(page, tmp_path, "history")
    colours = {"completed": BLUE, "failed": RED, "retrying": ORANGE}
    for series, colour in colours.items():
        # one line at a time (equal values would hide one under another): it is drawn
        await page.evaluate(SHOW_ONLY, series)
        chart = png.read(await shoot(page, tmp_path, f"history-{series}", "#chart svg"))
        assert chart.count(colour) > 200, series
        assert all(chart.count(c) == 0 for s, c in colours.items() if s != series), series
    await page.evaluate(SHOW_ONLY, "")

    await page.select_option("#span", "hour:48")  # per hour: this hour's from its minutes
    await wait_for(lambda: _path_has(page, "completed", 47))
    assert await text_of(page, '#sums tr[data-series="completed"] td:nth-child(2)') == "3"


SHOW_ONLY = """series => document.querySelectorAll('#chart path').forEach(
    p => { p.style.display = !series || p.dataset.series === series ? '' : 'none'; })"""


async def _path_has(page: Any, series: str, lines: int) -> bool:
    d = await page.locator(f'#chart path[data-series="{series}"]').get_attribute("d")
    return d is not None and d.count("L") == lines


# --- a task's page -------------------------------------------------------------------------


async def test_a_failed_tasks_page_and_its_retry_and_cancel_buttons(
    service: Service, page, tmp_path
):
    task = {"eval_id": "tp-1", "code": "print(1)", "metadata": {"user": "ada"}}
    await post(service, "/tasks", task)
    await pulled(service, "tp-1")
    trace = 'Traceback (most recent call last):\n  File "x.py"\nValueError: boom'
    failed = {"error": "boom", "traceback": trace, "retry": False}
    await post(service, "/tasks/tp-1/fail", failed)

    await page.goto(service.url + "/dashboard/tasks/tp-1")
    await shows(page, "#task-state", "failed")
    assert await text_of(page, "#task-id") == "tp-1"
    assert await text_of(page, "#error") == "boom"
    assert "ValueError: boom" in await text_of(page, "#traceback")
    assert '"user": "ada"' in await text_of(page, "#payload")  # kept with the dead letter
    states = await page.locator("#timeline li").evaluate_all("li => li.map(e => e.dataset.state)")
    assert states == ["queued", "processing", "failed"]
    assert "attempt 1" in await text_of(page, '#timeline li[data-state="processing"]')
    assert await page.locator("#retry").is_enabled()
    assert not await page.locator("#cancel").is_enabled()
    await shoot(page, tmp_path, "task-failed")

    await page.click("#retry")  # the dead letter queued again
    await shows(page, "#task-state", "queued")
    assert await status_of(service, "tp-1") == "queued"
    assert await text_of(page, '#facts dd[data-fact="position"]') == "1"
    await page.click("#cancel")
    await shows(page, "#task-state", "cancelled")
    assert await status_of(service, "tp-1") == "cancelled"
    assert not await page.locator("#cancel").is_enabled()


async def test_a_running_tasks_page_shows_its_holder_and_terminates(
    service: Service, page, tmp_path
):
    await post(service, "/tasks", {"eval_id": "tp-run", "code": "x"})
    await pulled(service, "tp-run")
    await page.goto(service.url + "/dashboard/tasks/tp-run")
    await shows(page, "#task-state", "processing")
    holder = await text_of(page, '#facts dd[data-fact="holder"]')
    assert ":" in holder  # host:pid of the pulling process
    assert await text_of(page, '#facts dd[data-fact="lease until"]')
    assert await text_of(page, "#payload") != "–"  # read from its stream entry
    await shoot(page, tmp_path, "task-processing")
    await page.click("#terminate")
    await shows(page, "#task-state", "cancelled")
    assert await status_of(service, "tp-run") == "cancelled"


async def test_a_task_page_of_an_unknown_task_says_so(service: Service, page):
    await page.goto(service.url + "/dashboard/tasks/nobody")
    await shows(page, "#task-error", "no such task")
    response = await service.http.get("/dashboard/tasks/bad%20id")
    assert response.status_code == 422


# --- the task browser ----------------------------------------------------------------------


async def states_workload(service: Service) -> None:
    """A task in every state the browser lists (expired: issue 16's dedup branch)."""
    for eval_id, prio in (("b-q1", "low"), ("b-q2", "default"), ("b-q3", "high")):
        task = {"eval_id": eval_id, "code": "x", "priority": prio, "metadata": {"team": "red"}}
        await post(service, "/tasks", task)
    await post(service, "/tasks", {"eval_id": "b-c", "code": "x", "priority": "high"})
    await post(service, "/tasks", {"eval_id": "b-f", "code": "x", "priority": "high"})
    await post(service, "/tasks", {"eval_id": "b-r", "code": "x", "priority": "high"})
    await post(service, "/tasks", {"eval_id": "b-p", "code": "x", "priority": "high"})
    await pulled(service, "b-q3")  # high first: the queued are now b-c, b-f, ...
    await post(service, "/tasks/b-q3/complete", {"result": 1})
    for eval_id, outcome in (("b-c", "complete"), ("b-f", "fail"), ("b-r", "fail")):
        await pulled(service, eval_id)
        body = {"error": "boom", "retry": eval_id == "b-r"} if outcome == "fail" else {}
        await post(service, f"/tasks/{eval_id}/{outcome}", body)
    await pulled(service, "b-p")  # processing
    await post(service, "/tasks", {"eval_id": "b-s", "code": "x", "delay": 600})
    await post(service, "/tasks", {"eval_id": "b-d", "code": "x", "depends_on": ["b-q2"]})
    await post(service, "/tasks", {"eval_id": "b-x", "code": "x"})
    await post(service, "/tasks/b-x/cancel")


LISTED = {
    "queued": ["b-q2", "b-q1"],  # position order: default before low
    "processing": ["b-p"],
    "scheduled": ["b-s"],
    "retrying": ["b-r"],
    "deferred": ["b-d"],
    "completed": ["b-c", "b-q3"],
    "failed": ["b-f"],
    "cancelled": ["b-x"],
}


async def listed(page: Any) -> list[str]:
    ids: list[str] = await page.locator("#tasks tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.id)"
    )
    return ids


async def test_the_task_browser_lists_each_state(service: Service, page, tmp_path):
    if (await service.http.get("/tasks?state=queued")).status_code == 405:
        pytest.skip("GET /tasks?state= is not on this branch yet (issue 16: branch listing)")
    await states_workload(service)
    await page.goto(service.url + "/dashboard/tasks")
    for state, ids in LISTED.items():
        await page.click(f'#states button[data-state="{state}"]')

        async def shown(ids: list[str] = ids) -> bool:
            return sorted(await listed(page)) == sorted(ids)

        await wait_for(shown)
        if state in ("queued", "processing", "deferred", "completed"):
            await shoot(page, tmp_path, f"tasks-{state}")
    assert await listed(page) == LISTED["cancelled"]
    await page.click('#states button[data-state="queued"]')
    await wait_for(lambda: _ids_are(page, LISTED["queued"]))  # in position order
    await page.click('#states button[data-state="processing"]')
    await wait_for(lambda: _ids_are(page, ["b-p"]))
    assert ":" in await text_of(page, "#tasks tbody tr td:nth-child(3)")  # holder
    await page.click('#states button[data-state="deferred"]')
    await wait_for(lambda: _ids_are(page, ["b-d"]))
    assert await text_of(page, "#tasks tbody tr td:nth-child(4)") == "b-q2"  # parents
    await page.click('#tasks tbody tr a[href^="/dashboard/tasks/b-d"]')
    await shows(page, "#task-state", "deferred")


async def test_the_task_browser_searches_and_pages(service: Service, page, tmp_path):
    if (await service.http.get("/tasks?state=queued")).status_code == 405:
        pytest.skip("GET /tasks?state= is not on this branch yet (issue 16: branch listing)")
    for i in range(5):
        team = "blue" if i % 2 else "green"
        body = {"eval_id": f"sp-{i}", "code": "x", "metadata": {"team": team}}
        await post(service, "/tasks", body)
    await post(service, "/tasks", {"eval_id": "other", "code": "x"})
    await page.goto(service.url + "/dashboard/tasks?state=queued&limit=2")
    await wait_for(lambda: _ids_are(page, ["sp-0", "sp-1"]))
    await page.click("#next")
    await wait_for(lambda: _ids_are(page, ["sp-2", "sp-3"]))
    assert await text_of(page, "#page-no") == "page 2"
    await page.click("#next")
    await wait_for(lambda: _ids_are(page, ["sp-4", "other"]))
    await page.click("#prev")
    await wait_for(lambda: _ids_are(page, ["sp-2", "sp-3"]))

    await page.fill("#q", "blue")  # a metadata value
    await page.click("#search")
    await wait_for(lambda: _ids_are(page, ["sp-1", "sp-3"]))
    await page.fill("#q", "oth")  # an eval_id prefix
    await page.click("#search")
    await wait_for(lambda: _ids_are(page, ["other"]))
    assert "q=oth" in page.url
    await shoot(page, tmp_path, "tasks-search")


async def _ids_are(page: Any, ids: list[str]) -> bool:
    return await listed(page) == ids
