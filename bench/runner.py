"""The benchmark stages and their orchestration (`python -m bench` runs `main`).

Order: ceilings first (stub capacity, Python HTTP clients against the stub, trivial
endpoint), then the service: enqueue over HTTP, drain, enqueue->executor latency,
1M-task fill with memory per task and status lookups, the retry drain and 100k scheduled
tasks coming due at once (bench/delayed.py), the PAI-EAS frontend's round trips and
watchers (bench/eas.py); optionally py-spy profiles.
One redis-server (AOF off, free loopback port) serves every stage and is FLUSHALLed
between stages; each service run is a fresh `python -m app serve` subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from app.engine.client import Redis, connect
from app.engine.engine import Engine
from app.engine.keys import QueueKeys
from app.models import Priority, Task, TaskRequest
from app.redis_server import RedisServer
from app.settings import Settings
from bench import cost, delayed, eas, machine, once, profile, report, stages, wrk
from bench.loadgen import percentile
from bench.meter import CostMeter
from bench.procs import Child, Children, CpuMeter, free_port, service_env, wait_http, wait_quiet

RESULTS = Path(__file__).resolve().parent / "results"
QUEUE = "evaluations"
# `python -m bench` runs DEFAULT_STAGES in this order; `--only` may also name the others.
# refs (the Streams floor and the stub's CPU per request) runs whenever a stage whose
# per-task cost is compared with them runs (bench/stages.py).
STAGES = (
    "ceilings",
    "refs",
    "enqueue",
    "drain",
    "engine",
    "latency",
    "memory",
    "lookup",
    "retry",
    "scheduled",
    "punctual",
    "keepup",
    "scaling",
    "eas",
    "cluster",
)
DEFAULT_STAGES = tuple(s for s in STAGES if s != "cluster")
TaskMaker = Callable[[int], dict[str, Any]]


@dataclass
class Plan:
    quick: bool = False
    duration: float = 8.0  # each HTTP throughput run (seconds)
    client_duration: float = 5.0  # each Python-client ceiling run
    warmup: float = 1.0
    concurrency: int = 32
    code_bytes: int = 200
    drain_n: int = 20_000
    drain_runs: int = 3  # drains (through the stub, and engine-only) of which the median
    latency_rate: float = 500.0
    latency_seconds: float = 10.0
    fill_n: int = 1_000_000
    fill_pipeline: int = 1000
    lookups: int = 2000
    retry_base_delay: float = 0.05  # RETRY_BASE_DELAY of the retry drain (jitter off)
    scheduled_n: int = 100_000  # tasks that come due at the same moment
    eas_duration: float = 20.0  # each PAI-EAS round trip run (seconds)
    eas_clients: int = 32  # round trip clients; also the sink fill's concurrency
    eas_concurrency: int = 32  # EAS_CONCURRENCY: forwarding slots of the service
    eas_watch_n: int = 20_000  # items in the sink for the watchers to drain
    eas_window: int = 64  # `_window_` of each watcher
    eas_watchers: int = 4  # watchers of the concurrent drain
    floor_n: int = 50_000  # tasks per Streams floor run (refs)
    stub_seconds: float = 2.0  # each run of the stub's CPU per request (refs)
    memory_n: int = 50_000  # queued tasks of the memory stage
    scaling_n: int = 30_000  # backlog of each replica scaling run
    scaling_processes: tuple[int, ...] = (1, 2, 4)
    punctual_rate: float = 1000.0  # scheduled tasks falling due per second
    punctual_seconds: float = 10.0
    keepup_rate: float = 5000.0  # open-loop POST /tasks per second offered
    keepup_seconds: float = 10.0
    cluster_n: int = 24_000  # tasks per cluster partitions run (`--only cluster`)
    cluster_partitions: tuple[int, ...] = (1, 2, 4, 8)
    stages: tuple[str, ...] = DEFAULT_STAGES
    profile: bool = False
    quiet_wait: float = 30.0  # seconds to wait for other processes to calm down

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(
            quick=True,
            duration=3.0,
            client_duration=2.0,
            warmup=0.5,
            drain_n=4000,
            latency_seconds=4.0,
            fill_n=100_000,
            lookups=500,
            scheduled_n=20_000,
            eas_duration=3.0,
            eas_watch_n=2000,
            floor_n=10_000,
            stub_seconds=1.0,
            memory_n=10_000,
            scaling_n=4000,
            punctual_seconds=3.0,
            keepup_seconds=3.0,
            cluster_n=4000,
        )


def sample_code(size: int) -> str:
    """`size` bytes of Python-looking source."""
    line = "print('taskstream benchmark task')\n"
    return (line * (size // len(line) + 1))[:size]


def log(message: str) -> None:
    print(message, flush=True)


@dataclass
class Bench:
    plan: Plan
    tmp: Path
    children: Children
    redis: RedisServer
    client: Redis
    results: dict[str, Any] = field(default_factory=dict)
    stub: Child | None = None
    stub_url: str = ""
    generator: str = "aiohttp"

    # --- shared pieces -----------------------------------------------------------

    @property
    def code(self) -> str:
        return sample_code(self.plan.code_bytes)

    @property
    def task_body(self) -> bytes:
        return orjson.dumps({"code": self.code})

    @property
    def executor_body(self) -> bytes:
        task = Task("bench-ceiling", "0-1", 1, Priority.DEFAULT, {"code": self.code})
        return orjson.dumps(task.executor_body())

    def file(self, name: str, content: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content)
        return path

    def pids(self, **children: Child | None) -> dict[str, int]:
        pids = {"redis": self.redis.process.pid} if self.redis.process else {}
        pids.update({name: c.pid for name, c in children.items() if c is not None})
        return pids

    async def start_stub(self) -> None:
        port = free_port()
        self.stub = self.children.python("stub", "bench.stub", "--port", str(port))
        self.stub_url = f"http://127.0.0.1:{port}"
        await wait_http(f"{self.stub_url}/health", self.stub)

    async def stub_call(self, method: str, path: str) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.stub_url + path) as resp,
        ):
            return orjson.loads(await resp.read())

    async def start_service(
        self,
        name: str,
        executors: bool = False,
        concurrency: int | None = None,
        extra_env: Mapping[str, str] | None = None,
        ready_timeout: float = 60.0,
    ) -> tuple[Child, str]:
        port = free_port()
        env = service_env(
            port,
            self.redis.url,
            [self.stub_url] if executors else [],
            concurrency or self.plan.concurrency,
        )
        env.update(extra_env or {})
        child = self.children.python(name, "app", "serve", env=env)
        base = f"http://127.0.0.1:{port}"
        # generous: on a loaded 2-core machine several processes starting at once are slow
        await wait_http(f"{base}/readyz", child, ready_timeout)
        return child, base

    async def flush(self) -> None:
        """FLUSHALL ASYNC, then wait until Redis has freed everything: a synchronous
        FLUSHALL of a million tasks can outlast the client's 3 s command timeout on a
        loaded machine, and the memory stages need the memory back before they start."""
        await self.client.flushall(asynchronous=True)
        deadline = time.monotonic() + 120
        while int((await self.client.info("memory")).get("lazyfree_pending_objects", 0)):
            if time.monotonic() > deadline:
                raise TimeoutError("Redis did not free the flushed keys within 120 s")
            await asyncio.sleep(0.05)

    def cost_meter(self, pids: Mapping[str, int]) -> CostMeter:
        """Redis CPU and commands, and these processes' CPU, over one window (bench/meter)."""
        return CostMeter(self.client, pids, self.redis.process.pid if self.redis.process else None)

    async def counter(self, name: str) -> int:
        value = await self.client.hget(QueueKeys.default(QUEUE).counters, name)
        return int(value or 0)

    # --- load generators ---------------------------------------------------------

    async def loadgen(
        self, url: str, body: Path, concurrency: int, duration: float, client: str = "aiohttp"
    ) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "bench.loadgen", "closed", url, "--body-file", str(body)]
        cmd += ["--concurrency", str(concurrency), "--duration", str(duration)]
        cmd += ["--warmup", str(self.plan.warmup), "--client", client]
        return await run_json(cmd, duration + self.plan.warmup + 60)

    async def generate(
        self, url: str, body: bytes, concurrency: int, generator: str | None = None
    ) -> dict[str, Any]:
        """Closed-loop POST load with the chosen generator (wrk when installed)."""
        generator = generator or self.generator
        if generator == "wrk":
            script = wrk.write_script(self.tmp / f"body-{len(body)}.lua", body)
            return await wrk.run(url, script, concurrency, self.plan.duration)
        path = self.file(f"body-{len(body)}.json", body)
        result = await self.loadgen(url, path, concurrency, self.plan.duration)
        result["generator"] = "aiohttp"
        return result

    async def warm(self, url: str, body: bytes) -> None:
        if self.generator == "wrk":
            script = wrk.write_script(self.tmp / "warm.lua", body)
            await wrk.run(url, script, self.plan.concurrency, 1)
        else:
            path = self.file("warm.json", body)
            await self.loadgen(url, path, self.plan.concurrency, self.plan.warmup)

    # --- stages ------------------------------------------------------------------

    async def ceilings(self) -> None:
        plan, out = self.plan, self.results.setdefault("ceilings", {})
        execute = f"{self.stub_url}/execute"
        if self.generator == "wrk":
            script = wrk.write_script(self.tmp / "execute.lua", self.executor_body)
            await wrk.run(execute, script, plan.concurrency, 1)
            with CpuMeter(self.pids(stub=self.stub)) as cpu:
                stub = await wrk.run(execute, script, plan.concurrency, plan.duration)
            stub["cpu_pct"] = cpu.result
            out["stub_wrk"] = stub
            log(f"  stub executor under wrk -c{plan.concurrency}: {stub['rps']:,.0f} req/s")
        body = self.file("execute.json", self.executor_body)
        clients = {}
        for client in ("aiohttp", "httpx", "httpx-aiohttp", "raw-httptools"):
            if client == "httpx-aiohttp" and not _installed("httpx_aiohttp"):
                clients[client] = {"skipped": "pip install httpx-aiohttp"}
                continue
            with CpuMeter(self.pids(stub=self.stub)) as cpu:
                res = await self.loadgen(
                    execute, body, plan.concurrency, plan.client_duration, client
                )
            res["cpu_pct"] = cpu.result
            clients[client] = res
            log(
                f"  client {client:<14} -> stub, {plan.concurrency} concurrent: "
                f"{res['rps']:,.0f} req/s (client CPU {res.get('cpu_pct_self')}%)"
            )
        out["clients"] = clients
        await self.stub_call("POST", "/reset")

        port = free_port()
        trivial = self.children.python("trivial", "bench.trivial", "--port", str(port))
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_http(f"{url}/readyz", trivial)
            await self.warm(f"{url}/tasks", self.task_body)
            runs: dict[str, Any] = {}
            for generator in self.generators():
                for conc in (1, plan.concurrency):
                    with CpuMeter(self.pids(server=trivial)) as cpu:
                        res = await self.generate(f"{url}/tasks", self.task_body, conc, generator)
                    res["cpu_pct"] = cpu.result
                    runs[f"{generator}_c{conc}"] = res
                    log(f"  trivial endpoint, {generator} -c{conc}: {res['rps']:,.0f} req/s")
            out["trivial"] = runs
        finally:
            self.children.stop(trivial)

    def generators(self) -> list[str]:
        return ["wrk", "aiohttp"] if self.generator == "wrk" else ["aiohttp"]

    async def enqueue(self) -> None:
        """POST /tasks, 1 and 32 clients, per generator; with each run's cost per task."""
        plan, out = self.plan, self.results.setdefault("enqueue", {})
        await self.flush()
        service, base = await self.start_service("service-enqueue")
        try:
            url = f"{base}/tasks"
            await self.warm(url, self.task_body)
            for generator in self.generators():
                for conc in (1, plan.concurrency):
                    stored = await self.counter("total:enqueued")
                    meter = await self.cost_meter({"service": service.pid}).start()
                    res = await self.generate(url, self.task_body, conc, generator)
                    await meter.stop()
                    res["cost"] = meter.per_task(await self.counter("total:enqueued") - stored)
                    res["cpu_pct"] = res["cost"]["cpu_pct"]
                    out[f"{generator}_c{conc}"] = res
                    log(
                        f"  POST /tasks, {generator} -c{conc}: {res['rps']:,.0f} tasks/s "
                        f"(p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms); per task Redis "
                        f"{res['cost']['redis_us']} µs, service {res['cost']['service_us']} µs"
                    )
            out["stored"] = await self.counter("total:enqueued")
        finally:
            self.children.stop(service)

    async def drain(
        self,
        profile_to: Path | None = None,
        make: TaskMaker | None = None,
        extra_env: Mapping[str, str] | None = None,
        name: str = "drain",
        times: Callable[[str], int] | None = None,
    ) -> tuple[dict[str, Any], Child, str]:
        """One metered drain of drain_n tasks through the stub (bench/cost.py); the service
        is left running. `make`, `extra_env` and `times` vary the tasks, the service's
        settings and the executions expected per task (the retry drain)."""
        result, services, base = await cost.drain_once(
            self, name, make=make, extra_env=extra_env, profile_to=profile_to, times=times
        )
        return result, services[0], base

    async def latency(self, service: Child, base: str) -> dict[str, Any]:
        """Open-loop POST /tasks at latency_rate; latency = stub receive - client send."""
        plan = self.plan
        await self.stub_call("POST", "/reset")
        out = self.tmp / "sends.json"
        cmd = [sys.executable, "-m", "bench.loadgen", "open", f"{base}/tasks"]
        cmd += ["--rate", str(plan.latency_rate), "--duration", str(plan.latency_seconds)]
        cmd += ["--warmup", str(plan.warmup), "--prefix", "lat-", "--out", str(out)]
        cmd += ["--code-bytes", str(plan.code_bytes)]
        with CpuMeter(self.pids(service=service, stub=self.stub)) as cpu:
            sent = await run_json(cmd, plan.latency_seconds + plan.warmup + 60)
        total = sent["sent"]
        deadline = time.monotonic() + 15
        while (await self.stub_call("GET", "/stats"))["recorded"] < total:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        received: dict[str, int] = await self.stub_call("GET", "/received")
        sends: dict[str, list[int]] = orjson.loads(out.read_bytes())
        latencies, from_schedule, answers, lags = [], [], [], []
        missing = 0
        for eval_id, (scheduled, sent_ns, answered, status, warm) in sends.items():
            if warm:
                continue
            answers.append((answered - sent_ns) / 1e6)
            lags.append((sent_ns - scheduled) / 1e6)
            got = received.get(eval_id)
            if got is None or not 200 <= status < 300:
                missing += 1
                continue
            latencies.append((got - sent_ns) / 1e6)
            from_schedule.append((got - scheduled) / 1e6)
        for values in (latencies, from_schedule, answers, lags):
            values.sort()
        accepted = [i for i, row in sends.items() if 200 <= row[3] < 300]
        counts = await self.stub_call("GET", "/counts")
        checked = cost.record_once(self, once.check("latency", accepted, counts))
        return {
            "exactly_once": checked,
            "rate": plan.latency_rate,
            "seconds": plan.latency_seconds,
            "measured": len(latencies),
            "missing": missing,
            "p50_ms": _round(percentile(latencies, 50)),
            "p90_ms": _round(percentile(latencies, 90)),
            "p99_ms": _round(percentile(latencies, 99)),
            "max_ms": _round(latencies[-1] if latencies else None),
            "p99_from_schedule_ms": _round(percentile(from_schedule, 99)),
            "enqueue_answer_p50_ms": _round(percentile(answers, 50)),
            "enqueue_answer_p99_ms": _round(percentile(answers, 99)),
            "sender_lag_p99_ms": _round(percentile(lags, 99)),
            "statuses": sent["statuses"],
            "cpu_pct": cpu.result,
        }

    async def fill_direct(
        self, n: int, task: dict[str, Any] | None = None, make: TaskMaker | None = None
    ) -> tuple[list[str], array[int], dict[str, Any]]:
        """n tasks through Queue.enqueue_many (the service's enqueue.lua), 2 pipelines;
        each is `make(i)`, or `task` (default: just the sample code) with a generated
        eval_id."""
        settings = Settings(redis_url=self.redis.url, queue=QUEUE)
        client = connect(self.redis.url)
        streams = Engine(client, settings).default
        size = self.plan.fill_pipeline
        chunks = list(range(0, n, size))
        ids: list[list[str]] = [[] for _ in chunks]
        positions: list[list[int]] = [[] for _ in chunks]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for index in range(len(chunks)):
            queue.put_nowait(index)
        payload = task or {"code": self.code}

        async def worker() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                count = min(size, n - chunks[index])
                first = chunks[index]
                reqs = [
                    TaskRequest.parse(make(first + i) if make else payload) for i in range(count)
                ]
                answers = await streams.engine.enqueue_many(reqs)
                ids[index] = [r.eval_id for r in reqs]
                positions[index] = [int(a.get("position", 0)) for a in answers]

        started = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(2)))
        finally:
            await client.aclose()
        seconds = time.perf_counter() - started
        flat_ids = [i for chunk in ids for i in chunk]
        flat_pos = array("i", (p for chunk in positions for p in chunk))
        return flat_ids, flat_pos, {"seconds": round(seconds, 2), "rate": round(n / seconds, 1)}

    async def lookup_and_memory(self) -> None:
        plan = self.plan
        await self.flush()
        before = await self.client.info("memory")
        ids, positions, fill = await self.fill_direct(plan.fill_n)
        after = await self.client.info("memory")
        queued = await self.client.xlen(QueueKeys.default(QUEUE).stream(Priority.DEFAULT))
        delta = int(after["used_memory"]) - int(before["used_memory"])
        memory = {
            "tasks": plan.fill_n,
            "queued_in_stream": queued,
            "used_memory_delta": delta,
            "bytes_per_task": round(delta / plan.fill_n, 1),
            "rss_bytes_per_task": round(
                (int(after["used_memory_rss"]) - int(before["used_memory_rss"])) / plan.fill_n, 1
            ),
            "code_bytes": plan.code_bytes,
            "fill": fill,
            **(await self._memory_breakdown(ids)),
        }
        self.results["memory"] = memory
        log(
            f"  filled {plan.fill_n:,} via enqueue_many: {fill['rate']:,.0f} tasks/s; "
            f"{memory['bytes_per_task']} B/task (used_memory)"
        )
        service, base = await self.start_service("service-lookup")
        try:
            with CpuMeter(self.pids(service=service)) as cpu:
                lookup = await self._lookups(base, ids, positions)
            lookup["cpu_pct"] = cpu.result
            self.results["lookup"] = lookup
        finally:
            self.children.stop(service)
        await self.flush()

    async def _memory_breakdown(self, ids: list[str]) -> dict[str, Any]:
        keys = QueueKeys.default(QUEUE)
        sample = random.sample(ids, min(200, len(ids)))
        sizes = [await self.client.memory_usage(keys.task(i)) or 0 for i in sample]
        stream = await self.client.memory_usage(keys.stream(Priority.DEFAULT), samples=0) or 0
        return {
            "task_hash_bytes": round(sum(sizes) / len(sizes), 1),
            "stream_bytes_per_entry": round(stream / len(ids), 1),
        }

    async def _lookups(self, base: str, ids: list[str], positions: array[int]) -> dict[str, Any]:
        rng = random.Random(42)
        timings: list[float] = []
        wrong = 0
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            for i in range(self.plan.lookups + 50):
                index = rng.randrange(len(ids))
                started = time.perf_counter()
                async with session.get(f"{base}/tasks/{ids[index]}") as resp:
                    body = await resp.read()
                elapsed = time.perf_counter() - started
                if i < 50:
                    continue  # warm-up
                timings.append(elapsed * 1000)
                doc = orjson.loads(body)
                if resp.status != 200 or doc.get("position") != positions[index]:
                    wrong += 1
        timings.sort()
        return {
            "queued": len(ids),
            "lookups": len(timings),
            "wrong_answers": wrong,
            "p50_ms": _round(percentile(timings, 50)),
            "p99_ms": _round(percentile(timings, 99)),
            "max_ms": _round(timings[-1]),
            "mean_ms": _round(sum(timings) / len(timings)),
        }

    async def profiles(self) -> None:
        """py-spy during enqueue (-c32), on the trivial endpoint (same load), during a drain
        (and during a retry drain when that stage runs); during a PAI-EAS round trip run
        and watcher drain when the eas stage runs (`--only eas` profiles only those)."""
        RESULTS.mkdir(parents=True, exist_ok=True)
        out: dict[str, Any] = {}
        if self.plan.stages != ("eas",):
            await self._engine_profiles(out)
        if "eas" in self.plan.stages:
            out.update(await eas.profiles(self, RESULTS))
        self.results["profiles"] = out

    async def _engine_profiles(self, out: dict[str, Any]) -> None:
        await self.flush()
        service, base = await self.start_service("service-profile-enqueue")
        try:
            path = RESULTS / "profile-enqueue.txt"
            recording = await profile.record(service.pid, path)
            res = await self.generate(f"{base}/tasks", self.task_body, self.plan.concurrency)
            busy = await recording.stop()
            out["enqueue"] = profile.summarise(path, busy)
            out["enqueue"]["rps_while_profiled"] = res["rps"]
        finally:
            self.children.stop(service)
        port = free_port()
        trivial = self.children.python("trivial-profile", "bench.trivial", "--port", str(port))
        try:
            await wait_http(f"http://127.0.0.1:{port}/readyz", trivial)
            path = RESULTS / "profile-trivial.txt"
            recording = await profile.record(trivial.pid, path)
            url = f"http://127.0.0.1:{port}/tasks"
            res = await self.generate(url, self.task_body, self.plan.concurrency)
            busy = await recording.stop()
            out["trivial"] = profile.summarise(path, busy)
            out["trivial"]["rps_while_profiled"] = res["rps"]
        finally:
            self.children.stop(trivial)
        path = RESULTS / "profile-drain.txt"
        drained, service, _ = await self.drain(profile_to=path)
        self.children.stop(service)
        out["drain"] = profile.summarise(path, drained["profile_busy_pct"])
        out["drain"]["rate_while_profiled"] = drained["rate"]
        if "retry" in self.plan.stages:
            path = RESULTS / "profile-retry.txt"
            retried = await delayed.retry_drain(self, profile_to=path)
            out["retry"] = profile.summarise(path, retried["profile_busy_pct"])
            out["retry"]["rate_while_profiled"] = retried["rate"]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


