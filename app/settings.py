"""Configuration: the one place that reads the environment.

`Settings.from_env(environ)` validates every variable and raises `SettingsError`
with a one-line message naming the variable. `environ()` is the process environment, for
the command line (and the example executor): nothing else reads `os.environ`.
REDIS_URL is parsed by redis_target (shared with the engine's client factory), the OTEL_*
variables by tracing_settings, the flow-control ones by flow_settings, all on env's
primitives.
Imports: env, redis_target, tracing_settings, flow_settings (and stdlib).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from app.env import Reader, check_url
from app.env import SettingsError as SettingsError  # raised here, defined there
from app.flow_settings import Flow as Flow  # a part of Settings
from app.flow_settings import flow_from
from app.redis_target import RedisTarget
from app.tracing_settings import Tracing as Tracing  # a part of Settings
from app.tracing_settings import tracing_from

T = TypeVar("T")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "console")
QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAX_INTERVAL = 86400.0  # seconds, one retry interval
# PAI-EAS services: a URL path segment, so no `/` and never `.` or `..` (not dots only)
SERVICE_NAME_RE = re.compile(r"(?!\.+\Z)[A-Za-z0-9._-]{1,64}")  # use fullmatch
NAMED_QUEUE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # `queue` of POST /tasks: no `:`
PRIORITY_NAMES = ("high", "default", "low")
# QUEUE_EXECUTORS: a `;` starts the next queue unless it starts an executor's option
# (`weight=`, `max=`).
QUEUE_SPLIT_RE = re.compile(r";\s*(?=(?!(?:weight|max)\s*=)[A-Za-z0-9._-]+\s*=)")
MAX_EXECUTOR_CALLS = 100_000
# CALLBACK_ALLOWED_HOSTS entries: a host name (or IP literal) or `*.suffix`
ALLOWED_HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.:_-]*[a-z0-9])?$")
DURABILITIES = ("async", "replica", "fsync")


def environ() -> Mapping[str, str]:
    """The process environment (the one read of `os.environ`)."""
    return os.environ


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: retry n waits min(max, base * exp^(n-1)), then jitter. The
    formula is fail.lua's (task retries) and `runtime.aio.backoff_delay`'s (callbacks)."""

    max_retries: int
    base_delay: float
    exponential_base: float
    max_delay: float
    jitter: bool = True
    intervals: tuple[float, ...] = ()  # RQ-style list: retry n waits intervals[min(n, len)-1]


@dataclass(frozen=True)
class Selection:
    """What a process consumes (CONSUME, `--consume`): legacy queues, each with the
    priorities taken from it (empty: all), and PAI-EAS services to forward."""

    queues: Mapping[str, frozenset[str]] = field(default_factory=dict)
    all_queues: bool = False  # `*`
    eas: frozenset[str] = frozenset()
    all_eas: bool = False  # `eas:*`
    text: str = "*,eas:*"

    @classmethod
    def everything(cls) -> Selection:
        return cls(all_queues=True, all_eas=True)

    def priorities(self, queue: str) -> frozenset[str] | None:
        """The priorities consumed from `queue` (empty: all), or None: not consumed."""
        if queue in self.queues:
            return self.queues[queue]
        return frozenset() if self.all_queues else None

    def forwards(self, service: str) -> bool:
        return self.all_eas or service in self.eas

    @property
    def nothing(self) -> bool:
        return not (self.queues or self.all_queues or self.eas or self.all_eas)

    @classmethod
    def parse(cls, text: str, name: str = "CONSUME", default: str = "evaluations") -> Selection:
        """`evaluations:high,default,gpu,eas:*`: entries `QUEUE` or `QUEUE:PRIORITY`; a bare
        priority name right after a `QUEUE:PRIORITY` entry adds to that queue's priorities;
        `*` is every legacy queue, `eas:*` every PAI-EAS service, `eas:NAME` one of them;
        empty selects nothing (the process serves the API only)."""
        queues: dict[str, set[str]] = {}
        eas: set[str] = set()
        whole: set[str] = set()  # named without a priority: all of its priorities
        all_queues = all_eas = False
        last: str | None = None  # queue of the previous `QUEUE:PRIORITY` entry
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            if item == "*":
                all_queues, last = True, None
            elif item.startswith("eas:"):
                service = item[4:]
                if service == "*":
                    all_eas = True
                elif SERVICE_NAME_RE.fullmatch(service):
                    eas.add(service)
                else:
                    raise SettingsError(f"{name}: bad PAI-EAS service in {item!r}")
                last = None
            elif item in PRIORITY_NAMES and item != default:
                if last is None:
                    raise SettingsError(
                        f"{name}: a bare priority follows QUEUE:PRIORITY, got {item!r}"
                    )
                queues[last].add(item)
            else:
                queue, prio = _queue_entry(item, name, default)
                queues.setdefault(queue, set())
                if prio:
                    queues[queue].add(prio)
                else:
                    whole.add(queue)
                last = queue if prio else None
        return cls(
            queues={q: frozenset() if q in whole else frozenset(p) for q, p in queues.items()},
            all_queues=all_queues,
            eas=frozenset(eas),
            all_eas=all_eas,
            text=text.strip(),
        )


