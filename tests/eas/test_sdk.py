"""The PAI-EAS queue frontend driven by the official `eas-prediction` SDK (QueueClient).

The SDK is synchronous, so plain calls run in `asyncio.to_thread`. Watch loops run in a
daemon thread instead (`in_thread`): the SDK's `Watcher.run()` never ends on its own and
reconnects forever after an error, so a watcher that hangs must fail the test after a
deadline, not hold up the event loop's executor shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import websocket
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.redis_server import free_port
from app.settings import RetryPolicy
from tests.conftest import Served, serve_asgi, wait_for

with warnings.catch_warnings():  # the SDK's generated modules predate protobuf's pools
    warnings.simplefilter("ignore", DeprecationWarning)
    from eas_prediction import QueueClient
    from eas_prediction.exception import PredictException
    from eas_prediction.queue_client import DataFrameCodec

TOKEN = "tok"
FAST_RETRY = RetryPolicy(3, 0.05, 2.0, 1.0, False)


@dataclass
class Eas:
    """One service of a running taskstream, and the SDK clients a test made for it."""

    endpoint: str
    name: str
    clients: list[Any] = field(default_factory=list)

    def client(self, sink: bool = False, token: str = TOKEN, uid: str | None = None) -> Any:
        q = QueueClient(self.endpoint, f"{self.name}/sink" if sink else self.name)
        q.set_token(token)
        q.init(uid=uid)
        self.clients.append(q)
        return q


@dataclass
class Target:
    """A loopback forwarding target that records requests; echoes with `prefix`."""

    prefix: bytes = b"echo:"
    calls: list[dict[str, Any]] = field(default_factory=list)
    served: Served | None = None

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.calls.append(
            {
                "body": body,
                "content_type": request.headers.get("content-type"),
                "request_id": request.headers.get("x-eas-queueservice-request-id"),
            }
        )
        return Response(self.prefix + body, media_type="application/octet-stream")


@pytest.fixture
async def start(make_service, queue):
    """start(target=None, **settings) -> Eas: the service with EAS_TOKEN, and a target."""
    made: list[Eas] = []
    targets: list[Target] = []

    async def start(target: Target | None = None, **overrides: Any) -> Eas:
        name = f"g.{queue[:12]}"
        if target is not None:
            app = Starlette(routes=[Route("/{path:path}", target.handle, methods=["POST"])])
            target.served = await serve_asgi(app)
            targets.append(target)
            overrides["eas_targets"] = {name: target.served.url}
        overrides.setdefault("retry", FAST_RETRY)
        service = await make_service(eas_tokens=(TOKEN,), **overrides)
        eas = Eas(service.url.removeprefix("http://"), name)
        made.append(eas)
        return eas

    yield start
    for eas in made:
        for q in eas.clients:
            q.destroy()
            q.connection_pool.clear()
    for target in targets:
        assert target.served is not None
        await target.served.stop()


async def in_thread(fn: Callable[..., Any], *args: Any, timeout: float = 8.0, **kwargs: Any) -> Any:
    """Run `fn` in a daemon thread; fail the test if it has not returned in `timeout` s."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(error: BaseException | None, value: Any) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(value)

    def run() -> None:
        try:
            outcome: tuple[BaseException | None, Any] = (None, fn(*args, **kwargs))
        except BaseException as exc:
            outcome = (exc, None)
        with contextlib.suppress(RuntimeError):  # the loop is gone after a timeout
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, daemon=True).start()
    try:
        return await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise AssertionError(f"{fn.__name__} did not finish within {timeout}s") from None


def close(q: Any, watcher: Any) -> None:
    """Hang up (the SDK's close only shuts the socket down) and release the descriptor."""
    sock = q.watch_sock
    if sock is not None:
        watcher.close()
        sock.close()


def take(q: Any, n: int, window: int, commit: bool = False, **options: Any) -> list[Any]:
    """Watch `q` until `n` frames arrived (committing each if asked), then hang up."""
    watcher = q.watch(0, window, **options)
    got: list[Any] = []
    try:
        for df in watcher.run():
            got.append(df)
            if commit:
                q.commit(df.index)
            if len(got) == n:
                break
    finally:
        close(q, watcher)
    return got


async def put_all(q: Any, items: list[Any], **tags: str) -> list[str]:
    return [(await asyncio.to_thread(q.put, item, tags))[1] for item in items]


async def attrs(q: Any) -> dict[str, str]:
    return dict(await asyncio.to_thread(q.attributes))


