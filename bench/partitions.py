"""Cluster partitions (issue 13): Redis CPU per task per node for 1/2/4/8 partitions.

    python -m bench --only cluster            # not part of a default run

A local Redis Cluster of three masters with one replica each (tests/topologies.py's
`Cluster`, the suite's own starter). One queue with QUEUE_PARTITIONS=P (its name picked
so that its partitions spread as evenly as can be over the masters); `cluster_n` tasks
queued with `enqueue_many` while the queue is paused, and P engine-only drain processes
(bench/enginedrain.py: the runtime with a no-op executor, no HTTP, so P processes fit on
two cores), each claiming across every partition as the service does; then the queue
resumes and the meters run until every task is completed.

Per run: the rate, and per master its Redis CPU (`INFO cpu` delta) per task it served and
as % of one core, with the tasks and partitions it held; the cluster's Redis CPU per task
in all; the drain processes' CPU per task; the exactly-once check over every process.

Standalone, `python -m bench.partitions [TASKS]` (default 6,000 per run; docs/benchmarks.md,
*Partitioned queues*): real QUEUE_PARTITIONS on a three-master cluster with one replica
each, the default queue over 1, 2, 4 and 8 partitions: TASKS tasks stored with the
service's scripts (`Engine.enqueue_many`, batches of 500, as answered to a client), drained
by 4 consumers (`Queue.claim` of 16, `Queue.complete` of each, no HTTP). Per run: enqueue
and drain rates of this one Python process, each master's Redis CPU (`INFO cpu`) per task
and its share of the tasks (its partitions' `total:completed`); the 4-partition run again
with DURABILITY=replica; then the priority inversion: one consumer claiming 16 at a time
over 4 partitions full of low-priority tasks, one high-priority task added after it warmed
up: how many lows it starts first (20 trials; the bound is (2 x partitions - 1) x claim
size). Two cores run six redis-servers and the client, so the rates are the client's; what
carries over is Redis CPU µs per task on each master: 1e6 / (the busiest master's µs per
task) projects what the queue could take when Redis is the limit.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import redis
from redis.crc import key_slot

from app.engine import admin
from app.engine.client import Redis, connect
from app.engine.engine import Engine
from app.engine.keys import QueueKeys
from app.engine.queue import Queue
from app.engine.scripts import answering
from app.models import Priority, TaskRequest
from app.settings import Settings
from bench import meter, once
from bench.cost import record_once
from bench.procs import Child, CpuMeter, free_port, service_env

if TYPE_CHECKING:
    from bench.runner import Bench
    from tests.topologies import Cluster

NOTE = (
    "QUEUE_PARTITIONS=P on one queue whose partitions spread evenly over the masters, "
    "drained by P "
    "engine-only processes (no HTTP), each claiming across every partition"
)


def log(message: str) -> None:
    print(message, flush=True)


async def cluster_partitions(bench: Bench) -> dict[str, Any]:
    from tests.topologies import Cluster  # the suite's cluster starter

    plan = bench.plan
    cluster = Cluster(bench.tmp / "cluster", masters=3, replicas=1, binary=bench.redis.binary)
    out: dict[str, Any] = {"note": NOTE, "tasks": plan.cluster_n, "masters": 3}
    try:
        await asyncio.to_thread(cluster.start)
        log(f"  cluster up: {len(cluster.nodes)} nodes; {NOTE}")
        for parts in plan.cluster_partitions:
            name = await asyncio.to_thread(_spread_name, cluster, parts)
            run = await _run(bench, cluster, name, parts, plan.cluster_n // parts * parts)
            out[f"partitions_{parts}"] = run
            nodes = "; ".join(
                f"{k} {v['redis_us_per_own_task'] or '—'} µs/own task ({v['redis_cpu_pct']} %)"
                for k, v in run["nodes"].items()
            )
            log(
                f"  {parts} partition(s): {run['rate']:,.0f} tasks/s; cluster Redis "
                f"{run['redis_us_total']} µs/task; {nodes}"
            )
    finally:
        for node in cluster.nodes:
            node.stop()
    return out


def _owners(cluster: Cluster) -> Callable[[str], int]:
    """key -> the port of the master serving its slot (the slot map read once, the slot
    computed here: thousands of candidate names are tried)."""
    from tests.topologies import direct

    slots: Any = direct(cluster.live()[0]).execute_command("CLUSTER", "SLOTS")
    ranges = [(int(r[0]), int(r[1]), int(r[2][1])) for r in slots]

    def owner(key: str) -> int:
        slot = key_slot(key.encode())
        return next(port for low, high, port in ranges if low <= slot <= high)

    return owner


def _spread_name(cluster: Cluster, count: int) -> str:
    """A queue name whose `count` partitions are spread as evenly as can be over the
    masters (at most ceil(count / masters) on one). Not "partition j on master j mod 3":
    CRC16 is linear, so the slots of `{<tag>#1}` … `{<tag>#9}` (names of one length) differ
    by fixed XOR masks and some patterns never occur."""
    owner = _owners(cluster)
    ideal = (-(-count // cluster.masters), -min(count, cluster.masters))
    best, best_score = "part-0", (count + 1, 0)
    for k in range(100_000):
        name = f"part-{k}"
        held: dict[int, int] = {}
        for j in range(count):
            port = owner(QueueKeys.default(name).partition(j).counters)
            held[port] = held.get(port, 0) + 1
        score = (max(held.values()), -len(held))  # the busiest master, then masters used
        if score < best_score:
            best, best_score = name, score
        if best_score <= ideal:
            break
    return best


def _settings(url: str, name: str, parts: int) -> Settings:
    return Settings(redis_url=url, queue=name, queue_partitions={name: parts} if parts > 1 else {})


async def _run(bench: Bench, cluster: Cluster, name: str, parts: int, n: int) -> dict[str, Any]:
    client = connect(cluster.url)
    masters = {f"node{i + 1}": m for i, m in enumerate(cluster.nodes[: cluster.masters])}
    node_clients = {k: connect(f"redis://127.0.0.1:{m.port}") for k, m in masters.items()}
    engine = Engine(client, _settings(cluster.url, name, parts))
    children: list[Child] = []
    try:
        ids = await _fill(engine, name, n)
        children = [_spawn(bench, cluster.url, name, parts, i) for i in range(parts)]
        for i, child in enumerate(children):
            await _wait_ready(bench.tmp / f"{name}-{parts}-{i}.ready", child)
        window = await _metered(engine, node_clients, children, n)
    finally:
        for child in children:
            bench.children.stop(child)
        for c in node_clients.values():
            await c.flushall()
            await c.aclose()
        await client.aclose()
    window["nodes"] = _per_node(window, cluster, name, parts, n, masters)
    counts: dict[str, int] = {}
    for i in range(parts):
        path = bench.tmp / f"{name}-{parts}-{i}.json"
        for eval_id, times in (
            orjson.loads(path.read_bytes())["counts"] if path.exists() else {}
        ).items():
            counts[eval_id] = counts.get(eval_id, 0) + times
    checks = [record_once(bench, once.check(f"cluster {parts} partitions", ids, counts))]
    window.update(partitions=parts, names=[name], exactly_once=checks)
    return window


async def _fill(engine: Engine, name: str, n: int) -> list[str]:
    """n tasks into the queue, every partition paused first."""
    await engine.default.ensure_groups()
    await admin.set_paused(engine.default, True)
    ids = [f"{name}-{i}" for i in range(n)]
    for offset in range(0, n, 1000):
        chunk = ids[offset : offset + 1000]
        reqs = [TaskRequest.parse({"code": "x" * 200, "eval_id": i}) for i in chunk]
        await engine.enqueue_many(reqs)
    return ids


def _spawn(bench: Bench, url: str, name: str, parts: int, i: int) -> Child:
    env = service_env(free_port(), url, (), bench.plan.concurrency)
    env["QUEUE_NAME"] = name
    env["QUEUE_PARTITIONS"] = str(parts)
    out = str(bench.tmp / f"{name}-{parts}-{i}.json")
    child: Child = bench.children.python(
        f"service-{parts}-{i}", "bench.enginedrain", "--out", out, env=env
    )
    return child


async def _wait_ready(path: Any, child: Child, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{child.name} not ready after {timeout}s")
        await asyncio.sleep(0.05)


async def _metered(
    engine: Engine, node_clients: dict[str, Redis], children: list[Child], n: int
) -> dict[str, Any]:
    """Resume every partition, wait for n completions; per node Redis CPU over the window."""
    pids = {f"service{i + 1}": c.pid for i, c in enumerate(children)}
    before = {k: await meter.read(c, {}) for k, c in node_clients.items()}
    with CpuMeter(pids) as cpu:
        started = time.monotonic()
        await admin.set_paused(engine.default, False)
        while await _completed(engine) < n:
            if time.monotonic() - started > max(120.0, n / 100):
                raise TimeoutError("cluster drain stuck")
            await asyncio.sleep(0.02)
        seconds = time.monotonic() - started
    after = {k: await meter.read(c, {}) for k, c in node_clients.items()}
    redis = {k: after[k].redis_cpu - before[k].redis_cpu for k in node_clients}
    service = sum(v for k, v in cpu.result.items() if k.startswith("service")) * seconds / 100
    return {
        "tasks": n,
        "seconds": round(seconds, 3),
        "rate": round(n / seconds, 1),
        "redis_us_total": round(1e6 * sum(redis.values()) / n, 2),
        "service_us": round(1e6 * service / n, 2),
        "redis_cpu_s": redis,
        "commands": {
            k: meter.command_deltas(before[k].commands, after[k].commands, n) for k in node_clients
        },
        "cpu_pct": cpu.result,
    }


async def _completed(engine: Engine) -> int:
    total = 0
    for part in engine.default.parts:
        value = await engine.client.hget(part.keys.counters, "total:completed")
        total += int(value or 0)
    return total


def _per_node(
    window: dict[str, Any],
    cluster: Cluster,
    name: str,
    parts: int,
    n: int,
    masters: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Each master's Redis CPU per task it served (its partitions' tasks: placement by
    hash spreads them about evenly) and % of a core."""
    held = {k: 0 for k in masters}
    owner = _owners(cluster)
    for j in range(parts):
        port = owner(QueueKeys.default(name).partition(j).counters)
        held[next(k for k, m in masters.items() if m.port == port)] += 1
    nodes = {}
    for key, cpu_s in window.pop("redis_cpu_s").items():
        tasks = held[key] * n // parts
        nodes[key] = {
            "partitions": held[key],
            "tasks": tasks,
            "redis_us_per_own_task": round(1e6 * cpu_s / tasks, 2) if tasks else None,
            "redis_cpu_pct": round(100 * cpu_s / window["seconds"], 1),
        }
    return nodes


