"""Command line and composition root: `serve` (HTTP API + consumers) and `info`.

Settings.from_env -> logs.configure -> embedded Redis when REDIS_URL is unset ->
http.create_app -> uvicorn.Server. uvicorn owns the process and its signals.
Imports: everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import uvicorn

from app import __version__
from app.eas import EasHub
from app.errors import Unavailable
from app.http import create_app
from app.logs import configure
from app.redis_server import RedisServer
from app.settings import Settings, SettingsError
from app.streams import Streams, connect

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # bad configuration or arguments, like uvicorn's STARTUP_FAILURE


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="taskstream", description=__doc__.splitlines()[0])
    root.add_argument("--version", action="version", version=f"taskstream {__version__}")
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP API and the in-process consumers")
    info = commands.add_parser("info", help="print queue counts, consumers and DLQ size")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    return root


class Server(uvicorn.Server):
    """uvicorn re-raises the signal that stopped it once shutdown is done, so a graceful
    SIGTERM would end with status -15 and skip our cleanup; we finish and exit 0 instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def embedded_redis(settings: Settings) -> RedisServer:
    server = RedisServer(settings.data_dir)
    server.start()
    return server


def serve(settings: Settings) -> int:
    configure(settings.log_level, settings.log_format)
    embedded = None if settings.redis_url else embedded_redis(settings)
    url = settings.redis_url or (embedded.url if embedded else None)
    try:
        app = create_app(settings, redis_url=url)
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
        server = Server(config)
        server.run()
        return EXIT_OK if server.started else EXIT_FAILURE
    finally:
        if embedded:
            embedded.stop()


def _redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    return RedisServer(settings.data_dir).url


async def _info(settings: Settings) -> dict[str, Any]:
    client = connect(_redis_url(settings))
    try:
        streams = Streams(client, settings)
        counts = await streams.counts()
        hub = EasHub(client, settings, streams.scripts, "info", forward=False)
        return {
            "queue": settings.queue,
            **counts,
            "consumers": await streams.consumers(),
            "eas": await hub.overview(),
        }
    finally:
        await client.aclose()


def info(settings: Settings, as_json: bool) -> int:
    try:
        report = asyncio.run(_info(settings))
    except Unavailable as exc:
        print(f"taskstream: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
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
    for row in report["eas"]:
        print_eas(row)
    return EXIT_OK


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"taskstream: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "serve":
        return serve(settings)
    return info(settings, args.json)


if __name__ == "__main__":
    sys.exit(main())
