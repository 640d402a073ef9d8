"""Flow control as operators see it: a queue's limits, its tasks in flight, its tenants.

Read-only, two pipelined round trips per call however many queues (a rate-limited
queue's GCRA state in the first, one small script each): what `/status` and
`/metrics` show of fair share (docs/flow-control.md). The tenants listed per priority are
those next in line (smallest virtual times) that have tasks waiting, at most
`TENANTS_SHOWN` of them, so the answer (and the metric's cardinality) stays bounded
whatever tenants exist; `tenant_tasks` counts the waiting tasks of every tenant but
`default`.

A partitioned queue (QUEUE_PARTITIONS) is read in every partition and summed: `in_flight`
and the waiting counts add up; a tenant waiting in several partitions is listed once, its
`vtime` the smallest of its partitions' (each partition keeps its own virtual clock, so
the figure orders tenants only roughly across partitions).

Imports: client, queue, flow_settings, models.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from app.engine.client import Redis, text, translate_errors
from app.engine.queue import Queue
from app.flow_settings import Rate
from app.models import PRIORITY_ORDER

TENANTS_SHOWN = 20  # per queue and priority, in /status and /metrics
READ = TENANTS_SHOWN * 2  # tenants read per priority (idle ones are skipped)


@translate_errors
async def flow_of(client: Redis, queues: Sequence[Queue]) -> list[dict[str, Any]]:
    """Per queue: `limits` (RATE_LIMITS, QUEUE_MAX_IN_FLIGHT), `in_flight` (its leases: every
    processing task, in-process and pulled), `rate` (`rate_state`, only with a rate limit),
    and per priority where tenants' tasks wait, the
    tenants next in line with their waiting tasks and virtual time; a partitioned queue's
    partitions summed (module docstring)."""
    parts = [part for q in queues for part in q.parts]
    views = iter(await _flow_of_parts(client, parts))
    return [_merged([next(views) for _ in q.parts]) for q in queues]


def _merged(views: list[dict[str, Any]]) -> dict[str, Any]:
    """One queue's view from its partitions' (the first is the queue itself)."""
    if len(views) == 1:
        return views[0]
    tenants: dict[str, Any] = {}
    for view in views:
        for prio, level in view["tenants"].items():
            into = tenants.setdefault(prio, {"tenant_tasks": 0, "next": {}})
            into["tenant_tasks"] += level["tenant_tasks"]
            for row in level["next"]:
                had = into["next"].get(row["tenant"])
                if had is None:
                    into["next"][row["tenant"]] = dict(row)
                else:
                    had["waiting"] += row["waiting"]
                    had["vtime"] = min(had["vtime"], row["vtime"])
    for level in tenants.values():
        rows = sorted(level["next"].values(), key=lambda r: (r["vtime"], r["tenant"]))
        level["next"] = rows[:TENANTS_SHOWN]
    in_flight = sum(view["in_flight"] for view in views)
    merged = {"limits": views[0]["limits"], "in_flight": in_flight, "tenants": tenants}
    if "rate" in views[0]:
        merged["rate"] = views[0]["rate"]
    return merged


async def _flow_of_parts(client: Redis, queues: Sequence[Queue]) -> list[dict[str, Any]]:
    """`flow_of` of each queue (partition) alone."""
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.zcard(q.keys.leases)
        pipe.hgetall(q.keys.counters)
        for key in q.keys.vtimes:
            pipe.zrange(key, 0, READ - 1, withscores=True)
    rated = [(q, q.limits.rate) for q in queues if q.limits.rate is not None]
    reads = [q.scripts.run("rate_state", [q.keys.rate], []) for q, _ in rated]
    first, gcra = await asyncio.gather(pipe.execute(), asyncio.gather(*reads))
    per = 2 + len(PRIORITY_ORDER)
    rows = [first[i * per : (i + 1) * per] for i in range(len(queues))]
    rates = {id(q): rate_state(rate, *gcra[i]) for i, (q, rate) in enumerate(rated)}
    pipe = client.pipeline(transaction=False)
    for q, (_, _, *tenants) in zip(queues, rows, strict=True):
        for wait, listed in zip(q.keys.waiting, tenants, strict=True):
            for name, _ in listed:
                t = text(name)
                pipe.zlexcount(wait, f"[{t}|", f"({t}}}")
    backlogs = iter(await pipe.execute())
    views = [_view(q, row, backlogs) for q, row in zip(queues, rows, strict=True)]
    for q, view in zip(queues, views, strict=True):
        if id(q) in rates:
            view["rate"] = rates[id(q)]
    return views


def rate_state(rate: Rate, tat_raw: Any, seconds: Any, micros: Any) -> dict[str, int]:
    """RATE_LIMITS' GCRA state (claim.lua, `rate_room` in _fair.lua) read as operators
    want it: `available`, the starts allowed right now (the burst left), and `next_in_ms`,
    when the next start is allowed (0 while some are available). By the Redis clock."""
    interval_us = rate.interval_ms * 1000
    now_us = int(seconds) * 1_000_000 + int(micros)
    tat = max(int(text(tat_raw) or 0), now_us)
    tolerance = (rate.n - 1) * interval_us
    if tat > now_us + tolerance:
        return {"available": 0, "next_in_ms": math.ceil((tat - tolerance - now_us) / 1000)}
    available = min(rate.n, math.floor((now_us + tolerance - tat) / interval_us) + 1)
    return {"available": available, "next_in_ms": 0}


def _view(q: Queue, row: list[Any], backlogs: Any) -> dict[str, Any]:
    in_flight, counters_raw, *tenants = row
    counters = {text(k): int(v) for k, v in counters_raw.items()}
    by_priority: dict[str, Any] = {}
    for prio, listed in zip(PRIORITY_ORDER, tenants, strict=True):
        p = prio.value
        shown: list[dict[str, Any]] = []
        for name, vtime in listed:
            waiting = next(backlogs)
            if text(name) == "default":
                waiting = _default_waiting(counters, p)
            if waiting and len(shown) < TENANTS_SHOWN:
                shown.append({"tenant": text(name), "waiting": waiting, "vtime": float(vtime)})
        total = counters.get(f"tq:{p}", 0)
        if shown or total:
            by_priority[p] = {"tenant_tasks": total, "next": shown}
    return {"limits": q.limits.view(), "in_flight": int(in_flight), "tenants": by_priority}


def _default_waiting(counters: dict[str, int], prio: str) -> int:
    """Tenant `default`'s waiting tasks, by the priority stream's counters (holes left out:
    a bound, exact when none was cancelled while queued)."""
    return max(0, counters.get(f"seq:{prio}", 0) - counters.get(f"head:{prio}", 0))
