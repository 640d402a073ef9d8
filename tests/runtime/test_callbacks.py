"""Result callbacks end to end: real Redis, real loopback receivers, the service under uvicorn."""

from __future__ import annotations

import asyncio
import base64
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import __version__
from app.engine.callbacks import CallbackStream
from app.engine.engine import Engine
from app.engine.keys import CALLBACK_GROUP
from app.models import TaskRequest
from app.redis_server import free_port
from app.runtime import callbacks
from app.runtime.callbacks import CallbackSender, Target
from app.settings import RetryPolicy, Settings
from tests.conftest import Served, serve_asgi, wait_for
from tests.runtime.test_wire import RawServer, ok

TINY = RetryPolicy(3, 0.05, 1.0, 1.0, False)


@dataclass
class Receiver:
    """A loopback HTTP server that records every POST and answers from a script."""

    answers: list[int] = field(default_factory=list)  # statuses in order, then 200
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    served: Served | None = None

    @property
    def url(self) -> str:
        assert self.served is not None
        return self.served.url

    async def _handle(self, request: Request) -> Response:
        self.calls.append((request.url.path, await request.json()))
        return Response(status_code=self.answers.pop(0) if self.answers else 200)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    def bodies(self, eval_id: str) -> list[dict[str, Any]]:
        return [body for _, body in self.calls if body["eval_id"] == eval_id]


@pytest.fixture
async def make_receiver() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def make(answers: list[int] | None = None) -> Receiver:
        receiver = Receiver(answers=list(answers or []))
        receiver.served = await serve_asgi(receiver.app())
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        assert receiver.served is not None
        await receiver.served.stop()