# --- standalone: real QUEUE_PARTITIONS (python -m bench.partitions) ---------------------------

BATCH = 500
CONSUMERS = 4
CLAIM = 16


def _cpu_of(node: Any) -> float:
    from tests.topologies import direct

    info = direct(node).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _fill_direct(engine: Engine, n: int, prefix: str) -> float:
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        reqs = [
            TaskRequest(f"{prefix}{i}", Priority.DEFAULT, {"code": "x"})
            for i in range(start, min(n, start + BATCH))
        ]
        with answering():
            answers = await engine.enqueue_many(reqs)
        assert all(a.get("status") == "queued" for a in answers), answers[:2]
    return time.perf_counter() - started


async def _consume_direct(queue: Queue, name: str, left: list[int]) -> None:
    while left[0] > 0:
        claimed = await queue.claim(name, CLAIM, 60)
        if not claimed.tasks:
            await asyncio.sleep(0.001)
            continue
        with answering():
            await asyncio.gather(*(queue.complete(t.eval_id, 1, t) for t in claimed.tasks))
        left[0] -= len(claimed.tasks)


async def _drain_direct(queue: Queue, n: int) -> float:
    started, left = time.perf_counter(), [n]
    await asyncio.gather(*(_consume_direct(queue, f"c{i}", left) for i in range(CONSUMERS)))
    return time.perf_counter() - started


