"""The per-task cost report of issue 14: figures beside the references and their ratios.

Printed after the general report of `python -m bench` (and by `--report FILE`): the cost
table (Redis and service µs per task, each as a multiple of the same run's Streams floor
and bare stub), the commands per task from commandstats, replica scaling, punctuality,
keep-up, memory, and the exactly-once checks. `targets` adds issue 14's goals to the
run's target table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FLOOR_GOAL_DRAIN, FLOOR_GOAL_ENQUEUE = 4.0, 3.0  # Redis µs per task / the Streams floor
STUB_GOAL_DRAIN, STUB_GOAL_ENQUEUE = 2.0, 3.0  # service µs per task / stub µs per request
MEMORY_GOAL, MEMORY_PEER = 450.0, 524.0  # bytes per queued task; the peer harness's figure
PUNCTUAL_GOAL, PUNCTUAL_BULLMQ = 5.0, 40.5  # ms: p99 goal; BullMQ's median
KEEPUP_GOAL = 20.0  # ms, p99 enqueue -> executor
SCALING_NOTE = (
    "2 cores cannot show absolute scaling (Redis, the stub, the bench and every replica "
    "share them): read the CPU per task and Redis's distance from one full core."
)


def _get(node: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def refs(results: dict[str, Any]) -> tuple[float | None, float | None]:
    """(Streams floor Redis µs per task, stub µs per HTTP request) of this run."""
    return _get(results, "refs", "floor", "redis_us"), _get(
        results, "refs", "stub", "us_per_request"
    )


@dataclass(frozen=True)
class Row:
    label: str  # the cost table's
    short: str  # the command table's column
    fig: dict[str, Any]  # redis_us, service_us, rate, evalsha_per_task, script_us, commands
    kind: str  # enqueue or drain: which goals apply


def scenarios(results: dict[str, Any]) -> list[Row]:
    """Every cost row present in the results, in table order."""
    gen = results.get("generator", "wrk")
    conc = int(_get(results, "plan", "concurrency") or 32)
    rows: list[Row] = []
    for clients in (conc, 1):
        run = _get(results, "enqueue", f"{gen}_c{clients}")
        if run and run.get("cost"):
            who = f"{clients} client{'s' if clients > 1 else ''}"
            fig = {**run["cost"], "rate": run["rps"]}
            rows.append(
                Row(f"enqueue `POST /tasks`, {who} ({gen})", f"enqueue c{clients}", fig, "enqueue")
            )
    batch = _get(results, "drain", "batch_enqueue")
    if batch and batch.get("redis_us") is not None:
        rows.append(Row("enqueue `POST /tasks/batch`, 1000 per request", "batch", batch, "enqueue"))
    drain = results.get("drain")
    if drain and drain.get("redis_us") is not None:
        label = (
            f"drain through the HTTP stub, CONCURRENCY={drain.get('concurrency')} "
            f"(median of {len(drain.get('runs', []))})"
        )
        rows.append(Row(label, "drain", drain, "drain"))
    engine = results.get("engine")
    if engine and engine.get("redis_us") is not None:
        label = f"engine-only drain, no-op executor (median of {len(engine.get('runs', []))})"
        rows.append(Row(label, "engine", engine, "drain"))
    for name, variant in (_get(results, "drain", "variants") or {}).items():
        rows.append(Row(f"drain with {name}", name, variant, "drain"))
    return rows


def _x(value: float | None, ref: float | None) -> float | None:
    return None if value is None or not ref else value / ref


def _fx(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}×"


def _f(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def cost_table(results: dict[str, Any]) -> list[str]:
    floor, stub = refs(results)
    lines = [
        f"References (same run): Streams floor {_f(floor, 2)} µs of Redis CPU per task; bare "
        f"stub executor {_f(stub, 2)} µs of CPU per HTTP request.",
        "",
        "| per task | tasks/s | Redis µs | × floor (goal) | service µs | × stub (goal) "
        "| EVALSHA | script µs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in scenarios(results):
        label, fig = row.label, row.fig
        fgoal = FLOOR_GOAL_DRAIN if row.kind == "drain" else FLOOR_GOAL_ENQUEUE
        sgoal = STUB_GOAL_DRAIN if row.kind == "drain" else STUB_GOAL_ENQUEUE
        rx, sx = _x(fig.get("redis_us"), floor), _x(fig.get("service_us"), stub)
        lines.append(
            f"| {label} | {_f(fig.get('rate'), 0)} | {_f(fig.get('redis_us'))} | "
            f"{_fx(rx)} (≤ {fgoal:g}×) | {_f(fig.get('service_us'))} | {_fx(sx)} (≤ {sgoal:g}×) | "
            f"{_f(fig.get('evalsha_per_task'), 3)} | {_f(fig.get('script_us'))} |"
        )
    return lines


def _commands(fig: dict[str, Any]) -> dict[str, Any]:
    """A row's commands per task; for a median of runs, those of the run it names (results
    of the first runs of this harness kept them only inside each run's `cost`)."""
    if fig.get("commands"):
        return dict(fig["commands"])
    runs, which = fig.get("runs") or [], fig.get("commands_of_run")
    if which and len(runs) >= which:
        return dict(_get(runs[which - 1], "cost", "commands") or {})
    return {}


