"""The operator commands: info, dlq, task, enqueue, fsck (and schedules, in
cli/schedules.py); each on one `Engine` straight on Redis (REDIS_URL, else the embedded
Redis's socket in DATA_DIR), no running service needed.

Imports: engine, eas (the services' overview and audit targets), models, errors, settings,
redis_server, cli.args.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from app.cli.args import CLEAR_SCREEN, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from app.cli.schedules import schedules_command
from app.eas import store as eas_store
from app.eas.hub import EasHub
from app.engine import admin, audits, fsck, views
from app.engine.engine import Engine
from app.engine.queue import Queue
from app.engine.scripts import answering
from app.errors import Invalid, NotFound, TaskstreamError
from app.models import TERMINAL, State, TaskRequest, check_eval_id
from app.redis_server import RedisServer
from app.settings import Settings

# --- running one command ------------------------------------------------------------------


def _redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    return RedisServer(settings.data_dir).url


def _print_json(value: Any, indent: bool = False) -> None:
    option = orjson.OPT_INDENT_2 if indent else 0
    sys.stdout.write(orjson.dumps(value, option=option).decode() + "\n")


Command = Callable[[Engine, argparse.Namespace], Awaitable[int]]


async def _with_engine(settings: Settings, args: argparse.Namespace, command: Command) -> int:
    if not settings.redis_url:  # the embedded Redis fsyncs every write under fsync
        settings = dataclasses.replace(settings, server_fsyncs=settings.durability == "fsync")
    engine = Engine.connect(_redis_url(settings), settings)
    try:
        with answering():  # what a command writes is answered to its user (DURABILITY)
            return await command(engine, args)
    finally:
        await engine.close()


def run_command(settings: Settings, args: argparse.Namespace, command: Command) -> int:
    """Run one operator command; domain errors become one line on stderr."""
    try:
        return asyncio.run(_with_engine(settings, args, command))
    except Invalid as exc:
        print(f"taskstream: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TaskstreamError as exc:
        print(f"taskstream: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        if args.command == "info":
            return EXIT_OK
        print("taskstream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# info


async def _report(engine: Engine, hub: EasHub) -> dict[str, Any]:
    counts = await views.counts(engine.default)
    return {
        "queue": engine.settings.queue,
        **counts,
        "consumers": await views.consumers(engine.default),
        "queues": await views.queues_overview(engine),
        "eas": await hub.overview(),
    }


async def info_command(engine: Engine, args: argparse.Namespace) -> int:
    hub = EasHub(engine, "info", forward=False)
    tty = sys.stdout.isatty()
    shown = 0
    while True:
        report = await _report(engine, hub)
        if args.interval is None:
            print_info(report, args.json)
            return EXIT_OK
        if tty:
            sys.stdout.write(CLEAR_SCREEN)
            print(f"every {args.interval:g}s  {time.strftime('%Y-%m-%d %H:%M:%S')}  (Ctrl-C)")
        elif shown and not args.json:
            print()
        if args.json:
            _print_json(report)
        else:
            print_info(report, False)
        sys.stdout.flush()
        shown += 1
        if args.count and shown >= args.count:
            return EXIT_OK
        await asyncio.sleep(args.interval)


def print_info(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(report, indent=True)
        return
    print(f"queue {report['queue']}")
    for state, by_prio in report["by_priority"].items():
        cells = "  ".join(f"{p}={n}" for p, n in by_prio.items())
        print(f"  {state:<11} {report['states'][state]:>8}   {cells}")
    print(f"  {'dlq':<11} {report['dlq']:>8}")
    print("  totals     " + "  ".join(f"{k}={v}" for k, v in sorted(report["totals"].items())))
    print(f"consumers {len(report['consumers'])}")
    for consumer in report["consumers"]:
        name, pending, idle = consumer["name"], consumer["pending"], consumer["idle_ms"]
        print(f"  {name:<32} pending={pending} idle={idle}ms")
    for name, row in report["queues"].items():
        states = "  ".join(f"{s}={n}" for s, n in row["states"].items())
        print(f"queue {name}  {states}  dlq={row['dlq']}  consumers={len(row['consumers'])}")
    for row in report["eas"]:
        print_eas(row)


def print_eas(row: dict[str, Any]) -> None:
    """One PAI-EAS service: its input queue and sink, and where it forwards to."""
    print(f"eas service {row['service']}  target={row['target'] or '-'}")
    for label in ("input", "sink"):
        q = row[label]
        states = "  ".join(f"{s}={q[s]}" for s in ("queued", "processing", "retrying"))
        print(
            f"  {label:<6} length={q['length']}  {states}  dlq={q['dlq']}"
            f"  consumers={len(q['consumers'])}"
        )


# dlq


async def dlq_command(engine: Engine, args: argparse.Namespace) -> int:
    queue = engine.default
    if args.action == "list":
        page = await admin.dlq_list(queue, args.limit, args.offset)
        if args.json:
            _print_json(page, indent=True)
        else:
            print_dlq(page, args.offset)
    elif args.action == "retry":
        _print_json(await admin.dlq_retry(queue, check_eval_id(args.eval_id)))
    elif args.eval_id is not None:
        if args.older_than_days is not None:
            raise Invalid("give EVAL_ID or --older-than-days, not both")
        if not await admin.dlq_purge(queue, eval_id=check_eval_id(args.eval_id)):
            raise NotFound(f"not in the dead-letter queue: {args.eval_id}")
        _print_json({"removed": 1})
    else:
        days = args.older_than_days
        removed = await admin.dlq_purge(queue, older_than=None if days is None else days * 86400)
        _print_json({"removed": removed})
    return EXIT_OK


def print_dlq(page: dict[str, Any], offset: int) -> None:
    tasks = page["tasks"]
    shown = f", showing {offset + 1}-{offset + len(tasks)}" if tasks else ""
    print(f"dlq {page['count']}{shown}")
    for dead in tasks:
        error = " ".join(str(dead["error"]).split())
        error = error if len(error) <= 80 else error[:77] + "..."
        print(
            f"  {dead['eval_id']:<24} {dead['failed_at']}  attempts={dead['attempts']}"
            f"  priority={dead['task']['priority']}  {error}"
        )


# task


async def task_command(engine: Engine, args: argparse.Namespace) -> int:
    record = await engine.default.get(check_eval_id(args.eval_id))
    if args.json:
        _print_json(record, indent=True)
    else:
        print_record(record)
    return EXIT_OK


def print_record(record: dict[str, Any]) -> None:
    for key, value in record.items():
        if value is None:
            text = "-"
        elif isinstance(value, dict | list):
            text = orjson.dumps(value).decode()
        else:
            text = str(value)
        print(f"{key:<13} {text}")


# enqueue


async def enqueue_command(engine: Engine, args: argparse.Namespace) -> int:
    code = sys.stdin.read() if args.code == "-" else args.code
    data: dict[str, Any] = {"code": code, "priority": args.priority, "delay": args.delay}
    if args.eval_id is not None:
        data["eval_id"] = args.eval_id
    if args.queue is not None:
        data["queue"] = args.queue
    if args.tenant is not None:
        data["tenant"] = args.tenant
    request = TaskRequest.parse(data)
    queue = engine.queue(request.queue)
    await queue.ensure_groups()
    answer = await queue.enqueue(request)
    _print_json(answer)
    if args.wait is None:
        return EXIT_OK
    record = await wait_until_final(engine.default, request.eval_id, args.wait)
    _print_json(record)
    if record["status"] not in TERMINAL:
        print(
            f"taskstream: {request.eval_id} is still {record['status']} after {args.wait:g}s",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK if record["status"] == State.COMPLETED else EXIT_FAILURE


async def wait_until_final(queue: Queue, eval_id: str, timeout: float) -> dict[str, Any]:
    """Poll the record until it is terminal (completed, failed, cancelled, expired), or
    `timeout` is up."""
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        record = await queue.get(eval_id)
        left = deadline - time.monotonic()
        if record["status"] in TERMINAL or left <= 0:
            return record
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, 0.5)


# fsck


async def fsck_command(engine: Engine, args: argparse.Namespace) -> int:
    more = await eas_store.audit_targets(engine)  # every PAI-EAS service's queues
    report = await fsck.Audit(engine, repair=args.repair, more=more).run()
    await audits.record(engine, report)
    if args.json:
        _print_json(report.view(), indent=True)
    else:
        print_fsck(report)
    return EXIT_OK if report.consistent else EXIT_FAILURE


def print_fsck(report: fsck.Report) -> None:
    """One line per orphan (class, queue, ref, detail, and what --repair did), then a total."""
    for orphan in report.orphans:
        done = f"  -> {orphan.action}" if orphan.action else ""
        print(f"{orphan.kind:<26} {orphan.queue}  {orphan.ref}: {orphan.detail}{done}")
    scope = f"{len(report.queues)} queues, {report.checked} items checked"
    for skipped in report.skipped:
        print(f"not checked: {skipped}")
    if report.consistent:
        print(f"fsck: consistent ({scope})")
        return
    classes = ", ".join(f"{kind}={n}" for kind, n in sorted(report.found().items()))
    tail = f"{report.repaired()} repaired" if report.repair else "run with --repair to fix them"
    print(f"fsck: {len(report.orphans)} orphans ({classes}); {tail} ({scope})")


COMMANDS: dict[str, Command] = {
    "info": info_command,
    "dlq": dlq_command,
    "task": task_command,
    "enqueue": enqueue_command,
    "fsck": fsck_command,
    "schedules": schedules_command,
}
