"""Flow-control settings (app/flow_settings.py): TENANT_WEIGHTS, RATE_LIMITS and
QUEUE_MAX_IN_FLIGHT, read through `Settings.from_env`; a bad value is one line naming the
variable (the command line exits 2 on it, tests/cli/test_main.py)."""

from __future__ import annotations

import pytest

from app.flow_settings import NO_LIMITS, Flow, Limits, Rate
from app.settings import Settings, SettingsError


def test_none_by_default() -> None:
    flow = Settings.from_env({}).flow
    assert flow == Flow()
    assert flow.limits("evaluations") is NO_LIMITS
    assert flow.weights_arg == ""
    assert NO_LIMITS.args() == ["", "", ""]


def test_every_variable() -> None:
    flow = Settings.from_env(
        {
            "TENANT_WEIGHTS": "acme=3, beta:eu=0.5",
            "RATE_LIMITS": "evaluations=50/s, gpu=120 / m",
            "QUEUE_MAX_IN_FLIGHT": "gpu=4",
        }
    ).flow
    assert flow.tenant_weights == {"acme": 3.0, "beta:eu": 0.5}
    assert flow.weights_arg == "acme=3.0,beta:eu=0.5"
    assert flow.limits("evaluations") == Limits(Rate(50, 1.0), None)
    gpu = flow.limits("gpu")
    assert gpu == Limits(Rate(120, 60.0), 4)
    assert gpu.args() == ["500.0", "120", "4"]  # one start every 500 ms, a burst of 120
    assert gpu.view() == {"rate": "120/m", "max_in_flight": 4}
    assert flow.limits("cpu") is NO_LIMITS


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TENANT_WEIGHTS", "acme"),
        ("TENANT_WEIGHTS", "acme=0"),
        ("TENANT_WEIGHTS", "acme=-1"),
        ("TENANT_WEIGHTS", "acme=1001"),
        ("TENANT_WEIGHTS", "acme=x"),
        ("TENANT_WEIGHTS", "a b=1"),
        ("TENANT_WEIGHTS", "acme=1,acme=2"),
        ("RATE_LIMITS", "evaluations"),
        ("RATE_LIMITS", "evaluations=10"),
        ("RATE_LIMITS", "evaluations=10/h"),
        ("RATE_LIMITS", "evaluations=0/s"),
        ("RATE_LIMITS", "evaluations=1.5/s"),
        ("RATE_LIMITS", "=10/s"),
        ("QUEUE_MAX_IN_FLIGHT", "gpu=0"),
        ("QUEUE_MAX_IN_FLIGHT", "gpu=many"),
        ("QUEUE_MAX_IN_FLIGHT", "gpu"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert message.startswith(f"{name}:"), message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"QUEUE_PARTITIONS": "4", "RATE_LIMITS": "evaluations=10/s"}, "RATE_LIMITS"),
        ({"QUEUE_PARTITIONS": "gpu=2", "QUEUE_MAX_IN_FLIGHT": "gpu=4"}, "QUEUE_MAX_IN_FLIGHT"),
        (
            {"QUEUE_PARTITIONS": "gpu=2", "RATE_LIMITS": "gpu=1/s", "QUEUE_MAX_IN_FLIGHT": "gpu=4"},
            "RATE_LIMITS or QUEUE_MAX_IN_FLIGHT",
        ),
    ],
)
def test_a_partitioned_queue_refuses_limits(env: dict[str, str], named: str) -> None:
    """A per-queue limit's key lives on one hash tag: a partitioned queue cannot have one."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    message = str(info.value)
    queue = "evaluations" if env["QUEUE_PARTITIONS"] == "4" else "gpu"
    assert message.startswith(f"QUEUE_PARTITIONS: {queue} is partitioned"), message
    assert f"cannot take {named} " in message
    assert "\n" not in message


def test_limits_on_another_queue_than_the_partitioned_one() -> None:
    """Only the combination on one queue is refused; fair share is fine everywhere."""
    settings = Settings.from_env(
        {
            "QUEUE_PARTITIONS": "4",
            "RATE_LIMITS": "gpu=10/s",
            "QUEUE_MAX_IN_FLIGHT": "gpu=2",
            "TENANT_WEIGHTS": "acme=3",
        }
    )
    assert settings.queue_partitions == {"evaluations": 4}
    assert settings.flow.limits("gpu") == Limits(Rate(10, 1.0), 2)
