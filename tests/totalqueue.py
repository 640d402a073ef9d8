"""A total-queue checker, as Jepsen's `total-queue`: after a fault, was every task that the
service accepted run to completion, was nothing run that nobody sent, and how many runs
were repeats?

The parts, each usable alone:

- `Recorder`, the client side: every enqueue with its outcome. 201 is *accepted*; a
  definite refusal (a 4xx, or a connection that could not even be opened) is *refused*;
  anything that leaves the write's fate unknown (503, another 5xx, a reset or a timeout
  after the request went out) is *indeterminate*: the service may have stored it anyway.
  It also counts how each answer looked (`answers`: "201 json", "500 text/plain", "no
  answer: ReadError") and when each enqueue went out and came back (`timings`).
- `Load`, an open-loop enqueue generator at a fixed rate over a list of replicas (the list
  may change while it runs), recording into a `Recorder`.
- `RecordingExecutor`, a real loopback HTTP executor (asyncio + httptools) that records
  every execution: eval_id, the body's attempt, the `Idempotency-Key` header when sent,
  and the path prefix it came through (give each replica its own base URL,
  `executor.url + "/r0"`, to know which one sent it). `decide` scripts its answers: a
  status, a delay, a hold until an event, or a connection reset. It runs in this event
  loop, or as a process of its own: `python -m tests.totalqueue executor --port P --record
  FILE` writes one JSON line per execution, which `read_executions` loads.
- `drain` polls the service until every task is terminal, then waits for a quiet period
  with no new execution; `analyse` compares the three records and returns a `Report`,
  whose `check(max_duplicates=..., destroyed=...)` fails on any loss, any unexpected
  execution, any malformed Idempotency-Key, any execution the record does not count, more
  repeat executions than the fault allows, or a task dead-lettered as lost ("stream entry
  lost") that is not among those whose stream entries the fault destroyed.

Imports: stdlib, httptools, orjson, httpx; nothing of pytest or app/, so bench/chaos.py
uses it too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import socket
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import httptools
import httpx
import orjson

TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
# The error of a task dead-lettered because its stream entry (its payload) was deleted.
LOST_ENTRY = "stream entry lost"
IDEMPOTENCY_KEY = b"idempotency-key"
SHOWN = 10  # ids listed per class in the summary


# --- client side ------------------------------------------------------------------------


@dataclass
class Recorder:
    """What the client was told about each enqueue. An id keeps its best outcome:
    accepted beats indeterminate beats refused (a client may send an id again)."""

    accepted: set[str] = field(default_factory=set)
    indeterminate: dict[str, str] = field(default_factory=dict)  # eval_id -> what happened
    refused: dict[str, str] = field(default_factory=dict)
    # How each answer looked, for faults whose answers matter ("201 json", "503 json",
    # "500 text/plain", "no answer: ReadError"): see `answer_kind`.
    answers: Counter[str] = field(default_factory=Counter)
    # eval_id -> (time.monotonic() as the request left, as its answer came) of its last enqueue
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)

    def record(self, eval_id: str, status: int | None, error: str = "") -> str:
        """Record one answer (`status` None: none came, `error` says why); returns the class."""
        if status == 201:
            self.accepted.add(eval_id)
            self.indeterminate.pop(eval_id, None)
            self.refused.pop(eval_id, None)
            return "accepted"
        if eval_id in self.accepted:
            return "accepted"
        if status is None or status >= 500:
            self.indeterminate[eval_id] = error or f"answered {status}"
            self.refused.pop(eval_id, None)
            return "indeterminate"
        if eval_id not in self.indeterminate:
            self.refused[eval_id] = error or f"answered {status}"
        return "refused"

    async def enqueue(
        self, http: httpx.AsyncClient, eval_id: str, **fields: Any
    ) -> tuple[str, int | None]:
        """POST /tasks one task and record the answer: (class, status or None)."""
        sent = time.monotonic()
        try:
            response = await http.post("/tasks", json={"eval_id": eval_id, "code": "x", **fields})
        except httpx.ConnectError as exc:  # no connection, so nothing was sent
            self.answers[f"not sent: {exc.__class__.__name__}"] += 1
            return self.not_sent(eval_id, f"connect failed: {exc.__class__.__name__}"), None
        except httpx.HTTPError as exc:
            self.answers[f"no answer: {exc.__class__.__name__}"] += 1
            return self.record(eval_id, None, exc.__class__.__name__), None
        self.timings[eval_id] = (sent, time.monotonic())
        self.answers[answer_kind(response)] += 1
        return self.record(eval_id, response.status_code), response.status_code

    def not_sent(self, eval_id: str, why: str) -> str:
        """The request never left the client (no connection): a definite refusal."""
        if eval_id in self.accepted:
            return "accepted"
        if eval_id in self.indeterminate:
            return "indeterminate"
        self.refused[eval_id] = why
        return "refused"

    def ids(self) -> set[str]:
        """Every id whose task may exist: accepted and indeterminate."""
        return self.accepted | set(self.indeterminate)


def answer_kind(response: httpx.Response) -> str:
    """ "<status> json" for a JSON object body sent as application/json, else "<status>
    <content type>": a fault test can require every answer to be JSON (no 500 text/plain)."""
    kind = response.headers.get("content-type", "no content type").split(";")[0]
    if kind == "application/json":
        try:
            if isinstance(orjson.loads(response.content), dict):
                return f"{response.status_code} json"
        except orjson.JSONDecodeError:
            kind = "application/json, not JSON"
    return f"{response.status_code} {kind}"


