"""Task validation (every 422 case), priority mapping, run_at parsing, rendering helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from app.errors import BadRequest, Invalid
from app.models import (
    CANCELLABLE,
    EVAL_ID_RE,
    TERMINAL,
    Dedup,
    Expiry,
    Priority,
    State,
    Task,
    TaskRequest,
    check_eval_id,
    decode_json,
    iso_ms,
    new_eval_id,
    parse_json,
    parse_priority,
)

NOW = 1_700_000_000.0


def parse(**fields: Any) -> TaskRequest:
    return TaskRequest.parse({"code": "print(1)", **fields})


# --- validation: each 422 case --------------------------------------------------------


@pytest.mark.parametrize("data", [None, [], "code", 3, True])
def test_task_must_be_an_object(data: object) -> None:
    with pytest.raises(Invalid, match="JSON object"):
        TaskRequest.parse(data)


@pytest.mark.parametrize("body", [{}, {"code": ""}, {"code": None}, {"code": 5}, {"code": ["x"]}])
def test_code_missing_or_empty(body: dict[str, Any]) -> None:
    with pytest.raises(Invalid, match="code"):
        TaskRequest.parse(body)


@pytest.mark.parametrize(
    "eval_id", ["", "has space", "slash/id", "üml", "semi;colon", "x" * 129, 5, True, ["a"], {}]
)
def test_bad_eval_id(eval_id: object) -> None:
    with pytest.raises(Invalid, match="eval_id"):
        parse(eval_id=eval_id)


@pytest.mark.parametrize("eval_id", ["a", "A-z_0.9:x", "x" * 128, "eval:2024-01-01.run_1"])
def test_good_eval_id(eval_id: str) -> None:
    assert parse(eval_id=eval_id).eval_id == eval_id
    assert check_eval_id(eval_id) == eval_id


@pytest.mark.parametrize("value", [None, 1, b"abc", "a\tb", "\nabc", "a\nb"])
def test_check_eval_id_rejects_non_strings_and_control_characters(value: object) -> None:
    with pytest.raises(Invalid):
        check_eval_id(value)


@pytest.mark.parametrize("value", ["abc\n", "x" * 128 + "\n"])
def test_check_eval_id_rejects_a_trailing_newline(value: str) -> None:
    with pytest.raises(Invalid):
        check_eval_id(value)


def test_eval_id_is_generated_when_absent() -> None:
    first, second = parse(), parse()
    assert first.eval_id != second.eval_id
    assert EVAL_ID_RE.match(first.eval_id)
    assert len(new_eval_id()) == 22


@pytest.mark.parametrize("priority", ["urgent", "", 1, 0, 2.5, ["high"], {"p": 1}])
def test_bad_priority(priority: object) -> None:
    with pytest.raises(Invalid, match="priority"):
        parse(priority=priority)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", "10"),
        ("timeout", True),
        ("timeout", 0),
        ("timeout", -1),
        ("timeout", 86401),
        ("timeout", float("inf")),
        ("timeout", float("nan")),
        ("max_retries", "3"),
        ("max_retries", -1),
        ("max_retries", 1.5),
        ("max_retries", 1001),
        ("max_retries", False),
        ("delay", "5"),
        ("delay", -1),
        ("delay", 367 * 86400),
        ("delay", [1]),
        ("run_at", "tomorrow"),
        ("run_at", "2024-13-45T00:00:00"),
        ("run_at", -5),
        ("run_at", True),
        ("run_at", {"at": 1}),
        ("run_at", 1e12),
        ("metadata", "x"),
        ("metadata", [1, 2]),
        ("metadata", 3),
        ("language", ""),
        ("language", 3),
        ("language", "x" * 65),
    ],
)
def test_bad_field_types(field: str, value: object) -> None:
    with pytest.raises(Invalid, match=field):
        parse(**{field: value})


def test_delay_and_run_at_together() -> None:
    with pytest.raises(Invalid, match="not both"):
        parse(delay=5, run_at=NOW + 10)


def test_invalid_is_not_bad_request() -> None:
    # 422 for content, 400 only for unparseable bodies
    with pytest.raises(Invalid) as info:
        parse(priority="urgent")
    assert not isinstance(info.value, BadRequest)


# --- priorities ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, Priority.HIGH),
        (False, Priority.DEFAULT),
        (None, Priority.DEFAULT),
        ("high", Priority.HIGH),
        ("HIGH", Priority.HIGH),
        ("default", Priority.DEFAULT),
        ("Low", Priority.LOW),
    ],
)
def test_priority_mapping(value: object, expected: Priority) -> None:
    assert parse_priority(value) is expected
    assert parse(priority=value).priority is expected


def test_priority_absent_is_default() -> None:
    assert parse().priority is Priority.DEFAULT


# --- run_at / delay -----------------------------------------------------------------


def test_delay_stays_relative() -> None:
    """Turned into a time by enqueue.lua on the Redis server's clock, not here."""
    assert (parse(delay=30).delay, parse(delay=30).run_at) == (30, None)
    assert parse(delay=0.25).delay == 0.25


