"""The middleware (web/middleware.py, web/auth.py): MAX_BODY_BYTES, declared or streamed,
and the API key on every route but the probes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from app.engine.queue import Queue
from tests.web.conftest import MakeService, assert_error, assert_unknown, snapshot


def exact_body(size: int, eval_id: str) -> bytes:
    """A valid task body of exactly `size` bytes."""
    skeleton = orjson.dumps({"eval_id": eval_id, "code": ""})
    body = orjson.dumps({"eval_id": eval_id, "code": "x" * (size - len(skeleton))})
    assert len(body) == size
    return body


async def test_body_over_the_limit_with_content_length_is_413(
    make_service: MakeService, client: Any, streams: Queue
):
    service = await make_service(max_body_bytes=1000)
    before = await snapshot(client, streams)
    response = await service.http.post(
        "/tasks", content=exact_body(1001, "big"), headers={"content-type": "application/json"}
    )
    assert response.request.headers["content-length"] == "1001"
    assert_error(response, 413)
    assert await snapshot(client, streams) == before
    await assert_unknown(service, "big")
    # The boundary: exactly MAX_BODY_BYTES is accepted.
    response = await service.http.post(
        "/tasks", content=exact_body(1000, "fits"), headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text


async def test_body_over_the_limit_when_streamed_is_413(
    make_service: MakeService, client: Any, streams: Queue
):
    service = await make_service(max_body_bytes=1000)
    before = await snapshot(client, streams)

    async def chunks(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 256):
            yield body[start : start + 256]

    response = await service.http.post(
        "/tasks",
        content=chunks(exact_body(4000, "streamed")),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413)
    assert await snapshot(client, streams) == before
    await assert_unknown(service, "streamed")
    # The connection and the service are still fine; a streamed body under the limit passes.
    response = await service.http.post(
        "/tasks",
        content=chunks(exact_body(1000, "small")),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201, response.text


async def test_body_limit_applies_to_batch_too(
    make_service: MakeService, client: Any, streams: Queue
):
    service = await make_service(max_body_bytes=200)
    before = await snapshot(client, streams)
    tasks = [{"eval_id": f"b{i}", "code": "print(1)"} for i in range(20)]
    response = await service.http.post("/tasks/batch", json={"tasks": tasks})
    assert_error(response, 413)
    assert await snapshot(client, streams) == before
    await assert_unknown(service, "b0")


# --- API key, unknown routes, error bodies ------------------------------------------


async def test_api_key_guards_everything_but_the_probes(
    make_service: MakeService, client: Any, streams: Queue
):
    service = await make_service(api_keys=("k",))
    before = await snapshot(client, streams)
    guarded = [
        ("POST", "/tasks"),
        ("POST", "/tasks/batch"),
        ("DELETE", "/tasks"),
        ("GET", "/tasks/next"),
        ("GET", "/tasks/x"),
        ("POST", "/tasks/x/complete"),
        ("POST", "/tasks/x/fail"),
        ("POST", "/tasks/x/cancel"),
        ("POST", "/api/eval/x/cancel"),
        ("GET", "/status"),
    ]
    wrong = [{}, {"X-API-Key": "nope"}, {"Authorization": "Bearer nope"}, {"Authorization": "k"}]
    for method, path in guarded:
        for headers in wrong:
            response = await service.http.request(
                method, path, json={"eval_id": "x", "code": "1"}, headers=headers
            )
            assert_error(response, 401)
    assert await snapshot(client, streams) == before

    for path in ("/health", "/livez", "/readyz"):
        assert (await service.http.get(path)).status_code == 200

    response = await service.http.post(
        "/tasks", json={"eval_id": "x", "code": "1"}, headers={"X-API-Key": "k"}
    )
    assert response.status_code == 201, response.text
    response = await service.http.get("/tasks/x", headers={"Authorization": "Bearer k"})
    assert response.status_code == 200 and response.json()["status"] == "queued"
    response = await service.http.get("/status", headers={"authorization": "bearer k"})
    assert response.status_code == 200