def command_table(results: dict[str, Any]) -> list[str]:
    """Calls and usec per task of each command, per scenario (commandstats deltas)."""
    columns: list[tuple[str, dict[str, Any]]] = []
    floor = _get(results, "refs", "floor", "commands")
    if floor:
        columns.append(("floor", floor))
    for row in scenarios(results):
        if commands := _commands(row.fig):
            columns.append((row.short, commands))
    if not columns:
        return []
    names: list[str] = []
    for _, commands in columns:
        names += [n for n in commands if n not in names]
    lines = [
        "| command: calls / µs per task | " + " | ".join(c for c, _ in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for name in names:
        cells = []
        for _, commands in columns:
            got = commands.get(name)
            cells.append("—" if not got else f"{got['calls']:.3g} / {got['usec']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def scaling_table(results: dict[str, Any]) -> list[str]:
    scaling = results.get("scaling")
    if not scaling:
        return []
    lines = [
        f"Replica scaling, {scaling['tasks']:,} tasks per run. {SCALING_NOTE}",
        "",
        "| processes | tasks/s | Redis µs/task | service µs/task | Redis % of one core "
        "| one Redis core at this cost | machine CPU % |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, row in scaling.items():
        if not key.startswith("processes_"):
            continue
        lines.append(
            f"| {row['processes']} | {_f(row['rate'], 0)} | {_f(row['redis_us'])} | "
            f"{_f(row['service_us'])} | {_f(row['redis_cpu_pct'])} % | "
            f"{_f(row['redis_bound_rate'], 0)} tasks/s | {_f(row['machine_cpu_pct'])} % of "
            f"{100 * scaling.get('machine_cores', 2)} % |"
        )
    return lines


def cluster_table(results: dict[str, Any]) -> list[str]:
    cluster = results.get("cluster")
    if not cluster or "note" not in cluster:
        return []
    lines = [
        f"Cluster partitions, {cluster['tasks']:,} tasks per run, 3 masters ({cluster['note']}).",
        "",
        "| partitions | tasks/s | cluster Redis µs/task "
        "| per master: µs per own task (% of a core) |",
        "| --- | --- | --- | --- |",
    ]
    for key, run in cluster.items():
        if not key.startswith("partitions_"):
            continue
        nodes = "; ".join(
            f"{k} {_f(v['redis_us_per_own_task'])} ({v['redis_cpu_pct']} %)"
            for k, v in run["nodes"].items()
        )
        lines.append(
            f"| {run['partitions']} | {_f(run['rate'], 0)} | {_f(run['redis_us_total'])} "
            f"| {nodes} |"
        )
    return lines


def timely_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    p = results.get("punctual")
    if p:
        lines.append(
            f"- Punctuality, {p['due_per_second']:,.0f} scheduled tasks due per second for "
            f"{p['seconds']:g} s ({p['measure']}): p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, "
            f"max {p['max_ms']} ms over {p.get('measured', p['tasks']):,} tasks, {p['early']} "
            f"early, {p.get('enqueued_after_due', 0)} queued after their due time (left out) "
            f"(goal p99 ≤ {PUNCTUAL_GOAL:g} ms; BullMQ's median {PUNCTUAL_BULLMQ} ms)"
        )
    k = results.get("keepup")
    if k:
        lines.append(
            f"- Keep-up, {k['offered_rate']:,.0f} `POST /tasks`/s offered (open loop) for "
            f"{k['seconds']:g} s: enqueue→executor p50 {k['p50_ms']} ms, p99 {k['p99_ms']} ms, "
            f"max {k['max_ms']} ms (goal p99 ≤ {KEEPUP_GOAL:g} ms); achieved "
            f"{_f(k['enqueue_rate'], 0)} enqueues/s and {_f(k['executed_rate'], 0)} "
            f"executions/s; generator send lag p99 {k['send_lag_p99_ms']} ms"
        )
    m = results.get("queued_memory")
    if m:
        lines.append(
            f"- Memory, {m['tasks']:,} queued tasks ({m['code_bytes']}-byte `code`): "
            f"{m['bytes_per_task']} B per task (goal ≤ {MEMORY_GOAL:g} B; peer harness "
            f"{MEMORY_PEER:g} B): task hash {m['task_hash_bytes']} B, stream entry "
            f"{m['stream_bytes_per_entry']} B, events stream {m['events_stream_bytes_per_task']} B"
        )
    return lines


def once_table(results: dict[str, Any]) -> list[str]:
    checks = results.get("exactly_once") or []
    if not checks:
        return []
    lines = [
        "| exactly-once check | tasks | as expected | missing | duplicated | unexpected | ok |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in checks:
        lines.append(
            f"| {c['scenario']} | {c['expected']:,} | {c['executed_as_expected']:,} | "
            f"{c['missing'] + c['short']} | {c['duplicated']} | {c['unexpected']} | "
            f"{'yes' if c['ok'] else '**NO**'} |"
        )
    return lines


def once_failed(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in results.get("exactly_once") or [] if not c["ok"]]


def markdown(results: dict[str, Any]) -> str:
    loads = results.get("load_average") or {}
    parts = [
        "### Per-task cost (issue 14)",
        "",
        *cost_table(results),
        "",
        *command_table(results),
    ]
    if scale := scaling_table(results):
        parts += ["", *scale]
    if part := cluster_table(results):
        parts += ["", *part]
    if timely := timely_lines(results):
        parts += ["", *timely]
    if once := once_table(results):
        parts += ["", *once]
    if loads:
        parts += [
            "",
            "Load average (1 min) at each stage's start: "
            + ", ".join(f"{k} {v}" for k, v in loads.items()),
        ]
    return "\n".join(parts)


def _row(target: str, measured: str, value: float | None, goal: float) -> dict[str, Any]:
    met = None if value is None else value <= goal
    return {
        "target": target,
        "measured": measured,
        "value": value,
        "goal": goal,
        "higher_is_better": False,
        "met": met,
        "ratio": None if value is None else value / goal,
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's goals, as rows of the run's target table (only those measured)."""
    floor, stub = refs(results)
    rows = []
    conc = int(_get(results, "plan", "concurrency") or 32)
    figs = {row.short: row.fig for row in scenarios(results)}
    drain, enqueue = figs.get("drain"), figs.get(f"enqueue c{conc}")
    for name, fig, goal, key, ref, unit in (
        ("Redis per drained task", drain, FLOOR_GOAL_DRAIN, "redis_us", floor, "floor"),
        (
            f"Redis per enqueue ({conc} clients)",
            enqueue,
            FLOOR_GOAL_ENQUEUE,
            "redis_us",
            floor,
            "floor",
        ),
        ("service per drained task", drain, STUB_GOAL_DRAIN, "service_us", stub, "stub"),
        ("service per enqueue over HTTP", enqueue, STUB_GOAL_ENQUEUE, "service_us", stub, "stub"),
    ):
        if fig is None or ref is None:
            continue
        x = _x(fig.get(key), ref)
        rows.append(
            _row(
                f"{name} ≤ {goal:g}× the {unit}",
                f"{_f(fig.get(key))} µs = {_fx(x)} of {_f(ref, 2)} µs",
                x,
                goal,
            )
        )
    m = results.get("queued_memory")
    if m and "bytes_per_task" in m:
        rows.append(
            _row(
                f"Redis memory ≤ {MEMORY_GOAL:g} B per queued task ({m['tasks']:,})",
                f"{m['bytes_per_task']:,.0f} B",
                m["bytes_per_task"],
                MEMORY_GOAL,
            )
        )
    p = results.get("punctual")
    if p and p.get("p99_ms") is not None:
        rows.append(
            _row(
                f"scheduled lateness p99 ≤ {PUNCTUAL_GOAL:g} ms at "
                f"{p['due_per_second']:,.0f} due/s",
                f"{p['p99_ms']:.2f} ms",
                p["p99_ms"],
                PUNCTUAL_GOAL,
            )
        )
    k = results.get("keepup")
    if k and k.get("p99_ms") is not None:
        rows.append(
            _row(
                f"enqueue→executor p99 ≤ {KEEPUP_GOAL:g} ms at {k['offered_rate']:,.0f}/s offered",
                f"{k['p99_ms']:.2f} ms",
                k["p99_ms"],
                KEEPUP_GOAL,
            )
        )
    return rows
