"""The exactly-once check of every drain: executions counted per eval_id at the executor.

The stub (bench/stub.py `GET /counts`) or the engine-only drain's no-op executor counts
each execution per eval_id; the bench knows which ids it queued. No fault is injected in
these runs, so every task must run exactly as often as expected (once; twice for the retry
drain's fail-once tasks): a missing or duplicated task fails the run (exit status 1).
An enqueue sent without a 2xx answer read (keep-up's open loop) is indeterminate: its task
may run once or not at all, never twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

SAMPLE = 5  # ids of each kind kept in the results


def check(
    scenario: str,
    expected: Iterable[str],
    counts: Mapping[str, int],
    times: Callable[[str], int] | None = None,
    maybe: Iterable[str] = (),
) -> dict[str, Any]:
    """Compare executions per id with the ids queued; `times(id)`: how often it must run.
    `maybe`: ids sent whose enqueue answer was not a 2xx read in time (indeterminate: the
    task may exist), which may run once or not at all."""
    once = missing = duplicated = extra_executions = short = 0
    samples: dict[str, list[str]] = {"missing": [], "duplicated": [], "unexpected": []}
    wanted = set()
    for eval_id in expected:
        wanted.add(eval_id)
        want = times(eval_id) if times else 1
        got = counts.get(eval_id, 0)
        if got == want:
            once += 1
        elif got == 0:
            missing += 1
            _keep(samples["missing"], eval_id)
        elif got > want:
            duplicated += 1
            extra_executions += got - want
            _keep(samples["duplicated"], eval_id)
        else:
            short += 1  # ran, but fewer times than expected (a retry never came)
            _keep(samples["missing"], eval_id)
    unsure = set(maybe) - wanted
    indeterminate_ran = sum(1 for i in unsure if counts.get(i, 0) == 1)
    for eval_id in unsure:
        if counts.get(eval_id, 0) > 1:
            duplicated += 1
            extra_executions += counts[eval_id] - 1
            _keep(samples["duplicated"], eval_id)
    unexpected = [i for i in counts if i not in wanted and i not in unsure]
    samples["unexpected"] = unexpected[:SAMPLE]
    ok = missing == 0 and duplicated == 0 and short == 0 and not unexpected
    return {
        "scenario": scenario,
        "expected": len(wanted),
        "executed_as_expected": once,
        "missing": missing,
        "short": short,
        "duplicated": duplicated,
        "extra_executions": extra_executions,
        "unexpected": len(unexpected),
        "indeterminate": len(unsure),
        "indeterminate_ran": indeterminate_ran,
        "samples": {k: v for k, v in samples.items() if v},
        "ok": ok,
    }


def _keep(bucket: list[str], eval_id: str) -> None:
    if len(bucket) < SAMPLE:
        bucket.append(eval_id)


def line(result: dict[str, Any]) -> str:
    verdict = "ok" if result["ok"] else "FAILED"
    return (
        f"exactly-once {verdict}: {result['executed_as_expected']:,} of "
        f"{result['expected']:,} executed as expected, {result['missing']} missing, "
        f"{result['duplicated']} duplicated, {result['unexpected']} unexpected"
        + (
            f"; {result['indeterminate']} sent without a 2xx answer, "
            f"{result['indeterminate_ran']} of them ran (once)"
            if result.get("indeterminate")
            else ""
        )
    )