async def length_becomes(q: Any, expected: int, timeout: float = 5.0) -> None:
    async def reached() -> bool:
        return (await attrs(q))["stream.length"] == str(expected)

    await wait_for(reached, timeout, interval=0.05)


# --- index reads, attributes, delete, truncate ----------------------------------------


async def test_put_then_get_by_index_on_the_sink(start):
    sink = (await start()).client(sink=True)
    index, request_id = await asyncio.to_thread(sink.put, "abc")
    assert index == request_id and index.isdigit()
    [df] = await asyncio.to_thread(sink.get, index=index, timeout="0s")
    assert (df.data, df.index, dict(df.tags)) == (b"abc", int(index), {"requestId": index})


async def test_get_by_request_id(start):
    sink = (await start()).client(sink=True)
    _, rid = await asyncio.to_thread(sink.put, "abc")
    await asyncio.to_thread(sink.put, "other")
    [df] = await asyncio.to_thread(sink.get, request_id=rid, timeout="0s")
    assert (df.data, df.index, df.tags["requestId"]) == (b"abc", int(rid), rid)
    assert await asyncio.to_thread(sink.get, request_id=rid, timeout="0s") == []  # auto delete
    index, _ = await asyncio.to_thread(sink.put, "tagged", {"requestId": "r-1", "k": "v"})
    [df] = await asyncio.to_thread(sink.get, request_id="r-1", timeout="0s")
    tags = {"requestId": "r-1", "k": "v"}
    assert (df.data, df.index, dict(df.tags)) == (b"tagged", int(index), tags)
    assert await asyncio.to_thread(sink.get, request_id="r-2", timeout="0s") == []


async def test_attributes(start):
    eas = await start()
    sink, source = eas.client(sink=True), eas.client()
    indexes = [int((await asyncio.to_thread(sink.put, f"x{i}"))[0]) for i in range(3)]
    await asyncio.to_thread(source.put, b"in")
    got = await attrs(sink)
    assert got["meta.type"] == "sink"
    assert got["stream.length"] == "3"
    assert got["stream.firstEntry"] == str(indexes[0])
    assert got["stream.lastEntry"] == str(indexes[-1])
    assert all(isinstance(v, str) for v in got.values())
    got = await attrs(source)
    assert (got["meta.type"], got["stream.length"]) == ("input", "1")


async def test_attributes_of_an_unused_queue(start):
    eas = await start()
    for q in (eas.client(), eas.client(sink=True)):
        got = await attrs(q)
        assert (got["stream.length"], got["stream.firstEntry"]) == ("0", "0")


async def test_delete_then_index_read_returns_the_next_item(start):
    sink = (await start()).client(sink=True)
    first, middle, last = [(await asyncio.to_thread(sink.put, f"item-{i}"))[0] for i in range(3)]
    await asyncio.to_thread(sink.delete, int(middle))
    assert (await attrs(sink))["stream.length"] == "2"
    [df] = await asyncio.to_thread(sink.get, index=middle, auto_delete=False, timeout="0s")
    assert (df.index, df.data) == (int(last), b"item-2")
    got = await asyncio.to_thread(sink.get, index=first, length=5, auto_delete=False, timeout="0s")
    assert [df.index for df in got] == [int(first), int(last)]


async def test_truncate_empties_the_queue(start):
    sink = (await start()).client(sink=True)
    indexes = [int((await asyncio.to_thread(sink.put, str(i)))[0]) for i in range(10)]
    await asyncio.to_thread(sink.truncate, indexes[-1] + 1)
    assert (await attrs(sink))["stream.length"] == "0"
    assert await asyncio.to_thread(sink.get, index=0, timeout="0s") == []


# --- watch ------------------------------------------------------------------------------


async def test_watch_auto_commit_delivers_in_order_and_empties_the_queue(start):
    source = (await start()).client()
    await put_all(source, [str(i) for i in range(10)])
    got = await in_thread(take, source, 10, 5, auto_commit=True)
    assert [df.data for df in got] == [str(i).encode() for i in range(10)]
    await length_becomes(source, 0)


async def test_watch_manual_commit_empties_the_sink(start):
    sink = (await start()).client(sink=True)
    await put_all(sink, [str(i) for i in range(10)])
    got = await in_thread(take, sink, 10, 5, True)
    assert [df.data for df in got] == [str(i).encode() for i in range(10)]
    await length_becomes(sink, 0)


