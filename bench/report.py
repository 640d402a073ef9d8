"""Targets, ratios and the Markdown table printed at the end of `python -m bench`."""

from __future__ import annotations

from typing import Any

SHARED_CORES_NOTE = (
    "NOTE: one machine runs everything: the service, redis-server, the stub executor and the "
    "load generator share the same cores, so every figure is a lower bound for a deployment "
    "where they run on separate machines (see the CPU % per process in the details)."
)


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _rate(value: float | None, unit: str = "/s") -> str:
    return "—" if value is None else f"{value:,.0f}{unit}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} ms"


def _conc(results: dict[str, Any]) -> int:
    return int(_get(results, "plan", "concurrency") or 32)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    gen, conc = results.get("generator", "wrk"), _conc(results)
    drain = _get(results, "drain", "rate")
    ceiling_a = _get(results, "ceilings", "clients", "aiohttp", "rps")
    enqueue = _get(results, "enqueue", f"{gen}_c{conc}", "rps")
    ceiling_b = _get(results, "ceilings", "trivial", f"{gen}_c{conc}", "rps")
    p99 = _get(results, "latency", "p99_ms")
    lookup = _get(results, "lookup", "p99_ms")
    memory = _get(results, "memory", "bytes_per_task")
    queued = _get(results, "lookup", "queued") or _get(results, "plan", "fill_n")
    rate = _get(results, "plan", "latency_rate") or 500

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    b_gen_cpu = _get(results, "ceilings", "trivial", f"{gen}_c{conc}", "cpu_pct_self")
    b_bound = " (ceiling generator-bound: install wrk)" if (b_gen_cpu or 0) >= 90 else ""
    rows = [
        {
            "target": "drain ≥ 70 % of ceiling (a)",
            "measured": f"{_rate(drain)} of {_rate(ceiling_a)}",
            "value": ratio(drain, ceiling_a),
            "goal": 0.70,
            "higher_is_better": True,
        },
        {
            "target": f"enqueue, {conc} clients ≥ 50 % of ceiling (b)",
            "measured": f"{_rate(enqueue)} of {_rate(ceiling_b)}{b_bound}",
            "value": ratio(enqueue, ceiling_b),
            "goal": 0.50,
            "higher_is_better": True,
        },
        {
            "target": f"enqueue→executor p99 ≤ 20 ms at {rate:g}/s",
            "measured": _ms(p99),
            "value": p99,
            "goal": 20.0,
            "higher_is_better": False,
        },
        {
            "target": f"GET /tasks/{{id}} p99 ≤ 5 ms at {queued:,} queued",
            "measured": _ms(lookup),
            "value": lookup,
            "goal": 5.0,
            "higher_is_better": False,
        },
        {
            "target": "Redis memory ≤ 500 B per queued task",
            "measured": "—" if memory is None else f"{memory:,.0f} B",
            "value": memory,
            "goal": 500.0,
            "higher_is_better": False,
        },
    ]
    for row in rows:
        value, goal = row["value"], row["goal"]
        if value is None:
            row["met"], row["ratio"] = None, None
        elif row["higher_is_better"]:
            row["met"], row["ratio"] = value >= goal, value
        else:
            row["met"], row["ratio"] = value <= goal, value / goal
    return rows


def _ratio_cell(row: dict[str, Any]) -> str:
    if row["ratio"] is None:
        return "—"
    if row["higher_is_better"]:
        return f"{100 * row['ratio']:.0f} %"
    return f"{100 * row['ratio']:.0f} % of limit"


def _met_cell(row: dict[str, Any]) -> str:
    return {None: "—", True: "yes", False: "**no**"}[row["met"]]


def _enqueue_rows(results: dict[str, Any], gen: str, conc: int) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for c in (1, conc):
        run = _get(results, "enqueue", f"{gen}_c{c}")
        if run:
            who = "1 client, sequential" if c == 1 else f"{c} concurrent clients"
            note = f"{gen} -c{c}; p50 {_ms(run['p50_ms'])}, p99 {_ms(run['p99_ms'])}"
            rows.append((f"Enqueue `POST /tasks`, {who}", _rate(run["rps"], " tasks/s"), note))
    alt = [_get(results, "enqueue", f"aiohttp_c{c}", "rps") for c in (1, conc)]
    if gen != "aiohttp" and any(alt):
        rows.append(
            (
                "Enqueue, same runs with the aiohttp generator",
                f"{_rate(alt[0])} / {_rate(alt[1])}",
                f"1 / {conc} clients; one Python process",
            )
        )
    drain = results.get("drain")
    if drain:
        batch = drain["batch_enqueue"]
        rows.append(
            (
                "Batch enqueue `POST /tasks/batch` (1000 per request)",
                _rate(batch["rate"], " tasks/s"),
                f"{batch['tasks']:,} tasks in {batch['seconds']} s, one client",
            )
        )
    return rows


