"""The PAI-EAS stage: round trips through a service's input queue and sink, and watchers.

Round trip: `eas_clients` (32) clients, each putting a small JSON item into
`/api/predict/svc` and then reading its answer from `/api/predict/svc/sink` by request id
(long-poll `requestId=` + `_timeout_=5s`, protobuf, deleting what it reads); the service
forwards each item to the stub's `POST /predict` (EAS_TARGETS, EAS_CONCURRENCY=32) and
writes the answer into the sink. Rate = round trips finished in the measured window / its
length; latency = put sent -> answer read. Then the same with the imitation's JSON status
read (`request_id=` + `_timeout_`), which waits on the input queue's events stream.

Watch: `eas_watch_n` items put into the sink (32 concurrent POSTs; not measured), then one
WebSocket watcher (`_window_=64`, `_auto_commit_=true`) drains them; again with
`eas_watchers` (4) watchers, each with its own X-EAS-QueueService-Redis-Uid. Rate = frames
/ first -> last frame. Checked: every index put was delivered exactly once in all, and
the sink is empty afterwards (everything committed).

Each part runs on a fresh service process over a FLUSHALLed Redis; the clients are
`bench/easload.py` processes.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from bench import profile
from bench.procs import Child, CpuMeter, cpu_seconds

if TYPE_CHECKING:
    from bench.runner import Bench

SERVICE = "svc"
TOKEN = "bench-eas-token"
READS = ("proto", "json")


def _log(message: str) -> None:
    print(message, flush=True)


def service_env(bench: Bench) -> dict[str, str]:
    return {
        "EAS_TOKEN": TOKEN,
        "EAS_TARGETS": f"{SERVICE}={bench.stub_url}/predict",
        "EAS_CONCURRENCY": str(bench.plan.eas_concurrency),
    }


def _easload(mode: str, base: str, *args: str) -> list[str]:
    command = [sys.executable, "-m", "bench.easload", mode, base]
    return [*command, "--service", SERVICE, "--token", TOKEN, *args]


@dataclass
class Usage:
    """Redis commands (INFO commandstats) and process CPU seconds at one moment."""

    calls: dict[str, int]
    cpu: dict[str, float]

    @classmethod
    async def now(cls, bench: Bench, pids: dict[str, int]) -> Usage:
        stats = await bench.client.info("commandstats")
        calls = {
            name.removeprefix("cmdstat_"): int(row.get("calls", 0))
            for name, row in stats.items()
            if isinstance(row, dict)
        }
        return cls(calls, {name: cpu_seconds(pid) for name, pid in pids.items()})

    def per_item(self, start: Usage, items: int) -> dict[str, Any]:
        """Redis calls and CPU microseconds per item between `start` and this moment."""
        if items <= 0:
            return {}
        calls = {
            name: round((n - start.calls.get(name, 0)) / items, 2)
            for name, n in self.calls.items()
            if n > start.calls.get(name, 0)
        }
        ranked = dict(sorted(calls.items(), key=lambda kv: -kv[1]))
        return {
            "redis_calls_per_item": round(sum(calls.values()), 2),  # scripts' calls included
            "redis_calls_per_item_by_command": ranked,
            "cpu_us_per_item": {
                name: round(1e6 * (cpu - start.cpu.get(name, 0.0)) / items, 1)
                for name, cpu in self.cpu.items()
            },
        }


async def _overview(base: str) -> dict[str, Any]:
    """The service's row of GET /status `eas` (input and sink lengths, counters)."""
    async with aiohttp.ClientSession() as session, session.get(f"{base}/status") as resp:
        status = orjson.loads(await resp.read())
    rows = [row for row in status.get("eas", []) if row.get("service") == SERVICE]
    return rows[0] if rows else {}


