"""Logging: structlog configured once, JSON lines by default, console when LOG_FORMAT=console.

Stdlib records (uvicorn, asyncio) go through structlog's ProcessorFormatter, so every
line has one format. Imports: stdlib, structlog, orjson.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _renderer(fmt: str) -> Any:
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=False)
    return structlog.processors.JSONRenderer(serializer=orjson.dumps)


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Set up structlog and route the stdlib root logger through the same renderer."""
    numeric = logging.getLevelNamesMapping()[level]
    renderer = _renderer(fmt)
    factory: Any = (
        structlog.BytesLoggerFactory(sys.stderr.buffer)
        if fmt == "json"
        else structlog.PrintLoggerFactory(sys.stderr)
    )
    structlog.configure(
        processors=[*SHARED, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    stdlib_renderer = structlog.processors.JSONRenderer() if fmt == "json" else renderer
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=SHARED,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, stdlib_renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