async def test_watch_window_holds_back_items_until_a_commit(start):
    sink = (await start()).client(sink=True)
    await put_all(sink, ["a", "b", "c"])
    watcher = sink.watch(0, 2)  # the URL and headers the SDK builds, on a socket we time

    def window() -> tuple[list[Any], bool, Any]:
        ws = websocket.create_connection(watcher.url, header=watcher.headers, timeout=5)
        try:
            first = [DataFrameCodec.decode(ws.recv()) for _ in range(2)]
            ws.settimeout(1.0)
            try:
                ws.recv()
                held_back = False
            except websocket.WebSocketTimeoutException:
                held_back = True
            sink.commit(first[0].index)
            ws.settimeout(5)
            return first, held_back, DataFrameCodec.decode(ws.recv())
        finally:
            ws.close()

    first, held_back, third = await in_thread(window)
    assert [df.data for df in first] == [b"a", b"b"]
    assert held_back, "a third item was delivered past window=2"
    assert third.data == b"c"


async def test_items_of_a_dropped_watcher_go_to_the_next_one(start):
    eas = await start(lease_timeout=30.0)  # so only the release on hang-up can redeliver
    source = eas.client()
    await put_all(source, ["a", "b", "c"])
    first = await in_thread(take, eas.client(uid="w1"), 3, 3)
    started = time.monotonic()
    second = await in_thread(take, eas.client(uid="w2"), 3, 3, True, timeout=5.0)
    assert time.monotonic() - started < 5.0
    assert sorted(df.index for df in second) == sorted(df.index for df in first)
    assert sorted(df.data for df in second) == [b"a", b"b", b"c"]
    await length_becomes(source, 0)


async def test_index_only_watch(start):
    sink = (await start()).client(sink=True)
    [index] = [int(i) for i in await put_all(sink, ["payload"], color="red")]
    [df] = await in_thread(take, sink, 1, 1, True, index_only=True)
    assert (df.data, df.index) == (b"", index)
    assert dict(df.tags) == {"color": "red", "requestId": str(index)}


# --- forwarding, binary bodies, auth -----------------------------------------------------


async def test_forwarding_answers_reach_a_sink_watcher(start):
    target = Target()
    eas = await start(target)
    source = eas.client()
    source.set_content_type("application/json")
    request_ids = await put_all(source, [b"[{}]"] * 20)
    assert len(set(request_ids)) == 20
    got = await in_thread(take, eas.client(sink=True), 20, 5, True)
    assert sorted(df.tags["requestId"] for df in got) == sorted(request_ids)
    assert {df.tags["status"] for df in got} == {"200"}
    assert {df.data for df in got} == {b"echo:[{}]"}
    assert sorted(call["request_id"] for call in target.calls) == sorted(request_ids)
    assert {call["content_type"] for call in target.calls} == {"application/json"}
    assert {call["body"] for call in target.calls} == {b"[{}]"}


async def test_binary_body_round_trip(start):
    body = bytes(range(256)) * 4
    target = Target(prefix=b"")
    eas = await start(target)
    sink = eas.client(sink=True)
    index, _ = await asyncio.to_thread(sink.put, body)
    [df] = await asyncio.to_thread(sink.get, index=index, timeout="0s")
    assert df.data == body
    _, rid = await asyncio.to_thread(eas.client().put, body)
    [df] = await asyncio.to_thread(sink.get, request_id=rid, timeout="3s")
    assert (df.data, df.tags["requestId"], df.tags["status"]) == (body, rid, "200")
    assert target.calls[0]["body"] == body
    assert target.calls[0]["content_type"] == "application/octet-stream"


async def test_wrong_token_is_refused(start):
    eas = await start()
    for q in (eas.client(token="wrong"), eas.client(sink=True, token="wrong")):
        with pytest.raises(PredictException) as raised:
            await asyncio.to_thread(q.put, "abc")
        assert raised.value.code == 401
    assert (await attrs(eas.client(sink=True)))["stream.length"] == "0"


async def test_an_answerless_failure_reaches_a_sink_watcher_as_an_error_frame(start, queue):
    """A forward that fails for good with no answer from the target (it is unreachable)
    leaves an error frame in the sink: no data, the error as its message, status 500."""
    name = f"g.{queue[:12]}"
    dead = f"http://127.0.0.1:{free_port()}"
    retry = RetryPolicy(0, 0.05, 2.0, 1.0, False)
    eas = await start(eas_targets={name: dead}, network_retry=retry)
    [request_id] = await put_all(eas.client(), [b"x"])
    [df] = await in_thread(take, eas.client(sink=True), 1, 1, True)
    assert dict(df.tags) == {"requestId": request_id, "status": "500"}
    assert df.data == b""
    assert df.message.startswith("target unreachable: ")
