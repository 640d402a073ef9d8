"""The declared-keys check: every key a script touches must be one of its KEYS.

A `KeyCheck` watches one redis-server with MONITOR (Redis >= 7 logs each script call,
then every command the script ran, as `[0 lua]` lines, contiguous: scripts are atomic).
For each EVAL / EVALSHA it compares the keys of the script's commands (asked of the
server itself, `COMMAND GETKEYS`, so no table of key positions is kept here) with the
KEYS the call declared. A touched key outside KEYS is a violation, with one exception the
layout documents (docs/operations.md, *Declared keys*): the task records of a queue whose
keys the call declared (`<queue prefix>task:<id>`), which scripts reach by ids read from
that queue's own structures (stream entries, the schedule, the leases, a parent's
dependants) and so cannot name before the call. A sharded channel (SPUBLISH) must carry a
declared key's hash tag.

Used by tests/test_declared_keys.py (the core flows, always) and, with
TASKSTREAM_KEYCHECK=1, by every test that uses the session's Redis (tests/conftest.py):
each test fails when a script call it caused touched an undeclared key.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.crc import key_slot

LINE = re.compile(rb"^\+?(\d+\.\d+) \[(\d+) ([^\]]+)\] (.*)$")
TASK_RECORD = re.compile(r"^(ts:\{[^}]*\}:(?:[^:]+:)?)task:.+$")
ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("a"): b"\a", ord("b"): b"\b"}


def parse_args(raw: bytes) -> list[bytes]:
    """The quoted arguments of one MONITOR line (sdscatrepr's escapes undone)."""
    args: list[bytes] = []
    i, n = 0, len(raw)
    while i < n:
        if raw[i] != ord('"'):
            i += 1
            continue
        i += 1
        out = bytearray()
        while raw[i] != ord('"'):
            if raw[i] == ord("\\"):
                nxt = raw[i + 1]
                if nxt == ord("x"):
                    out.append(int(raw[i + 2 : i + 4], 16))
                    i += 4
                    continue
                out += ESCAPES.get(nxt, bytes([nxt]))
                i += 2
                continue
            out.append(raw[i])
            i += 1
        args.append(bytes(out))
        i += 1
    return args


@dataclass
class Call:
    """One script call: its declared KEYS and the commands it ran."""

    declared: list[str]
    commands: list[list[bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class Violation:
    declared: tuple[str, ...]
    key: str
    command: str

    def __str__(self) -> str:
        return f"{self.command} touched {self.key!r}, not in KEYS {list(self.declared)}"


def group_calls(lines: list[bytes]) -> list[Call]:
    """The script calls of a MONITOR log, each with the `[0 lua]` lines after it."""
    calls: list[Call] = []
    current: Call | None = None
    for line in lines:
        found = LINE.match(line)
        if not found:
            continue
        args = parse_args(found.group(4))
        if not args:
            continue
        if found.group(3) == b"lua":
            if current is not None:
                current.commands.append(args)
            continue
        current = None
        if args[0].upper() in (b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO"):
            numkeys = int(args[2])
            current = Call([a.decode() for a in args[3 : 3 + numkeys]])
            calls.append(current)
    return calls


def allowed(key: str, declared: set[str]) -> bool:
    """A task record of a queue whose keys the call declared (see the module docstring)."""
    found = TASK_RECORD.match(key)
    if not found:
        return False
    prefix = found.group(1)
    return any(d.startswith(prefix) and not TASK_RECORD.match(d) for d in declared)


class KeyCheck:
    """MONITOR on one server (see the module docstring); `take()` returns the violations
    of every script call since the last `take()`."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.client: Any = redis.Redis(host=host, port=port, socket_timeout=10)
        self.client.set_response_callback("COMMAND", lambda reply, **_: reply)
        self._lines: list[bytes] = []
        self._lock = threading.Lock()
        self._sock = socket.create_connection(self.address)
        self._sock.sendall(b"MONITOR\r\n")
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._keys_of: dict[tuple[bytes, ...], list[str]] = {}
        self.calls = 0  # script calls checked so far

    def _read(self) -> None:
        pending = b""
        while not self._closed:
            try:
                chunk = self._sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            pending += chunk
            *whole, pending = pending.split(b"\r\n")
            with self._lock:
                self._lines.extend(whole)

    def _drain(self) -> list[bytes]:
        """Everything logged so far: a marker is sent and awaited, so no earlier command
        is still on its way."""
        marker = f"keycheck-{uuid.uuid4().hex}".encode()
        self.client.echo(marker)
        deadline, seen = time.monotonic() + 10, 0
        while time.monotonic() < deadline:
            with self._lock:
                if any(marker in line for line in self._lines[seen:]):
                    lines, self._lines = self._lines, []
                    return lines
                seen = max(0, len(self._lines) - 1)
            time.sleep(0.01)
        raise AssertionError("keycheck: MONITOR lost (the server restarted?)")

    def _keys(self, command: list[bytes]) -> list[str]:
        signature = tuple(command)
        if signature not in self._keys_of:
            try:
                found = self.client.execute_command("COMMAND", "GETKEYS", *command)
            except redis.ResponseError:
                found = []  # no key arguments (TIME, PUBLISH, …)
            self._keys_of[signature] = [k.decode() for k in found]
        return self._keys_of[signature]

    def take(self) -> list[Violation]:
        found: list[Violation] = []
        for call in group_calls(self._drain()):
            self.calls += 1
            declared = set(call.declared)
            slots = {key_slot(k.encode()) for k in declared}
            for command in call.commands:
                name = command[0].decode().upper()
                if name == "SPUBLISH" and key_slot(command[1]) not in slots:
                    found.append(Violation(tuple(call.declared), command[1].decode(), name))
                for key in self._keys(command):
                    if key not in declared and not allowed(key, declared):
                        found.append(Violation(tuple(call.declared), key, name))
        return found

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        self.client.close()
