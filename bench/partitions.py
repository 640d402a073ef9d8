"""Cluster partitions (issue 13 hook): Redis CPU per task per node for 1/2/4/8 partitions.

    python -m bench --only cluster            # not part of a default run

A local Redis Cluster of three masters with one replica each (tests/topologies.py's
`Cluster`, the suite's own starter). STAND-IN: QUEUE_PARTITIONS does not exist yet, so a
partition here is a deployment of its own: QUEUE_NAME=part-<k>, whose keys carry the hash
tag `{part-<k>}`; the names are picked so that partition j lands on master j mod 3. Each
partition gets `cluster_n` / P tasks (queued with `enqueue_many` while its queue is
paused) and one engine-only drain process (bench/enginedrain.py: the runtime with a no-op
executor, no HTTP, so P processes fit on two cores); then every queue resumes at once and
the meters run until every task is completed.

Per run: the rate, and per master its Redis CPU (`INFO cpu` delta) per task it served and
as % of one core, with the tasks and partitions it held; the cluster's Redis CPU per task
in all; the drain processes' CPU per task; the exactly-once check of every partition.
When QUEUE_PARTITIONS exists, `_partition_names` and the per-process env are what change.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import redis

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

STAND_IN = (
    "stand-in: QUEUE_PARTITIONS does not exist yet; each partition is a deployment of its "
    "own (QUEUE_NAME=part-<k>, hash tag {part-<k>}) placed on master k mod 3, drained by an "
    "engine-only process (no HTTP)"
)


def log(message: str) -> None:
    print(message, flush=True)


async def cluster_partitions(bench: Bench) -> dict[str, Any]:
    from tests.topologies import Cluster  # the suite's cluster starter

    plan = bench.plan
    cluster = Cluster(bench.tmp / "cluster", masters=3, replicas=1, binary=bench.redis.binary)
    out: dict[str, Any] = {"note": STAND_IN, "tasks": plan.cluster_n, "masters": 3}
    try:
        await asyncio.to_thread(cluster.start)
        log(f"  cluster up: {len(cluster.nodes)} nodes; {STAND_IN}")
        names = await asyncio.to_thread(_partition_names, cluster, max(plan.cluster_partitions))
        for parts in plan.cluster_partitions:
            run = await _run(bench, cluster, names[:parts], plan.cluster_n // parts * parts)
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


def _partition_names(cluster: Cluster, count: int) -> list[str]:
    """part-<k> names whose hash tags fall on master j mod 3 for the j-th partition."""
    masters = [n.port for n in cluster.nodes[: cluster.masters]]
    picked: list[str] = []
    k = 0
    while len(picked) < count:
        name = f"part-{k}"
        k += 1
        want = masters[len(picked) % len(masters)]
        if cluster.owner(cluster.slot_of(f"{{{name}}}")).port == want:
            picked.append(name)
    return picked


async def _run(bench: Bench, cluster: Cluster, names: list[str], n: int) -> dict[str, Any]:
    per = n // len(names)
    client = connect(cluster.url)
    masters = {f"node{i + 1}": m for i, m in enumerate(cluster.nodes[: cluster.masters])}
    node_clients = {k: connect(f"redis://127.0.0.1:{m.port}") for k, m in masters.items()}
    children: list[Child] = []
    try:
        ids = {name: await _fill(client, cluster.url, name, per) for name in names}
        children = [_spawn(bench, cluster.url, name) for name in names]
        for child, name in zip(children, names, strict=True):
            await _wait_ready(bench.tmp / f"{name}.ready", child)
        window = await _metered(client, node_clients, children, names, n)
    finally:
        for child in children:
            bench.children.stop(child)
        for c in node_clients.values():
            await c.flushall()
            await c.aclose()
        await client.aclose()
    window["nodes"] = _per_node(window, cluster, names, per, masters)
    checks = []
    for name in names:
        path = bench.tmp / f"{name}.json"
        counts = orjson.loads(path.read_bytes())["counts"] if path.exists() else {}
        checks.append(record_once(bench, once.check(f"cluster {name}", ids[name], counts)))
    window.update(partitions=len(names), names=names, exactly_once=checks)
    return window


async def _fill(client: Redis, url: str, name: str, n: int) -> list[str]:
    """n tasks into the deployment `name`, its queue paused first."""
    engine = Engine(client, Settings(redis_url=url, queue=name))
    await engine.default.ensure_groups()
    await admin.set_paused(engine.default, True)
    ids = [f"{name}-{i}" for i in range(n)]
    for offset in range(0, n, 1000):
        chunk = ids[offset : offset + 1000]
        reqs = [TaskRequest.parse({"code": "x" * 200, "eval_id": i}) for i in chunk]
        await engine.enqueue_many(reqs)
    return ids


def _spawn(bench: Bench, url: str, name: str) -> Child:
    env = service_env(free_port(), url, (), bench.plan.concurrency)
    env["QUEUE_NAME"] = name
    out = str(bench.tmp / f"{name}.json")
    child: Child = bench.children.python(
        f"service-{name}", "bench.enginedrain", "--out", out, env=env
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
    client: Redis,
    node_clients: dict[str, Redis],
    children: list[Child],
    names: list[str],
    n: int,
) -> dict[str, Any]:
    """Resume every partition, wait for n completions; per node Redis CPU over the window."""
    pids = {f"service{i + 1}": c.pid for i, c in enumerate(children)}
    before = {k: await meter.read(c, {}) for k, c in node_clients.items()}
    with CpuMeter(pids) as cpu:
        started = time.monotonic()
        for name in names:
            engine = Engine(client, Settings(queue=name))
            await admin.set_paused(engine.default, False)
        while await _completed(client, names) < n:
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


async def _completed(client: Redis, names: list[str]) -> int:
    total = 0
    for name in names:
        value = await client.hget(QueueKeys.default(name).counters, "total:completed")
        total += int(value or 0)
    return total


def _per_node(
    window: dict[str, Any],
    cluster: Cluster,
    names: list[str],
    per: int,
    masters: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Each master's Redis CPU per task it served (its partitions' tasks) and % of a core."""
    ports = [n.port for n in cluster.nodes[: cluster.masters]]
    held = {k: 0 for k in masters}
    for j, _ in enumerate(names):
        key = next(k for k, m in masters.items() if m.port == ports[j % len(ports)])
        held[key] += 1
    nodes = {}
    for key, cpu_s in window.pop("redis_cpu_s").items():
        tasks = held[key] * per
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
