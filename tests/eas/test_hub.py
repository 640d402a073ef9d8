"""The services of a process (eas/hub.py): one forwarding pool per service, /status and
`info` list them, a replica forwards services first used elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import sys

from starlette.responses import Response

from tests.conftest import ROOT
from tests.eas.conftest import eas_service, final_status, put


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
