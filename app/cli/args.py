"""The command line's arguments: the parser of every command, and the exit statuses.

Exit status: 0 ok, 1 failure (Redis unreachable, unknown task, conflict, task not
completed, fsck found orphans), 2 bad arguments or configuration, 130 interrupted (Ctrl-C;
`info --interval` exits 0).

Imports: example_executor (its defaults), cli.schedules (its parser) (and argparse).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from app import __version__, example_executor
from app.cli.schedules import add_parser as schedules_parser

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # bad configuration or arguments, like uvicorn's STARTUP_FAILURE
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
CLEAR_SCREEN = "\x1b[H\x1b[2J"
EPILOG = (
    "exit status: 0 ok; 1 failure (Redis unreachable, unknown task, conflict, task not "
    "completed); 2 bad arguments or configuration. Redis: REDIS_URL, else the embedded "
    "Redis socket in DATA_DIR; queue: QUEUE_NAME."
)


# --- arguments -------------------------------------------------------------------------


def _number(kind: Callable[[str], Any], low: float, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if value < low or value != value:  # NaN compares unequal to itself
            raise argparse.ArgumentTypeError(f"must be {what}: {text!r}")
        return value

    return parse


positive = _number(float, 0.001, "a positive number of seconds")
non_negative = _number(float, 0.0, "a number >= 0")
count = _number(int, 1, "an integer >= 1")
index = _number(int, 0, "an integer >= 0")


def port_number(text: str) -> int:
    value: int = _number(int, 0, "a port number 0-65535")(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port number 0-65535: {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="taskstream",
        description="taskstream: a durable task queue on Redis Streams. Configuration comes "
        "from environment variables (docs/operations.md, Configuration).",
        epilog=EPILOG,
    )
    root.add_argument("--version", action="version", version=f"taskstream {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(commands)
    _worker_parser(commands)
    _info_parser(commands)
    _dlq_parser(commands)
    _task_parser(commands)
    _enqueue_parser(commands)
    _fsck_parser(commands)
    schedules_parser(commands, EPILOG)
    _example_parser(commands)
    return root


def _serve_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the HTTP API and the in-process consumers",
        description="Run the HTTP API and the in-process consumers (configured by environment "
        "variables, see docs/operations.md). Without REDIS_URL an embedded redis-server is "
        "started.",
    )
    serve.add_argument(
        "--consume",
        metavar="SPEC",
        help="what this process consumes, overriding CONSUME (e.g. 'evaluations:high,default', "
        "'gpu,eas:*'; '' serves the API only)",
    )
    serve.add_argument(
        "--example-executor",
        action="store_true",
        help="also start the example executor (a demo, NOT a sandbox) on 127.0.0.1 as a child "
        "process and send tasks to it; ignored when EXECUTOR_URLS is set",
    )
    serve.add_argument(
        "--example-executor-port",
        type=port_number,
        default=example_executor.DEFAULT_PORT,
        metavar="PORT",
        help="its port (default %(default)s; 0 picks a free one)",
    )


def _worker_parser(commands: Any) -> None:
    worker = commands.add_parser(
        "worker",
        help="run the consumers without the HTTP API",
        description="Consume the selected queues (CONSUME, or --consume) with their executors "
        "(EXECUTOR_URLS, QUEUE_EXECUTORS), without an HTTP server. Without REDIS_URL it uses "
        "the embedded Redis of a service running in DATA_DIR, else starts one.",
        epilog="exit status: 0 stopped or drained; 1 Redis unreachable; 2 bad configuration or "
        "nothing to consume.",
    )
    worker.add_argument(
        "--burst",
        action="store_true",
        help="exit 0 once the selected queues have nothing queued, running or retrying",
    )
    worker.add_argument("--consume", metavar="SPEC", help="overrides CONSUME (see serve)")


def _info_parser(commands: Any) -> None:
    info = commands.add_parser(
        "info",
        help="print queue counts, consumers and DLQ size",
        description="Counts per state and priority, totals, DLQ size, consumers and PAI-EAS "
        "services, read from Redis.",
        epilog=EPILOG,
    )
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument(
        "--interval",
        type=positive,
        metavar="S",
        help="refresh every S seconds until Ctrl-C (the screen is cleared when stdout is a "
        "terminal; with --json, one compact JSON document per line)",
    )
    info.add_argument("--count", type=count, help=argparse.SUPPRESS)  # tests: stop after N


def _dlq_parser(commands: Any) -> None:
    dlq = commands.add_parser(
        "dlq",
        help="list, re-drive or purge dead letters",
        description="The dead-letter queue: tasks out of retries or failed permanently.",
        epilog=EPILOG,
    )
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="dead letters, newest first")
    listing.add_argument("--limit", type=count, default=50, help="at most N (default 50)")
    listing.add_argument("--offset", type=index, default=0, help="skip the newest N")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    retry = actions.add_parser(
        "retry", help="queue a dead letter again (attempts from 0) and remove it from the DLQ"
    )
    retry.add_argument("eval_id", metavar="EVAL_ID")
    purge = actions.add_parser(
        "purge", help="remove one dead letter, those older than N days, or (no argument) all"
    )
    purge.add_argument("--older-than-days", type=non_negative, metavar="N")
    purge.add_argument("eval_id", metavar="EVAL_ID", nargs="?")


def _task_parser(commands: Any) -> None:
    task = commands.add_parser(
        "task", help="show one task's record", description="One task's record.", epilog=EPILOG
    )
    task.add_argument("eval_id", metavar="EVAL_ID")
    task.add_argument("--json", action="store_true", help="machine-readable output")


def _enqueue_parser(commands: Any) -> None:
    enqueue = commands.add_parser(
        "enqueue",
        help="submit a task (as POST /tasks does)",
        description="Submit a task straight to Redis and print the answer as JSON. With "
        "--wait, poll until it is completed, failed, cancelled or expired and print the "
        "record; the exit status is then 0 only when it completed.",
        epilog=EPILOG,
    )
    enqueue.add_argument("code", metavar="CODE", help="the code to run; - reads it from stdin")
    enqueue.add_argument("--priority", choices=("high", "default", "low"), default="default")
    enqueue.add_argument("--eval-id", metavar="ID", help="the task's id (default: generated)")
    enqueue.add_argument("--queue", metavar="NAME", help="a named queue (default: QUEUE_NAME)")
    enqueue.add_argument("--tenant", metavar="NAME", help="fair share within its priority")
    enqueue.add_argument("--delay", type=non_negative, metavar="S", help="run in S seconds")
    enqueue.add_argument(
        "--wait", type=positive, metavar="S", help="wait up to S seconds for the outcome"
    )


def _fsck_parser(commands: Any) -> None:
    fsck = commands.add_parser(
        "fsck",
        help="audit every queue's Redis structures against each other",
        description="Check task records, stream entries, the consumer group's pending entries, "
        "leases, schedules, the DLQ and its index, dependency sets and counters of every queue "
        "and PAI-EAS service, live (safe while the service runs). One line per orphan, with "
        "its class (docs/operations.md, fsck).",
        epilog="exit status: 0 consistent; 1 orphans found (also with --repair: run again to "
        "confirm) or Redis unreachable; 2 bad arguments or configuration.",
    )
    fsck.add_argument(
        "--repair",
        action="store_true",
        help="fix each orphan: re-queue a task whose payload is recoverable, else dead-letter "
        "it with the reason; drop dangling references; recompute drifted counters",
    )
    fsck.add_argument("--json", action="store_true", help="machine-readable output")


def _example_parser(commands: Any) -> None:
    example = commands.add_parser(
        "example-executor",
        help="run the example executor (a demo, NOT a sandbox)",
        description="Serve the executor protocol (POST /execute, GET /health) by running "
        "Python code in a subprocess with resource limits. A demo, NOT a sandbox: the code "
        "runs with this user's rights. Limits: EXAMPLE_TIMEOUT (10 s), EXAMPLE_CONCURRENCY "
        "(4), EXAMPLE_MEMORY_MB (512).",
    )
    example.add_argument("--host", default=example_executor.DEFAULT_HOST, help="%(default)s")
    example.add_argument(
        "--port", type=port_number, default=example_executor.DEFAULT_PORT, help="%(default)s"
    )
    example.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (only where untrusted clients cannot reach it)",
    )
    example.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # from `serve`