@dataclass
class Load:
    """Enqueue at `rate` tasks/s, round-robin over `targets` (base URLs; change the list
    while it runs to stop sending to a replica), at most `max_in_flight` requests open.
    Ids are `{prefix}-{n}`; `fields(eval_id)` (optional) adds to each body (say, a delay).
    Counts per target and outcome are in `counts`; the target of each id in `target_of`."""

    recorder: Recorder
    targets: list[str]
    rate: float = 100.0
    prefix: str = "t"
    max_in_flight: int = 32
    timeout: float = 10.0
    fields: Callable[[str], Mapping[str, Any]] | None = None
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    target_of: dict[str, str] = field(default_factory=dict)
    sent: int = 0
    _clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    _job: asyncio.Task[None] | None = None
    _requests: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> None:
        self._job = asyncio.create_task(self._run(), name="load")

    async def stop(self) -> None:
        """Stop sending and wait for the answers of the requests still open."""
        if self._job is not None:
            self._job.cancel()
            await asyncio.gather(self._job, return_exceptions=True)
        await asyncio.gather(*self._requests, return_exceptions=True)
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def accepted_by(self, target: str) -> int:
        return self.counts[(target, "accepted")]

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self.max_in_flight)
        turn = itertools.count()
        due = time.monotonic()
        while True:
            await slots.acquire()
            targets = list(self.targets)
            if not targets:
                slots.release()
                await asyncio.sleep(0.05)
                continue
            target = targets[next(turn) % len(targets)]
            job = asyncio.create_task(self._one(target, f"{self.prefix}-{self.sent}", slots))
            self._requests.add(job)
            job.add_done_callback(self._requests.discard)
            self.sent += 1
            due = max(due + 1 / self.rate, time.monotonic() - 1.0)  # no burst after a stall
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def _one(self, target: str, eval_id: str, slots: asyncio.Semaphore) -> None:
        fields = {} if self.fields is None else self.fields(eval_id)
        self.target_of[eval_id] = target
        try:
            kind, _ = await self.recorder.enqueue(self._client(target), eval_id, **fields)
            self.counts[(target, kind)] += 1
        finally:
            slots.release()

    def _client(self, target: str) -> httpx.AsyncClient:
        if target not in self._clients:
            self._clients[target] = httpx.AsyncClient(base_url=target, timeout=self.timeout)
        return self._clients[target]


# --- executor side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    """One request the executor received."""

    eval_id: str
    attempt: int | None
    key: str | None  # the Idempotency-Key header, when sent
    via: str  # the path before /execute: which base URL (replica) sent it
    at: float  # time.monotonic() when it was read

    @property
    def identity(self) -> str:
        """What makes a repeat: the Idempotency-Key, else eval_id:attempt."""
        return self.key if self.key is not None else f"{self.eval_id}:{self.attempt}"

    def as_dict(self) -> dict[str, Any]:
        return {"eval_id": self.eval_id, "attempt": self.attempt, "key": self.key, "via": self.via}