def test_zero_delay_runs_now() -> None:
    assert (parse(delay=0).delay, parse(delay=0).run_at) == (None, None)
    assert (parse().delay, parse().run_at) == (None, None)


def test_run_at_epoch() -> None:
    assert parse(run_at=NOW + 60).run_at == NOW + 60
    assert parse(run_at=int(NOW) + 61).run_at == int(NOW) + 61
    assert parse(run_at=NOW + 60).delay is None


def test_run_at_in_the_past_is_kept_as_given() -> None:
    """Whether it is past is the Redis server's call (enqueue.lua queues it at once)."""
    assert parse(run_at=NOW - 60).run_at == NOW - 60
    assert parse(run_at="2001-01-01T00:00:00Z").run_at == 978307200.0


@pytest.mark.parametrize(
    "text",
    [
        "2023-11-14T22:13:40Z",
        "2023-11-14T22:13:40+00:00",
        "2023-11-15T00:13:40+02:00",
        "2023-11-14T22:13:40",  # naive is UTC
        "2023-11-14T22:13:40.000Z",
    ],
)
def test_run_at_iso8601(text: str) -> None:
    expected = datetime(2023, 11, 14, 22, 13, 40, tzinfo=UTC).timestamp()
    assert parse(run_at=text).run_at == pytest.approx(expected)
    assert expected == NOW + 20


def test_run_at_iso8601_relative_to_now() -> None:
    now = datetime.now(UTC)
    later = (now + timedelta(minutes=5)).isoformat()
    run_at = TaskRequest.parse({"code": "x", "run_at": later}).run_at
    assert run_at == pytest.approx(now.timestamp() + 300, abs=0.01)


# --- payload ------------------------------------------------------------------------


def test_payload_omits_defaults() -> None:
    req = parse(language="python", metadata={}, priority="low")
    assert req.payload == {"code": "print(1)"}
    assert orjson.loads(req.encoded_payload()) == {"code": "print(1)"}


def test_payload_keeps_non_defaults() -> None:
    req = parse(language="bash", metadata={"user": "u1"}, timeout=12, max_retries=2)
    assert req.payload == {
        "code": "print(1)",
        "language": "bash",
        "metadata": {"user": "u1"},
        "timeout": 12.0,
        "max_retries": 2,
    }
    assert isinstance(req.payload["max_retries"], int)


def test_payload_excludes_queue_fields() -> None:
    req = parse(eval_id="e1", priority=True, delay=5)
    assert set(req.payload) == {"code"}


def test_max_retries_zero_and_float_integer() -> None:
    assert parse(max_retries=0).payload["max_retries"] == 0
    assert parse(max_retries=2.0).payload["max_retries"] == 2


# --- Task ---------------------------------------------------------------------------