def _drain_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    drain = results.get("drain")
    if drain:
        cpu = drain.get("cpu_pct", {})
        rows.append(
            (
                f"Drain {drain['tasks']:,} pre-queued tasks, CONCURRENCY={drain['concurrency']}",
                _rate(drain["rate"], " tasks/s"),
                f"{drain['seconds_steady']} s first→last completion "
                f"(median of {len(drain.get('runs', [])) or 1}; {drain.get('seconds_from_resume')} "
                "s from the queue's resume, the service already started); CPU % of a core: "
                + ", ".join(f"{k} {v}" for k, v in cpu.items()),
            )
        )
    lat = results.get("latency")
    if lat:
        rows.append(
            (
                f"Enqueue→executor latency at {lat['rate']:g} tasks/s (open loop)",
                f"p50 {_ms(lat['p50_ms'])}, p99 {_ms(lat['p99_ms'])}",
                f"max {_ms(lat['max_ms'])}; {lat['measured']:,} tasks over {lat['seconds']:g} s; "
                f"`POST /tasks` answer p99 {_ms(lat['enqueue_answer_p99_ms'])}",
            )
        )
    return rows


def _queue_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    look = results.get("lookup")
    if look:
        rows.append(
            (
                f"`GET /tasks/{{id}}` with {look['queued']:,} tasks queued",
                f"p50 {_ms(look['p50_ms'])}, p99 {_ms(look['p99_ms'])}",
                f"{look['lookups']:,} sequential lookups at random positions; max "
                f"{_ms(look['max_ms'])}",
            )
        )
    mem = results.get("memory")
    if mem:
        rows.append(
            (
                f"Redis memory per queued task ({mem['code_bytes']}-byte `code`)",
                f"{mem['bytes_per_task']:,.0f} B",
                f"used_memory delta / {mem['tasks']:,}; task hash ≈ {mem['task_hash_bytes']:,.0f}"
                f" B + stream entry ≈ {mem['stream_bytes_per_entry']:,.0f} B; "
                f"filled at {mem['fill']['rate']:,.0f} tasks/s (enqueue_many)",
            )
        )
    return rows


def _cpu_note(cpu: dict[str, Any]) -> str:
    return "CPU % of a core: " + ", ".join(f"{k} {v}" for k, v in cpu.items())


def _retry_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    retry = results.get("retry")
    if not retry:
        return []
    checks = retry["checks"]
    plain = retry.get("plain_drain_rate")
    versus = (
        f"{100 * retry['vs_plain']:.0f} % of the plain drain's {_rate(plain, ' tasks/s')} "
        f"(executions/s: {100 * retry['executions_vs_plain']:.0f} %)"
        if plain
        else "no plain drain in this run"
    )
    counted = "as expected" if checks["ok"] else f"**counts off**: {checks}"
    return [
        (
            f"Retry drain: {retry['tasks']:,} tasks, every {_nth(retry)} answered 503 once, "
            f"RETRY_BASE_DELAY={retry['retry_base_delay']:g}, no jitter",
            _rate(retry["rate"], " tasks/s"),
            f"{retry['seconds_steady']} s first→last completion; {versus}; stub executions "
            f"{checks['stub_executions']:,} = {retry['tasks']:,} + {retry['flagged']:,} "
            f"({counted}); {_cpu_note(retry.get('cpu_pct', {}))}",
        )
    ]


def _nth(retry: dict[str, Any]) -> str:
    n, flagged = retry["tasks"], retry["flagged"]
    return "third" if flagged and round(n / flagged) == 3 else f"{flagged:,}th"


