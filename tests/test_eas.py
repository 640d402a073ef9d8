"""The PAI-EAS frontend over real HTTP: auth, the imitation's sink JSON, forwarding
outcomes, priority, isolation between services, and the queue protocol's edge cases."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.eas.items import Item
from app.eas.proto.eas_queue_pb2 import DataFrameListProto
from app.redis_server import free_port
from app.settings import RetryPolicy, Settings
from app.web import params
from tests.conftest import ROOT, Served, serve_asgi, wait_for

AUTH = {"Authorization": "tok"}
PROTOBUF = {**AUTH, "Accept": "application/vnd.google.protobuf"}
FAST_RETRY = RetryPolicy(3, 0.05, 2.0, 1.0, False)

Answer = Callable[[bytes, int], Awaitable[Response]]


@dataclass
class Target:
    """A real loopback target whose answers a test scripts per call (n = 1, 2, ...)."""

    answer: Answer | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    served: Served | None = None

    @property
    def url(self) -> str:
        assert self.served is not None
        return self.served.url

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.calls.append(
            {
                "path": request.url.path,
                "raw_path": request.scope["raw_path"],
                "body": body,
                "content_type": request.headers.get("content-type"),
                "request_id": request.headers.get("x-eas-queueservice-request-id"),
            }
        )
        if self.answer is not None:
            return await self.answer(body, len(self.calls))
        return Response(b"echo:" + body, media_type="application/octet-stream")


@pytest.fixture
async def make_target():
    started: list[Target] = []

    async def make(answer: Answer | None = None) -> Target:
        target = Target(answer)
        app = Starlette(routes=[Route("/{path:path}", target.handle, methods=["POST"])])
        target.served = await serve_asgi(app)
        started.append(target)
        return target

    yield make
    for target in started:
        assert target.served is not None
        target.served.server.force_exit = True  # do not wait for answers a test left hanging
        await target.served.stop()


@pytest.fixture
def svc(queue: str) -> str:
    return f"grp.{queue[:12]}"


async def eas_service(make_service, svc: str, target: Target | None = None, **overrides: Any):
    targets = {svc: target.url} if target else {}
    overrides.setdefault("retry", FAST_RETRY)
    return await make_service(eas_tokens=("tok",), eas_targets=targets, **overrides)


async def put(service, svc: str, body: bytes = b"{}", query: str = "", **headers: str) -> int:
    response = await service.http.post(
        f"/api/predict/{svc}{query}", content=body, headers={**AUTH, **headers}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-eas-queueservice-request-id"] == response.text
    return int(response.text)


async def sink_status(service, svc: str, request_id: int | str, query: str = "") -> Any:
    return await service.http.get(
        f"/api/predict/{svc}/sink?request_id={request_id}{query}", headers=AUTH
    )


async def final_status(service, svc: str, request_id: int):
    async def final():
        response = await sink_status(service, svc, request_id)
        return response.json() if response.status_code == 200 else None

    return await wait_for(final)


# --- auth ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 401),
        ("", 401),
        ("wrong", 401),
        ("Bearer wrong", 401),
        ("tok", 200),
        ("Bearer tok", 200),
    ],
)
async def test_eas_token_checked_on_every_route(make_service, svc, header, expected):
    service = await eas_service(make_service, svc)
    headers = {} if header is None else {"Authorization": header}
    for method, path in [
        ("POST", f"/api/predict/{svc}"),
        ("GET", f"/api/predict/{svc}?_attrs_=true"),
        ("GET", f"/api/predict/{svc}/sink?_attrs_=true"),
        ("PUT", f"/api/predict/{svc}?_indexes_=99"),
        ("DELETE", f"/api/predict/{svc}/sink?_indexes_=99"),
    ]:
        response = await service.http.request(method, path, headers=headers, content=b"x")
        assert response.status_code == expected, (method, path, response.text)
        if expected == 401:
            assert "error" in response.json()


async def test_without_eas_token_any_authorization_passes(make_service, svc):
    service = await make_service()
    ok = await service.http.post(f"/api/predict/{svc}", headers={"Authorization": "x"})
    assert ok.status_code == 200
    assert (await service.http.post(f"/api/predict/{svc}")).status_code == 401


async def test_api_key_does_not_guard_eas_routes(make_service, svc):
    service = await make_service(api_keys=("secret",), eas_tokens=("tok",))
    assert (await service.http.post(f"/api/predict/{svc}", headers=AUTH)).status_code == 200
    assert (await service.http.get("/status")).status_code == 401


async def test_bad_parameters_are_400(make_service, svc):
    service = await eas_service(make_service, svc)
    bad = [
        ("GET", f"/api/predict/{svc}?_length_=0"),
        ("GET", f"/api/predict/{svc}?_length_=abc"),
        ("GET", f"/api/predict/{svc}?_timeout_=soon"),
        ("GET", f"/api/predict/{svc}?_auto_delete_=maybe"),
        ("PUT", f"/api/predict/{svc}?_indexes_=1,x"),
        ("PUT", f"/api/predict/{svc}?_indexes_=1,%C2%B2"),  # '²' is a digit, not ASCII
        ("GET", f"/api/predict/{svc}?_index_=%C2%B2"),
        ("DELETE", f"/api/predict/{svc}?_trunc_=true"),
        ("POST", f"/api/predict/{svc}/sink?_priority_=1"),
    ]
    for method, path in bad:
        response = await service.http.request(method, path, headers=AUTH)
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["error"]
    attrs = await service.http.get(f"/api/predict/{svc}?_attrs_=true", headers=AUTH)
    assert attrs.json()["stream.lastEntry"] == "0"  # nothing was written


# --- service names -------------------------------------------------------------------------


async def raw_request(
    url: str, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One request with the path sent exactly as given (httpx would resolve `.` and `..`):
    (status, headers in lower case, body)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in {**headers, "Content-Length": str(len(body))}.items()]
    writer.write("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *fields = head.decode("latin-1").split("\r\n")
        found = dict(f.split(": ", 1) for f in fields if f)
        found = {k.lower(): v for k, v in found.items()}
        length = int(found.get("content-length", "0")) if method != "HEAD" else 0
        return int(status_line.split()[1]), found, await reader.readexactly(length)
    finally:
        writer.close()


BAD_NAMES = [
    "%2e%2e%2f",  # `../` once decoded: was a 307 to /api/predict/..
    "..",  # was accepted and forwarded as POST {base}/..
    ".",
    "...",
    "%2E%2E",
    "a" * 65,
    "",
    "a%2Fb",  # an encoded `/` inside a name
    "a%2Fsink",  # ... must not reach the sink of `a`
    "bad%20name",
    "svc:v1",  # no `:` (it would be ambiguous in CONSUME=eas:NAME)
    "%C3%A9t%C3%A9",
]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_a_bad_service_name_is_refused_on_every_route_and_never_redirected(
    make_service, name
):
    service = await eas_service(make_service, "unused")
    paths = [f"/api/predict/{name}", f"/api/predict/{name}/sink"]
    for method in ("POST", "GET", "PUT", "DELETE"):
        for path in paths:
            status, headers, body = await raw_request(service.url, method, path, AUTH, b"{}")
            assert status in (404, 422), (method, path, status, headers)
            assert "location" not in headers and orjson.loads(body)["error"], (method, path)
    for path in paths:  # the watch: denied with the same status before any handshake
        upgrade = {
            **AUTH,
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
        }
        status, _, _ = await raw_request(service.url, "GET", path + "?_watch_=true", upgrade)
        assert status in (404, 422), (path, status)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/predict", 404),
        ("/api/predict/", 422),
        ("/api/predict/svc/", 404),  # was a 307 to /api/predict/svc
        ("/api/predict/svc/sink/", 404),
        ("/api/predict/svc/other", 404),
        ("/api/predict/svc/sink/x", 404),
    ],
)
async def test_paths_of_another_shape_are_404_not_redirects(make_service, path, status):
    service = await eas_service(make_service, "unused")
    answer, headers, _ = await raw_request(service.url, "POST", path, AUTH, b"{}")
    assert (answer, headers.get("location")) == (status, None)


async def test_bad_names_store_and_forward_nothing_and_a_dotted_name_works(
    make_service, make_target, client, queue
):
    """With TARGET_API_BASE_URL set, only `svc.v1` reaches the target, at {base}/svc.v1,
    and no Redis key names any of the bad services."""
    target = await make_target()
    service = await make_service(eas_tokens=("tok",), target_api_base_url=target.url + "/base")
    for name in BAD_NAMES:
        status, _, _ = await raw_request(service.url, "POST", f"/api/predict/{name}", AUTH, b"x")
        assert status in (404, 422), name
    request_id = await put(service, "svc.v1", b"hello")
    document = await final_status(service, "svc.v1", request_id)
    assert document["status"] == "SUCCESS" and document["service_name"] == "svc.v1"
    assert [call["raw_path"] for call in target.calls] == [b"/base/svc.v1"]
    registry = await client.smembers(f"ts:{{{queue}}}:eas:services")
    assert registry == {b"svc.v1"}
    for name in BAD_NAMES:
        decoded = unquote(name)
        if decoded and "svc.v1" not in decoded:
            assert not [k async for k in client.scan_iter(match=f"*{{eas:{decoded}}}*")], name


async def test_head_is_405_and_reads_nothing(make_service, svc):
    """Starlette allows HEAD wherever GET is; a GET may delete what it reads."""
    service = await eas_service(make_service, svc)
    await put(service, svc)
    status, _, _ = await raw_request(service.url, "HEAD", f"/api/predict/{svc}", AUTH)
    assert status == 405
    attrs = await service.http.get(f"/api/predict/{svc}?_attrs_=true", headers=AUTH)
    assert attrs.json()["stream.length"] == "1"


def test_target_urls_percent_encode_the_name():
    settings = Settings(target_api_base_url="http://t:1/v1/")
    assert settings.eas_target("svc.v1") == "http://t:1/v1/svc.v1"
    assert settings.eas_target("a b/..") == "http://t:1/v1/a%20b%2F.."  # never a valid name


# --- the imitation: put and the JSON sink ------------------------------------------------


async def test_sink_json_goes_pending_started_success_over_a_slow_target(
    make_service, make_target, svc
):
    release = asyncio.Event()

    async def slow(body: bytes, n: int) -> Response:
        await release.wait()
        return Response(b'{"answer": 42}', media_type="application/json")

    target = await make_target(slow)
    service = await eas_service(make_service, svc, target)
    request_id = await put(service, svc, b'{"q": 1}', **{"Content-Type": "application/json"})

    async def started():
        response = await sink_status(service, svc, request_id)
        assert response.status_code == 202
        assert response.json()["status"] in ("PENDING", "STARTED")
        return response.json()["status"] == "STARTED"

    await wait_for(started)
    release.set()
    document = await final_status(service, svc, request_id)
    assert document["status"] == "SUCCESS"
    assert document["request_id"] == str(request_id)
    assert document["service_name"] == svc
    assert document["result"] == {
        "status": "success",
        "target_status_code": 200,
        "body": '{"answer": 42}',
    }
    call = target.calls[0]
    assert call["body"] == b'{"q": 1}'
    assert call["content_type"] == "application/json"
    assert call["request_id"] == str(request_id)


async def test_pending_without_target(make_service, svc):
    service = await eas_service(make_service, svc)
    request_id = await put(service, svc)
    response = await sink_status(service, svc, request_id)
    assert response.status_code == 202
    assert response.json()["status"] == "PENDING"


async def test_target_500_then_200_is_retry_then_success(make_service, make_target, svc):
    gate = asyncio.Event()

    async def flaky(body: bytes, n: int) -> Response:
        if n == 1:
            return Response(b"boom", status_code=500)
        await gate.wait()
        return Response(b"ok")

    target = await make_target(flaky)
    service = await eas_service(
        make_service, svc, target, retry=RetryPolicy(3, 0.2, 2.0, 1.0, False)
    )
    request_id = await put(service, svc)

    async def retrying():
        return (await sink_status(service, svc, request_id)).json()["status"] == "RETRY"

    await wait_for(retrying)
    gate.set()
    document = await final_status(service, svc, request_id)
    assert document["status"] == "SUCCESS"
    assert document["attempts"] == 2
    assert len(target.calls) == 2


async def test_target_400_is_failure_without_retry(make_service, make_target, svc):
    async def refuse(body: bytes, n: int) -> Response:
        return Response(b'{"error": "bad input"}', status_code=400)

    target = await make_target(refuse)
    service = await eas_service(make_service, svc, target)
    request_id = await put(service, svc)
    document = await final_status(service, svc, request_id)
    assert document["status"] == "FAILURE"
    assert "400" in document["error_info"]
    assert len(target.calls) == 1
    # the answer is in the sink too, tagged with the request id and the status
    frames = await service.http.get(
        f"/api/predict/{svc}/sink?requestId={request_id}&_auto_delete_=false", headers=PROTOBUF
    )
    parsed = DataFrameListProto.FromString(frames.content)
    assert dict(parsed.index[0].tags) == {"requestId": str(request_id), "status": "400"}
    assert parsed.index[0].data == b'{"error": "bad input"}'


async def test_retries_exhausted_end_in_failure_and_the_dlq(make_service, make_target, svc):
    async def broken(body: bytes, n: int) -> Response:
        return Response(b"down", status_code=503)

    target = await make_target(broken)
    retry = RetryPolicy(1, 0.05, 2.0, 1.0, False)
    service = await eas_service(make_service, svc, target, retry=retry)
    request_id = await put(service, svc)
    document = await final_status(service, svc, request_id)
    assert document["status"] == "FAILURE"
    assert len(target.calls) == 2  # MAX_RETRIES=1: two attempts
    status = (await service.http.get("/status")).json()
    row = next(r for r in status["eas"] if r["service"] == svc)
    assert row["input"]["dlq"] == 1
    assert row["target"] == target.url


async def test_priority_overtakes_queued_normal_requests(make_service, make_target, svc):
    release = asyncio.Event()

    async def gated(body: bytes, n: int) -> Response:
        if n == 1:
            await release.wait()
        return Response(b"ok")

    target = await make_target(gated)
    service = await eas_service(make_service, svc, target, eas_concurrency=1)
    await put(service, svc, b"first")
    await wait_for(lambda: _true(len(target.calls) == 1))
    await put(service, svc, b"normal-1")
    await put(service, svc, b"normal-2")
    await put(service, svc, b"urgent", "?_priority_=1")
    release.set()
    await wait_for(lambda: _true(len(target.calls) == 4))
    assert [c["body"] for c in target.calls] == [b"first", b"urgent", b"normal-1", b"normal-2"]


async def _true(value: bool) -> bool:
    return value


async def test_404_for_unknown_and_other_services_ids(make_service, svc):
    service = await eas_service(make_service, svc)
    other = f"{svc}.other"
    for _ in range(3):
        await put(service, svc)
    await put(service, other)
    assert (await sink_status(service, svc, 3)).status_code == 202
    cases: list[tuple[str, Any]] = [(svc, 99), (svc, "abc"), (other, 3), (f"{svc}.none", 1)]
    for service_name, request_id in cases:
        response = await sink_status(service, service_name, request_id)
        assert response.status_code == 404, (service_name, request_id)
        assert "unknown request_id" in response.json()["error"]


async def test_sink_timeout_waits_for_the_final_state(make_service, make_target, svc):
    release = asyncio.Event()

    async def slow(body: bytes, n: int) -> Response:
        await release.wait()
        return Response(b"done")

    target = await make_target(slow)
    service = await eas_service(make_service, svc, target)
    request_id = await put(service, svc)
    asyncio.get_running_loop().call_later(0.3, release.set)
    started = time.monotonic()
    response = await sink_status(service, svc, request_id, "&_timeout_=10s")
    assert response.status_code == 200
    assert response.json()["status"] == "SUCCESS"
    assert time.monotonic() - started < 5
    # no target for this one: still pending, 202 once the timeout is over
    idle = f"{svc}.idle"
    unanswered = await put(service, idle)
    started = time.monotonic()
    response = await sink_status(service, idle, unanswered, "&_timeout_=300ms")
    assert response.status_code == 202
    assert time.monotonic() - started >= 0.3


async def test_a_hung_target_does_not_block_another_service(make_service, make_target, svc):
    hang = asyncio.Event()

    async def hung(body: bytes, n: int) -> Response:
        await hang.wait()
        return Response(b"late")

    slow_target, fast_target = await make_target(hung), await make_target()
    other = f"{svc}.fast"
    service = await make_service(
        eas_tokens=("tok",),
        eas_targets={svc: slow_target.url, other: fast_target.url},
        eas_concurrency=2,
    )
    for _ in range(5):
        await put(service, svc)
    ids = [await put(service, other, f"req-{i}".encode()) for i in range(5)]
    for request_id in ids:
        assert (await final_status(service, other, request_id))["status"] == "SUCCESS"
    assert len(slow_target.calls) == 2  # its own two slots, no more
    hang.set()


# --- the queue protocol over plain HTTP ----------------------------------------------------


async def test_binary_body_round_trip_json_and_protobuf(make_service, make_target, svc):
    target = await make_target()
    service = await eas_service(make_service, svc, target)
    body = bytes(range(256)) * 8
    request_id = await put(service, svc, body, **{"Content-Type": "application/octet-stream"})
    document = await final_status(service, svc, request_id)
    assert base64.b64decode(document["result"]["body"]) == b"echo:" + body
    assert document["result"]["body_encoding"] == "base64"
    assert target.calls[0]["body"] == body
    # the sink frame holds the raw answer; JSON form is base64, protobuf is bytes
    query = f"/api/predict/{svc}/sink?requestId={request_id}&_auto_delete_=false"
    as_json = (await service.http.get(query, headers=AUTH)).json()
    assert base64.b64decode(as_json["index"][0]["data"]) == b"echo:" + body
    as_proto = DataFrameListProto.FromString(
        (await service.http.get(query, headers=PROTOBUF)).content
    )
    assert as_proto.index[0].data == b"echo:" + body
    raw = await service.http.get(query + "&_raw_=true", headers=AUTH)
    assert raw.content == b"echo:" + body


async def test_index_reads_length_tags_and_auto_delete(make_service, svc):
    service = await eas_service(make_service, svc)
    sink = f"/api/predict/{svc}/sink"
    for i in range(5):
        color = "red" if i % 2 else "blue"
        response = await service.http.post(
            f"{sink}?color={color}", content=f"item-{i}", headers=AUTH
        )
        assert response.status_code == 200
    read = await service.http.get(
        f"{sink}?_index_=2&_length_=2&_auto_delete_=false", headers=PROTOBUF
    )
    frames = DataFrameListProto.FromString(read.content).index
    assert [(f.index, f.data) for f in frames] == [(2, b"item-1"), (3, b"item-2")]
    assert dict(frames[0].tags) == {"color": "red", "requestId": "2"}
    red = await service.http.get(
        f"{sink}?color=red&_length_=10&_auto_delete_=false", headers=PROTOBUF
    )
    assert [f.index for f in DataFrameListProto.FromString(red.content).index] == [2, 4]
    taken = await service.http.get(f"{sink}?_index_=0&_length_=3", headers=PROTOBUF)  # auto delete
    assert [f.index for f in DataFrameListProto.FromString(taken.content).index] == [1, 2, 3]
    attrs = (await service.http.get(f"{sink}?_attrs_=true", headers=AUTH)).json()
    assert attrs["stream.length"] == "2"
    assert attrs["stream.firstEntry"] == "4"
    assert attrs["stream.lastEntry"] == "5"
    empty = await service.http.get(f"{sink}?_index_=6", headers=AUTH)
    assert empty.status_code == 204


async def test_long_poll_read_returns_when_an_item_arrives(make_service, svc):
    service = await eas_service(make_service, svc)
    path = f"/api/predict/{svc}/sink?_index_=0&_timeout_=10s"
    read = asyncio.ensure_future(service.http.get(path, headers=PROTOBUF))
    await asyncio.sleep(0.2)
    assert not read.done()
    started = time.monotonic()
    await service.http.post(f"/api/predict/{svc}/sink", content=b"late", headers=AUTH)
    response = await read
    assert time.monotonic() - started < 3
    assert DataFrameListProto.FromString(response.content).index[0].data == b"late"


async def test_delete_of_a_running_forward_aborts_it_and_forgets_the_request(
    make_service, make_target, svc
):
    async def hung(body: bytes, n: int) -> Response:
        await asyncio.Event().wait()  # hangs until the target is stopped
        return Response(b"late")

    target = await make_target(hung)
    service = await eas_service(make_service, svc, target)
    request_id = await put(service, svc)
    await wait_for(lambda: _true(len(target.calls) == 1))
    response = await service.http.delete(f"/api/predict/{svc}?_indexes_={request_id}", headers=AUTH)
    assert response.json() == {"status": "ok", "deleted": 1}
    assert (await sink_status(service, svc, request_id)).status_code == 404

    async def idle():
        status = (await service.http.get("/status")).json()
        row = next(r for r in status["eas"] if r["service"] == svc)
        return row["forwarding"]["running"] == 0

    await wait_for(idle)


async def test_commit_marks_an_item_done_for_the_sink_json(make_service, svc):
    service = await eas_service(make_service, svc)
    request_id = await put(service, svc)
    response = await service.http.put(f"/api/predict/{svc}?_indexes_={request_id}", headers=AUTH)
    assert response.json() == {"status": "ok", "committed": 1}
    document = (await sink_status(service, svc, request_id)).json()
    assert document["status"] == "SUCCESS"
    again = await service.http.put(f"/api/predict/{svc}?_indexes_={request_id}", headers=AUTH)
    assert again.json()["committed"] == 0


async def test_status_lists_eas_queues(make_service, make_target, svc):
    target = await make_target()
    service = await eas_service(make_service, svc, target)
    request_id = await put(service, svc)
    await final_status(service, svc, request_id)
    status = (await service.http.get("/status")).json()
    row = next(r for r in status["eas"] if r["service"] == svc)
    assert row["target"] == target.url
    assert row["input"]["totals"]["completed"] == 1
    assert row["sink"]["length"] == 1
    assert row["forwarding"]["concurrency"] == service.settings.eas_concurrency


def test_item_encoding_is_binary_safe_and_defaults_the_request_id():
    item = Item(0, b"\n\x00\xff\n", {"a": "b"}, "image/png", "note")
    back = Item.decode(7, item.encode())
    assert (back.data, back.content_type, back.message) == (b"\n\x00\xff\n", "image/png", "note")
    assert back.tags == {"a": "b", "requestId": "7"}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("500ms", 0.5), ("1m", 60.0), ("2", 2.0), ("", 0.0), ("90s", 60.0)],
)
def test_parse_duration(text, seconds):
    assert params.duration(text) == seconds


async def test_info_lists_eas_services(make_service, svc, redis_url, queue):
    service = await eas_service(make_service, svc)
    await put(service, svc)
    await put(service, svc)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "info",
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), "REDIS_URL": redis_url, "QUEUE_NAME": queue},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    at = lines.index(f"eas service {svc}  target=-")
    assert lines[at + 1].split()[:3] == ["input", "length=2", "queued=2"]
    assert lines[at + 2].split()[:2] == ["sink", "length=0"]


async def test_a_replica_forwards_services_first_used_elsewhere(make_service, make_target, svc):
    target = await make_target()
    api_only = await eas_service(make_service, svc)  # no target: it only takes requests
    await eas_service(make_service, svc, target)  # a replica with the target, never asked
    request_id = await put(api_only, svc, b"via replica")
    document = await final_status(api_only, svc, request_id)
    assert document["status"] == "SUCCESS"
    assert target.calls[0]["body"] == b"via replica"


async def test_arrivals_wake_only_matching_waits_and_follow_the_stream(client):
    from app.engine.arrivals import Arrivals

    key = f"ts:{{arrivals-{time.monotonic_ns()}}}:stream"
    arrivals = Arrivals(client, [key], lambda fields: fields[b"n"])
    try:
        async with (
            arrivals.waiting(lambda n: n == b"7") as seven,
            arrivals.waiting(lambda n: n == b"x") as never,
        ):
            for n in range(10):
                await client.xadd(key, {"n": n})
            await asyncio.wait_for(seven.wait(), 5)
            tail = (await client.xrevrange(key, count=1))[0][0]
            await wait_for(lambda: _true(arrivals.positions == {key: tail}))
            assert not never.is_set()
    finally:
        await arrivals.close()


async def test_an_answerless_failure_leaves_an_error_frame_in_the_sink(make_service, svc):
    """No answer from the target (unreachable, retries spent): the sink item is an error
    frame tagged with the request id and status 500, the error as its message."""
    dead = f"http://127.0.0.1:{free_port()}"
    retry = RetryPolicy(0, 0.05, 2.0, 1.0, False)
    service = await make_service(eas_tokens=("tok",), eas_targets={svc: dead}, network_retry=retry)
    request_id = await put(service, svc)
    document = await final_status(service, svc, request_id)
    assert document["status"] == "FAILURE"
    assert document["error_info"].startswith("target unreachable: ")
    frames = await service.http.get(
        f"/api/predict/{svc}/sink?requestId={request_id}&_auto_delete_=false", headers=PROTOBUF
    )
    [frame] = DataFrameListProto.FromString(frames.content).index
    assert dict(frame.tags) == {"requestId": str(request_id), "status": "500"}
    assert frame.data == b"" and frame.message == document["error_info"]
