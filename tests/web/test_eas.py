"""The PAI-EAS routes (web/eas.py) over real HTTP: EAS_TOKEN on every route, bad
parameters (400), bad service names and paths (404/422, never a redirect), HEAD (405),
the `_timeout_` parser.
"""

from __future__ import annotations

import asyncio
import base64
import os
from urllib.parse import unquote

import orjson
import pytest

from app.web import params
from tests.eas.conftest import AUTH, eas_service, final_status, put

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


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("500ms", 0.5), ("1m", 60.0), ("2", 2.0), ("", 0.0), ("90s", 60.0)],
)
def test_parse_duration(text, seconds):
    assert params.duration(text) == seconds
