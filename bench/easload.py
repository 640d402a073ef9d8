"""PAI-EAS load generator, run as its own process; prints one JSON line on stdout.

Round trips (N clients, each: put an item into the input queue, then read its answer from
the sink by request id; the next put when the answer is in):
    python -m bench.easload roundtrip BASE --service svc --token T --concurrency 32 \
        --duration 20 --warmup 1 --read proto|json [--client wire|aiohttp]
  proto: GET /api/predict/svc/sink?requestId=ID&_timeout_=5s, Accept protobuf (the SDK's
         read; 204 when nothing came within the timeout, then asked again)
  json:  GET /api/predict/svc/sink?request_id=ID&_timeout_=5s (the imitation's status
         document; 202 while not final, then asked again)
Fill a queue (a sink by default), indexes written to --out as a JSON list:
    python -m bench.easload fill BASE --service svc --token T --n 20000 --concurrency 32 \
        --out indexes.json
Watch (W WebSocket watchers with distinct X-EAS-QueueService-Redis-Uid, `_auto_commit_`),
until `--expect` frames arrived in all (or nothing came for --idle s); the indexes each
watcher received go to --out:
    python -m bench.easload watch BASE --service svc --token T --watchers 4 --window 64 \
        --expect 20000 --out received.json

HTTP goes through `app.wire.Origin` (asyncio.Protocol + httptools, ~25 µs of CPU per
request) unless `--client aiohttp`, so the generator takes as little as possible of the
cores it shares with the service; WebSockets through `websockets` (uvicorn's), without
compression, like the eas-prediction SDK's websocket-client.
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

import orjson
import uvloop

from app.eas.proto.eas_queue_pb2 import DataFrameListProto, DataFrameProto
from app.runtime.wire import Origin
from bench.loadgen import percentile
from bench.stub import PREDICT_ANSWER

PROTOBUF = "application/vnd.google.protobuf"
UID_HEADER = "X-EAS-QueueService-Redis-Uid"
READ_TIMEOUT = "5s"  # `_timeout_` of each sink read (the long-poll)
GIVE_UP = 60.0  # seconds one round trip may wait for its answer before it counts as lost
INPUT_BODY = orjson.dumps({"prompt": "taskstream benchmark", "max_tokens": 8})
SINK_BODY = orjson.dumps({"prediction": "ok", "score": 0.5})
# (method, path, body, headers) -> (status, body)
Request = Callable[[str, str, bytes, dict[str, str]], Awaitable[tuple[int, bytes]]]


def _client(base: str, kind: str, concurrency: int) -> tuple[Request, Callable[[], Any]]:
    if kind == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency)
        session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))

        async def via_aiohttp(
            method: str, path: str, body: bytes, headers: dict[str, str]
        ) -> tuple[int, bytes]:
            async with session.request(method, base + path, data=body, headers=headers) as resp:
                return resp.status, await resp.read()

        return via_aiohttp, session.close
    origin = Origin(base)

    async def via_wire(
        method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        answer = await origin.request(method, path, body, "application/json", headers)
        return answer.status, answer.body

    async def close() -> None:
        origin.close()

    return via_wire, close


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _latency(values: list[float]) -> dict[str, float | None]:
    values.sort()
    return {
        "p50_ms": _ms(percentile(values, 50)),
        "p90_ms": _ms(percentile(values, 90)),
        "p99_ms": _ms(percentile(values, 99)),
        "max_ms": _ms(values[-1] if values else None),
    }


class RoundTrips:
    """Closed loop: put, then read the answer by request id; latencies put -> answer read."""

    def __init__(self, request: Request, service: str, token: str, read: str) -> None:
        self.request = request
        self.input = f"/api/predict/{service}"
        self.sink = f"/api/predict/{service}/sink"
        self.auth = {"Authorization": token}
        self.read_headers = {"Authorization": token, "Accept": PROTOBUF}
        self.read = read
        self.errors: Counter[str] = Counter()
        self.puts = 0  # answered 200, whether inside the measured window or not
        self.answers = 0
        self.wrong = 0  # an answer that was not the stub's, or not for this request id
        self.empty_reads = 0  # 204 (proto) or 202 (json): nothing yet within _timeout_
        self.lost = 0  # no answer within GIVE_UP

    async def once(self) -> tuple[float, float] | None:
        """One round trip; (put answered, answer read) perf_counter times, None on failure."""
        status, body = await self.request("POST", self.input, INPUT_BODY, self.auth)
        if status != 200:
            self.errors[f"put {status}"] += 1
            return None
        self.puts += 1
        put_done = time.perf_counter()
        rid = body.decode()
        if self.read == "proto":
            path = f"{self.sink}?requestId={rid}&_timeout_={READ_TIMEOUT}"
            headers, waiting = self.read_headers, 204
        else:
            path = f"{self.sink}?request_id={rid}&_timeout_={READ_TIMEOUT}"
            headers, waiting = self.auth, 202
        while True:
            status, body = await self.request("GET", path, b"", headers)
            if status != waiting:
                break
            self.empty_reads += 1
            if time.perf_counter() - put_done > GIVE_UP:
                self.lost += 1
                return None
        if status != 200:
            self.errors[f"read {status}"] += 1
            return None
        self.answers += 1
        if not self._right(rid, body):
            self.wrong += 1
        return put_done, time.perf_counter()

    def _right(self, rid: str, body: bytes) -> bool:
        if self.read == "proto":
            frames = DataFrameListProto.FromString(body).index
            return (
                len(frames) == 1
                and frames[0].tags.get("requestId") == rid
                and frames[0].data == PREDICT_ANSWER
            )
        doc = orjson.loads(body)
        result = doc.get("result") or {}
        return (
            doc.get("status") == "SUCCESS"
            and doc.get("request_id") == rid
            and result.get("target_status_code") == 200
            and result.get("body") == PREDICT_ANSWER.decode()
        )


async def roundtrip(
    base: str,
    service: str,
    token: str,
    concurrency: int,
    duration: float,
    warmup: float,
    read: str,
    client: str,
) -> dict[str, Any]:
    request, close = _client(base, client, concurrency)
    trips = RoundTrips(request, service, token, read)
    latencies: list[float] = []
    put_latencies: list[float] = []
    begin = time.perf_counter()
    measure_from, end = begin + warmup, begin + warmup + duration
    cpu: list[float] = []

    async def worker() -> None:
        while (started := time.perf_counter()) < end:
            try:
                times = await trips.once()
            except Exception as exc:  # counted, not fatal
                trips.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)
                continue
            if times is not None and measure_from <= started and times[1] <= end:
                latencies.append(times[1] - started)
                put_latencies.append(times[0] - started)

    async def cpu_meter() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        cpu.append(time.process_time())
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        cpu.append(time.process_time())

    try:
        await asyncio.gather(cpu_meter(), *(worker() for _ in range(concurrency)))
    finally:
        await close()
    return {
        "client": client,
        "read": read,
        "concurrency": concurrency,
        "seconds": duration,
        "round_trips": len(latencies),
        "rate": round(len(latencies) / duration, 1),
        **_latency(latencies),
        "put_p50_ms": _ms(percentile(sorted(put_latencies), 50)),
        "put_p99_ms": _ms(percentile(sorted(put_latencies), 99)),
        "puts_total": trips.puts,
        "answers_total": trips.answers,
        "wrong_answers": trips.wrong,
        "empty_reads": trips.empty_reads,
        "lost": trips.lost,
        "errors": dict(trips.errors),
        "cpu_pct_self": round(100 * (cpu[1] - cpu[0]) / duration, 1) if len(cpu) == 2 else None,
    }


async def fill(
    base: str, service: str, token: str, n: int, concurrency: int, sink: bool, out: Path
) -> dict[str, Any]:
    """n puts (SINK_BODY) with `concurrency` in flight; every put must answer 200."""
    request, close = _client(base, "wire", concurrency)
    path = f"/api/predict/{service}" + ("/sink" if sink else "")
    headers = {"Authorization": token}
    indexes: list[int] = []
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            status, body = await request("POST", path, SINK_BODY, headers)
            if status != 200:
                raise RuntimeError(f"put into {path} answered {status}: {body[:200]!r}")
            indexes.append(int(body))

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await close()
    seconds = time.perf_counter() - started
    out.write_bytes(orjson.dumps(indexes))
    return {"items": n, "seconds": round(seconds, 3), "rate": round(n / seconds, 1)}


async def watch(
    base: str,
    service: str,
    token: str,
    watchers: int,
    window: int,
    expect: int,
    idle: float,
    out: Path,
) -> dict[str, Any]:
    """`watchers` WebSockets on the sink, auto-commit, until `expect` frames arrived in all
    (plus a short grace, to catch duplicates) or nothing arrived for `idle` s."""
    from websockets.asyncio.client import connect

    url = (
        base.replace("http://", "ws://", 1)
        + f"/api/predict/{service}/sink?_watch_=true&_window_={window}&_auto_commit_=true"
    )
    received: list[list[int]] = [[] for _ in range(watchers)]
    first: list[float] = []
    last = [0.0]
    total = [0]
    complete = asyncio.Event()
    connected: list[float] = []
    began = time.perf_counter()
    cpu_start = time.process_time()

    async def watcher(number: int) -> None:
        headers = {"Authorization": token, UID_HEADER: f"bench-{number}"}
        mine = received[number]
        async with connect(
            url, additional_headers=headers, compression=None, max_size=None, proxy=None
        ) as ws:
            connected.append(time.perf_counter())
            async for message in ws:
                now = time.perf_counter()
                if not first:
                    first.append(now)
                last[0] = now
                mine.append(DataFrameProto.FromString(message).index)
                total[0] += 1
                if total[0] >= expect:
                    complete.set()

    async def until_done() -> None:
        while not complete.is_set():
            quiet = time.perf_counter() - (last[0] or began)
            if quiet > idle:
                return
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # duplicates would arrive now

    jobs = [asyncio.create_task(watcher(i)) for i in range(watchers)]
    try:
        await until_done()
    finally:
        for job in jobs:
            job.cancel()
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    cpu = time.process_time() - cpu_start
    errors = Counter(
        type(o).__name__
        for o in outcomes
        if isinstance(o, BaseException) and not isinstance(o, asyncio.CancelledError)
    )
    out.write_bytes(orjson.dumps(received))
    span = last[0] - first[0] if first else 0.0
    since_connect = last[0] - min(connected) if connected and first else 0.0
    return {
        "watchers": watchers,
        "window": window,
        "expected": expect,
        "received": total[0],
        "per_watcher": [len(r) for r in received],
        "seconds_first_to_last": round(span, 3),
        "seconds_from_connect": round(since_connect, 3),
        "first_frame_ms": round(1000 * (first[0] - min(connected)), 1) if first else None,
        "rate": round(total[0] / span, 1) if span > 0 else None,
        "rate_from_connect": round(total[0] / since_connect, 1) if since_connect > 0 else None,
        "errors": dict(errors),
        "cpu_seconds_self": round(cpu, 3),
    }


def main(argv: list[str] | None = None) -> None:
    root = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="mode", required=True)
    parsers = {name: sub.add_parser(name) for name in ("roundtrip", "fill", "watch")}
    for parser in parsers.values():
        parser.add_argument("base", help="http://host:port of the service")
        parser.add_argument("--service", default="svc")
        parser.add_argument("--token", required=True)
    trip = parsers["roundtrip"]
    trip.add_argument("--concurrency", type=int, default=32)
    trip.add_argument("--duration", type=float, default=20.0)
    trip.add_argument("--warmup", type=float, default=1.0)
    trip.add_argument("--read", choices=["proto", "json"], default="proto")
    trip.add_argument("--client", choices=["wire", "aiohttp"], default="wire")
    filler = parsers["fill"]
    filler.add_argument("--n", type=int, required=True)
    filler.add_argument("--concurrency", type=int, default=32)
    filler.add_argument("--input", action="store_true", help="the input queue, not the sink")
    filler.add_argument("--out", type=Path, required=True)
    watcher = parsers["watch"]
    watcher.add_argument("--watchers", type=int, default=1)
    watcher.add_argument("--window", type=int, default=64)
    watcher.add_argument("--expect", type=int, required=True)
    watcher.add_argument("--idle", type=float, default=10.0)
    watcher.add_argument("--out", type=Path, required=True)
    ns = root.parse_args(argv)
    coro: Awaitable[dict[str, Any]]
    if ns.mode == "roundtrip":
        coro = roundtrip(
            ns.base,
            ns.service,
            ns.token,
            ns.concurrency,
            ns.duration,
            ns.warmup,
            ns.read,
            ns.client,
        )
    elif ns.mode == "fill":
        coro = fill(ns.base, ns.service, ns.token, ns.n, ns.concurrency, not ns.input, ns.out)
    else:
        coro = watch(
            ns.base, ns.service, ns.token, ns.watchers, ns.window, ns.expect, ns.idle, ns.out
        )
    result = uvloop.run(coro)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
