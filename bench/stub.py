"""A fast stub executor: a minimal HTTP/1.1 keep-alive server on uvloop + httptools.

    python -m bench.stub --port 8083

Routes (anything else is 404):
  POST /execute   -> 200 {"status": "success", "output": "ok", "exit_code": 0}; the receive
                     time (time.monotonic_ns, CLOCK_MONOTONIC, the same clock in every process
                     on the machine) of the request's first byte is recorded per eval_id
  POST /          -> 200 {} (a no-op for measuring the stub itself)
  GET  /health    -> 200 {"status": "ok"}
  GET  /stats     -> 200 {"executed": n, "recorded": n}
  GET  /received  -> 200 {eval_id: receive_ns, ...}
  POST /reset     -> 200 {}: forget counts and receive times

No framework, no per-request task: parsing happens in the protocol callbacks and each
response is one transport.write, so the stub costs a few microseconds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from typing import Any, cast

import httptools
import orjson
import uvloop

EXECUTE_ANSWER = orjson.dumps({"status": "success", "output": "ok", "exit_code": 0})


def response(status: int, body: bytes, keep_alive: bool = True) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "OK")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}"
        "\r\n"
    )
    return head.encode() + body


EXECUTE_RESPONSE = response(200, EXECUTE_ANSWER)
EMPTY_RESPONSE = response(200, b"{}")
HEALTH_RESPONSE = response(200, b'{"status":"ok"}')
NOT_FOUND = response(404, b'{"error":"not found"}')


class State:
    def __init__(self) -> None:
        self.executed = 0
        self.received: dict[str, int] = {}


class StubProtocol(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.began = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(response(400, b'{"error":"bad request"}', False))
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.began = time.monotonic_ns()
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None:
            return
        method = self.parser.get_method()
        answer = self.route(method, self.url.split(b"?", 1)[0])
        transport.write(answer)
        if not self.parser.should_keep_alive():
            transport.close()

    def route(self, method: bytes, path: bytes) -> bytes:
        state = self.state
        if method == b"POST" and path == b"/execute":
            state.executed += 1
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
                eval_id = orjson.loads(b"".join(self.body)).get("eval_id")
                if isinstance(eval_id, str):
                    state.received.setdefault(eval_id, self.began)
            return EXECUTE_RESPONSE
        if path == b"/":
            return EMPTY_RESPONSE
        if path == b"/health":
            return HEALTH_RESPONSE
        if path == b"/stats":
            stats = {"executed": state.executed, "recorded": len(state.received)}
            return response(200, orjson.dumps(stats))
        if path == b"/received":
            return response(200, orjson.dumps(state.received))
        if method == b"POST" and path == b"/reset":
            state.executed = 0
            state.received = {}
            return EMPTY_RESPONSE
        return NOT_FOUND


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    state = State()
    server = await loop.create_server(
        lambda: StubProtocol(state), host, port, backlog=1024, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"stub listening on http://{host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--host", default="127.0.0.1")
    args.add_argument("--port", type=int, required=True)
    ns: Any = args.parse_args(argv)
    uvloop.run(serve(ns.host, ns.port))


if __name__ == "__main__":
    main()
