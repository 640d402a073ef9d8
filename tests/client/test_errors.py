"""Errors: each status the service answers maps to one class of the client's tree and
carries the service's message; the API key is sent; a service that cannot be reached is
`ConnectionFailed`."""

from __future__ import annotations

import httpx
import pytest

from app.redis_server import free_port
from taskstream_client import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    Invalid,
    NotFound,
    PayloadTooLarge,
    TaskstreamError,
    Unauthorized,
    Unavailable,
)
from taskstream_client.errors import error_from

FLAVOURS = ["sync", "async"]


def test_statuses_map_to_the_tree_with_the_services_message(api):
    with pytest.raises(NotFound) as unknown:
        api.get("nope")
    assert unknown.value.status == 404 and unknown.value.error == "no such task: nope"
    with pytest.raises(Invalid) as invalid:
        api.get("bad id!")
    assert invalid.value.status == 422 and "eval_id" in invalid.value.error
    with pytest.raises(Invalid) as field:
        api.enqueue("x", priority="urgent")
    assert "priority" in field.value.error
    api.enqueue("x", eval_id="dup")
    with pytest.raises(Conflict) as duplicate:
        api.enqueue("x", eval_id="dup")
    assert duplicate.value.status == 409
    with pytest.raises(NotFound) as queue:
        api.next(queue="never-used")
    assert "no such queue" in queue.value.error
    assert isinstance(queue.value, TaskstreamError)


def test_a_malformed_body_is_bad_request(live):
    response = httpx.post(live.url + "/tasks", content=b"{not json")
    error = error_from(response)
    assert isinstance(error, BadRequest) and isinstance(error, Invalid)
    assert error.status == 400 and error.error.startswith("malformed JSON")


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_body_over_max_body_bytes(make_live, make_api, flavour):
    api = make_api(flavour, make_live(max_body_bytes=1000).url)
    with pytest.raises(PayloadTooLarge) as large:
        api.enqueue("x" * 2000)
    assert large.value.status == 413


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_api_key(make_live, make_api, flavour):
    service = make_live(api_keys=("s3cret",))
    with pytest.raises(Unauthorized) as refused:
        make_api(flavour, service.url).enqueue("x")
    assert refused.value.status == 401
    with pytest.raises(Unauthorized):
        make_api(flavour, service.url, api_key="wrong").get("x")
    api = make_api(flavour, service.url, api_key="s3cret")
    task = api.enqueue("x")
    delivery = api.next()
    api.complete(delivery, 1)
    assert api.wait(task.eval_id, timeout=5).result == 1  # the event stream takes the key too


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_environment_gives_url_and_key(make_live, make_api, flavour, monkeypatch):
    service = make_live(api_keys=("from-env",))
    monkeypatch.setenv("TASKSTREAM_URL", service.url)
    monkeypatch.setenv("TASKSTREAM_API_KEY", "from-env")
    assert make_api(flavour, None).enqueue("x").status == "queued"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_redis_unreachable_is_unavailable(make_live, make_api, flavour):
    dead = f"redis://127.0.0.1:{free_port()}"
    api = make_api(flavour, make_live(redis_url=dead).url)
    with pytest.raises(Unavailable) as down:
        api.enqueue("x")
    assert down.value.status == 503 and "redis unavailable" in down.value.error


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_no_service_is_connection_failed(make_api, flavour):
    api = make_api(flavour, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectionFailed) as failed:
        api.get("x")
    assert failed.value.status is None and isinstance(failed.value, Unavailable)
    assert isinstance(failed.value.__cause__, httpx.ConnectError)
