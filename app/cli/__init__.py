"""Command line and composition root: `taskstream` (also `python -m app`).

The parser is in args.py; serve and worker (the processes running a `Runtime`) in
serve.py; the operator commands (info, dlq, task, enqueue, fsck) in commands.py;
example-executor is the demo executor of app/example_executor.py.

Imports: everything (the top floor).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

from app import example_executor
from app.cli.args import EXIT_USAGE, parser
from app.cli.commands import COMMANDS, run_command
from app.cli.serve import run_worker, serve
from app.settings import Selection, Settings, SettingsError, environ


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "example-executor":
        return example_executor.main(args.host, args.port, args.allow_remote, args.fd)
    try:
        settings = Settings.from_env(environ())
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
