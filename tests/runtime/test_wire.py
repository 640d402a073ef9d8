"""The keep-alive HTTP/1.1 client, against real loopback servers (asyncio and uvloop)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvloop

from app.redis_server import free_port
from app.runtime.wire import ConnectFailed, Origin, WireError

Reply = Callable[[bytes], Awaitable[bytes | None]]


@dataclass
class RawServer:
    """A loopback HTTP server written with asyncio streams, so a test controls every byte.

    A request the reply answers None ends its connection: closed, or with `reset` reset
    (SO_LINGER 0: an RST, as a crashing executor or a middlebox would)."""

    reply: Reply
    close_after_answer: bool = False
    reset: bool = False
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
                    if self.reset:
                        linger = struct.pack("ii", 1, 0)
                        writer.get_extra_info("socket").setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, linger
                        )
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
    # goes out once more on a new connection (at-least-once, as docs/operations.md says).
    answer = await origin.request("POST", "/execute", b"{}")
    assert answer.status == 200 and raw.connections == 2
    origin.close()


async def test_a_reset_after_reading_resends_the_same_request_once(serve):
    """The re-send is the same bytes, headers included: an `Idempotency-Key` repeats, so
    the server can tell it from a new request. A fresh connection is never re-sent on."""

    async def reply(request: bytes) -> bytes | None:
        return ok() if request.startswith(b"GET") else None  # read the POST, then reset

    raw = await serve(reply)
    raw.reset = True
    origin = Origin(raw.url)
    await origin.request("GET", "/health")  # leaves a connection to reuse
    with pytest.raises(WireError):
        await origin.request("POST", "/execute", b"{}", headers={"Idempotency-Key": "e:1"})
    posts = [r for r in raw.requests if r.startswith(b"POST")]
    assert len(posts) == 2 and posts[0] == posts[1]  # once reused, once fresh: same bytes
    assert b"\r\nIdempotency-Key: e:1\r\n" in posts[0]
    with pytest.raises(WireError):  # no idle connection left: a fresh one, no re-send
        await origin.request("POST", "/execute", b"{}", headers={"Idempotency-Key": "e:2"})
    assert sum(1 for r in raw.requests if r.startswith(b"POST")) == 3
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


async def test_path_with_query_string_is_sent_as_given(serve):
    async def reply(request: bytes) -> bytes:
        return ok()

    raw = await serve(reply)
    origin = Origin(raw.url)
    await origin.request("POST", "/hooks/done?token=a%2Fb&x=1", b"{}", headers={"X-A": "1"})
    assert raw.requests[0].startswith(b"POST /hooks/done?token=a%2Fb&x=1 HTTP/1.1\r\nX-A: 1\r\n")
    origin.close()


async def test_a_body_over_max_body_is_cut_and_its_connection_not_reused(serve):
    async def reply(request: bytes) -> bytes:
        return ok(b"x" * 100_000)

    raw = await serve(reply)
    origin = Origin(raw.url, max_body=10)
    first = await origin.request("POST", "/", b"{}")
    assert (first.status, first.body) == (200, b"x" * 10)
    assert origin.idle == []  # the rest of the answer was never read
    assert (await origin.request("POST", "/", b"{}")).status == 200
    assert raw.connections == 2
    origin.close()


async def test_a_closed_origin_answers_but_keeps_no_connection(serve):
    async def reply(request: bytes) -> bytes:
        return ok()

    raw = await serve(reply)
    origin = Origin(raw.url)
    await origin.request("GET", "/health")
    origin.close()
    assert (await origin.request("GET", "/health")).status == 200
    assert origin.idle == [] and raw.connections == 2


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI), and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl binary")
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_verified_against_the_given_or_the_system_store(certificate):
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)

    async def reply(request: bytes) -> bytes:
        return ok(b"tls")

    raw = RawServer(reply)
    raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=server_side)
    url = raw.url.replace("http://", "https://")
    trusting = ssl.create_default_context(cafile=cert)
    origin = Origin(url, tls_context=trusting)
    try:
        for _ in range(2):
            answer = await origin.request("POST", "/hook?a=1", b"{}")
            assert (answer.status, answer.body) == (200, b"tls")
        assert raw.connections == 1  # kept alive over TLS too
        assert raw.requests[0].startswith(b"POST /hook?a=1 HTTP/1.1\r\n")
        with pytest.raises(ConnectFailed) as refused:  # the system store does not know it
            await Origin(url).request("GET", "/health")
        assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
    finally:
        origin.close()
        raw.server.close()