def make_task(**payload: Any) -> Task:
    return Task("e1", "1700000000000-0", 2, Priority.HIGH, {"code": "print(2)", **payload})


def test_executor_body_defaults() -> None:
    assert make_task().executor_body() == {
        "eval_id": "e1",
        "code": "print(2)",
        "language": "python",
        "attempt": 2,
        "metadata": {},
    }


def test_executor_body_from_payload() -> None:
    body = make_task(language="bash", metadata={"k": "v"}, timeout=3).executor_body()
    assert body["language"] == "bash"
    assert body["metadata"] == {"k": "v"}
    assert "timeout" not in body


def test_task_view() -> None:
    view = make_task(timeout=3, max_retries=1).view()
    assert view == {
        "eval_id": "e1",
        "code": "print(2)",
        "language": "python",
        "attempt": 2,
        "metadata": {},
        "status": "processing",
        "priority": "high",
        "timeout": 3.0,
        "max_retries": 1,
        "lease": "1700000000000-0",
    }
    assert make_task().view()["timeout"] is None
    assert make_task().view()["max_retries"] is None


def test_task_from_request_payload_round_trip() -> None:
    req = parse(eval_id="e2", language="bash", metadata={"a": 1}, timeout=9, max_retries=4)
    task = Task(req.eval_id, "1-0", 1, req.priority, orjson.loads(req.encoded_payload()))
    assert task.timeout == 9.0
    assert task.max_retries == 4
    assert task.executor_body()["metadata"] == {"a": 1}


# --- helpers ------------------------------------------------------------------------


def test_state_sets() -> None:
    assert {State.COMPLETED, State.FAILED, State.CANCELLED, State.EXPIRED} == TERMINAL
    assert {State.QUEUED, State.SCHEDULED, State.RETRYING, State.DEFERRED} == CANCELLABLE
    assert State.PROCESSING not in TERMINAL | CANCELLABLE
    assert State("queued") == "queued"


def test_parse_json() -> None:
    assert parse_json(b'{"a": 1}') == {"a": 1}
    assert parse_json(b"") is None
    with pytest.raises(BadRequest, match="malformed JSON"):
        parse_json(b"{nope")


def test_iso_ms_and_decode_json() -> None:
    assert iso_ms(b"1700000000123") == "2023-11-14T22:13:20.123Z"
    assert iso_ms("0") == "1970-01-01T00:00:00.000Z"
    assert iso_ms(None) is None
    assert iso_ms(b"") is None
    assert decode_json(b'{"x": [1]}') == {"x": [1]}
    assert decode_json(None) is None


@pytest.mark.parametrize(
    "intervals", [[], "10", [1, "2"], [True], [-1], [10**9], [float("nan")], list(range(101))]
)
def test_bad_retry_intervals_are_refused(intervals: object) -> None:
    with pytest.raises(Invalid, match="retry_intervals"):
        TaskRequest.parse({"code": "x", "retry_intervals": intervals})


def test_retry_intervals_are_kept_in_the_payload() -> None:
    request = TaskRequest.parse({"code": "x", "retry_intervals": [10, 30.5]})
    assert request.payload["retry_intervals"] == [10.0, 30.5]


def test_callback_url_is_kept_out_of_the_payload() -> None:
    url = "https://hooks.example.com/done?token=t"
    req = TaskRequest.parse({"code": "x", "callback_url": url})
    assert req.callback_url == url
    assert "callback_url" not in req.payload
    assert TaskRequest.parse({"code": "x"}).callback_url is None


@pytest.mark.parametrize(
    "url", ["ftp://x", "not a url", "http://", "//host/x", "http://h:x/", "http://a\tb/", 7, ""]
)
def test_bad_callback_url(url: object) -> None:
    with pytest.raises(Invalid, match="callback_url"):
        TaskRequest.parse({"code": "x", "callback_url": url})


