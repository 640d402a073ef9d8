"""A service's queues (eas/store.py) over real HTTP: the imitation's sink JSON, index reads
with length, tags and auto-delete, long-polls, binary bodies, commit.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from starlette.responses import Response

from app.eas.proto.eas_queue_pb2 import DataFrameListProto
from tests.conftest import wait_for
from tests.eas.conftest import AUTH, PROTOBUF, eas_service, final_status, put, sink_status

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


async def test_commit_marks_an_item_done_for_the_sink_json(make_service, svc):
    service = await eas_service(make_service, svc)
    request_id = await put(service, svc)
    response = await service.http.put(f"/api/predict/{svc}?_indexes_={request_id}", headers=AUTH)
    assert response.json() == {"status": "ok", "committed": 1}
    document = (await sink_status(service, svc, request_id)).json()
    assert document["status"] == "SUCCESS"
    again = await service.http.put(f"/api/predict/{svc}?_indexes_={request_id}", headers=AUTH)
    assert again.json()["committed"] == 0
