"""A fast stub executor: a minimal HTTP/1.1 keep-alive server on uvloop + httptools.

    python -m bench.stub --port 8083

Routes (anything else is 404):
  POST /execute   -> 200 {"status": "success", "output": "ok", "exit_code": 0}; the receive
                     time (time.monotonic_ns, CLOCK_MONOTONIC, the same clock in every process
                     on the machine) of the request's first byte is recorded per eval_id.
                     Executions are also counted per eval_id (the exactly-once check of
                     every drain). A task with `"metadata": {"fail_once": true}` is answered
                     503 the first time its eval_id is seen, and 200 after that (retry stage)
  POST /predict   -> 200 {"prediction": "ok", "score": 0.5}, counted: a PAI-EAS target for
                     the `eas` stage (EAS_TARGETS=svc=http://127.0.0.1:PORT/predict)
  POST /          -> 200 {} (a no-op for measuring the stub itself)
  GET  /health    -> 200 {"status": "ok"}
  GET  /stats     -> 200 {"executed": n, "recorded": n, "failed": n (503s),
                          "attempts": {"1": n, "2": n, ...} (the `attempt` field received),
                          "predicted": n (POST /predict)}
  GET  /received  -> 200 {eval_id: receive_ns, ...}
  GET  /counts    -> 200 {eval_id: executions, ...}
  POST /reset     -> 200 {}: forget counts and receive times

No framework, no per-request task: parsing happens in the protocol callbacks and each
response is one transport.write, so the stub costs a few microseconds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from typing import Any, cast

import httptools
import orjson
import uvloop

EXECUTE_ANSWER = orjson.dumps({"status": "success", "output": "ok", "exit_code": 0})
PREDICT_ANSWER = orjson.dumps({"prediction": "ok", "score": 0.5})  # bench/eas.py checks it


def response(status: int, body: bytes, keep_alive: bool = True) -> bytes:
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}
    reason = reasons.get(status, "OK")
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
PREDICT_RESPONSE = response(200, PREDICT_ANSWER)
HEALTH_RESPONSE = response(200, b'{"status":"ok"}')
NOT_FOUND = response(404, b'{"error":"not found"}')
FAIL_ONCE_RESPONSE = response(
    503, orjson.dumps({"status": "error", "output": "stub: fail_once", "exit_code": 1})
)


class State:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.executed = 0
        self.predicted = 0
        self.received: dict[str, int] = {}
        self.counts: dict[str, int] = {}  # executions per eval_id
        self.failed: set[str] = set()  # eval_ids answered 503 (fail_once)
        self.attempts: dict[int, int] = {}  # `attempt` field received -> count

    def execute(self, body: bytes, began: int) -> bytes:
        self.executed += 1
        try:
            doc = orjson.loads(body)
            eval_id, attempt = doc.get("eval_id"), doc.get("attempt")
            metadata = doc.get("metadata") or {}
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return EXECUTE_RESPONSE
        if isinstance(attempt, int):
            self.attempts[attempt] = self.attempts.get(attempt, 0) + 1
        if not isinstance(eval_id, str):
            return EXECUTE_RESPONSE
        self.received.setdefault(eval_id, began)
        self.counts[eval_id] = self.counts.get(eval_id, 0) + 1
        if isinstance(metadata, dict) and metadata.get("fail_once") and eval_id not in self.failed:
            self.failed.add(eval_id)
            return FAIL_ONCE_RESPONSE
        return EXECUTE_RESPONSE

    def stats(self) -> dict[str, Any]:
        return {
            "executed": self.executed,
            "recorded": len(self.received),
            "failed": len(self.failed),
            "attempts": {str(k): v for k, v in sorted(self.attempts.items())},
            "predicted": self.predicted,
        }


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
            return state.execute(b"".join(self.body), self.began)
        if method == b"POST" and path == b"/predict":
            state.predicted += 1
            return PREDICT_RESPONSE
        if path == b"/":
            return EMPTY_RESPONSE
        if path == b"/health":
            return HEALTH_RESPONSE
        if path == b"/stats":
            return response(200, orjson.dumps(state.stats()))
        if path == b"/received":
            return response(200, orjson.dumps(state.received))
        if path == b"/counts":
            return response(200, orjson.dumps(state.counts))
        if method == b"POST" and path == b"/reset":
            state.reset()
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
