"""The keep-alive HTTP/1.1 client, against real loopback servers (asyncio and uvloop)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvloop

from app.redis_server import free_port
from app.wire import ConnectFailed, Origin, WireError

Reply = Callable[[bytes], Awaitable[bytes | None]]


@dataclass
class RawServer:
    """A loopback HTTP server written with asyncio streams, so a test controls every byte."""

    reply: Reply
    close_after_answer: bool = False
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = await self.reply(request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Reply], Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(reply: Reply) -> RawServer:
        raw = RawServer(reply)
        raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        servers.append(raw)
        return raw

    yield start
    for raw in servers:
        assert raw.server is not None
        raw.server.close()


async def test_post_and_get_with_keep_alive(serve):
    async def reply(request: bytes) -> bytes:
        return ok(b'{"echo":%d}' % len(request))

    raw = await serve(reply)
    origin = Origin(raw.url)
    answer = await origin.request("POST", "/execute", b'{"code":"x"}')
    assert answer.status == 200 and answer.body.startswith(b'{"echo":')
    assert (await origin.request("GET", "/health")).status == 200
    assert raw.connections == 1  # the second request reused the connection
    first = raw.requests[0]
    assert first.startswith(b"POST /execute HTTP/1.1\r\n")
    assert b"Content-Type: application/json" in first and first.endswith(b'{"code":"x"}')
    assert b"Host: 127.0.0.1:" in first
    origin.close()


async def test_base_url_prefix_is_kept(serve):
    async def reply(request: bytes) -> bytes:
        return ok()

    raw = await serve(reply)
    origin = Origin(raw.url + "/v1/")
    await origin.request("POST", "/execute", b"{}")
    assert raw.requests[0].startswith(b"POST /v1/execute HTTP/1.1")
    origin.close()


async def test_chunked_answer(serve):
    async def reply(request: bytes) -> bytes:
        head = b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n"
        return head + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"

    raw = await serve(reply)
    origin = Origin(raw.url)
    answer = await origin.request("POST", "/execute", b"{}")
    assert (answer.status, answer.body) == (500, b"abcde")
    origin.close()


async def test_connection_close_answer_is_not_reused(serve):
    async def reply(request: bytes) -> bytes:
        return ok(extra=b"Connection: close\r\n")

    raw = await serve(reply)
    origin = Origin(raw.url)
    for _ in range(3):
        assert (await origin.request("GET", "/health")).status == 200
    assert raw.connections == 3
    origin.close()


async def test_idle_connection_closed_by_server_is_replaced_transparently(serve):
    answered = 0

    async def reply(request: bytes) -> bytes | None:
        nonlocal answered
        answered += 1
        return ok() if answered != 2 else None  # the 2nd request: hang up without answering

    raw = await serve(reply)
    origin = Origin(raw.url)
    await origin.request("GET", "/health")
    # The server hung up on the reused connection without a byte of answer: the request
    # goes out once more on a new connection (at-least-once, as the README says).
    answer = await origin.request("POST", "/execute", b"{}")
    assert answer.status == 200 and raw.connections == 2
    origin.close()


async def test_hang_up_mid_answer_is_a_wire_error(serve):
    async def reply(request: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"

    raw = await serve(reply)
    raw.close_after_answer = True
    origin = Origin(raw.url)
    with pytest.raises(WireError, match="closed"):
        await asyncio.wait_for(origin.request("POST", "/execute", b"{}"), 2)


async def test_malformed_answer_is_a_wire_error(serve):
    async def reply(request: bytes) -> bytes:
        return b"NOT HTTP AT ALL\r\n\r\n"

    raw = await serve(reply)
    origin = Origin(raw.url)
    with pytest.raises(WireError, match="malformed"):
        await origin.request("GET", "/health")
    origin.close()


async def test_connection_refused_is_connect_failed():
    origin = Origin(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectFailed):
        await origin.request("GET", "/health")


async def test_cancelled_request_closes_its_connection(serve):
    release = asyncio.Event()

    async def reply(request: bytes) -> bytes:
        await release.wait()
        return ok()

    raw = await serve(reply)
    origin = Origin(raw.url)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await origin.request("POST", "/execute", b"{}")
    assert origin.idle == []  # a connection in an unknown state is never reused
    release.set()
    origin.close()


def test_works_on_uvloop():
    """The service runs on uvloop, whose transports are not asyncio.Transport subclasses."""

    async def main() -> int:
        async def reply(request: bytes) -> bytes:
            return ok(b"uv")

        raw = RawServer(reply)
        raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        origin = Origin(raw.url)
        try:
            answers = [await origin.request("GET", "/health") for _ in range(3)]
            assert [a.body for a in answers] == [b"uv"] * 3
            return raw.connections
        finally:
            origin.close()
            raw.server.close()

    assert uvloop.run(main()) == 1
