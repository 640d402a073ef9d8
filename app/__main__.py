"""Command line and composition root: `serve` (HTTP API + consumers) and the operator commands.

serve: Settings.from_env -> logs.configure -> the example executor child (with
--example-executor) -> embedded Redis when REDIS_URL is unset -> http.create_app ->
uvicorn.Server. uvicorn owns the process and its signals; `Server` makes its first
SIGTERM/SIGINT a drain (app/drain.py) and a second one an immediate exit.

info, dlq, task, enqueue, fsck: one `Streams` straight on Redis (REDIS_URL, else the embedded
Redis's socket in DATA_DIR), no running service needed. example-executor: the demo
executor of app/example_executor.py.

Exit status: 0 ok, 1 failure (Redis unreachable, unknown task, conflict, task not
completed, fsck found orphans), 2 bad arguments or configuration, 130 interrupted (Ctrl-C;
`info --interval` exits 0). Imports: everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import structlog
import uvicorn

from app import __version__, example_executor
from app.drain import Drain
from app.errors import Invalid, NotFound, TaskstreamError
from app.logs import configure
from app.models import TERMINAL, State, TaskRequest, check_eval_id
from app.redis_server import RedisServer
from app.settings import Selection, Settings, SettingsError
from app.streams import Streams, connect

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

log = structlog.get_logger()


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
        "from environment variables (README, Configuration).",
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
    _example_parser(commands)
    return root


def _serve_parser(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the HTTP API and the in-process consumers",
        description="Run the HTTP API and the in-process consumers (configured by environment "
        "variables, see README). Without REDIS_URL an embedded redis-server is started.",
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
        "--wait, poll until it is completed, failed or cancelled and print the record; the "
        "exit status is then 0 only when it completed.",
        epilog=EPILOG,
    )
    enqueue.add_argument("code", metavar="CODE", help="the code to run; - reads it from stdin")
    enqueue.add_argument("--priority", choices=("high", "default", "low"), default="default")
    enqueue.add_argument("--eval-id", metavar="ID", help="the task's id (default: generated)")
    enqueue.add_argument("--queue", metavar="NAME", help="a named queue (default: QUEUE_NAME)")
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
        "its class (README, fsck).",
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


# --- serve -----------------------------------------------------------------------------


class Server(uvicorn.Server):
    """uvicorn with a not-ready phase before its shutdown.

    The first SIGTERM/SIGINT begins the drain: /readyz answers 503 at once while the
    listener stays open and every request is still answered (enqueues included: a
    draining replica only stops consuming), the consumers stop claiming and running
    tasks get SHUTDOWN_GRACE. After `delay` s (SHUTDOWN_DELAY) uvicorn's own shutdown
    runs: close the listener, finish open requests, then the lifespan waits for the
    consumers. A second signal exits at once (running tasks are left to their leases).

    uvicorn would re-raise the signal once done, ending a graceful stop with status -15
    and skipping our cleanup; the signal is not recorded, so a drain exits 0.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain, delay: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.delay = delay
        self.forced_by: int | None = None  # the signal that cut the drain short

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Called by signal.signal between two bytecodes of the main thread: set flags, and
        # leave the rest to the event loop (call_soon_threadsafe is safe here).
        if not self.drain.draining:
            self.drain.begin(f"draining: {signal.Signals(sig).name} received, shutting down")
            with contextlib.suppress(RuntimeError):  # no loop yet: on_tick does it
                asyncio.get_running_loop().call_soon_threadsafe(self._kick)
            return
        self.forced_by = sig
        self.should_exit = self.force_exit = True

    def _kick(self) -> None:
        if self.drain.kick():
            log.info("service_draining", reason=self.drain.reason, delay=self.delay)

    async def on_tick(self, counter: int) -> bool:
        if self.drain.draining:
            self._kick()  # when the signal came before the consumers were attached
            if self.drain.elapsed() >= self.delay:
                self.should_exit = True
        return await super().on_tick(counter)


def embedded_redis(settings: Settings) -> RedisServer:
    server = RedisServer(settings.data_dir)
    server.start()
    return server


def start_example_executor(settings: Settings, port: int) -> example_executor.Child | None:
    """The example executor child, unless EXECUTOR_URLS names executors already."""
    if settings.executor_urls:
        log.warning("example_executor_skipped", reason="EXECUTOR_URLS is set")
        return None
    child = example_executor.spawn(port)
    log.info("example_executor", url=child.url, warning="a demo, NOT a sandbox")
    return child


def serve(settings: Settings, example_port: int | None = None) -> int:
    configure(settings.log_level, settings.log_format)
    child = embedded = None
    try:
        if example_port is not None:
            try:
                example_executor.Limits.from_env(os.environ)
                child = start_example_executor(settings, example_port)
            except SettingsError as exc:
                print(f"taskstream: {exc}", file=sys.stderr)
                return EXIT_USAGE
            except (OSError, RuntimeError) as exc:
                print(f"taskstream: example executor: {exc}", file=sys.stderr)
                return EXIT_FAILURE
            if child is not None:
                settings = dataclasses.replace(settings, executor_urls=(child.url,))
        embedded = None if settings.redis_url else embedded_redis(settings)
        return _run_server(settings, settings.redis_url or (embedded.url if embedded else None))
    finally:
        if embedded:
            embedded.stop()
        if child:
            child.stop()


def _run_server(settings: Settings, redis_url: str | None) -> int:
    from app.http import create_app  # imported here: the operator commands start faster

    drain = Drain()
    app = create_app(settings, redis_url=redis_url, drain=drain)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 5,
    )
    server = Server(config, drain, settings.shutdown_delay)
    server.run()
    if server.forced_by is not None:
        return 128 + server.forced_by  # as a shell reports a death by that signal
    return EXIT_OK if server.started else EXIT_FAILURE