def _scheduled_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    sched = results.get("scheduled")
    if not sched:
        return []
    rows: list[tuple[str, str, str]] = []
    mem = sched.get("memory")
    if mem:
        queued = _get(results, "memory", "bytes_per_task")
        than = f"; a queued task: {queued:,.0f} B (above)" if queued else ""
        rows.append(
            (
                f"Redis memory per scheduled task ({sched['code_bytes']}-byte `code`)",
                f"{mem['bytes_per_task']:,.0f} B",
                f"used_memory delta / {mem['tasks']:,}; task hash (holds the payload; "
                f"encoding {mem.get('task_hash_encoding', '?')}) ≈ "
                f"{mem['task_hash_bytes']:,.0f} B + `scheduled` zset ≈ "
                f"{mem['zset_bytes_per_task']:,.0f} B; capped events stream "
                f"{mem['events_stream_bytes'] / 1e6:.1f} MB in the delta{than}",
            )
        )
    for procs in (1, 2):
        run = sched.get(f"processes_{procs}")
        if not run:
            continue
        who = "1 service process" if procs == 1 else f"{procs} service processes racing"
        once = run["checks"]
        exact = (
            f"stream length {once['stream_length']:,}, each task queued once"
            if once["ok"]
            else f"**counts off**: {once}"
        )
        rows.append(
            (
                f"Promotion of {run['tasks']:,} scheduled tasks due at the same moment, {who}",
                _rate(run["rate"], " tasks/s"),
                f"all `queued` {run['seconds_from_due']} s after the due time (first after "
                f"{run['first_ms']:g} ms); {run['promote_calls']:,} promote calls, "
                f"{run['script_us_per_task']:g} µs of Redis script time per task; {exact}; "
                + _cpu_note(run.get("cpu_pct", {})),
            )
        )
    return rows


def _per_item(run: dict[str, Any]) -> str:
    """`per item: service 1,525 µs CPU, Redis 408 µs CPU, 4.1 EVALSHA, 1.05 XREAD`."""
    cpu = run.get("cpu_us_per_item") or {}
    calls = run.get("redis_calls_per_item_by_command") or {}
    parts = [
        f"{who} {cpu[key]:,.0f} µs CPU"
        for key, who in (("service", "service"), ("redis", "Redis"))
        if key in cpu
    ]
    parts += [f"{calls[c]:g} {c.upper()}" for c in ("evalsha", "xread") if calls.get(c)]
    return "per item: " + ", ".join(parts) if parts else ""


def _eas_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    eas = results.get("eas")
    if not eas:
        return []
    rows: list[tuple[str, str, str]] = []
    reads = {
        "proto": "protobuf read by `requestId` + `_timeout_`",
        "json": "imitation JSON status read by `request_id` + `_timeout_`",
    }
    for read, how in reads.items():
        run = eas.get(f"roundtrip_{read}")
        if not run:
            continue
        checks = run["checks"]
        counted = (
            f"all {checks['puts']:,} puts forwarded once and answered"
            if checks["ok"]
            else f"**checks failed**: {checks}"
        )
        rows.append(
            (
                f"PAI-EAS round trip, {run['concurrency']} clients: put → answer read from the "
                f"sink ({how})",
                _rate(run["rate"], " items/s"),
                f"p50 {_ms(run['p50_ms'])}, p99 {_ms(run['p99_ms'])} put→answer (put alone p50 "
                f"{_ms(run['put_p50_ms'])}); {run['seconds']:g} s, stub target, "
                f"EAS_CONCURRENCY={eas.get('eas_concurrency')}; {_per_item(run)}; {counted}; "
                + _cpu_note(run.get("cpu_pct", {})),
            )
        )
    watch = eas.get("watch") or {}
    for key in sorted((k for k in watch if k.startswith("watchers_")), key=lambda k: int(k[9:])):
        run = watch[key]
        checks = run["checks"]
        once = (
            "each index delivered exactly once, sink empty after"
            if checks["ok"]
            else f"**duplicates {checks['duplicates']}, missing {checks['missing']}**: {checks}"
        )
        who = "1 watcher" if run["watchers"] == 1 else f"{run['watchers']} watchers (own uids)"
        split = f"; per watcher {', '.join(f'{n:,}' for n in run['per_watcher'])}"
        rows.append(
            (
                f"PAI-EAS watch: {run['expected']:,} sink items drained by {who}, "
                f"`_window_={run['window']}`, `_auto_commit_`",
                _rate(run["rate"], " items/s"),
                f"{run['seconds_first_to_last']} s first→last frame"
                f"{split if run['watchers'] > 1 else ''}; {once}; {_per_item(run)}; sink "
                f"filled at {run['fill']['rate']:,.0f} items/s (32 concurrent POSTs); "
                + _cpu_note(run.get("cpu_pct", {})),
            )
        )
    return rows