async def record(svc: Any, eval_id: str) -> dict[str, Any]:
    response = await svc.http.get(f"/tasks/{eval_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def callback_status(svc: Any, eval_id: str, status: str) -> dict[str, Any] | None:
    view = (await record(svc, eval_id)).get("callback")
    return view if view is not None and view["status"] == status else None


async def totals(svc: Any) -> dict[str, int]:
    body: dict[str, int] = (await svc.http.get("/status")).json()["totals"]
    return body


async def test_retried_until_delivered_exactly_once_with_the_exact_body(
    make_service, executor, make_receiver
):
    receiver = await make_receiver([503, 503])
    svc = await make_service(executor_urls=(executor.url,), network_retry=TINY)
    hook = f"{receiver.url}/hooks/done"
    created = await svc.http.post(
        "/tasks", json={"eval_id": "t1", "code": "x", "callback_url": hook}
    )
    assert created.status_code == 201, created.text
    view = await wait_for(lambda: callback_status(svc, "t1", "delivered"))
    assert view == {"status": "delivered", "attempts": 3}
    task = await record(svc, "t1")
    expected = {
        "eval_id": "t1",
        "status": "completed",
        "result": {"status": "success", "output": "42\n", "exit_code": 0},
        "attempts": 1,
        "completed_at": task["completed_at"],
    }
    assert receiver.calls == [("/hooks/done", expected)] * 3  # two 503s, then the 200
    assert (await totals(svc))["callbacks_delivered"] == 1
    metrics = (await svc.http.get("/metrics")).text
    assert 'taskstream_callbacks_total{outcome="delivered"} 1.0' in metrics


async def test_failed_and_cancelled_tasks_call_back(make_service, make_executor, make_receiver):
    async def refuse(body: dict[str, Any]) -> Response:
        return JSONResponse({"error": "no such language"}, status_code=400)

    executor = await make_executor(refuse)
    receiver = await make_receiver()
    svc = await make_service(executor_urls=(executor.url,), network_retry=TINY)
    hook = {"callback_url": f"{receiver.url}/cb"}
    await svc.http.post("/tasks", json={"eval_id": "bad", "code": "x", **hook})
    await svc.http.post("/tasks", json={"eval_id": "later", "code": "x", "delay": 600, **hook})
    assert (await svc.http.post("/tasks/later/cancel")).status_code == 200
    await wait_for(lambda: callback_status(svc, "bad", "delivered"))
    await wait_for(lambda: callback_status(svc, "later", "delivered"))
    failed, cancelled = await record(svc, "bad"), await record(svc, "later")
    assert receiver.bodies("bad") == [
        {
            "eval_id": "bad",
            "status": "failed",
            "error": "executor answered 400: no such language",
            "attempts": 1,
            "completed_at": failed["completed_at"],
        }
    ]
    assert receiver.bodies("later") == [
        {
            "eval_id": "later",
            "status": "cancelled",
            "error": "cancelled",
            "attempts": 0,
            "completed_at": cancelled["completed_at"],
        }
    ]


async def test_storage_service_receives_every_terminal_task(make_service, executor, make_receiver):
    storage, own = await make_receiver(), await make_receiver()
    svc = await make_service(
        executor_urls=(executor.url,),
        network_retry=TINY,
        storage_service_url=f"{storage.url}/results",
    )
    await svc.http.post("/tasks", json={"eval_id": "a", "code": "x", "callback_url": own.url})
    await svc.http.post("/tasks", json={"eval_id": "b", "code": "x"})
    await svc.http.post("/tasks", json={"eval_id": "c", "code": "x", "delay": 600})
    await svc.http.post("/tasks/c/cancel")
    for eval_id in ("a", "b", "c"):
        await wait_for(functools.partial(callback_status, svc, eval_id, "delivered"))
    assert sorted(body["eval_id"] for _, body in storage.calls) == ["a", "b", "c"]
    assert {path for path, _ in storage.calls} == {"/results"}
    assert own.bodies("a") == storage.bodies("a")  # one body, delivered to both
    assert [body["eval_id"] for _, body in own.calls] == ["a"]
    assert (await totals(svc))["callbacks_delivered"] == 4  # counted per target


async def test_a_dead_target_never_blocks_the_queue(make_service, executor, make_receiver):
    live = await make_receiver()
    dead_url = f"http://127.0.0.1:{free_port()}/gone"  # nothing listens there
    svc = await make_service(
        executor_urls=(executor.url,), network_retry=RetryPolicy(2, 0.5, 1.0, 1.0, False)
    )
    started = time.monotonic()
    await svc.http.post("/tasks", json={"eval_id": "d", "code": "x", "callback_url": dead_url})
    done = await wait_for(
        lambda: _completed(svc, "d"), timeout=5
    )  # the task's completion does not wait for its callback (retries take >= 1 s)
    assert done["callback"] == {"status": "pending"}, done
    assert time.monotonic() - started < 1.0
    for i in range(5):  # other callbacks keep flowing while the dead one is retried
        await svc.http.post(
            "/tasks", json={"eval_id": f"l{i}", "code": "x", "callback_url": live.url}
        )
    await wait_for(lambda: _count(live, 5))
    assert (await record(svc, "d"))["callback"] == {"status": "pending"}
    view = await wait_for(lambda: callback_status(svc, "d", "failed"))
    assert view["attempts"] == 3  # the first POST and NETWORK_RETRY_MAX_RETRIES=2 retries
    assert view["error"].startswith("callback_url: ConnectError")
    counted = await totals(svc)
    assert counted["callbacks_failed"] == 1
    assert counted["callbacks_delivered"] == 5


async def _completed(svc: Any, eval_id: str) -> dict[str, Any] | None:
    task = await record(svc, eval_id)
    return task if task["status"] == "completed" else None


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.calls) >= n


@pytest.mark.parametrize(
    "url",
    ["ftp://x", "not a url", "http://", "https:///path", "http://h:99999/", "http://a b/", 42, ""],
)
async def test_invalid_callback_url_is_refused_and_nothing_written(service, url):
    body = {"eval_id": "v", "code": "x", "callback_url": url}
    response = await service.http.post("/tasks", json=body)
    assert response.status_code == 422, response.text
    assert "callback_url" in response.json()["error"]
    assert (await service.http.get("/tasks/v")).status_code == 404
    batch = {"tasks": [{"eval_id": "ok", "code": "x"}, body]}
    response = await service.http.post("/tasks/batch", json=batch)
    assert response.status_code == 422
    assert response.json()["error"].startswith("tasks[1]: callback_url")
    assert (await service.http.get("/tasks/ok")).status_code == 404