@dataclass(frozen=True)
class Reply:
    """How to answer one execution: `status` and `body` after `delay` seconds, or, with
    `reset`, a TCP reset instead of an answer (after the delay)."""

    status: int = 200
    body: Mapping[str, Any] = field(
        default_factory=lambda: {"status": "success", "output": "ok", "exit_code": 0}
    )
    delay: float = 0.0
    reset: bool = False


Decide = Callable[[Execution], Reply | Awaitable[Reply]]
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Error", 503: "Unavailable"}


def _head(status: int, length: int) -> bytes:
    reason = REASONS.get(status, "Status")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


class _Conn(asyncio.Protocol):
    """One connection of the executor: parse requests, hand each to the executor."""

    def __init__(self, owner: RecordingExecutor) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []
        self.key: str | None = None
        self._header = b""
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.owner._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.owner._conns.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.abort()

    def on_message_begin(self) -> None:
        self.url, self.body, self.key = b"", [], None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == IDEMPOTENCY_KEY:
            self.key = value.decode(errors="replace")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0].decode(errors="replace")
        via, _, leaf = path.rpartition("/")
        method = self.parser.get_method()
        if method == b"POST" and leaf == "execute":
            self.owner._received(self, via, b"".join(self.body), self.key)
        elif leaf == "health":
            self.answer(200 if self.owner.healthy else 503, {"ok": self.owner.healthy})
        else:
            self.answer(404, {"error": "not found"})

    def answer(self, status: int, body: Mapping[str, Any]) -> None:
        if self.transport is None or self.lost:
            return
        raw = orjson.dumps(body)
        self.transport.write(_head(status, len(raw)) + raw)

    def abort(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), not a clean FIN."""
        if self.transport is None or self.lost:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


@dataclass
class RecordingExecutor:
    """A loopback executor that records every execution (see the module docstring).

    `decide(execution)` returns a `Reply`, or an awaitable of one (say, to hold the answer
    until the test sets an event); None: 200 success after `delay` seconds. `in_flight`
    lists executions read and not yet answered; an answer to a connection that the caller
    closed meanwhile is counted in `unanswered`. `on_execution` (optional) is called with
    each execution as it is read (the process mode writes it to its record file).
    """

    delay: float = 0.0
    decide: Decide | None = None
    healthy: bool = True
    on_execution: Callable[[Execution], None] | None = None
    executions: list[Execution] = field(default_factory=list)
    in_flight: dict[int, Execution] = field(default_factory=dict)
    unanswered: list[Execution] = field(default_factory=list)
    last_at: float = field(default_factory=time.monotonic)
    _server: asyncio.Server | None = None
    _jobs: set[asyncio.Task[None]] = field(default_factory=set)
    _conns: set[_Conn] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> RecordingExecutor:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            for conn in list(self._conns):
                conn.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def open(self, via: str | None = None) -> list[Execution]:
        """Executions not yet answered (of one base URL's prefix when `via` is given)."""
        return [e for e in self.in_flight.values() if via is None or e.via == via]

    def _received(self, conn: _Conn, via: str, body: bytes, key: str | None) -> None:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            conn.answer(400, {"error": "body is not JSON"})
            return
        attempt = doc.get("attempt")
        execution = Execution(
            str(doc.get("eval_id")),
            attempt if isinstance(attempt, int) else None,
            key,
            via,
            time.monotonic(),
        )
        self.executions.append(execution)
        self.last_at = execution.at
        if self.on_execution is not None:
            self.on_execution(execution)
        number = next(self._ids)
        self.in_flight[number] = execution
        job = asyncio.ensure_future(self._reply(conn, number, execution))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _reply(self, conn: _Conn, number: int, execution: Execution) -> None:
        try:
            reply = await self._decide(execution)
            if reply.delay > 0:
                await asyncio.sleep(reply.delay)
        finally:
            self.in_flight.pop(number, None)
        if conn.lost:
            self.unanswered.append(execution)
        elif reply.reset:
            conn.abort()
        else:
            conn.answer(reply.status, reply.body)

    async def _decide(self, execution: Execution) -> Reply:
        if self.decide is None:
            return Reply(delay=self.delay)
        reply = self.decide(execution)
        if isinstance(reply, Reply):
            return reply
        return await reply


def read_executions(path: Path) -> list[Execution]:
    """The executions a `python -m tests.totalqueue executor` process recorded."""
    found = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            doc = orjson.loads(line)
            found.append(Execution(doc["eval_id"], doc["attempt"], doc["key"], doc["via"], 0.0))
    return found


# --- drain --------------------------------------------------------------------------------


class Unknown(Exception):
    """The state of a task could not be read this time (the service answered 5xx, or not)."""


Lookup = Callable[[str], Awaitable[Mapping[str, Any] | None]]


def http_lookup(http: httpx.AsyncClient) -> Lookup:
    """A `Lookup` on `GET /tasks/{eval_id}`: the record, None on 404, `Unknown` otherwise."""

    async def lookup(eval_id: str) -> Mapping[str, Any] | None:
        try:
            response = await http.get(f"/tasks/{eval_id}")
        except httpx.HTTPError as exc:
            raise Unknown(exc.__class__.__name__) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise Unknown(f"answered {response.status_code}")
        record: dict[str, Any] = response.json()
        return record

    return lookup


@dataclass
class Drained:
    """The last record seen of each task (None: 404), and what was still open at the end."""

    records: dict[str, Mapping[str, Any] | None]
    open: set[str]
    seconds: float


async def drain(
    lookup: Lookup,
    ids: Iterable[str],
    executor: RecordingExecutor | None = None,
    timeout: float = 30.0,
    quiet: float = 1.0,
    concurrency: int = 16,
) -> Drained:
    """Poll until every task of `ids` is terminal or unknown to the service (404), or
    `timeout` s passed; then wait until `executor` has received nothing for `quiet` s (a
    late repeat would show up there). Never raises on a task that stays open: the report
    lists it as lost, with its last state."""
    started = time.monotonic()
    deadline = started + timeout
    records: dict[str, Mapping[str, Any] | None] = {}
    pending = set(ids)
    while pending:
        settled = await _look(lookup, pending, records, concurrency)
        pending -= settled
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    while executor is not None and time.monotonic() < deadline + quiet:
        idle = time.monotonic() - executor.last_at
        if idle >= quiet:
            break
        await asyncio.sleep(quiet - idle)
    return Drained(records, pending, time.monotonic() - started)


async def _look(
    lookup: Lookup,
    ids: Iterable[str],
    records: dict[str, Mapping[str, Any] | None],
    concurrency: int,
) -> set[str]:
    """Look up `ids` (at most `concurrency` at once); return those now settled."""
    slots = asyncio.Semaphore(concurrency)
    settled: set[str] = set()

    async def one(eval_id: str) -> None:
        async with slots:
            try:
                record = await lookup(eval_id)
            except Unknown:
                return
        records[eval_id] = record
        if record is None or record.get("status") in TERMINAL:
            settled.add(eval_id)

    await asyncio.gather(*(one(eval_id) for eval_id in ids))
    return settled


# --- the report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """accepted / completed / lost / duplicated / unexpected / recovered, and the checks
    on Idempotency-Key and attempts. Build it with `analyse`.

    A task dead-lettered because its stream entry was deleted (error "stream entry lost")
    is not in `lost` but in `dead_lettered_lost`: when a fault destroys payloads, that is
    the promised end of those tasks. `check` accepts it only for the tasks the test says
    the fault destroyed (`destroyed`); anywhere else it is a loss like any other."""

    accepted: int
    completed: int
    refused: int
    indeterminate: int
    executions: int
    lost: Mapping[str, str]  # eval_id -> its last state ("missing": 404)
    duplicated: Mapping[str, int]  # eval_id -> executions, for those run more than once
    unexpected: Sequence[str]  # run, never accepted, not an indeterminate enqueue
    recovered: Sequence[str]  # an indeterminate enqueue that ran anyway (legal)
    repeated_keys: int  # executions whose key (or eval_id:attempt) had been seen before
    keyed: int  # executions that carried an Idempotency-Key
    bad_keys: Sequence[str]  # keys that are not "<eval_id>:<attempt>"
    uncounted: Mapping[str, tuple[int, int]]  # eval_id -> (record attempts, attempts run)
    dead_lettered_lost: Mapping[str, str] = field(default_factory=dict)  # eval_id -> error
    max_duplicates: int | None = None  # the bound the last check used (for the summary)
    destroyed: frozenset[str] = frozenset()  # what the last check was told the fault destroyed

    @property
    def extra_executions(self) -> int:
        """Executions beyond the first of each task."""
        return sum(n - 1 for n in self.duplicated.values())

    def problems(self, max_duplicates: int = 0, destroyed: Iterable[str] = ()) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{len(self.lost)} accepted task(s) never completed")
        spared = set(self.dead_lettered_lost) - set(destroyed)
        if spared:
            found.append(
                f"{len(spared)} task(s) dead-lettered as lost whose stream entries the fault "
                "did not destroy"
            )
        if self.unexpected:
            found.append(f"{len(self.unexpected)} execution(s) of tasks nobody enqueued")
        if self.extra_executions > max_duplicates:
            found.append(
                f"{self.extra_executions} repeat execution(s), more than the {max_duplicates} "
                "the fault allows"
            )
        if self.bad_keys:
            found.append(f"{len(self.bad_keys)} Idempotency-Key(s) not <eval_id>:<attempt>")
        if self.uncounted:
            found.append(f"{len(self.uncounted)} task(s) ran more attempts than they count")
        return found

    def check(self, max_duplicates: int = 0, destroyed: Iterable[str] = ()) -> Report:
        """Raise AssertionError (with the summary) on any problem; `max_duplicates` is how
        many repeat executions the fault may cause (the tasks a killed process held);
        `destroyed`, the tasks whose stream entries the fault deleted (they may end
        dead-lettered as lost)."""
        bounded = dataclasses.replace(
            self, max_duplicates=max_duplicates, destroyed=frozenset(destroyed)
        )
        problems = bounded.problems(max_duplicates, bounded.destroyed)
        if problems:
            raise AssertionError("; ".join(problems) + "\n" + bounded.summary())
        return bounded

    def summary(self) -> str:
        bound = "" if self.max_duplicates is None else f" (bound {self.max_duplicates})"
        lines = [
            f"total-queue: accepted {self.accepted} (refused {self.refused}, indeterminate "
            f"{self.indeterminate}), executions {self.executions}",
            f"  completed {self.completed}, lost {len(self.lost)}, unexpected "
            f"{len(self.unexpected)}, recovered {len(self.recovered)}",
            f"  duplicated {len(self.duplicated)} task(s), +{self.extra_executions} "
            f"execution(s){bound}; repeated keys {self.repeated_keys}; Idempotency-Key on "
            f"{self.keyed} of {self.executions}",
        ]
        if self.dead_lettered_lost or self.destroyed:
            lines.insert(
                2,
                f"  dead-lettered as lost {len(self.dead_lettered_lost)} (stream entries the "
                f"fault destroyed: {len(self.destroyed)})",
            )
        lines += _listed("lost", [f"{i} ({s})" for i, s in sorted(self.lost.items())])
        spared = sorted(set(self.dead_lettered_lost) - self.destroyed)
        lines += _listed("dead-lettered as lost, entry not destroyed", spared)
        lines += _listed("unexpected", sorted(self.unexpected))
        lines += _listed("duplicated", [f"{i} x{n}" for i, n in sorted(self.duplicated.items())])
        lines += _listed("bad keys", sorted(self.bad_keys))
        lines += _listed(
            "uncounted", [f"{i} ({a} counted, {r} run)" for i, (a, r) in self.uncounted.items()]
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """For JSON: the counts, and the ids of each class."""
        return {
            "accepted": self.accepted,
            "completed": self.completed,
            "refused": self.refused,
            "indeterminate": self.indeterminate,
            "executions": self.executions,
            "lost": dict(self.lost),
            "dead_lettered_lost": dict(self.dead_lettered_lost),
            "duplicated": dict(self.duplicated),
            "extra_executions": self.extra_executions,
            "max_duplicates": self.max_duplicates,
            "unexpected": list(self.unexpected),
            "recovered": list(self.recovered),
            "repeated_keys": self.repeated_keys,
            "keyed": self.keyed,
            "bad_keys": list(self.bad_keys),
            "uncounted": {i: list(v) for i, v in self.uncounted.items()},
        }


def _listed(name: str, items: Sequence[str]) -> list[str]:
    if not items:
        return []
    more = f" … and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return [f"  {name}: {', '.join(items[:SHOWN])}{more}"]


def analyse(
    recorder: Recorder,
    executions: Sequence[Execution],
    records: Mapping[str, Mapping[str, Any] | None],
) -> Report:
    """Compare what the client was told, what the executor ran and the final records."""
    runs: defaultdict[str, list[Execution]] = defaultdict(list)
    for execution in executions:
        runs[execution.eval_id].append(execution)
    unfinished = {
        eval_id: records.get(eval_id)
        for eval_id in recorder.accepted
        if not _completed(records.get(eval_id), eval_id in runs)
    }
    entry_lost = {i: _lost_entry(r) for i, r in unfinished.items() if _lost_entry(r)}
    lost = {
        eval_id: _fate(record, eval_id in runs)
        for eval_id, record in unfinished.items()
        if eval_id not in entry_lost
    }
    strangers = set(runs) - recorder.accepted
    recovered = sorted(strangers & set(recorder.indeterminate))
    seen: set[str] = set()
    repeated = 0
    for execution in executions:
        repeated += execution.identity in seen
        seen.add(execution.identity)
    return Report(
        accepted=len(recorder.accepted),
        completed=len(recorder.accepted) - len(unfinished),
        refused=len(recorder.refused),
        indeterminate=len(recorder.indeterminate),
        executions=len(executions),
        lost=lost,
        duplicated={i: len(r) for i, r in runs.items() if len(r) > 1},
        unexpected=sorted(strangers - set(recovered)),
        recovered=recovered,
        repeated_keys=repeated,
        keyed=sum(1 for e in executions if e.key is not None),
        bad_keys=sorted(
            {e.key for e in executions if e.key is not None and e.key != f"{e.eval_id}:{e.attempt}"}
        ),
        uncounted=_uncounted(runs, records),
        dead_lettered_lost=entry_lost,
    )


def _completed(record: Mapping[str, Any] | None, ran: bool) -> bool:
    return ran and record is not None and record.get("status") == "completed"


def _lost_entry(record: Mapping[str, Any] | None) -> str:
    """The error of a task dead-lettered because its stream entry was deleted, else ""."""
    if record is None or record.get("status") != "failed":
        return ""
    error = str(record.get("error") or "")
    return error if error.startswith(LOST_ENTRY) else ""


def _fate(record: Mapping[str, Any] | None, ran: bool) -> str:
    if record is None:
        return "missing"
    status = str(record.get("status"))
    return status if ran or status != "completed" else "completed, never executed"


def _uncounted(
    runs: Mapping[str, list[Execution]], records: Mapping[str, Mapping[str, Any] | None]
) -> dict[str, tuple[int, int]]:
    """Tasks whose executions carried more distinct attempts than the record counts."""
    found = {}
    for eval_id, executions in runs.items():
        record = records.get(eval_id)
        if record is None or not isinstance(record.get("attempts"), int):
            continue
        ran = len({e.attempt for e in executions})
        if ran > record["attempts"]:
            found[eval_id] = (int(record["attempts"]), ran)
    return found


# --- the executor as a process of its own -----------------------------------------------------


def _writer(out: IO[bytes]) -> Callable[[Execution], None]:
    def write(execution: Execution) -> None:
        out.write(orjson.dumps(execution.as_dict()) + b"\n")
        out.flush()

    return write


async def _serve(port: int, record: Path, delay: float) -> None:
    with record.open("ab") as out:
        executor = RecordingExecutor(delay=delay, on_execution=_writer(out))
        await executor.start(port)
        print(f"executor listening on {executor.url}", flush=True)
        try:
            await asyncio.Event().wait()  # until SIGTERM/SIGINT ends the process
        finally:
            await executor.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m tests.totalqueue executor --port P --record FILE [--delay S]`."""
    parser = argparse.ArgumentParser(prog="python -m tests.totalqueue")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("executor", help="a recording executor; one JSON line a run")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--record", type=Path, required=True)
    serve.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    ns = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(ns.port, ns.record, ns.delay))


if __name__ == "__main__":
    main()
