"""Span export settings: the standard OpenTelemetry `OTEL_*` variables (docs/tracing.md).

Read here from the mapping `Settings.from_env` is given (the SDK is handed values, never
the environment); `Tracing.on` decides once whether the SDK is imported at all.

Imports: env (and stdlib).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from app.env import Reader, SettingsError, check_url

SAMPLERS = ("always_on", "always_off", "traceidratio") + tuple(
    f"parentbased_{s}" for s in ("always_on", "always_off", "traceidratio")
)


@dataclass(frozen=True)
class Tracing:
    """Span export over OTLP/HTTP from the standard `OTEL_*` variables (docs/tracing.md);
    `endpoint` None: no export, no SDK import. W3C trace context propagates regardless."""

    endpoint: str | None = None  # the traces URL (…/v1/traces)
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 10.0  # seconds per export (the variables give milliseconds)
    compression: str = "none"
    tls: tuple[str | None, str | None, str | None] = (None, None, None)  # CA, key, cert files
    resource: tuple[tuple[str, str], ...] = (("service.name", "taskstream"),)
    sampler: str = "parentbased_always_on"
    ratio: float = 1.0  # OTEL_TRACES_SAMPLER_ARG of the traceidratio samplers
    # OTEL_BSP_*: schedule delay (ms), max queue size, max export batch size, export timeout (ms)
    batch: tuple[int, int, int, int] = (5000, 2048, 512, 30000)
    process_parent: str = "link"  # OTEL_TASKSTREAM_PROCESS_PARENT: link | child

    @property
    def on(self) -> bool:
        return self.endpoint is not None


def tracing_from(r: Reader) -> Tracing:
    """The OpenTelemetry SDK's variables, read here (the SDK is handed values, never the
    environment). Export is on with an OTLP endpoint, unless OTEL_SDK_DISABLED or
    OTEL_TRACES_EXPORTER=none; only OTLP over HTTP (http/protobuf) is spoken."""
    parent = r.choice("OTEL_TASKSTREAM_PROCESS_PARENT", "link", ("link", "child"))
    exporters = r.items("OTEL_TRACES_EXPORTER") or ("otlp",)
    if set(exporters) - {"otlp", "none"}:
        raise SettingsError(f"OTEL_TRACES_EXPORTER: only otlp or none: {','.join(exporters)!r}")
    endpoint = _otlp(r, "ENDPOINT")
    if r.boolean("OTEL_SDK_DISABLED", False) or "otlp" not in exporters or not endpoint:
        return Tracing(process_parent=parent)
    if r.raw("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        check_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint, ("http", "https"))
    else:
        check_url("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint, ("http", "https"))
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    protocol = _otlp(r, "PROTOCOL") or "http/protobuf"
    if protocol != "http/protobuf":
        raise SettingsError(f"{_otlp_name(r, 'PROTOCOL')}: only http/protobuf: {protocol!r}")
    compression = _otlp(r, "COMPRESSION") or "none"
    if compression not in ("gzip", "none"):
        raise SettingsError(f"{_otlp_name(r, 'COMPRESSION')}: gzip or none: {compression!r}")
    resource = dict(_pairs(r, "OTEL_RESOURCE_ATTRIBUTES"))
    resource["service.name"] = r.raw("OTEL_SERVICE_NAME") or resource.get("service.name", "")
    resource["service.name"] = resource["service.name"] or "taskstream"
    batch = (
        r.number("OTEL_BSP_SCHEDULE_DELAY", 5000, int, 1),
        r.number("OTEL_BSP_MAX_QUEUE_SIZE", 2048, int, 1),
        r.number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, int, 1),
        r.number("OTEL_BSP_EXPORT_TIMEOUT", 30000, int, 1),
    )
    return Tracing(
        endpoint=endpoint,
        headers=_pairs(r, "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        or _pairs(r, "OTEL_EXPORTER_OTLP_HEADERS"),
        timeout=r.number(_otlp_name(r, "TIMEOUT"), 10000, int, 1) / 1000,
        compression=compression,
        tls=(_otlp(r, "CERTIFICATE"), _otlp(r, "CLIENT_KEY"), _otlp(r, "CLIENT_CERTIFICATE")),
        resource=tuple(resource.items()),
        sampler=r.choice("OTEL_TRACES_SAMPLER", "parentbased_always_on", SAMPLERS),
        ratio=r.number("OTEL_TRACES_SAMPLER_ARG", 1.0, float, 0.0, 1.0),
        batch=batch,
        process_parent=parent,
    )


def _otlp_name(r: Reader, part: str) -> str:
    """The OTLP variable in force: OTEL_EXPORTER_OTLP_TRACES_<part>, else the general one."""
    specific = f"OTEL_EXPORTER_OTLP_TRACES_{part}"
    return specific if r.raw(specific) else f"OTEL_EXPORTER_OTLP_{part}"


def _otlp(r: Reader, part: str) -> str | None:
    return r.raw(_otlp_name(r, part)) or None


def _pairs(r: Reader, name: str) -> tuple[tuple[str, str], ...]:
    """`key=value,key2=value2` with percent-encoded values (OTLP headers, resource)."""
    pairs = []
    for item in r.items(name):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{name}: expected key=value, got {item!r}")
        pairs.append((key.strip(), unquote(value.strip())))
    return tuple(pairs)