async def test_callback_url_longer_than_2048_is_refused(service):
    url = "http://example.com/" + "a" * 2030
    response = await service.http.post("/tasks", json={"code": "x", "callback_url": url})
    assert response.status_code == 422


async def test_allowed_hosts_restrict_callback_targets(make_service):
    svc = await make_service(callback_allowed_hosts=("hooks.example.com", "*.internal.test"))
    refused = ["http://evil.example.net/x", "http://127.0.0.1:9/", "http://internal.test/"]
    for i, url in enumerate(refused):
        body = {"eval_id": f"r{i}", "code": "x", "callback_url": url}
        response = await svc.http.post("/tasks", json=body)
        assert response.status_code == 422, url
        assert "CALLBACK_ALLOWED_HOSTS" in response.json()["error"]
        assert (await svc.http.get(f"/tasks/r{i}")).status_code == 404
    allowed = ["https://hooks.example.com/done", "http://a.b.internal.test:8080/x"]
    for url in allowed:
        response = await svc.http.post("/tasks", json={"code": "x", "callback_url": url})
        assert response.status_code == 201, url
    batch = {"tasks": [{"code": "x", "callback_url": refused[0]}]}
    assert (await svc.http.post("/tasks/batch", json=batch)).status_code == 422


async def test_tasks_without_callbacks_carry_no_mark(service, client, queue):
    await service.http.post("/tasks", json={"eval_id": "plain", "code": "x"})
    pulled = (await service.http.get("/tasks/next")).json()
    await service.http.post("/tasks/plain/complete", json={"result": 1, "lease": pulled["lease"]})
    assert b"cb" not in await client.hgetall(f"ts:{{{queue}}}:task:plain")
    assert await client.xlen(f"ts:{{{queue}}}:callbacks") == 0
    assert "callback" not in await record(service, "plain")


async def test_a_redriven_dead_letter_keeps_its_callback(make_service, make_receiver):
    receiver = await make_receiver()
    svc = await make_service(network_retry=TINY)  # no executors: a pull worker runs it
    await svc.http.post("/tasks", json={"eval_id": "p", "code": "x", "callback_url": receiver.url})
    await svc.http.get("/tasks/next")
    await svc.http.post("/tasks/p/fail", json={"error": "boom", "retry": False})
    await wait_for(lambda: _count(receiver, 1))
    assert (await svc.http.post("/dlq/p/retry")).status_code == 200
    await svc.http.get("/tasks/next")
    await svc.http.post("/tasks/p/complete", json={"result": {"ok": True}})
    await wait_for(lambda: _count(receiver, 2))
    first, second = receiver.bodies("p")
    assert (first["status"], first["error"]) == ("failed", "boom")
    assert (second["status"], second["result"]) == ("completed", {"ok": True})


async def test_an_entry_held_by_a_dead_sender_is_taken_over(
    make_settings, make_service, client, make_receiver
):
    receiver = await make_receiver()
    settings = make_settings(lease_timeout=0.6)
    streams = Engine(client, settings).default
    await streams.ensure_groups()
    req = TaskRequest.parse({"eval_id": "orphan", "code": "x", "callback_url": receiver.url})
    await streams.enqueue(req)
    claimed = await streams.claim("worker", 1, 30)
    await streams.complete("orphan", {"done": True}, claimed.tasks[0])
    callbacks = CallbackStream(streams.engine, streams.keys)
    await callbacks.ensure_group()
    held = await callbacks.read("dead-host:1", 10, 0.1)  # read, then that process "dies"
    assert [item.eval_id for item in held] == ["orphan"]

    svc = await make_service(lease_timeout=0.6, network_retry=TINY)
    await wait_for(lambda: callback_status(svc, "orphan", "delivered"))
    assert [body["eval_id"] for _, body in receiver.calls] == ["orphan"]
    assert await client.xlen(streams.keys.callbacks) == 0
    assert (await client.xpending(streams.keys.callbacks, CALLBACK_GROUP))["pending"] == 0


