"""`taskstream schedules list|show|add|pause|resume|delete`: the cron schedules, straight on
Redis (as the other operator commands), with the same validation as POST /schedules.

Imports: engine (schedules), errors (and argparse, orjson).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import orjson

from app.engine.schedules import Schedule, ScheduleStore, check_name
from app.errors import Invalid

if TYPE_CHECKING:
    from app.engine.engine import Engine

EXIT_OK = 0


def add_parser(commands: Any, epilog: str) -> None:
    """The `schedules` command and its actions."""
    schedules = commands.add_parser(
        "schedules",
        help="list, add, pause, resume or delete cron schedules",
        description="Cron schedules (docs/schedules.md): one task per tick across all replicas, "
        "its eval_id <name>:<tick epoch seconds>. Fired by every running serve or worker.",
        epilog=epilog,
    )
    actions = schedules.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every schedule, by name")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    actions.add_parser("show", help="one schedule, as JSON").add_argument("name", metavar="NAME")
    _add_parser(actions)
    for action, text in (
        ("pause", "stop firing until resumed"),
        ("resume", "fire again from the next tick (missed ones are not fired)"),
        ("delete", "remove the schedule (the tasks it made stay)"),
    ):
        actions.add_parser(action, help=text).add_argument("name", metavar="NAME")


def _add_parser(actions: Any) -> None:
    add = actions.add_parser(
        "add",
        help="create a schedule (as POST /schedules does)",
        description="Create a schedule whose task runs CODE; give --cron or --every.",
    )
    add.add_argument("name", metavar="NAME", help="1-64 of A-Z a-z 0-9 . _ -")
    add.add_argument("code", metavar="CODE", help="the task's code; - reads it from stdin")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="5 fields, e.g. '30 2 * * *'")
    when.add_argument("--every", type=int, metavar="S", help="every S seconds")
    add.add_argument("--timezone", metavar="ZONE", help="IANA zone of --cron (default UTC)")
    add.add_argument("--priority", choices=("high", "default", "low"), default="default")
    add.add_argument("--queue", metavar="NAME", help="a named queue (default: QUEUE_NAME)")
    add.add_argument("--metadata", metavar="JSON", help="the task's metadata, a JSON object")
    add.add_argument("--paused", action="store_true", help="create it paused")


async def schedules_command(engine: Engine, args: argparse.Namespace) -> int:
    store = ScheduleStore(engine)
    if args.action == "list":
        found = await store.listing()
        if args.json:
            _print(found, True)
        else:
            print_schedules(found)
    elif args.action == "show":
        _print(await store.get(check_name(args.name)), True)
    elif args.action == "add":
        schedule, paused = Schedule.parse(_definition(args))
        _print(await store.create(schedule, paused), True)
    elif args.action == "pause":
        _print(await store.pause(check_name(args.name)), True)
    elif args.action == "resume":
        _print(await store.resume(check_name(args.name)), True)
    else:
        _print(await store.delete(check_name(args.name)), False)
    return EXIT_OK


def _definition(args: argparse.Namespace) -> dict[str, Any]:
    """A POST /schedules body from the `add` arguments."""
    task: dict[str, Any] = {
        "code": sys.stdin.read() if args.code == "-" else args.code,
        "priority": args.priority,
    }
    if args.queue is not None:
        task["queue"] = args.queue
    if args.metadata is not None:
        try:
            task["metadata"] = orjson.loads(args.metadata)
        except orjson.JSONDecodeError:
            raise Invalid("--metadata must be a JSON object") from None
    body: dict[str, Any] = {"name": args.name, "task": task, "paused": args.paused}
    for field in ("cron", "every", "timezone"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    return body


def print_schedules(schedules: list[dict[str, Any]]) -> None:
    """One line each: name, cadence, state, next and last run."""
    print(f"schedules {len(schedules)}")
    for s in schedules:
        cadence = f"cron '{s['cron']}' {s['timezone']}" if "cron" in s else f"every {s['every']}s"
        state = "paused" if s["paused"] else "active"
        print(
            f"  {s['name']:<24} {cadence:<36} {state:<7}"
            f" next={s['next_run_at'] or '-'}  last={s['last_run_at'] or '-'}"
        )


def _print(value: Any, indent: bool) -> None:
    option = orjson.OPT_INDENT_2 if indent else 0
    sys.stdout.write(orjson.dumps(value, option=option).decode() + "\n")
