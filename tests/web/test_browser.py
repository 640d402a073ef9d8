"""The dashboard's pages (web/browser.py) are served open, with local assets only, and
`GET /tasks/{eval_id}/detail` answers what the task page shows beyond the record."""

from __future__ import annotations

import re

from tests.web.conftest import MakeService, assert_error, enqueue, pull

PAGES = ("/dashboard/tasks", "/dashboard/tasks/some-id", "/dashboard/history")


async def test_the_pages_open_without_the_key_and_load_only_local_assets(
    make_service: MakeService,
):
    service = await make_service(api_keys=("k",))
    for path in PAGES:
        page = await service.http.get(path)
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        assert "http://" not in page.text and "https://" not in page.text
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
            assert (await service.http.get(asset)).status_code == 200, asset
    assert (await service.http.get("/tasks/some-id/detail")).status_code == 401  # data: key


async def test_a_bad_eval_id_in_a_page_path_is_422(service):
    assert_error(await service.http.get("/dashboard/tasks/a%20b"), 422)


async def test_detail_of_a_task(service):
    await enqueue(service, eval_id="dt-1", metadata={"who": "me"})
    await pull(service)
    response = await service.http.get("/tasks/dt-1/detail")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["eval_id"] == "dt-1" and body["state"] == "processing"
    assert body["payload"]["metadata"] == {"who": "me"}
    assert body["worker"] and body["lease_expires_at"]
    assert [e["state"] for e in body["timeline"]] == ["queued", "processing"]
    assert body["timeline_complete"] is True


async def test_detail_of_an_unknown_or_bad_id(service):
    assert_error(await service.http.get("/tasks/nobody/detail"), 404)
    assert_error(await service.http.get("/tasks/a%20b/detail"), 422)