# --- worker ----------------------------------------------------------------------------


def _answers(path: Path) -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1.0)
        sock.connect(str(path))
        return True
    return False


def run_worker(settings: Settings, burst: bool) -> int:
    from app.worker import NothingToConsume, work

    configure(settings.log_level, settings.log_format)
    embedded = None
    url = settings.redis_url
    if not url:
        server = RedisServer(settings.data_dir)
        if not _answers(server.socket_path):  # no service runs there: start our own
            embedded = server
            embedded.start()
        url = server.url
    try:
        asyncio.run(work(settings, url, burst))
        return EXIT_OK
    except NothingToConsume as exc:
        print(f"taskstream: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TaskstreamError as exc:
        print(f"taskstream: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if embedded:
            embedded.stop()


# --- operator commands: one Streams straight on Redis ------------------------------------


def _redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    return RedisServer(settings.data_dir).url


def _print_json(value: Any, indent: bool = False) -> None:
    option = orjson.OPT_INDENT_2 if indent else 0
    sys.stdout.write(orjson.dumps(value, option=option).decode() + "\n")


Command = Callable[[Streams, argparse.Namespace], Awaitable[int]]


async def _with_streams(settings: Settings, args: argparse.Namespace, command: Command) -> int:
    client = connect(_redis_url(settings))
    try:
        return await command(Streams(client, settings), args)
    finally:
        await client.aclose()


def run_command(settings: Settings, args: argparse.Namespace, command: Command) -> int:
    """Run one operator command; domain errors become one line on stderr."""
    try:
        return asyncio.run(_with_streams(settings, args, command))
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


async def _report(streams: Streams, hub: Any) -> dict[str, Any]:
    counts = await streams.counts()
    return {
        "queue": streams.settings.queue,
        **counts,
        "consumers": await streams.consumers(),
        "queues": await streams.queues_overview(),
        "eas": await hub.overview(),
    }


async def info_command(streams: Streams, args: argparse.Namespace) -> int:
    from app.eas import EasHub  # imported here, like create_app

    hub = EasHub(streams.redis, streams.settings, streams.scripts, "info", forward=False)
    tty = sys.stdout.isatty()
    shown = 0
    while True:
        report = await _report(streams, hub)
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


async def dlq_command(streams: Streams, args: argparse.Namespace) -> int:
    if args.action == "list":
        page = await streams.dlq_list(args.limit, args.offset)
        if args.json:
            _print_json(page, indent=True)
        else:
            print_dlq(page, args.offset)
    elif args.action == "retry":
        _print_json(await streams.dlq_retry(check_eval_id(args.eval_id)))
    elif args.eval_id is not None:
        if args.older_than_days is not None:
            raise Invalid("give EVAL_ID or --older-than-days, not both")
        if not await streams.dlq_purge(eval_id=check_eval_id(args.eval_id)):
            raise NotFound(f"not in the dead-letter queue: {args.eval_id}")
        _print_json({"removed": 1})
    else:
        days = args.older_than_days
        removed = await streams.dlq_purge(older_than=None if days is None else days * 86400)
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


async def task_command(streams: Streams, args: argparse.Namespace) -> int:
    record = await streams.get(check_eval_id(args.eval_id))
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


async def enqueue_command(streams: Streams, args: argparse.Namespace) -> int:
    code = sys.stdin.read() if args.code == "-" else args.code
    data: dict[str, Any] = {"code": code, "priority": args.priority, "delay": args.delay}
    if args.eval_id is not None:
        data["eval_id"] = args.eval_id
    if args.queue is not None:
        data["queue"] = args.queue
    request = TaskRequest.parse(data)
    queue = streams.for_queue(request.queue)
    await queue.ensure_groups()
    answer = await queue.enqueue(request)
    _print_json(answer)
    if args.wait is None:
        return EXIT_OK
    record = await wait_until_final(streams, request.eval_id, args.wait)
    _print_json(record)
    if record["status"] not in TERMINAL:
        print(
            f"taskstream: {request.eval_id} is still {record['status']} after {args.wait:g}s",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK if record["status"] == State.COMPLETED else EXIT_FAILURE


async def wait_until_final(streams: Streams, eval_id: str, timeout: float) -> dict[str, Any]:
    """Poll the record until it is completed, failed or cancelled, or `timeout` is up."""
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        record = await streams.get(eval_id)
        left = deadline - time.monotonic()
        if record["status"] in TERMINAL or left <= 0:
            return record
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, 0.5)


# fsck


async def fsck_command(streams: Streams, args: argparse.Namespace) -> int:
    from app import fsck  # imported here, like create_app

    report = await fsck.Audit(streams, repair=args.repair).run()
    await fsck.record(streams, report)
    if args.json:
        _print_json(report.view(), indent=True)
    else:
        print_fsck(report)
    return EXIT_OK if report.consistent else EXIT_FAILURE


def print_fsck(report: Any) -> None:
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
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "example-executor":
        return example_executor.main(args.host, args.port, args.allow_remote, args.fd)
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"taskstream: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if getattr(args, "consume", None) is not None:
        try:
            settings = dataclasses.replace(
                settings, consume=Selection.parse(args.consume, "--consume", settings.queue)
            )
        except SettingsError as exc:
            print(f"taskstream: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "serve":
        return serve(settings, args.example_executor_port if args.example_executor else None)
    if args.command == "worker":
        return run_worker(settings, args.burst)
    return run_command(settings, args, COMMANDS[args.command])


if __name__ == "__main__":
    sys.exit(main())
