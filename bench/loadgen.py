"""Python HTTP load generator, run as its own process; prints one JSON line on stdout.

Closed loop (N clients, each sends its next request when the previous answered):
    python -m bench.loadgen closed URL --body-file F --concurrency 32 --duration 5 \
        --client aiohttp|httpx|httpx-aiohttp|raw-httptools
Open loop (fixed send rate, unique eval_ids, send times written to a file):
    python -m bench.loadgen open URL --rate 500 --duration 10 --warmup 1 --prefix lat- \
        --code-bytes 200 --out sends.json

Both run on uvloop. Times are time.monotonic_ns (CLOCK_MONOTONIC, shared by every process
on the machine), so the stub executor's receive times are on the same clock.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

HEADERS = {"Content-Type": "application/json"}
Sender = Callable[[], Awaitable[int]]


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def _aiohttp_sender(url: str, body: bytes, concurrency: int):
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))

    async def send() -> int:
        async with session.post(url, data=body, headers=HEADERS) as resp:
            await resp.read()
            return resp.status

    return send, session.close


class _RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: write a prebuilt request, parse with httptools."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))


async def _raw_sender(url: str, body: bytes, concurrency: int):
    """No HTTP library: what a minimal keep-alive client costs (a floor for the executor call)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    idle: list[_RawConnection] = []
    opened: list[_RawConnection] = []

    async def send() -> int:
        if idle:
            conn = idle.pop()
        else:
            _, conn = await loop.create_connection(_RawConnection, host, port)
            opened.append(conn)
        assert conn.transport is not None
        conn.waiter = loop.create_future()
        conn.transport.write(request)
        status = await conn.waiter
        idle.append(conn)
        return status

    async def close() -> None:
        for conn in opened:
            if conn.transport is not None:
                conn.transport.close()

    return send, close


async def _httpx_sender(url: str, body: bytes, concurrency: int, transport: str):
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client: httpx.AsyncClient
    if transport == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        client = httpx.AsyncClient(transport=AiohttpTransport(limits=limits), limits=limits)
    else:
        client = httpx.AsyncClient(limits=limits)

    async def send() -> int:
        resp = await client.post(url, content=body, headers=HEADERS)
        return resp.status_code

    return send, client.aclose


async def closed_loop(
    url: str, body: bytes, concurrency: int, duration: float, warmup: float, client: str
) -> dict[str, Any]:
    if client == "aiohttp":
        send, close = await _aiohttp_sender(url, body, concurrency)
    elif client == "raw-httptools":
        send, close = await _raw_sender(url, body, concurrency)
    else:
        send, close = await _httpx_sender(url, body, concurrency, client)
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    begin = time.perf_counter()
    measure_from, end = begin + warmup, begin + warmup + duration

    async def worker() -> None:
        while True:
            started = time.perf_counter()
            if started >= end:
                return
            try:
                status = await send()
            except Exception as exc:  # a load generator counts failures, it does not stop
                status = -1
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)
            done = time.perf_counter()
            if measure_from <= started and done <= end:
                statuses[status] += 1
                latencies.append(done - started)

    cpu: list[float] = []

    async def cpu_meter() -> None:
        """The generator's own CPU over the measured window (100 % = one full core)."""
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu.append(time.process_time())
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        cpu.append(time.process_time())

    try:
        await asyncio.gather(cpu_meter(), *(worker() for _ in range(concurrency)))
    finally:
        await close()
    latencies.sort()
    ok = sum(n for s, n in statuses.items() if 200 <= s < 300)
    return {
        "client": client,
        "concurrency": concurrency,
        "seconds": duration,
        "requests": sum(statuses.values()),
        "ok": ok,
        "rps": round(ok / duration, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
        "p50_ms": _ms(percentile(latencies, 50)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "cpu_pct_self": round(100 * (cpu[1] - cpu[0]) / duration, 1) if len(cpu) == 2 else None,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


async def open_loop(
    url: str, rate: float, duration: float, warmup: float, prefix: str, code: str, out: Path
) -> dict[str, Any]:
    """Send POST /tasks at `rate`/s on a fixed schedule, not waiting for answers."""
    connector = aiohttp.TCPConnector(limit=256)
    session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))
    total = int(rate * (warmup + duration))
    warm = int(rate * warmup)
    interval = 1e9 / rate
    sends: dict[str, list[int]] = {}
    statuses: Counter[int] = Counter()
    jobs: set[asyncio.Task[None]] = set()

    async def send(index: int, scheduled: int) -> None:
        eval_id = f"{prefix}{index}"
        body = orjson.dumps({"eval_id": eval_id, "code": code})
        sent = time.monotonic_ns()
        try:
            async with session.post(url, data=body, headers=HEADERS) as resp:
                await resp.read()
                status = resp.status
        except Exception:  # counted, not fatal
            status = -1
        statuses[status] += 1
        sends[eval_id] = [scheduled, sent, time.monotonic_ns(), status, int(index < warm)]

    start = time.monotonic_ns() + 50_000_000
    for index in range(total):
        scheduled = start + int(index * interval)
        delay = (scheduled - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        job = asyncio.create_task(send(index, scheduled))
        jobs.add(job)
        job.add_done_callback(jobs.discard)
    if jobs:
        await asyncio.wait(jobs, timeout=30)
    await session.close()
    out.write_bytes(orjson.dumps(sends))
    return {
        "rate": rate,
        "sent": total,
        "warmup": warm,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "out": str(out),
    }


def main(argv: list[str] | None = None) -> None:
    root = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="mode", required=True)
    closed = sub.add_parser("closed")
    closed.add_argument("url")
    closed.add_argument("--body-file", type=Path, required=True)
    closed.add_argument("--concurrency", type=int, default=32)
    closed.add_argument("--duration", type=float, default=5.0)
    closed.add_argument("--warmup", type=float, default=1.0)
    closed.add_argument(
        "--client",
        default="aiohttp",
        choices=["aiohttp", "httpx", "httpx-aiohttp", "raw-httptools"],
    )
    opened = sub.add_parser("open")
    opened.add_argument("url")
    opened.add_argument("--rate", type=float, default=500.0)
    opened.add_argument("--duration", type=float, default=10.0)
    opened.add_argument("--warmup", type=float, default=1.0)
    opened.add_argument("--prefix", default="lat-")
    opened.add_argument("--code-bytes", type=int, default=200)
    opened.add_argument("--out", type=Path, required=True)
    ns = root.parse_args(argv)
    if ns.mode == "closed":
        coro = closed_loop(
            ns.url, ns.body_file.read_bytes(), ns.concurrency, ns.duration, ns.warmup, ns.client
        )
    else:
        code = "x" * ns.code_bytes
        coro = open_loop(ns.url, ns.rate, ns.duration, ns.warmup, ns.prefix, code, ns.out)
    result = uvloop.run(coro)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
