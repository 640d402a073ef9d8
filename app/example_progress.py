"""Progress reports of the example executor (a demo of `progress_url`, docs/api.md).

A run whose output has a line `PROGRESS <n> [message]` (n from 0 to 100) reports it to the
`progress_url` of its execute request, as `{"progress": n, "message"?, "attempt"}`. Reports
go one at a time in output order, and when the code prints faster than the service
answers, only the newest waiting one is sent (a progress report replaces the last anyway).
With `API_KEY` in the executor's environment (the service's child inherits it) the reports
carry it. When the run ends, reports still waiting get a short grace, then are dropped:
the task's result matters, its progress no longer does.

Imports: nothing of app (and httpx, structlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping
from typing import Any

import httpx
import structlog

log = structlog.get_logger()

LINE_RE = re.compile(rb"^PROGRESS[ \t]+(\d{1,3}(?:\.\d+)?)(?:[ \t]+(.*?))?[ \t\r]*$")
MAX_LINE = 4096  # bytes: a longer line is no progress report and is not buffered
MAX_MESSAGE = 1000  # characters, as the service accepts
CLOSE_GRACE = 2.0  # seconds the last report may still take once the run ended
POST_TIMEOUT = 5.0


class Progress:
    """The PROGRESS lines of one run, reported to its `progress_url` (see the module
    docstring). Feed it the run's output as it arrives; `close` when the run ended."""

    def __init__(self, url: object, attempt: object, api_key: str | None = None) -> None:
        self.url = url if isinstance(url, str) and url.startswith(("http://", "https://")) else None
        self.attempt = attempt if isinstance(attempt, int) else None
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.sent = 0
        self._partial = b""
        self._waiting: dict[str, Any] | None = None
        self._sender: asyncio.Task[None] | None = None

    def feed(self, data: bytes) -> None:
        """Output of the run, in any chunks; complete lines are looked at."""
        if self.url is None:
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > MAX_LINE:
            self._partial = b""
        for line in lines:
            report = parse(line)
            if report is not None:
                self._waiting = report
        if self._waiting is not None and (self._sender is None or self._sender.done()):
            self._sender = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        assert self.url is not None
        async with httpx.AsyncClient(timeout=POST_TIMEOUT) as client:
            while self._waiting is not None:
                report, self._waiting = self._waiting, None
                if self.attempt is not None:
                    report["attempt"] = self.attempt
                try:
                    answer = await client.post(self.url, json=report, headers=self.headers)
                    self.sent += answer.is_success
                    if not answer.is_success:
                        log.info("example_progress_refused", status=answer.status_code)
                except httpx.HTTPError as exc:
                    log.info("example_progress_failed", error=exc.__class__.__name__)

    async def close(self) -> None:
        """Let the waiting report go (within CLOSE_GRACE), then stop."""
        if self._sender is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._sender), CLOSE_GRACE)
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender


def parse(line: bytes) -> dict[str, Any] | None:
    """`{"progress", "message"?}` of a `PROGRESS n [message]` line, else None."""
    found = LINE_RE.match(line)
    if found is None or float(found.group(1)) > 100:
        return None
    value = float(found.group(1))
    report: dict[str, Any] = {"progress": int(value) if value.is_integer() else value}
    if found.group(2):
        report["message"] = found.group(2).decode(errors="replace")[:MAX_MESSAGE]
    return report


def api_key(env: Mapping[str, str]) -> str | None:
    """The service's API key, for the reports (a child of `serve` inherits it)."""
    keys = (env.get("API_KEY") or env.get("QUEUE_API_KEY") or "").split(",")
    return keys[0].strip() or None