# --- one POST, against a raw loopback server (app/runtime/wire.py underneath) -------------------


@pytest.fixture
async def sender() -> AsyncIterator[CallbackSender]:
    """A sender that is never started: `_attempt` alone, no Redis."""
    made = CallbackSender(cast(CallbackStream, None), Settings(callback_timeout=0.5), "t")
    yield made
    await made.stop(0)


async def _raw(reply: Callable[[bytes], Awaitable[bytes | None]]) -> RawServer:
    raw = RawServer(reply)
    raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    return raw


async def test_one_post_keeps_path_query_headers_and_userinfo(sender):
    async def reply(request: bytes) -> bytes:
        return ok()

    raw = await _raw(reply)
    try:
        userinfo = raw.url.replace("http://", "http://user:p%40ss@")
        hook = userinfo + "/hooks/d%C3%A9j%C3%A0?t=a%2Fb&x=é#fragment"
        for _ in range(2):
            assert await sender._attempt(Target("callback_url", hook), b'{"a":1}') == ""
        assert raw.connections == 1  # kept alive
        head, _, body = raw.requests[0].partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0] == "POST /hooks/d%C3%A9j%C3%A0?t=a%2Fb&x=%C3%A9 HTTP/1.1"
        assert f"User-Agent: taskstream/{__version__}" in lines
        assert "Content-Type: application/json" in lines
        assert f"Host: {raw.url.removeprefix('http://')}" in lines
        assert f"Authorization: Basic {base64.b64encode(b'user:p@ss').decode()}" in lines
        assert body == b'{"a":1}'
    finally:
        assert raw.server is not None
        raw.server.close()


async def test_redirects_are_not_followed_and_errors_do_not_name_the_url(sender):
    async def reply(request: bytes) -> bytes:
        head = b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\n"
        return head + b"Content-Length: 0\r\n\r\n"

    raw = await _raw(reply)
    try:
        assert await sender._attempt(Target("callback_url", raw.url + "/x"), b"{}") == (
            "answered 302"
        )
        assert len(raw.requests) == 1
    finally:
        assert raw.server is not None
        raw.server.close()
    dead = f"http://127.0.0.1:{free_port()}/secret-token"
    error = await sender._attempt(Target("storage_service", dead), b"{}")
    assert error == "ConnectError: Connection refused"


async def test_a_slow_receiver_times_out(sender):
    answer = asyncio.Event()  # set only at the end: the receiver holds its answer until then

    async def reply(request: bytes) -> bytes:
        await answer.wait()
        return ok()

    raw = await _raw(reply)
    try:
        started = time.monotonic()
        error = await sender._attempt(Target("callback_url", raw.url), b"{}")
        assert error == "timed out after 0.5s"
        assert time.monotonic() - started < 2
    finally:
        answer.set()
        assert raw.server is not None
        raw.server.close()


async def test_least_recently_used_origins_are_closed(sender, monkeypatch):
    monkeypatch.setattr(callbacks, "MAX_ORIGINS", 2)

    async def reply(request: bytes) -> bytes:
        return ok()

    servers = [await _raw(reply) for _ in range(3)]
    try:
        for raw in (servers[0], servers[1], servers[0], servers[2]):
            assert await sender._attempt(Target("callback_url", raw.url + "/cb"), b"{}") == ""
        kept = list(sender.origins)
        assert kept == [servers[0].url, servers[2].url]  # servers[1] was least recently used
        assert [raw.connections for raw in servers] == [1, 1, 1]
    finally:
        for raw in servers:
            assert raw.server is not None
            raw.server.close()
