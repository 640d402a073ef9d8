"""Forwarding (eas/forward.py): target URLs, the outcomes of a target's answers (retry,
failure, the DLQ), priority, a delete aborting a running forward, the error frame of an
answer-less failure.
"""

from __future__ import annotations

import asyncio

from starlette.responses import Response

from app.eas.proto.eas_queue_pb2 import DataFrameListProto
from app.redis_server import free_port
from app.settings import RetryPolicy, Settings
from tests.conftest import wait_for
from tests.eas.conftest import AUTH, PROTOBUF, eas_service, final_status, put, sink_status, truthy


def test_target_urls_percent_encode_the_name():
    settings = Settings(target_api_base_url="http://t:1/v1/")
    assert settings.eas_target("svc.v1") == "http://t:1/v1/svc.v1"
    assert settings.eas_target("a b/..") == "http://t:1/v1/a%20b%2F.."  # never a valid name


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
    await wait_for(lambda: truthy(len(target.calls) == 1))
    await put(service, svc, b"normal-1")
    await put(service, svc, b"normal-2")
    await put(service, svc, b"urgent", "?_priority_=1")
    release.set()
    await wait_for(lambda: truthy(len(target.calls) == 4))
    assert [c["body"] for c in target.calls] == [b"first", b"urgent", b"normal-1", b"normal-2"]


async def test_delete_of_a_running_forward_aborts_it_and_forgets_the_request(
    make_service, make_target, svc
):
    async def hung(body: bytes, n: int) -> Response:
        await asyncio.Event().wait()  # hangs until the target is stopped
        return Response(b"late")

    target = await make_target(hung)
    service = await eas_service(make_service, svc, target)
    request_id = await put(service, svc)
    await wait_for(lambda: truthy(len(target.calls) == 1))
    response = await service.http.delete(f"/api/predict/{svc}?_indexes_={request_id}", headers=AUTH)
    assert response.json() == {"status": "ok", "deleted": 1}
    assert (await sink_status(service, svc, request_id)).status_code == 404

    async def idle():
        status = (await service.http.get("/status")).json()
        row = next(r for r in status["eas"] if r["service"] == svc)
        return row["forwarding"]["running"] == 0

    await wait_for(idle)


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
