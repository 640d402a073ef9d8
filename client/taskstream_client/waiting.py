"""Waiting for a task's end without a polling loop: the state both clients' `wait` share.

The service has no long-poll for a result, but every state change goes into its queue's
events stream, served as server-sent events by `GET /events?queue=Q`. The wait:

1. reads the record (`GET /tasks/{id}`): done already, or it names the task's queue;
2. opens the queue's event stream. Without `Last-Event-ID` the stream starts at the
   moment the service sent its headers, so the client reads the record once more after
   them: a task that ended in between is seen there, and any later end comes as an event;
3. reads events until one says this task reached a terminal state, then reads the record
   (its result). A broken stream is opened again with `Last-Event-ID` (and the record
   read again after its headers, in case the entries in between were trimmed).

Where the stream cannot be had (a proxy that does not pass `text/event-stream`, an older
service), the wait falls back to reading the record with a growing pause (50 ms to 2 s).
The deadline is checked after every line of the stream (the service sends a ping comment
every 15 s) and bounds each read, so a wait overruns its timeout by at most one read.

Imports: models, errors (and httpx).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

from taskstream_client.errors import Unauthorized, WaitTimeout, message_of
from taskstream_client.models import TERMINAL, Event

MAX_READ = 45.0  # s without a byte before a stream counts as broken (pings come every 15 s)
CONNECT = 10.0
FIRST_PAUSE, MAX_PAUSE = 0.05, 2.0  # fallback: pauses between reads of the record


@dataclass
class SSEDecoder:
    """`text/event-stream` lines to events (the WHATWG rules the service's stream needs:
    `id`, `event`, `data` fields, comments, a blank line ending each event)."""

    last_id: str | None = None
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> Event | None:
        """One line; the event it completes, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the service's ping
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None

    def _dispatch(self) -> Event | None:
        data, self._data = self._data, []
        if not data:
            return None
        try:
            body = json.loads("\n".join(data))
        except ValueError:
            return None
        return Event.from_json(self.last_id or "", body)


@dataclass
class Waiter:
    """One `wait`: the deadline, the stream position, and the fallback's pause."""

    eval_id: str
    timeout: float | None
    queue: str | None = None
    decoder: SSEDecoder = field(default_factory=SSEDecoder)
    pause: float = FIRST_PAUSE
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.timeout is not None:
            self.deadline = time.monotonic() + self.timeout

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise WaitTimeout once the deadline passed."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise WaitTimeout(f"task {self.eval_id} did not end within {self.timeout:g} s")

    def params(self) -> dict[str, str]:
        """`GET /events`'s query: the task's queue."""
        return {"queue": self.queue} if self.queue else {}

    def headers(self) -> dict[str, str]:
        """Resume after the last event seen, if any."""
        headers = {"Accept": "text/event-stream"}
        if self.decoder.last_id:
            headers["Last-Event-ID"] = self.decoder.last_id
        return headers

    def read_timeout(self) -> httpx.Timeout:
        """Each read waits at most until the deadline (and MAX_READ: pings keep it fed)."""
        left = self.remaining()
        read = MAX_READ if left is None else max(0.01, min(left, MAX_READ))
        return httpx.Timeout(CONNECT, read=read)

    @staticmethod
    def streamable(response: httpx.Response) -> bool:
        kind = response.headers.get("content-type", "")
        return response.status_code == 200 and kind.startswith("text/event-stream")

    @staticmethod
    def refused(status: int, body: bytes) -> None:
        """The stream was not served: a 401 is the caller's to see (the record's reads
        would answer the same); anything else falls back to reading the record."""
        if status == 401:
            raise Unauthorized(message_of(body), status)

    def line(self, line: str) -> bool:
        """Feed one line; True when the stream should be left: this task ended, or the
        deadline passed (the caller reads the record either way)."""
        event = self.decoder.feed(line)
        if event is not None:
            self.pause = FIRST_PAUSE
            if event.eval_id == self.eval_id and event.state in TERMINAL:
                return True
        left = self.remaining()
        return left is not None and left <= 0

    def backoff(self) -> float:
        """The pause before trying again after a stream failed (fallback: polling)."""
        pause, self.pause = self.pause, min(self.pause * 2, MAX_PAUSE)
        left = self.remaining()
        return pause if left is None else max(0.0, min(pause, left))
