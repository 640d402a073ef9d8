"""The PAI-EAS curl examples of docs/eas.md (moved there from the README), run verbatim
(only host and port replaced) with real curl against the service forwarding to a loopback
target."""

from __future__ import annotations

import asyncio
import os
import re
import shutil

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import ROOT, serve_asgi

MARKER = "<!-- eas-curl-examples"


def eas_doc_examples() -> list[str]:
    text = (ROOT / "docs" / "eas.md").read_text()
    block = text[text.index(MARKER) :]
    block = block[block.index("```sh\n") + 6 :]
    block = block[: block.index("\n```")]
    return [line for line in block.splitlines() if line.startswith("curl ")]


async def test_eas_doc_curl_examples_work_verbatim(make_service):
    assert shutil.which("curl"), "curl is needed to run the examples of docs/eas.md"
    release = asyncio.Event()

    async def target(request: Request) -> Response:
        body = await request.body()
        await release.wait()
        return Response(b"answer to " + body, media_type="text/plain")

    served = await serve_asgi(Starlette(routes=[Route("/{p:path}", target, methods=["POST"])]))
    service = await make_service(eas_tokens=("secret",), eas_targets={"svc1": served.url})
    lines = eas_doc_examples()
    assert len(lines) == 5
    outputs = []
    for n, line in enumerate(lines):
        if n == 3:
            release.set()  # the _timeout_ example waits for the answer
        command = line.replace("http://localhost:8081", service.url)
        proc = await asyncio.create_subprocess_shell(
            command,
            env={**os.environ, "EAS_TOKEN": "secret"},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, line
        outputs.append(out.decode())
    served.server.force_exit = True
    await served.stop()
    assert outputs[0] == "1"
    assert outputs[1] == "2"
    pending = orjson.loads(outputs[2])
    assert pending["request_id"] == "1"
    assert pending["status"] in ("PENDING", "STARTED")
    assert pending["service_name"] == "svc1"
    done = orjson.loads(outputs[3])
    assert done["status"] == "SUCCESS"
    assert done["result"] == {
        "status": "success",
        "target_status_code": 200,
        "body": 'answer to {"prompt": "hello"}',
    }
    attrs = orjson.loads(outputs[4])
    assert attrs["meta.name"] == "svc1" and attrs["stream.lastEntry"] == "2"


@pytest.mark.parametrize("line", eas_doc_examples())
def test_eas_doc_examples_name_the_documented_routes(line):
    assert re.search(r'"http://localhost:8081/api/predict/svc1[/?"]', line)
