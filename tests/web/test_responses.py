"""Every error is JSON (web/responses.py): unknown routes and methods, and a bug (500)."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine.queue import Queue
from app.web.responses import JSON, send_json
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


async def test_send_json_sends_what_the_json_response_sends():
    """HotPath's `send_json` and the `JSON` response put the same messages on the wire."""
    content = {"eval_id": "a", "position": 3, "text": "é"}
    by_object: list[dict[str, Any]] = []
    by_function: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def keep(into: list[dict[str, Any]], message: Any) -> None:
        into.append(dict(message))

    scope = {"type": "http", "method": "POST", "path": "/tasks", "headers": []}
    await JSON(content, 201)(scope, receive, lambda m: keep(by_object, m))
    await send_json(lambda m: keep(by_function, m), 201, content)
    for message in by_object + by_function:
        if "headers" in message:
            message["headers"] = sorted(message["headers"])
        message.pop("more_body", None)
    assert by_function == by_object
