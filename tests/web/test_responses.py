"""Every error is JSON (web/responses.py): unknown routes and methods, and a bug (500)."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine.queue import Queue
from tests.conftest import Service
from tests.web.conftest import assert_error


async def test_unknown_route_and_method_are_json_errors(service: Service):
    assert_error(await service.http.get("/nowhere"), 404)
    assert_error(await service.http.post("/tasks/x/explode"), 404)
    response = await service.http.put("/tasks", json={})
    assert response.status_code == 405
    assert_error(response, 405)


async def test_a_bug_answers_500_json_and_the_connection_stays_usable(
    service: Service, monkeypatch: pytest.MonkeyPatch
):
    """Not one of ours (a DataError from a bad argument, say): 500 JSON, never text/plain."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Queue, "get", broken)
    monkeypatch.setattr(Queue, "enqueue", broken)
    for response in (
        await service.http.get("/tasks/anything"),
        await service.http.post("/tasks", json={"code": "x"}),  # the HotPath shortcut
    ):
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {"error": "internal error"}
    assert (await service.http.get("/livez")).status_code == 200
