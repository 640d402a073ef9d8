"""A TCP proxy for fault tests: forwards loopback connections to one upstream (say, Redis)
and, on command, cuts every connection or black-holes them, then heals.

- `cut()`: every open connection is closed with a reset on both sides at once, as a
  firewall or a restarted load balancer does; new connections are forwarded again.
- `blackhole()`: bytes stop moving in both directions while every socket stays open,
  as in a network partition: what a side sends waits in the proxy and the kernel's
  buffers (a close too), and new connections are accepted but get no upstream.
- `heal()`: after a black hole, everything held is delivered, in order, as TCP does once a
  partition heals (so a command sent during it runs late, after its client gave up).

Imports: stdlib only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass(eq=False)
class _Pair:
    """A client connection and its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    cut: bool = False

    def reset(self) -> None:
        self.cut = True
        for writer in (self.client, self.upstream):
            _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) rather than FIN, so the peer sees the connection cut."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class TcpProxy:
    """Listens on a free loopback port (`port`) and forwards to `upstream_port`."""

    upstream_port: int
    upstream_host: str = "127.0.0.1"
    port: int = 0
    cuts: int = 0  # connections cut so far
    _flowing: asyncio.Event = field(default_factory=asyncio.Event)
    _pairs: set[_Pair] = field(default_factory=set)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _server: asyncio.Server | None = None

    async def start(self) -> TcpProxy:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._flowing.set()
        self.cut()
        # Cut pairs end on their own; cancelling a handler makes asyncio log an error.
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2.0)
        for job in list(self._handlers):
            job.cancel()

    @property
    def connections(self) -> int:
        return len(self._pairs)

    def cut(self) -> int:
        """Reset every open connection now; returns how many were cut."""
        pairs = list(self._pairs)
        for pair in pairs:
            pair.reset()
        self._pairs.clear()
        self.cuts += len(pairs)
        return len(pairs)

    def blackhole(self) -> None:
        """Stop moving bytes (both ways, every connection, new ones too); sockets stay open."""
        self._flowing.clear()

    def heal(self) -> None:
        """Deliver what was held and forward again."""
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        job = asyncio.current_task()
        assert job is not None
        self._handlers.add(job)
        try:
            await self._forward(reader, writer)
        finally:
            self._handlers.discard(job)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._flowing.wait()  # black-holed: accepted, but no upstream yet
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            _reset(writer)
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, pair), self._pump(up_reader, writer, pair)
            )
        finally:
            self._pairs.discard(pair)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: _Pair
    ) -> None:
        """Copy one direction; the end of either side (held while black-holed) ends both."""
        try:
            while True:
                data = await reader.read(CHUNK)
                await self._flowing.wait()
                if pair.cut or not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not pair.cut:
                for side in (pair.client, pair.upstream):
                    side.close()
