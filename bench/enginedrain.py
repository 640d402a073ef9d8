"""The engine-only drain's process: the service's runtime with a no-op executor, no HTTP.

    REDIS_URL=... CONCURRENCY=32 LOG_LEVEL=WARNING python -m bench.enginedrain --out F

Builds what `taskstream worker` builds (app/runtime `Runtime`: the engine, its metrics
observer, the consumer pool's claim -> execute -> settle loop, lease renewal, the promoter,
the callback sender, the housekeeping), on uvloop as `serve` runs, but hands it an
`ExecutorPool` whose call strategy (`ExecutorCall`, the pool's existing seam) answers
success at once: no request is built, sent or parsed. So its CPU per task is the engine's
and the runtime's own, the ceiling of one process without the executor's HTTP.

The strategy counts executions per eval_id. `F.ready` is written once consuming started;
on SIGTERM the runtime stops (grace 5 s) and `F` gets {"executed": n, "counts": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

import orjson
import uvloop

from app.logs import configure
from app.models import Outcome, Task
from app.runtime import heap
from app.runtime.executors import Execution, Executor, ExecutorPool
from app.runtime.runtime import Runtime
from app.settings import Settings

NOWHERE = "http://127.0.0.1:9"  # never connected to: the strategy does not call it
ANSWER = {"status": "success", "output": "ok", "exit_code": 0}  # what the stub answers


class NoopCall:
    """An `ExecutorCall` that succeeds at once and counts executions per eval_id."""

    peer = "executor"

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    async def __call__(self, executor: Executor, task: Task, timeout: float) -> Execution:
        self.counts[task.eval_id] = self.counts.get(task.eval_id, 0) + 1
        return Execution(Outcome.SUCCESS, dict(ANSWER), status_code=200)


async def run(out: Path) -> None:
    settings = Settings.from_env(dict(os.environ))
    configure(settings.log_level, settings.log_format)
    assert settings.redis_url, "REDIS_URL is required"
    call = NoopCall()
    pool = ExecutorPool((NOWHERE,), settings.health_interval, call=call, checked=False)
    runtime = Runtime(settings, settings.redis_url, pool)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    heap.settle()  # as `taskstream worker` and `serve` do once started
    out.with_suffix(".ready").write_text("ready\n")
    try:
        await stop.wait()
    finally:
        await runtime.stop(5.0)
        result = {"executed": sum(call.counts.values()), "counts": call.counts}
        out.write_bytes(orjson.dumps(result))


def main(argv: list[str] | None = None) -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--out", type=Path, required=True)
    ns = args.parse_args(argv)
    uvloop.run(run(ns.out))


if __name__ == "__main__":
    main()
