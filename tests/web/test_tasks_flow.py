"""The flow-control fields of `POST /tasks` and batches over real loopback HTTP (issue 15,
items 3 and 4): the answers of a deduplicated request, `expires_at` and `expired` in the
task document, and every bad value refused with 422 and nothing written."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import Service, wait_for
from tests.web.conftest import assert_error, get

BAD_FIELDS: list[dict[str, Any]] = [
    {"dedup_key": ""},
    {"dedup_key": "k" * 129},
    {"dedup_key": 7},
    {"dedup": "active"},
    {"dedup_ttl": 1},
    {"dedup_key": "held", "dedup": "once"},
    {"dedup_key": "held", "dedup": "throttle"},
    {"dedup_key": "held", "dedup": "debounce", "dedup_ttl": 0},
    {"dedup_key": "held", "dedup": "debounce", "dedup_ttl": 1, "delay": 1},
    {"dedup_key": "held", "dedup": "throttle", "dedup_ttl": "1"},
    {"expires": 0},
    {"expires": "soon"},
    {"expires_at": "someday"},
    {"expires_at": -1},
    {"expires": 10, "expires_at": 4102444800},
    {"dedup_key": "held", "expires": -1},  # a valid key with a bad expiry: no dedup answer
]


@pytest.fixture
async def holding(service: Service) -> Service:
    """The service with a task holding dedup_key `held` (and an expiry), so the snapshot
    shows the dedup and expiries structures."""
    body = {"eval_id": "holder", "code": "x", "dedup_key": "held", "expires": 600}
    assert (await service.http.post("/tasks", json=body)).status_code == 201
    return service


@pytest.mark.parametrize("fields", BAD_FIELDS)
async def test_bad_flow_control_fields_are_422_and_store_nothing(
    holding: Service, frozen: Callable[[], Awaitable[None]], fields: dict[str, Any]
):
    response = await holding.http.post("/tasks", json={"eval_id": "new", "code": "x", **fields})
    assert_error(response, 422)
    batch = {"tasks": [{"code": "x", "dedup_key": "other"}, {"code": "x", **fields}]}
    assert "tasks[1]" in assert_error(await holding.http.post("/tasks/batch", json=batch), 422)
    await frozen()


async def test_a_deduplicated_request_is_answered_200(holding: Service):
    response = await holding.http.post("/tasks", json={"code": "y", "dedup_key": "held"})
    assert response.status_code == 200, response.text
    assert response.json() == {"eval_id": "holder", "status": "queued", "deduplicated": True}
    batch = {"tasks": [{"code": "y", "dedup_key": "held"}, {"eval_id": "b2", "code": "y"}]}
    response = await holding.http.post("/tasks/batch", json=batch)
    assert response.status_code == 201
    first, second = response.json()["tasks"]
    assert first == {"eval_id": "holder", "status": "queued", "deduplicated": True}
    assert second["eval_id"] == "b2" and second["status"] == "queued"


async def test_the_task_document_shows_expiry_and_the_expired_state(service: Service):
    body = {"eval_id": "e1", "code": "x", "expires_at": "2001-01-01T00:00:00Z", "delay": 60}
    assert (await service.http.post("/tasks", json=body)).status_code == 201
    record = await get(service, "e1")
    assert record["expires_at"] == "2001-01-01T00:00:00.000Z"

    async def expired() -> bool:
        return bool((await get(service, "e1"))["status"] == "expired")

    await wait_for(expired, timeout=10)
    record = await get(service, "e1")
    assert record["error"] == "expired before it started" and record["completed_at"]
    assert_error(await service.http.post("/tasks/e1/cancel"), 409)
    status = (await service.http.get("/status")).json()
    assert status["totals"]["expired"] == 1 and status["states"]["scheduled"] == 0
    listed = (await service.http.get("/tasks", params={"state": "expired"})).json()
    assert [t["eval_id"] for t in listed["tasks"]] == ["e1"]
    assert listed["tasks"][0]["status"] == "expired"


async def test_openapi_documents_the_fields_and_the_200(service: Service):
    spec = (await service.http.get("/openapi.json")).json()
    create = spec["paths"]["/tasks"]["post"]
    assert "200" in create["responses"] and "201" in create["responses"]
    fields = create["requestBody"]["content"]["application/json"]["schema"]["properties"]
    for name in ("dedup_key", "dedup", "dedup_ttl", "expires", "expires_at"):
        assert name in fields, name
    read = spec["paths"]["/tasks/{eval_id}"]["get"]["responses"]["200"]
    out = read["content"]["application/json"]["schema"]["properties"]
    assert "expired" in out["status"]["enum"] and "expires_at" in out
