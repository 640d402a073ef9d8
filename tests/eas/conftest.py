"""Helpers of the PAI-EAS tests (also used by tests/web/test_eas.py): a service with
EAS_TOKEN, puts and the imitation's status reads. The loopback target is in
tests/conftest.py (`make_target`), shared with the web tests.
"""

from __future__ import annotations

from typing import Any

from app.settings import RetryPolicy
from tests.conftest import Target, wait_for

AUTH = {"Authorization": "tok"}
PROTOBUF = {**AUTH, "Accept": "application/vnd.google.protobuf"}
FAST_RETRY = RetryPolicy(3, 0.05, 2.0, 1.0, False)


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


async def truthy(value: bool) -> bool:
    return value