def _owners_direct(cluster: Cluster, name: str, parts: int) -> dict[int, list[str]]:
    """master port -> the counters keys of the partitions it holds."""
    found: dict[int, list[str]] = {}
    for p in range(parts):
        counters = QueueKeys.default(name).partition(p).counters
        found.setdefault(cluster.owner(cluster.slot_of(counters)).port, []).append(counters)
    return found


async def _run_direct(cluster: Cluster, parts: int, n: int, durability: str) -> dict[str, Any]:
    from tests.topologies import direct

    name = f"bench-p{parts}-{durability}"
    settings = Settings(
        redis_url=cluster.url, queue=name, queue_partitions={name: parts}, durability=durability
    )
    engine = Engine(connect(cluster.url), settings)
    masters = cluster.masters_now()
    try:
        await engine.default.ensure_groups()
        before = {m.port: _cpu_of(m) for m in masters}
        fill_s = await _fill_direct(engine, n, f"{name}-")
        drain_s = await _drain_direct(engine.default, n)
        after = {m.port: _cpu_of(m) for m in masters}
    finally:
        await engine.close()
    by_node = {m.port: m for m in masters}
    done = {
        port: sum(int(direct(by_node[port]).hget(k, "total:completed") or 0) for k in keys)
        for port, keys in _owners_direct(cluster, name, parts).items()
    }
    assert sum(done.values()) == n, done
    us = {port: (after[port] - before[port]) * 1e6 / n for port in before}
    return {
        "parts": parts,
        "durability": durability,
        "enqueue_per_s": n / fill_s,
        "drain_per_s": n / drain_s,
        "us_per_task": us,
        "share": {port: done.get(port, 0) / n for port in before},
    }