def _queue_entry(item: str, name: str, default: str) -> tuple[str, str]:
    """`QUEUE` or `QUEUE:PRIORITY` of a selection; the last `:` starts a priority only when
    one follows (only the default queue, QUEUE_NAME, may hold `:`)."""
    queue, sep, prio = item.rpartition(":")
    if not sep or prio not in PRIORITY_NAMES:
        queue, prio = item, ""
    if not (NAMED_QUEUE_RE.match(queue) or queue == default):
        raise SettingsError(
            f"{name}: expected QUEUE, QUEUE:PRIORITY, *, eas:* or eas:NAME: {item!r}"
        )
    return queue, prio


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8081
    redis_url: str | None = None
    api_keys: tuple[str, ...] = ()
    eas_tokens: tuple[str, ...] = ()
    executor_urls: tuple[str, ...] = ()
    executor_weights: tuple[float, ...] = ()  # one per URL when any entry had `;weight=`
    # `;max=N` of EXECUTOR_URLS and QUEUE_EXECUTORS entries: URL -> calls in flight per pool
    executor_limits: Mapping[str, int] = field(default_factory=dict)
    # QUEUE_EXECUTORS: named queue -> (URLs, weights) of its own executor pool
    queue_executors: Mapping[str, tuple[tuple[str, ...], tuple[float, ...]]] = field(
        default_factory=dict
    )
    consume: Selection = field(default_factory=Selection.everything)
    # QUEUE_PARTITIONS: legacy queue -> partitions (hash tags) it is spread over; absent = 1
    queue_partitions: Mapping[str, int] = field(default_factory=dict)
    target_api_base_url: str | None = None
    public_url: str | None = None  # PUBLIC_URL: how executors reach this service (`base_url`)
    eas_targets: Mapping[str, str] = field(default_factory=dict)
    eas_concurrency: int = 16
    concurrency: int = 16
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(3, 5.0, 2.0, 300.0, True))
    network_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(5, 10.0, 1.5, 600.0, True)
    )
    task_timeout: float = 600.0
    lease_timeout: float = 30.0
    lease_max_lapses: int = 3
    result_ttl: int = 3600
    failure_ttl: int = 86400
    health_interval: float = 5.0
    max_body_bytes: int = 1048576
    log_level: str = "INFO"
    log_format: str = "json"
    data_dir: Path = Path("./data")
    queue: str = "evaluations"
    shutdown_grace: float = 10.0
    shutdown_delay: float = 2.0  # after SIGTERM: s of /readyz 503 with the listener still open
    events_maxlen: int = 10000
    dlq_max_age_days: float = 7.0
    cleanup_interval: float = 3600.0
    storage_service_url: str | None = None  # receives the callback of every finished task
    callback_allowed_hosts: tuple[str, ...] = ()  # empty: any host; `*.x` = any subdomain of x
    callback_timeout: float = 10.0  # seconds per callback POST
    tracing: Tracing = field(default_factory=Tracing)
    flow: Flow = field(default_factory=Flow)  # TENANT_WEIGHTS, RATE_LIMITS, QUEUE_MAX_IN_FLIGHT
    durability: str = "async"  # DURABILITY: async, replica (WAIT), fsync (WAITAOF)
    # The Redis server fsyncs every write before answering (the embedded Redis started
    # with `appendfsync always` for DURABILITY=fsync): set by the command line, not read
    # from the environment.
    server_fsyncs: bool = False

    def callback_host_allowed(self, host: str) -> bool:
        """May a task's callback_url point at `host` (CALLBACK_ALLOWED_HOSTS)?"""
        if not self.callback_allowed_hosts:
            return True
        host = host.lower().rstrip(".")
        for allowed in self.callback_allowed_hosts:
            if allowed.startswith("*.") and host.endswith(allowed[1:]):
                return True
            if host == allowed:
                return True
        return False

    def executors_for(self, queue: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
        """The executor pool of a legacy queue: QUEUE_EXECUTORS, else EXECUTOR_URLS for the
        default queue; no URLs: its tasks wait for pull workers."""
        if queue in self.queue_executors:
            return self.queue_executors[queue]
        if queue == self.queue:
            return self.executor_urls, self.executor_weights
        return (), ()

    def consumed_queues(self) -> dict[str, frozenset[str]]:
        """Legacy queues this process runs consumers for, with their priorities (empty:
        all): the default queue and every QUEUE_EXECUTORS queue, as CONSUME selects."""
        chosen: dict[str, frozenset[str]] = {}
        for queue in (self.queue, *self.queue_executors):
            prios = self.consume.priorities(queue)
            if prios is not None:
                chosen[queue] = prios
        for queue, prios in self.consume.queues.items():  # selected, pull-only so far
            chosen.setdefault(queue, prios)
        return chosen

    @property
    def base_url(self) -> str:
        """Where executors reach this service (progress reports): PUBLIC_URL, else this
        process's own listener, a wildcard HOST read as loopback."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def eas_target(self, service: str) -> str | None:
        """Where a PAI-EAS service's requests are forwarded: EAS_TARGETS, else
        TARGET_API_BASE_URL/{service}; None: external subscribers consume it."""
        if service in self.eas_targets:
            return self.eas_targets[service]
        if self.target_api_base_url:  # percent-encoded: a name is one path segment
            return f"{self.target_api_base_url.rstrip('/')}/{quote(service, safe='')}"
        return None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping; raise SettingsError on bad values."""
        r = Reader(env)
        retry_jitter = r.boolean("RETRY_JITTER", True)
        queue = r.pattern("QUEUE_NAME", "evaluations", QUEUE_NAME_RE)
        queue_executors = _queue_executors(r)
        if queue in queue_executors and r.raw("EXECUTOR_URLS"):
            raise SettingsError(
                f"QUEUE_EXECUTORS: {queue} is the default queue, set by EXECUTOR_URLS"
            )
        consume = Selection.everything()
        if "CONSUME" in env:
            consume = Selection.parse(env["CONSUME"], default=queue)
        flow = flow_from(r)
        queue_partitions = _queue_partitions(r, queue)
        _check_partitioned_limits(queue_partitions, flow)
        return cls(
            host=r.text("HOST", "127.0.0.1"),
            port=r.number("PORT", 8081, int, 0, 65535),
            redis_url=_redis_url(r),
            api_keys=r.items("API_KEY") + r.items("QUEUE_API_KEY"),
            eas_tokens=r.items("EAS_TOKEN"),
            executor_urls=tuple(url for url, _ in _executors(r)),
            executor_weights=_weights(_executors(r)),
            executor_limits=_executor_limits(r),
            queue_executors=queue_executors,
            consume=consume,
            queue_partitions=queue_partitions,
            target_api_base_url=r.url("TARGET_API_BASE_URL", ("http", "https")),
            public_url=r.url("PUBLIC_URL", ("http", "https")),
            eas_targets=_eas_targets(r),
            eas_concurrency=r.number("EAS_CONCURRENCY", 16, int, 1, 10000),
            concurrency=r.number("CONCURRENCY", 16, int, 1, 10000),
            retry=RetryPolicy(
                r.number("MAX_RETRIES", 3, int, 0, 1000),
                r.number("RETRY_BASE_DELAY", 5.0, float, 0.0),
                r.number("RETRY_EXPONENTIAL_BASE", 2.0, float, 1.0),
                r.number("RETRY_MAX_DELAY", 300.0, float, 0.0),
                retry_jitter,
                _intervals(r, "RETRY_INTERVALS"),
            ),
            network_retry=RetryPolicy(
                r.number("NETWORK_RETRY_MAX_RETRIES", 5, int, 0, 1000),
                r.number("NETWORK_RETRY_BASE_DELAY", 10.0, float, 0.0),
                r.number("NETWORK_RETRY_EXPONENTIAL_BASE", 1.5, float, 1.0),
                r.number("NETWORK_RETRY_MAX_DELAY", 600.0, float, 0.0),
                retry_jitter,
            ),
            task_timeout=r.number("TASK_TIMEOUT", 600.0, float, 0.001),
            lease_timeout=r.number("LEASE_TIMEOUT", 30.0, float, 0.1),
            lease_max_lapses=r.number("LEASE_MAX_LAPSES", 3, int, 0, 1000),
            result_ttl=r.number("RESULT_TTL", 3600, int, 1),
            failure_ttl=r.number("FAILURE_TTL", 86400, int, 1),
            health_interval=r.number("HEALTH_INTERVAL", 5.0, float, 0.05),
            max_body_bytes=r.number("MAX_BODY_BYTES", 1048576, int, 1),
            log_level=r.choice("LOG_LEVEL", "INFO", LOG_LEVELS, upper=True),
            log_format=r.choice("LOG_FORMAT", "json", LOG_FORMATS),
            data_dir=Path(r.text("DATA_DIR", "./data")),
            queue=queue,
            shutdown_grace=r.number("SHUTDOWN_GRACE", 10.0, float, 0.0),
            shutdown_delay=r.number("SHUTDOWN_DELAY", 2.0, float, 0.0, 3600.0),
            events_maxlen=r.number("EVENTS_MAXLEN", 10000, int, 1),
            dlq_max_age_days=r.number("DLQ_MAX_AGE_DAYS", 7.0, float, 0.0),
            cleanup_interval=r.number("CLEANUP_INTERVAL", 3600.0, float, 1.0),
            storage_service_url=r.url("STORAGE_SERVICE_URL", ("http", "https")),
            callback_allowed_hosts=_allowed_hosts(r),
            callback_timeout=r.number("CALLBACK_TIMEOUT", 10.0, float, 0.1, 300.0),
            tracing=tracing_from(r),
            flow=flow,
            durability=r.choice("DURABILITY", "async", DURABILITIES),
        )


def _redis_url(r: Reader) -> str | None:
    value = r.raw("REDIS_URL")
    if not value:
        return None
    RedisTarget.parse(value)
    return value


def _queue_parts(r: Reader) -> list[tuple[str, list[str]]]:
    """QUEUE_EXECUTORS as (queue, its executor entries), each queue once."""
    parts: dict[str, list[str]] = {}
    for part in QUEUE_SPLIT_RE.split(r.raw("QUEUE_EXECUTORS")):
        if not part.strip():
            continue
        queue, sep, listed = part.partition("=")
        queue = queue.strip()
        if not sep or not NAMED_QUEUE_RE.match(queue) or queue in parts:
            raise SettingsError(f"QUEUE_EXECUTORS: expected QUEUE=URL,URL;…, got {part!r}")
        parts[queue] = [i.strip() for i in listed.split(",")]
    return list(parts.items())


def _queue_executors(r: Reader) -> dict[str, tuple[tuple[str, ...], tuple[float, ...]]]:
    """QUEUE_EXECUTORS=gpu=http://g1:8083;weight=3,http://g2:8083;cpu=http://c1:8083: an
    executor pool per named queue, each list written as EXECUTOR_URLS is."""
    pools: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {}
    for queue, items in _queue_parts(r):
        found = _executor_items("QUEUE_EXECUTORS", items)
        if not found:
            raise SettingsError(f"QUEUE_EXECUTORS: no executor URL for {queue}")
        urls = tuple(url for url, _ in found)
        for url in urls:
            check_url("QUEUE_EXECUTORS", url, ("http", "https"))
        pools[queue] = (tuple(u.rstrip("/") for u in urls), _weights(found))
    return pools


MAX_PARTITIONS = 64


def _queue_partitions(r: Reader, default: str) -> dict[str, int]:
    """QUEUE_PARTITIONS=`N` (the default queue) or `name=N,…` (docs/operations.md,
    *Partitioned queues*); 1 is the same as absent."""
    found: dict[str, int] = {}
    for item in r.items("QUEUE_PARTITIONS"):
        name, sep, count = item.rpartition("=")
        name = name.strip() if sep else default
        if not (NAMED_QUEUE_RE.match(name) or name == default) or name in found:
            raise SettingsError(f"QUEUE_PARTITIONS: expected N or QUEUE=N,…, got {item!r}")
        if not count.strip().isdigit() or not 1 <= int(count) <= MAX_PARTITIONS:
            raise SettingsError(f"QUEUE_PARTITIONS: {name}: 1 to {MAX_PARTITIONS}, got {count!r}")
        if int(count) > 1:
            found[name] = int(count)
    return found


def _check_partitioned_limits(partitions: Mapping[str, int], flow: Flow) -> None:
    """RATE_LIMITS and QUEUE_MAX_IN_FLIGHT keep one key per queue on its hash tag, which a
    claim in another partition cannot touch on a cluster (one script, one slot): refused on
    a partitioned queue (docs/flow-control.md, *Partitioned queues*)."""
    for name in partitions:
        limits = flow.limits(name)
        which = ["RATE_LIMITS"] if limits.rate else []
        which += ["QUEUE_MAX_IN_FLIGHT"] if limits.max_in_flight else []
        if which:
            raise SettingsError(
                f"QUEUE_PARTITIONS: {name} is partitioned, so it cannot take {' or '.join(which)}"
                " (a per-queue limit lives on one hash tag that claims in the queue's other"
                " partitions cannot reach); drop one of the two settings for this queue"
            )


def _executors(r: Reader) -> list[tuple[str, float]]:
    """EXECUTOR_URLS entries, each `URL` or `URL;weight=N` (N > 0; default 1)."""
    found = _executor_items("EXECUTOR_URLS", r.items("EXECUTOR_URLS"))
    urls = _executor_urls(r, tuple(url for url, _ in found))
    if len(urls) != len(found):  # EXECUTOR_COUNT form: all weigh 1
        return [(url, 1.0) for url in urls]
    return list(zip(urls, (w for _, w in found), strict=True))


def _executor_items(name: str, items: Iterable[str]) -> list[tuple[str, float]]:
    return [(url, weight) for url, weight, _ in (_entry(name, i) for i in items if i)]


def _entry(name: str, item: str) -> tuple[str, float, int | None]:
    """`URL[;weight=N][;max=N]`: (URL, weight, calls in flight per pool or None)."""
    url, *options = item.split(";")
    weight, most = 1.0, None
    for option in options:
        key, _, value = (part.strip() for part in option.partition("="))
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if key == "weight" and 0 < number <= 1000:
            weight = number
        elif key == "max" and number.is_integer() and 1 <= number <= MAX_EXECUTOR_CALLS:
            most = int(number)
        else:
            raise SettingsError(
                f"{name}: expected URL;weight=N (0 < N <= 1000) or URL;max=N (N >= 1): {item!r}"
            )
    return url.strip(), weight, most


def _executor_limits(r: Reader) -> dict[str, int]:
    """`;max=N` of every EXECUTOR_URLS and QUEUE_EXECUTORS entry, by URL."""
    entries = [("EXECUTOR_URLS", i) for i in r.items("EXECUTOR_URLS")]
    entries += [("QUEUE_EXECUTORS", i) for _, items in _queue_parts(r) for i in items if i]
    limits: dict[str, int] = {}
    for name, item in entries:
        url, _, most = _entry(name, item)
        if most is not None:
            limits[url.rstrip("/")] = min(most, limits.get(url.rstrip("/"), most))
    return limits


def _weights(executors: list[tuple[str, float]]) -> tuple[float, ...]:
    weights = tuple(w for _, w in executors)
    return weights if any(w != 1.0 for w in weights) else ()


def _executor_urls(r: Reader, given: tuple[str, ...]) -> tuple[str, ...]:
    urls, name = given, "EXECUTOR_URLS"
    if not urls and r.raw("EXECUTOR_COUNT"):
        count = r.number("EXECUTOR_COUNT", 0, int, 0, 1000)
        base = r.text("EXECUTOR_BASE_URL", "http://executor").rstrip("/")
        urls, name = tuple(f"{base}-{i}:8083" for i in range(1, count + 1)), "EXECUTOR_BASE_URL"
    for url in urls:
        check_url(name, url, ("http", "https"))
    return tuple(u.rstrip("/") for u in urls)


def _intervals(r: Reader, name: str) -> tuple[float, ...]:
    """RETRY_INTERVALS=10,30,60: seconds before retry 1, 2, 3, … (the last one repeats)."""
    values: list[float] = []
    for item in r.items(name):
        try:
            value = float(item)
        except ValueError:
            raise SettingsError(f"{name}: not a number: {item!r}") from None
        if not 0 <= value <= MAX_INTERVAL:
            raise SettingsError(f"{name}: out of range [0, {MAX_INTERVAL:g}]: {item!r}")
        values.append(value)
    return tuple(values)


def _allowed_hosts(r: Reader) -> tuple[str, ...]:
    """CALLBACK_ALLOWED_HOSTS=hooks.example.com,*.internal.example: hosts a task's
    callback_url may name (exact, or any subdomain for `*.suffix`)."""
    hosts = tuple(item.lower().rstrip(".") for item in r.items("CALLBACK_ALLOWED_HOSTS"))
    for host in hosts:
        if not ALLOWED_HOST_RE.match(host):
            raise SettingsError(f"CALLBACK_ALLOWED_HOSTS: not a host or *.suffix: {host!r}")
    return hosts


def _eas_targets(r: Reader) -> dict[str, str]:
    """EAS_TARGETS=svc1=http://a:5001,svc2=http://b:5002: a target URL per service."""
    targets: dict[str, str] = {}
    for item in r.items("EAS_TARGETS"):
        service, sep, url = item.partition("=")
        service, url = service.strip(), url.strip()
        if not sep or not SERVICE_NAME_RE.fullmatch(service):
            raise SettingsError(f"EAS_TARGETS: expected service=URL, got {item!r}")
        check_url("EAS_TARGETS", url, ("http", "https"))
        targets[service] = url.rstrip("/")
    return targets