def _ceiling_rows(results: dict[str, Any], gen: str, conc: int) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    clients = _get(results, "ceilings", "clients") or {}
    if clients.get("aiohttp"):
        others = ", ".join(
            f"{name} {_rate(run.get('rps'), ' req/s')}"
            for name, run in clients.items()
            if name != "aiohttp" and "rps" in run
        )
        rows.append(
            (
                f"Ceiling (a): aiohttp client → stub, {conc} concurrent",
                _rate(clients["aiohttp"]["rps"], " req/s"),
                f"same body and stub: {others}",
            )
        )
    trivial = _get(results, "ceilings", "trivial") or {}
    if trivial.get(f"{gen}_c{conc}"):
        other = trivial.get(f"aiohttp_c{conc}") if gen != "aiohttp" else None
        note = f"{gen} -c{conc}; 1 client: {_rate(_get(trivial, f'{gen}_c1', 'rps'), ' req/s')}"
        if other:
            note += f"; aiohttp generator -c{conc}: {_rate(other['rps'], ' req/s')}"
        rows.append(
            (
                "Ceiling (b): trivial Starlette endpoint, same uvicorn config",
                _rate(trivial[f"{gen}_c{conc}"]["rps"], " req/s"),
                note,
            )
        )
    stub = _get(results, "ceilings", "stub_wrk")
    if stub:
        rows.append(
            (
                "Stub executor capacity",
                _rate(stub["rps"], " req/s"),
                f"wrk -c{conc}, stub at {stub['cpu_pct'].get('stub')} % of a core",
            )
        )
    return rows