async def run(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    out: dict[str, Any] = {
        "service": SERVICE,
        "clients": plan.eas_clients,
        "eas_concurrency": plan.eas_concurrency,
        "seconds": plan.eas_duration,
    }
    for read in READS:
        res = await roundtrip(bench, read)
        out[f"roundtrip_{read}"] = res
        _log(
            f"  round trip ({read} read), {plan.eas_clients} clients: {res['rate']:,.0f} "
            f"items/s, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms (put p50 "
            f"{res['put_p50_ms']} ms); checks {'ok' if res['checks']['ok'] else 'FAILED'}; "
            f"{_costs(res)}"
        )
        if not res["checks"]["ok"]:
            _log(f"  WARNING: round trip ({read}) checks failed: {res['checks']}")
    out["watch"] = await watch(bench)
    return out


def _costs(res: dict[str, Any]) -> str:
    cpu = ", ".join(f"{k} {v:,.0f}" for k, v in res.get("cpu_us_per_item", {}).items())
    ranked = res.get("redis_calls_per_item_by_command", {})
    calls = ", ".join(f"{k.upper()} {ranked.get(k, 0):g}" for k in ("evalsha", "xread"))
    return (
        f"per item: CPU µs {cpu}; {calls}, Redis calls in all {res.get('redis_calls_per_item')};"
        f" CPU % {res['cpu_pct']}"
    )


# --- round trips -----------------------------------------------------------------------------


async def roundtrip(bench: Bench, read: str, profile_to: Path | None = None) -> dict[str, Any]:
    """Closed loop put -> read answer by request id, on a fresh service."""
    from bench.runner import run_json

    plan = bench.plan
    await bench.flush()
    await bench.stub_call("POST", "/reset")
    service, base = await bench.start_service(f"service-eas-{read}", extra_env=service_env(bench))
    try:
        cmd = _easload("roundtrip", base, "--read", read)
        cmd += ["--concurrency", str(plan.eas_clients), "--duration", str(plan.eas_duration)]
        cmd += ["--warmup", str(plan.warmup)]
        recording = await profile.record(service.pid, profile_to) if profile_to else None
        busy = None
        pids = bench.pids(service=service, stub=bench.stub)
        start = await Usage.now(bench, pids)
        try:
            with CpuMeter(pids) as cpu:
                res = await run_json(cmd, plan.eas_duration + plan.warmup + 90)
        finally:
            if recording:
                busy = await recording.stop()
        res["cpu_pct"] = cpu.result
        # every put of the run (warm-up and tail included) was one full round trip
        res.update((await Usage.now(bench, pids)).per_item(start, res["puts_total"]))
        if busy is not None:
            res["profile_busy_pct"] = busy
        res["checks"] = await _roundtrip_checks(bench, base, service, res)
    finally:
        bench.children.stop(service)
    return res


async def _roundtrip_checks(
    bench: Bench, base: str, service: Child, res: dict[str, Any]
) -> dict[str, Any]:
    """Every put forwarded once and answered; the right answers; nothing left over."""
    deadline = time.monotonic() + 10
    while True:
        forwarded = (await bench.stub_call("GET", "/stats"))["predicted"]
        if forwarded >= res["puts_total"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    row = await _overview(base)
    sink_left = (row.get("sink") or {}).get("length")
    checks = {
        "puts": res["puts_total"],
        "answers": res["answers_total"],
        "forwarded": forwarded,
        "wrong_answers": res["wrong_answers"],
        "lost": res["lost"],
        "errors": res["errors"],
        "input_left": (row.get("input") or {}).get("length"),
        "sink_left": sink_left,
        "input_completed": ((row.get("input") or {}).get("totals") or {}).get("completed"),
    }
    # The JSON status read leaves the answers in the sink; the protobuf read deletes them.
    sink_expected = 0 if res["read"] == "proto" else res["puts_total"]
    checks["ok"] = (
        res["answers_total"] == res["puts_total"] == forwarded == checks["input_completed"]
        and not res["wrong_answers"]
        and not res["lost"]
        and not res["errors"]
        and checks["input_left"] == 0
        and sink_left == sink_expected
    )
    if not service.alive():
        checks["ok"] = False
        checks["service_died"] = service.tail()
    return checks


# --- watchers --------------------------------------------------------------------------------


async def watch(bench: Bench) -> dict[str, Any]:
    """Fill the sink and drain it with one watcher, then again with `eas_watchers`."""
    plan = bench.plan
    await bench.flush()
    service, base = await bench.start_service("service-eas-watch", extra_env=service_env(bench))
    out: dict[str, Any] = {"items": plan.eas_watch_n, "window": plan.eas_window}
    try:
        for watchers in (1, plan.eas_watchers):
            res = await watch_drain(bench, service, base, watchers)
            out[f"watchers_{watchers}"] = res
            checks = res["checks"]
            _log(
                f"  watch, {watchers} watcher(s), window {plan.eas_window}: "
                f"{res['rate'] or 0:,.0f} items/s ({res['seconds_first_to_last']} s first->last;"
                f" per watcher {res['per_watcher']}); duplicates {checks['duplicates']}, "
                f"missing {checks['missing']}; checks {'ok' if checks['ok'] else 'FAILED'}; "
                f"{_costs(res)}"
            )
            if not checks["ok"]:
                _log(f"  WARNING: watch ({watchers}) checks failed: {checks}")
    finally:
        bench.children.stop(service)
    return out


async def watch_drain(
    bench: Bench, service: Child, base: str, watchers: int, profile_to: Path | None = None
) -> dict[str, Any]:
    """Put eas_watch_n items into the sink, then time `watchers` watchers draining it."""
    from bench.runner import run_json

    plan = bench.plan
    n = plan.eas_watch_n
    put_file = bench.tmp / f"eas-put-{watchers}.json"
    cmd = _easload("fill", base, "--n", str(n), "--concurrency", str(plan.eas_clients))
    filled = await run_json([*cmd, "--out", str(put_file)], 120 + n / 100)
    _log(f"  put {n:,} items into the sink: {filled['rate']:,.0f} items/s")
    got_file = bench.tmp / f"eas-got-{watchers}.json"
    cmd = _easload("watch", base, "--watchers", str(watchers), "--window", str(plan.eas_window))
    cmd += ["--expect", str(n), "--out", str(got_file)]
    recording = await profile.record(service.pid, profile_to) if profile_to else None
    busy = None
    pids = bench.pids(service=service)
    start = await Usage.now(bench, pids)
    try:
        with CpuMeter(pids) as cpu:
            res = await run_json(cmd, 120 + n / 100)
    finally:
        if recording:
            busy = await recording.stop()
    res.update((await Usage.now(bench, pids)).per_item(start, res["received"]))
    # The meter's window includes the watch process's start; the drain is first -> last
    # frame, so the processes' CPU % are their CPU per item x items / that span.
    span, per = res["seconds_first_to_last"], res.get("cpu_us_per_item", {})
    res["cpu_pct"] = {
        **{k: round(v * res["received"] / span / 1e4, 1) for k, v in per.items() if span},
        **{k: v for k, v in cpu.result.items() if k in ("other", "softirq", "steal")},
    }
    res["cpu_pct_meter_window"] = cpu.result
    res["fill"] = filled
    if busy is not None:
        res["profile_busy_pct"] = busy
    put: list[int] = orjson.loads(put_file.read_bytes())
    got: list[list[int]] = orjson.loads(got_file.read_bytes())
    res["checks"] = await _exactly_once(base, put, got)
    return res


async def _exactly_once(base: str, put: list[int], got: list[list[int]]) -> dict[str, Any]:
    """Every index put was delivered once over all watchers; the sink is empty after."""
    counts = Counter(index for mine in got for index in mine)
    expected = set(put)
    deadline = time.monotonic() + 5
    while True:  # the last window's auto-commit may still be under way
        left = (await _overview(base)).get("sink", {}).get("length")
        if left == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    checks = {
        "put": len(put),
        "distinct_put": len(expected),
        "delivered": sum(counts.values()),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "missing": len(expected - counts.keys()),
        "unexpected": len(counts.keys() - expected),
        "sink_left": left,
    }
    checks["ok"] = (
        checks["distinct_put"] == checks["put"]
        and checks["duplicates"] == checks["missing"] == checks["unexpected"] == 0
        and left == 0
    )
    return checks


# --- profiles --------------------------------------------------------------------------------


async def profiles(bench: Bench, results: Path) -> dict[str, Any]:
    """py-spy of the service during a protobuf round trip run and a watcher drain."""
    out: dict[str, Any] = {}
    path = results / "profile-eas-roundtrip.txt"
    res = await roundtrip(bench, "proto", profile_to=path)
    out["eas-roundtrip"] = profile.summarise(path, res["profile_busy_pct"])
    out["eas-roundtrip"]["rate_while_profiled"] = res["rate"]
    await bench.flush()
    service, base = await bench.start_service(
        "service-eas-watch-profile", extra_env=service_env(bench)
    )
    try:
        path = results / "profile-eas-watch.txt"
        res = await watch_drain(bench, service, base, bench.plan.eas_watchers, profile_to=path)
        out["eas-watch"] = profile.summarise(path, res["profile_busy_pct"])
        out["eas-watch"]["rate_while_profiled"] = res["rate"]
    finally:
        bench.children.stop(service)
    return out
