"""Settings.from_env: defaults, parsing of every variable, and one clear error per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.redis_target import RedisTarget
from app.settings import RetryPolicy, Settings, SettingsError, Tracing


def test_defaults_match_the_contract() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port) == ("127.0.0.1", 8081)
    assert s.redis_url is None
    assert s.api_keys == ()
    assert s.eas_tokens == ()
    assert s.executor_urls == ()
    assert s.target_api_base_url is None
    assert s.concurrency == 16
    assert s.retry == RetryPolicy(3, 5.0, 2.0, 300.0, True)
    assert s.network_retry == RetryPolicy(5, 10.0, 1.5, 600.0, True)
    assert s.task_timeout == 600
    assert s.lease_timeout == 30
    assert (s.result_ttl, s.failure_ttl) == (3600, 86400)
    assert s.health_interval == 5
    assert s.max_body_bytes == 1048576
    assert (s.log_level, s.log_format) == ("INFO", "json")
    assert s.data_dir == Path("./data")


def test_defaults_equal_the_dataclass_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_empty_and_blank_values_mean_default() -> None:
    assert Settings.from_env({"PORT": "", "CONCURRENCY": "  ", "LOG_LEVEL": ""}) == Settings()


def test_every_variable_is_parsed() -> None:
    env = {
        "HOST": "0.0.0.0",
        "PORT": "9000",
        "REDIS_URL": "redis://localhost:6380/1",
        "API_KEY": "k1",
        "EAS_TOKEN": "t1, t2 ,,",
        "EXECUTOR_URLS": "http://a:8083/, https://b:9000",
        "TARGET_API_BASE_URL": "http://target:8000/api",
        "CONCURRENCY": "4",
        "MAX_RETRIES": "7",
        "RETRY_BASE_DELAY": "0.5",
        "RETRY_EXPONENTIAL_BASE": "3",
        "RETRY_MAX_DELAY": "60",
        "RETRY_JITTER": "false",
        "NETWORK_RETRY_MAX_RETRIES": "9",
        "NETWORK_RETRY_BASE_DELAY": "1.25",
        "NETWORK_RETRY_EXPONENTIAL_BASE": "1.1",
        "NETWORK_RETRY_MAX_DELAY": "120",
        "TASK_TIMEOUT": "12.5",
        "LEASE_TIMEOUT": "3",
        "LEASE_MAX_LAPSES": "5",
        "RESULT_TTL": "60",
        "FAILURE_TTL": "120",
        "HEALTH_INTERVAL": "0.5",
        "MAX_BODY_BYTES": "2048",
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": "CONSOLE",
        "DATA_DIR": "/tmp/ts-data",
        "QUEUE_NAME": "jobs.v2",
        "SHUTDOWN_GRACE": "1.5",
        "SHUTDOWN_DELAY": "0.25",
        "EVENTS_MAXLEN": "500",
    }
    s = Settings.from_env(env)
    assert (s.host, s.port) == ("0.0.0.0", 9000)
    assert s.redis_url == "redis://localhost:6380/1"
    assert s.api_keys == ("k1",)
    assert s.eas_tokens == ("t1", "t2")
    assert s.executor_urls == ("http://a:8083", "https://b:9000")
    assert s.target_api_base_url == "http://target:8000/api"
    assert s.concurrency == 4
    assert s.retry == RetryPolicy(7, 0.5, 3.0, 60.0, False)
    assert s.network_retry == RetryPolicy(9, 1.25, 1.1, 120.0, False)
    assert s.task_timeout == 12.5
    assert s.lease_timeout == 3.0
    assert s.lease_max_lapses == 5
    assert (s.result_ttl, s.failure_ttl) == (60, 120)
    assert s.health_interval == 0.5
    assert s.max_body_bytes == 2048
    assert (s.log_level, s.log_format) == ("DEBUG", "console")
    assert s.data_dir == Path("/tmp/ts-data")
    assert s.queue == "jobs.v2"
    assert s.shutdown_grace == 1.5
    assert s.shutdown_delay == 0.25
    assert s.events_maxlen == 500
    assert isinstance(s.port, int) and isinstance(s.task_timeout, float)


@pytest.mark.parametrize(
    "url", ["redis://localhost", "rediss://user:pw@host:6380/2", "unix:///tmp/redis.sock"]
)
def test_redis_url_schemes(url: str) -> None:
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://s1:26379,s2,[::1]:26380/mymaster/3",
            RedisTarget(
                "sentinel",
                "redis+sentinel://s1:26379,s2,[::1]:26380/mymaster/3",
                (("s1", 26379), ("s2", 26379), ("::1", 26380)),
                "mymaster",
                3,
            ),
        ),
        (
            "rediss+sentinel://app:p%40ss@s1/primary?sentinel_password=sp",
            RedisTarget(
                "sentinel",
                "rediss+sentinel://app:p%40ss@s1/primary?sentinel_password=sp",
                (("s1", 26379),),
                "primary",
                0,
                "app",
                "p@ss",
                True,
                {"sentinel_password": "sp"},
            ),
        ),
        (
            "redis+cluster://:pw@n1:7000,n2:7001",
            RedisTarget(
                "cluster",
                "redis+cluster://:pw@n1:7000,n2:7001",
                (("n1", 7000), ("n2", 7001)),
                password="pw",
            ),
        ),
        (
            "rediss+cluster://n1",
            RedisTarget("cluster", "rediss+cluster://n1", (("n1", 6379),), tls=True),
        ),
    ],
)
def test_redis_url_topologies(url: str, expected: RedisTarget) -> None:
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url
    assert RedisTarget.parse(url) == expected


@pytest.mark.parametrize("value", ["async", "replica", "fsync", "REPLICA"])
def test_durability(value: str) -> None:
    assert Settings.from_env({"DURABILITY": value}).durability == value.lower()
    assert Settings.from_env({}).durability == "async"


def test_api_key_and_queue_api_key_are_both_accepted() -> None:
    assert Settings.from_env({"API_KEY": "a"}).api_keys == ("a",)
    assert Settings.from_env({"QUEUE_API_KEY": "q"}).api_keys == ("q",)
    both = Settings.from_env({"API_KEY": "a,b", "QUEUE_API_KEY": "q"}).api_keys
    assert set(both) == {"a", "b", "q"}


def test_executor_count_and_base_url() -> None:
    s = Settings.from_env({"EXECUTOR_COUNT": "3", "EXECUTOR_BASE_URL": "http://executor/"})
    assert s.executor_urls == (
        "http://executor-1:8083",
        "http://executor-2:8083",
        "http://executor-3:8083",
    )


def test_executor_count_default_base_url() -> None:
    s = Settings.from_env({"EXECUTOR_COUNT": "2"})
    assert s.executor_urls == ("http://executor-1:8083", "http://executor-2:8083")


def test_executor_urls_win_over_executor_count() -> None:
    s = Settings.from_env({"EXECUTOR_URLS": "http://x:1", "EXECUTOR_COUNT": "3"})
    assert s.executor_urls == ("http://x:1",)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("off", False),
    ],
)
def test_booleans(value: str, expected: bool) -> None:
    s = Settings.from_env({"RETRY_JITTER": value})
    assert s.retry.jitter is expected
    assert s.network_retry.jitter is expected


@pytest.mark.parametrize("level", ["debug", "Info", "WARNING", "error", "critical"])
def test_log_levels_case_insensitive(level: str) -> None:
    assert Settings.from_env({"LOG_LEVEL": level}).log_level == level.upper()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("PORT", "80.5"),
        ("PORT", "-1"),
        ("PORT", "65536"),
        ("CONCURRENCY", "0"),
        ("CONCURRENCY", "many"),
        ("MAX_RETRIES", "-1"),
        ("MAX_RETRIES", "1.5"),
        ("RETRY_BASE_DELAY", "-0.1"),
        ("RETRY_BASE_DELAY", "soon"),
        ("RETRY_EXPONENTIAL_BASE", "0.5"),
        ("RETRY_MAX_DELAY", "-5"),
        ("RETRY_INTERVALS", "10,soon"),
        ("RETRY_INTERVALS", "-1"),
        ("RETRY_INTERVALS", "90000"),
        ("NETWORK_RETRY_MAX_RETRIES", "x"),
        ("NETWORK_RETRY_BASE_DELAY", "-1"),
        ("NETWORK_RETRY_EXPONENTIAL_BASE", "0"),
        ("NETWORK_RETRY_MAX_DELAY", "never"),
        ("TASK_TIMEOUT", "0"),
        ("LEASE_TIMEOUT", "0.01"),
        ("LEASE_MAX_LAPSES", "-2"),
        ("RESULT_TTL", "0"),
        ("FAILURE_TTL", "1h"),
        ("HEALTH_INTERVAL", "0"),
        ("MAX_BODY_BYTES", "0"),
        ("MAX_BODY_BYTES", "1MB"),
        ("SHUTDOWN_GRACE", "-1"),
        ("SHUTDOWN_DELAY", "-0.5"),
        ("SHUTDOWN_DELAY", "soon"),
        ("EVENTS_MAXLEN", "0"),
        ("EXECUTOR_COUNT", "two"),
        ("RETRY_JITTER", "maybe"),
        ("RETRY_JITTER", "2"),
        ("LOG_LEVEL", "verbose"),
        ("LOG_FORMAT", "xml"),
        ("QUEUE_NAME", "has space"),
        ("QUEUE_NAME", "x" * 65),
        ("REDIS_URL", "localhost:6379"),
        ("REDIS_URL", "http://localhost:6379"),
        ("REDIS_URL", "redis://localhost:notaport"),
        ("REDIS_URL", "redis://localhost:99999"),
        ("REDIS_URL", "redis://"),
        ("REDIS_URL", "redis://:6379"),
        ("REDIS_URL", "redis+sentinel://h1:26379,h2:26379"),  # no master name
        ("REDIS_URL", "redis+sentinel://h1:26379/mymaster/zero"),
        ("REDIS_URL", "redis+sentinel://h1:port/mymaster"),
        ("REDIS_URL", "redis+sentinel://h1:26379/mymaster?bogus=1"),
        ("REDIS_URL", "redis+cluster://h1:7000/mymaster"),
        ("REDIS_URL", "redis+cluster://"),
        ("REDIS_URL", "redis+cluster://h1:99999"),
        ("REDIS_URL", "redis+kluster://h1:7000"),
        ("DURABILITY", "always"),
        ("EXECUTOR_URLS", "executor:8083"),
        ("EXECUTOR_URLS", "http://ok:1,ftp://bad"),
        ("EXECUTOR_URLS", "http://ok:1;weight=0"),
        ("EXECUTOR_URLS", "http://ok:1;weight=heavy"),
        ("EXECUTOR_URLS", "http://ok:1;share=2"),
        ("EXECUTOR_URLS", "http://ok:1;max=0"),
        ("EXECUTOR_URLS", "http://ok:1;max=1.5"),
        ("EXECUTOR_URLS", "http://ok:1;max="),
        ("QUEUE_EXECUTORS", "gpu=http://ok:1;max=x"),
        ("EXECUTOR_URLS", "http://host:port"),
        ("EXECUTOR_URLS", "http://"),
        ("TARGET_API_BASE_URL", "target/api"),
        ("TARGET_API_BASE_URL", "redis://target"),
        ("TARGET_API_BASE_URL", "http://target:0x50"),
        ("PUBLIC_URL", "taskstream:8081"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert message.startswith(f"{name}:"), message
    assert "\n" not in message


def test_bad_executor_base_url_names_a_variable() -> None:
    with pytest.raises(SettingsError, match="EXECUTOR_"):
        Settings.from_env({"EXECUTOR_COUNT": "1", "EXECUTOR_BASE_URL": "executor"})


def test_bad_executor_base_url_names_executor_base_url() -> None:
    with pytest.raises(SettingsError, match="^EXECUTOR_BASE_URL:"):
        Settings.from_env({"EXECUTOR_COUNT": "1", "EXECUTOR_BASE_URL": "executor"})


@pytest.mark.parametrize(
    ("env", "base"),
    [
        ({}, "http://127.0.0.1:8081"),
        ({"PORT": "9000", "HOST": "0.0.0.0"}, "http://127.0.0.1:9000"),
        ({"HOST": "10.1.2.3"}, "http://10.1.2.3:8081"),
        ({"HOST": "::"}, "http://127.0.0.1:8081"),
        ({"HOST": "::1"}, "http://[::1]:8081"),
        ({"PUBLIC_URL": "https://queue.example/base/"}, "https://queue.example/base"),
    ],
)
def test_the_base_url_executors_reach_us_by(env: dict[str, str], base: str) -> None:
    assert Settings.from_env(env).base_url == base


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_from_env_does_not_read_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "not-a-port")
    assert Settings.from_env({}).port == 8081


def test_retry_intervals_from_the_environment() -> None:
    settings = Settings.from_env({"RETRY_INTERVALS": "10, 30,0.5"})
    assert settings.retry.intervals == (10.0, 30.0, 0.5)
    assert Settings.from_env({}).retry.intervals == ()
    assert Settings.from_env({}).network_retry.intervals == ()


def test_executor_weights() -> None:
    s = Settings.from_env({"EXECUTOR_URLS": "http://a:1;weight=3, http://b:2/"})
    assert s.executor_urls == ("http://a:1", "http://b:2")
    assert s.executor_weights == (3.0, 1.0)
    assert Settings.from_env({"EXECUTOR_URLS": "http://a:1,http://b:2"}).executor_weights == ()


def test_executor_max_in_flight() -> None:
    s = Settings.from_env(
        {
            "EXECUTOR_URLS": "http://a:1;max=2;weight=3, http://b:2/,http://c:3/;max=5",
            "QUEUE_EXECUTORS": "gpu=http://g:1;max=1,http://h:1;weight=2;cpu=http://c:9",
        }
    )
    assert s.executor_urls == ("http://a:1", "http://b:2", "http://c:3")
    assert s.executor_weights == (3.0, 1.0, 1.0)
    assert s.executor_limits == {"http://a:1": 2, "http://c:3": 5, "http://g:1": 1}
    assert s.queue_executors["gpu"] == (("http://g:1", "http://h:1"), (1.0, 2.0))
    assert s.queue_executors["cpu"] == (("http://c:9",), ())


def test_callback_settings() -> None:
    s = Settings.from_env(
        {
            "STORAGE_SERVICE_URL": "https://storage.internal:8443/results",
            "CALLBACK_ALLOWED_HOSTS": "Hooks.Example.com, *.internal.test",
            "CALLBACK_TIMEOUT": "2.5",
        }
    )
    assert s.storage_service_url == "https://storage.internal:8443/results"
    assert s.callback_allowed_hosts == ("hooks.example.com", "*.internal.test")
    assert s.callback_timeout == 2.5
    assert s.callback_host_allowed("hooks.example.com")
    assert s.callback_host_allowed("a.b.internal.test")
    assert not s.callback_host_allowed("internal.test")  # `*.x` means subdomains of x
    assert not s.callback_host_allowed("evilhooks.example.com")
    assert Settings.from_env({}).callback_host_allowed("anything.at.all")  # unset: any


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STORAGE_SERVICE_URL", "ftp://storage"),
        ("STORAGE_SERVICE_URL", "http://"),
        ("CALLBACK_ALLOWED_HOSTS", "http://hooks.example.com"),
        ("CALLBACK_ALLOWED_HOSTS", "*"),
        ("CALLBACK_TIMEOUT", "0"),
    ],
)
def test_bad_callback_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


# --- tracing (OTEL_*; docs/tracing.md) ---------------------------------------------------


def test_tracing_is_off_without_an_otlp_endpoint() -> None:
    assert not Settings.from_env({}).tracing.on
    assert Settings.from_env({}).tracing == Tracing()
    off = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    assert Settings.from_env(off).tracing.on
    assert not Settings.from_env({**off, "OTEL_SDK_DISABLED": "true"}).tracing.on
    assert not Settings.from_env({**off, "OTEL_TRACES_EXPORTER": "none"}).tracing.on


def test_the_otel_variables_are_read_here() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4318/",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%2Cb, x=1",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/ca.pem",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=ignored",
        "OTEL_SERVICE_NAME": "queue-eu",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BSP_MAX_QUEUE_SIZE": "10",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "5",
        "OTEL_BSP_EXPORT_TIMEOUT": "1000",
        "OTEL_TASKSTREAM_PROCESS_PARENT": "child",
    }
    assert Settings.from_env(env).tracing == Tracing(
        endpoint="https://c:4318/v1/traces",
        headers=(("api-key", "a,b"), ("x", "1")),
        timeout=2.5,
        compression="gzip",
        tls=("/ca.pem", None, None),
        resource=(("deployment.environment", "prod"), ("service.name", "queue-eu")),
        sampler="parentbased_traceidratio",
        ratio=0.25,
        batch=(100, 10, 5, 1000),
        process_parent="child",
    )


def test_the_traces_variables_win_over_the_general_ones() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://general:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/custom/path",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=1",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "b=2",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "3000",
    }
    tracing = Settings.from_env(env).tracing
    assert tracing.endpoint == "http://traces:4318/custom/path"  # used as it is
    assert (tracing.headers, tracing.timeout) == ((("b", "2"),), 3.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTEL_TASKSTREAM_PROCESS_PARENT", "sibling"),
        ("OTEL_TRACES_EXPORTER", "jaeger"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://c/v1/traces"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "br"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
        ("OTEL_RESOURCE_ATTRIBUTES", "=x"),
        ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ("OTEL_SDK_DISABLED", "perhaps"),
    ],
)
def test_bad_otel_values_name_the_variable(name: str, value: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", name: value}
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert str(info.value).startswith(f"{name}:"), str(info.value)


# --- QUEUE_PARTITIONS (docs/operations.md, Partitioned queues) ---------------------------------


def test_queue_partitions_for_the_default_queue_and_named_ones() -> None:
    assert Settings.from_env({}).queue_partitions == {}
    assert Settings.from_env({"QUEUE_PARTITIONS": "8"}).queue_partitions == {"evaluations": 8}
    env = {"QUEUE_NAME": "jobs", "QUEUE_PARTITIONS": "4, gpu=2,cpu=1"}
    assert Settings.from_env(env).queue_partitions == {"jobs": 4, "gpu": 2}  # 1: as absent


@pytest.mark.parametrize("value", ["0", "65", "x", "gpu=", "gp#u=2", "gpu=2,gpu=3", "a/b=2"])
def test_bad_queue_partitions_name_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match="^QUEUE_PARTITIONS"):
        Settings.from_env({"QUEUE_PARTITIONS": value})