def _figures(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    gen, conc = results.get("generator", "wrk"), _conc(results)
    return (
        _enqueue_rows(results, gen, conc)
        + _drain_rows(results)
        + _queue_rows(results)
        + _retry_rows(results)
        + _scheduled_rows(results)
        + _eas_rows(results)
        + _ceiling_rows(results, gen, conc)
    )


def interference(results: dict[str, Any]) -> dict[str, float]:
    """CPU % of a core that processes outside the benchmark used during each measured run."""
    found: dict[str, float] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            other = node.get("cpu_pct", {}).get("other") if "cpu_pct" in node else None
            if isinstance(other, int | float):
                found[path] = other
            for key, value in node.items():
                if key != "cpu_pct":
                    walk(value, f"{path}.{key}" if path else key)

    walk({k: v for k, v in results.items() if k != "profiles"}, "")
    return found


def interference_note(results: dict[str, Any], threshold: float = 15.0) -> str | None:
    found = interference(results)
    noisy = {k: v for k, v in found.items() if v >= threshold}
    if not noisy:
        return None
    worst = max(noisy.values())
    return (
        f"WARNING: processes outside the benchmark used up to {worst:.0f} % of a core during "
        f"{len(noisy)} of {len(found)} measured runs ({', '.join(sorted(noisy))}); those "
        "figures understate the service. Re-run on a quiet machine."
    )


def _eas_libraries(results: dict[str, Any]) -> str:
    """The PAI-EAS stage's frames cost depends on protobuf's implementation (python/upb)."""
    if not results.get("eas"):
        return ""
    m = results.get("machine", {})
    libs = m.get("libraries", {})
    kind = m.get("protobuf_implementation")
    return (
        f", protobuf {libs.get('protobuf')}{f' ({kind} implementation)' if kind else ''}, "
        f"websockets {libs.get('websockets')}"
    )


def markdown(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    libs = m.get("libraries", {})
    lines = [
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores"
        f"{' (VM)' if m.get('virtualised') else ''}, {m.get('ram_gib')} GiB RAM; "
        f"Python {m.get('python', '').split()[-1]}, Redis {m.get('redis')} (AOF off, TCP "
        f"loopback); uvicorn {libs.get('uvicorn')}, starlette {libs.get('starlette')}, "
        f"redis-py {libs.get('redis')}, aiohttp {libs.get('aiohttp')}"
        + _eas_libraries(results)
        + ". Service, Redis, stub executor and load generator share these cores. "
        + f"Commit {results.get('code', {}).get('commit')}.",
        "",
        "| Figure | Result | Notes |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in _figures(results)]
    lines += ["", "| Target | Measured | Ratio | Met |", "| --- | --- | --- | --- |"]
    for row in results.get("targets") or targets(results):
        lines.append(
            f"| {row['target']} | {row['measured']} | {_ratio_cell(row)} | {_met_cell(row)} |"
        )
    note = interference_note(results)
    if note:
        lines += ["", note]
    return "\n".join(lines)


def _cost(cpu_pct: float | None, rate: float) -> str:
    """CPU microseconds per operation of a process at `cpu_pct` % of a core."""
    if cpu_pct is None or not rate:
        return ""
    return f"{1e4 * cpu_pct / rate:,.0f} µs/op"


def _eas_details(results: dict[str, Any]) -> list[str]:
    eas = results.get("eas") or {}
    runs = {f"round trip {k[10:]}": v for k, v in eas.items() if k.startswith("roundtrip_")}
    runs.update(
        {
            k.replace("_", " "): v
            for k, v in (eas.get("watch") or {}).items()
            if k.startswith("watchers_")
        }
    )
    lines = []
    for name, run in runs.items():
        if not isinstance(run, dict) or run.get("rate") is None:
            continue
        per = run.get("cpu_us_per_item") or {}
        lines.append(
            f"  eas      {name:<24} {run['rate']:>10,.0f} items/s "
            f"{per.get('service', 0):>6,.0f} µs/op  redis {per.get('redis', 0):,.0f} µs/op, "
            f"{run.get('redis_calls_per_item')} Redis calls/op (scripts' included); "
            + ", ".join(f"{k} {v} %" for k, v in (run.get("cpu_pct") or {}).items())
        )
    return lines


def details(results: dict[str, Any]) -> list[str]:
    """CPU per process and the generator check, for reading the figures."""
    gen, conc = results.get("generator", "wrk"), _conc(results)
    lines = ["Details (CPU as % of one core; 200 % = the whole machine):"]
    for section in ("enqueue", "ceilings"):
        runs = results.get(section, {})
        if section == "ceilings":
            runs = {
                **{f"trivial {k}": v for k, v in runs.get("trivial", {}).items()},
                **{f"client {k}": v for k, v in runs.get("clients", {}).items()},
            }
        for name, run in runs.items():
            if not isinstance(run, dict) or "rps" not in run:
                continue
            own = run.get("generator_cpu_pct", run.get("cpu_pct_self"))
            cpu = run.get("cpu_pct", {})
            main = cpu.get("service", cpu.get("server", own if section == "ceilings" else None))
            lines.append(
                f"  {section:<8} {name:<24} {run['rps']:>10,.0f} req/s "
                f"{_cost(main, run['rps']):>8}  generator {own} %, "
                + ", ".join(f"{k} {v} %" for k, v in cpu.items())
            )
    drain = results.get("drain")
    if drain:
        cpu = drain.get("cpu_pct", {})
        lines.append(
            f"  drain    {'CONCURRENCY=' + str(drain['concurrency']):<24} "
            f"{drain['rate']:>10,.0f} tasks/s {_cost(cpu.get('service'), drain['rate']):>6}  "
            + ", ".join(f"{k} {v} %" for k, v in cpu.items())
        )
    retry = results.get("retry")
    if retry:
        cpu = retry.get("cpu_pct", {})
        lines.append(
            f"  retry    {'CONCURRENCY=' + str(retry['concurrency']):<24} "
            f"{retry['rate']:>10,.0f} tasks/s {_cost(cpu.get('service'), retry['rate']):>6}  "
            + ", ".join(f"{k} {v} %" for k, v in cpu.items())
        )
    lines += _eas_details(results)
    for procs in (1, 2):
        run = _get(results, "scheduled", f"processes_{procs}")
        if run:
            cpu = run.get("cpu_pct", {})
            lines.append(
                f"  promote  {str(procs) + ' process(es)':<24} {run['rate']:>10,.0f} tasks/s "
                f"{_cost(cpu.get('redis'), run['rate']):>6} (redis)  "
                + ", ".join(f"{k} {v} %" for k, v in cpu.items())
            )
    lines.append(
        "  (µs/op: CPU of the process under test per request or task: the service, the "
        "trivial server, or the client for the client ceilings)"
    )
    wrk_b = _get(results, "ceilings", "trivial", f"wrk_c{conc}", "rps")
    aio_b = _get(results, "ceilings", "trivial", f"aiohttp_c{conc}", "rps")
    if wrk_b and aio_b:
        faster = "wrk" if wrk_b >= aio_b else "aiohttp"
        lines.append(
            f"  generator check on the trivial endpoint: wrk {wrk_b:,.0f} vs one aiohttp "
            f"process {aio_b:,.0f} req/s -> {faster} is the less limiting generator; figures "
            f"(1) and (b) use {gen}."
        )
    return lines
