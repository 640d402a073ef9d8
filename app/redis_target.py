"""What REDIS_URL names: one Redis server, a Sentinel deployment or a Redis Cluster.

`RedisTarget.parse` validates a URL and says where the engine's client connects; a bad
one raises `SettingsError` naming the variable (settings reads the environment, the
engine's client factory builds the client from the same parse).

Imports: env (and stdlib).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, unquote

from app.env import SettingsError, check_url

# REDIS_URL schemes: one server, or a topology of several (their default ports)
REDIS_SCHEMES = ("redis", "rediss", "unix")
TOPOLOGY_SCHEMES = {
    "redis+sentinel": 26379,
    "rediss+sentinel": 26379,
    "redis+cluster": 6379,
    "rediss+cluster": 6379,
}
SENTINEL_OPTIONS = ("sentinel_password", "sentinel_username")


@dataclass(frozen=True)
class RedisTarget:
    """What REDIS_URL names: one server (`kind` "server", its URL as given), the primary a
    set of sentinels watches ("sentinel": `nodes` are the sentinels, `master` the name
    they know it by), or a Redis Cluster ("cluster": `nodes` are seeds)."""

    kind: str
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    options: Mapping[str, str] = field(default_factory=dict)  # sentinel_password, …

    @classmethod
    def parse(cls, url: str, name: str = "REDIS_URL") -> RedisTarget:
        """Parse and validate; `SettingsError` naming `name` when the URL is malformed.

        `redis+sentinel://[[user]:password@]host:port[,host:port…]/<master>[/<db>]`,
        `redis+cluster://[[user]:password@]host:port[,host:port…]` (`rediss+…`: TLS);
        user and password are the data nodes'; a sentinel's own are the query options
        `sentinel_username` and `sentinel_password`."""
        scheme, sep, rest = url.partition("://")
        if scheme in REDIS_SCHEMES:
            check_url(name, url, REDIS_SCHEMES)
            return cls("server", url)
        if not sep or scheme not in TOPOLOGY_SCHEMES:
            allowed = "/".join([*REDIS_SCHEMES, *TOPOLOGY_SCHEMES])
            raise SettingsError(f"{name}: not a {allowed} URL: {url!r}")
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        nodes = tuple(_host_port(name, item, TOPOLOGY_SCHEMES[scheme]) for item in hosts.split(","))
        kind = scheme.partition("+")[2]
        target = cls(
            kind,
            url,
            nodes,
            username=username,
            password=password,
            tls=scheme.startswith("rediss"),
            options=_topology_options(name, query),
        )
        return target._with_path(name, path)

    def _with_path(self, name: str, path: str) -> RedisTarget:
        parts = [p for p in path.split("/") if p]
        if self.kind == "cluster":
            if parts and parts != ["0"]:
                raise SettingsError(f"{name}: a cluster URL names no master and only db 0")
            return self
        if not parts or len(parts) > 2:
            raise SettingsError(f"{name}: expected redis+sentinel://host:port,…/<master>[/<db>]")
        db = parts[1] if len(parts) == 2 else "0"
        if not db.isdigit():
            raise SettingsError(f"{name}: the database is not a number: {db!r}")
        return replace(self, master=unquote(parts[0]), db=int(db))


def _host_port(name: str, item: str, default_port: int) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # an IPv6 literal: [::1]:26379
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise SettingsError(f"{name}: no host in {item!r}")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name}: bad port in {item!r}")
    return host, int(port)


def _topology_options(name: str, query: str) -> dict[str, str]:
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    for key in options:
        if key not in SENTINEL_OPTIONS:
            raise SettingsError(f"{name}: unknown option {key!r} (known: sentinel_password…)")
    return options
