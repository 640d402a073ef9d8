"""A lean open-loop `POST /tasks` generator for thousands of tasks per second on 2 cores.

    python -m bench.openloop URL --rate 5000 --duration 10 --warmup 1 --prefix k- \
        --code-bytes 200 --connections 256 --out sends.json

bench/loadgen.py's open loop (aiohttp, one asyncio task per request) spends about a core
at 5,000 requests/s, which on this machine the service and Redis need. This one has no
HTTP library and no task per request: prebuilt requests are written on keep-alive
connections and parsed with httptools in the protocol's callbacks; the schedule is fixed
(request i is due at start + i / rate) and a request due while every connection is busy
waits for the next free one (its send lag is recorded; new connections are opened up to
`--connections`). Times are time.monotonic_ns (CLOCK_MONOTONIC, the stub's clock too).

Output: the file gets {"scheduled": [...], "sent": [...], "answered": [...],
"status": [...], "warm": n} indexed by task (eval_id = prefix + index); stdout one JSON
line with the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import orjson
import uvloop


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, owner: OpenLoop) -> None:
        self.owner = owner
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.index = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.owner.failed(self)

    def on_message_complete(self) -> None:
        self.owner.answered(self, self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.failed(self)


class OpenLoop:
    def __init__(self, url: str, prefix: str, code: str, total: int, limit: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n".encode()
        self.prefix, self.code, self.limit = prefix, code, limit
        self.scheduled = [0] * total
        self.sent = [0] * total
        self.done = [0] * total
        self.status = [0] * total
        self.idle: list[Connection] = []
        self.pending: deque[int] = deque()
        self.opened = 0
        self.opening = 0
        self.left = total
        self.finished = asyncio.Event()

    def request(self, index: int) -> bytes:
        body = f'{{"eval_id":"{self.prefix}{index}","code":"{self.code}"}}'.encode()
        length = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        return self.head + length.encode() + body

    def submit(self, index: int) -> None:
        if self.idle:
            self.write(self.idle.pop(), index)
            return
        self.pending.append(index)
        if self.opened + self.opening < self.limit:
            self.opening += 1
            asyncio.get_running_loop().create_task(self.open())

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        finally:
            self.opening -= 1
        self.opened += 1
        self.next_or_idle(conn)

    def write(self, conn: Connection, index: int) -> None:
        assert conn.transport is not None
        conn.index = index
        self.sent[index] = time.monotonic_ns()
        conn.transport.write(self.request(index))

    def next_or_idle(self, conn: Connection) -> None:
        if self.pending:
            self.write(conn, self.pending.popleft())
        else:
            self.idle.append(conn)

    def answered(self, conn: Connection, status: int) -> None:
        self.finish(conn.index, status)
        conn.index = -1
        self.next_or_idle(conn)

    def failed(self, conn: Connection) -> None:
        if conn.index >= 0:
            self.finish(conn.index, -1)
            conn.index = -1
        if conn in self.idle:
            self.idle.remove(conn)
        self.opened -= 1

    def finish(self, index: int, status: int) -> None:
        if self.done[index]:
            return
        self.done[index] = time.monotonic_ns()
        self.status[index] = status
        self.left -= 1
        if self.left == 0:
            self.finished.set()

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


async def _answered_or_stalled(gen: OpenLoop, stall: float = 15.0) -> None:
    """Wait for every answer; a loaded service may answer a backlog for long, so give up
    only after `stall` s without a new answer."""
    last = -1
    while not gen.finished.is_set() and gen.left != last:
        last = gen.left
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gen.finished.wait(), stall)


async def run(ns: argparse.Namespace) -> dict[str, Any]:
    total = int(ns.rate * (ns.warmup + ns.duration))
    warm = int(ns.rate * ns.warmup)
    gen = OpenLoop(ns.url, ns.prefix, "x" * ns.code_bytes, total, ns.connections)
    interval = 1e9 / ns.rate
    start = time.monotonic_ns() + 50_000_000
    cpu0 = time.process_time()
    index = 0
    while index < total:
        now = time.monotonic_ns()
        while index < total and start + int(index * interval) <= now:
            gen.scheduled[index] = start + int(index * interval)
            gen.submit(index)
            index += 1
        if index < total:
            await asyncio.sleep(max(0.0, (start + int(index * interval) - now) / 1e9))
    sending = (time.monotonic_ns() - start) / 1e9
    cpu = time.process_time() - cpu0
    await _answered_or_stalled(gen)
    gen.close()
    ns.out.write_bytes(
        orjson.dumps(
            {
                "scheduled": gen.scheduled,
                "sent": gen.sent,
                "answered": gen.done,
                "status": gen.status,
                "warm": warm,
            }
        )
    )
    statuses = Counter(gen.status)
    return {
        "rate": ns.rate,
        "sent": total,
        "warmup": warm,
        "sending_seconds": round(sending, 3),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "connections": gen.opened,
        "cpu_pct_self": round(100 * cpu / max(1e-9, sending), 1),
    }


def main(argv: list[str] | None = None) -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("url")
    args.add_argument("--rate", type=float, default=5000.0)
    args.add_argument("--duration", type=float, default=10.0)
    args.add_argument("--warmup", type=float, default=1.0)
    args.add_argument("--prefix", default="k-")
    args.add_argument("--code-bytes", type=int, default=200)
    args.add_argument("--connections", type=int, default=256)
    args.add_argument("--out", type=Path, required=True)
    result = uvloop.run(run(args.parse_args(argv)))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