async def _inversion_direct(cluster: Cluster, parts: int, trials: int) -> int:
    name = f"bench-inv{parts}"
    settings = Settings(redis_url=cluster.url, queue=name, queue_partitions={name: parts})
    engine = Engine(connect(cluster.url), settings)
    queue, worst = engine.default, 0
    try:
        for trial in range(trials):
            lows = [TaskRequest(f"{trial}l{i}", Priority.LOW, {}) for i in range(parts * 60)]
            await engine.enqueue_many(lows)
            for _ in range(parts):  # warm: the consumer's hints are known
                for t in (await queue.claim("c", CLAIM, 60)).tasks:
                    await queue.complete(t.eval_id, 1, t)
            high = f"{trial}high"
            await queue.enqueue(TaskRequest(high, Priority.HIGH, {}))
            started = 0
            while True:
                claimed = await queue.claim("c", CLAIM, 60)
                ids = [t.eval_id for t in claimed.tasks]
                await asyncio.gather(*(queue.complete(t.eval_id, 1, t) for t in claimed.tasks))
                if high in ids:
                    started += ids.index(high)
                    break
                started += len(ids)
            worst = max(worst, started)
            while tasks := (await queue.claim("c", 200, 60)).tasks:
                await asyncio.gather(*(queue.complete(t.eval_id, 1, t) for t in tasks))
    finally:
        await engine.close()
    return worst


def _print_direct(r: dict[str, Any]) -> None:
    us = r["us_per_task"]
    busiest, total = max(us.values()), sum(us.values())
    nodes = "  ".join(f"{us[p]:6.1f} µs {r['share'][p]:4.0%}" for p in sorted(us))
    print(
        f"{r['parts']} partition(s) {r['durability']:7}: enqueue {r['enqueue_per_s']:6.0f}/s "
        f"drain {r['drain_per_s']:6.0f}/s | per master (µs/task, share): {nodes} | "
        f"sum {total:5.1f} µs -> projected {1e6 / busiest:7.0f} tasks/s "
        f"({1e6 / total:6.0f} per master)",
        flush=True,
    )


async def main(n: int) -> None:
    from tests.topologies import Cluster

    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp)).start()
        try:
            for parts in (1, 2, 4, 8):
                _print_direct(await _run_direct(cluster, parts, n, "async"))
            _print_direct(await _run_direct(cluster, 4, n, "replica"))
            worst = await _inversion_direct(cluster, 4, 20)
            print(
                f"inversion, 4 partitions, claims of {CLAIM}: worst {worst} low-priority "
                f"starts before a waiting high one (bound {(2 * 4 - 1) * CLAIM})",
                flush=True,
            )
        finally:
            cluster.stop()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 6000))
    except redis.RedisError as exc:
        sys.exit(f"bench.partitions: {exc}")