# --- dedup_key, dedup, dedup_ttl; expires, expires_at (issue 15) -----------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"dedup_key": ""},
        {"dedup_key": "k" * 129},
        {"dedup_key": 5},
        {"dedup_key": ["k"]},
        {"dedup": "active"},  # no key
        {"dedup_ttl": 5},  # no key
        {"dedup_key": "k", "dedup": "simple"},
        {"dedup_key": "k", "dedup": "throttle"},  # no ttl
        {"dedup_key": "k", "dedup": "debounce"},
        {"dedup_key": "k", "dedup": "throttle", "dedup_ttl": 0},
        {"dedup_key": "k", "dedup": "throttle", "dedup_ttl": -1},
        {"dedup_key": "k", "dedup": "throttle", "dedup_ttl": "5"},
        {"dedup_key": "k", "dedup": "throttle", "dedup_ttl": True},
        {"dedup_key": "k", "dedup": "throttle", "dedup_ttl": 1e12},
        {"dedup_key": "k", "dedup": "debounce", "dedup_ttl": 1, "delay": 5},
        {"dedup_key": "k", "dedup": "debounce", "dedup_ttl": 1, "run_at": 5},
        {"dedup_key": "k", "dedup": "debounce", "dedup_ttl": 1, "depends_on": ["p"]},
        {"expires": 0},
        {"expires": -1},
        {"expires": "10"},
        {"expires": True},
        {"expires": 1e12},
        {"expires_at": "tomorrow"},
        {"expires_at": -5},
        {"expires_at": 1e12},
        {"expires": 5, "expires_at": 5},
    ],
)
def test_bad_flow_control_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(Invalid):
        TaskRequest.parse({"code": "x", **fields})


def test_dedup_defaults_to_active() -> None:
    req = TaskRequest.parse({"code": "x", "dedup_key": "any key {with} spaces/ü"})
    assert req.dedup == Dedup("any key {with} spaces/ü", "active", None)
    req = TaskRequest.parse({"code": "x", "dedup_key": "k", "dedup": "active", "dedup_ttl": 9})
    assert req.dedup == Dedup("k", "active", None)  # an active key's ttl is ignored
    assert TaskRequest.parse({"code": "x"}).dedup is None


@pytest.mark.parametrize("mode", ["throttle", "debounce"])
def test_dedup_modes_with_a_ttl(mode: str) -> None:
    req = TaskRequest.parse({"code": "x", "dedup_key": "k", "dedup": mode, "dedup_ttl": 0.25})
    assert req.dedup is not None and (req.dedup.mode, req.dedup.ttl_ms) == (mode, 250)


def test_expires_stays_relative_and_expires_at_absolute() -> None:
    assert TaskRequest.parse({"code": "x", "expires": 1.5}).expiry.arg() == "+1500"
    at = TaskRequest.parse({"code": "x", "expires_at": "2030-01-01T00:00:00Z"}).expiry
    assert at.arg() == str(int(datetime(2030, 1, 1, tzinfo=UTC).timestamp() * 1000))
    assert TaskRequest.parse({"code": "x", "expires_at": 1_900_000_000}).expiry.arg() == (
        "1900000000000"
    )
    assert TaskRequest.parse({"code": "x"}).expiry == Expiry()
    assert Expiry().arg() is None


def test_flow_control_fields_stay_out_of_the_payload() -> None:
    fields = {"dedup_key": "k", "expires": 5}
    assert TaskRequest.parse({"code": "x", **fields}).payload == {"code": "x"}


def test_tenant() -> None:
    def tenant(value: object) -> str | None:
        return TaskRequest.parse({"code": "x", "tenant": value}).tenant

    assert TaskRequest.parse({"code": "x"}).tenant is None
    assert tenant("default") is None  # no tenant is tenant `default`
    assert tenant("acme:eu-1.b_c") == "acme:eu-1.b_c"
    for bad in ("", "a b", "x" * 65, 3, "a|b"):
        with pytest.raises(Invalid, match="tenant"):
            tenant(bad)