async def run_json(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run a bench helper process; its last stdout line is JSON. Killed on timeout/cancel."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{' '.join(cmd[:4])} failed ({proc.returncode}): {err.decode()[-2000:]}"
        )
    result: dict[str, Any] = orjson.loads(lines[-1])
    return result


async def amain(plan: Plan) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="taskstream-bench-"))
    children = Children(tmp)
    server = RedisServer(tmp / "redis", appendonly=False, unix_socket=False)
    if server.port == 6379:  # never the default port, whatever free_port returned
        server.port = free_port()
    started = time.time()
    client: Redis | None = None
    ok = False
    try:
        server.start()
        client = connect(server.url)
        info = await client.info("server")
        bench = Bench(plan, tmp, children, server, client)
        bench.generator = "wrk" if wrk.binary() else "aiohttp"
        bench.results["machine"] = machine.describe(
            {**info, **(await client.info("memory"))}, server.binary, wrk.version()
        )
        bench.results["plan"] = asdict(plan)
        bench.results["code"] = machine.code_under_test()
        for line in machine.summary_lines(bench.results["machine"]):
            log(line)
        log(machine.code_line(bench.results["code"]))
        log(report.SHARED_CORES_NOTE)
        if plan.quiet_wait > 0:
            log(f"waiting (up to {plan.quiet_wait:g} s) for other processes to go quiet ...")
        load, busiest = await wait_quiet(plan.quiet_wait) if plan.quiet_wait > 0 else (0.0, [])
        bench.results["background_load_at_start_pct"] = load
        if load >= 15:
            log(f"WARNING: other processes use {load:.0f}% of a core: " + "; ".join(busiest))
        await stages.run(bench)
        bench.results["generator"] = bench.generator
        bench.results["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
        bench.results["wall_seconds"] = round(time.time() - started, 1)
        ok = True
        return bench.results
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
        children.stop_all()
        server.stop()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs of the child processes kept in {tmp}", file=sys.stderr)
