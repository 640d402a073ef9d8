"""The Grafana dashboard shipped in deploy/grafana/taskstream.json: it loads as an
importable dashboard, and every metric its queries name is on a live service's /metrics,
with the labels the queries group by."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from app.runtime.executors import ExecutorPool
from tests.conftest import ROOT, Service, wait_for
from tests.runtime.test_metrics import MakeExecutor, MakeService

DASHBOARD = ROOT / "deploy" / "grafana" / "taskstream.json"
METRIC = re.compile(r"\btaskstream_[a-z0-9_]+")
BY = re.compile(r"\bby \(([^)]*)\)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: the panels' targets and the template variables' queries."""
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    found += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return found


async def exported(service: Service) -> dict[str, set[str] | None]:
    """Sample name -> its label names (None: a family declared without samples yet, such as
    fsck orphans before an audit finds one)."""
    text = (await service.http.get("/metrics")).text
    names: dict[str, set[str] | None] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            names[family.name + suffix] = None
        for sample in family.samples:
            names[sample.name] = (names[sample.name] or set()) | set(sample.labels)
    return names


def test_the_dashboard_is_importable():
    dashboard = load()
    assert dashboard["uid"] == "taskstream" and dashboard["title"] == "taskstream"
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
    for expr in queries(dashboard):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    titles = " ".join(p["title"] for p in panels)
    for shown in ("Throughput", "Fail", "Queue depth", "Oldest waiting", "Executor latency"):
        assert shown in titles


async def test_every_metric_the_dashboard_queries_is_exported(
    make_service: MakeService, make_executor: MakeExecutor, queue: str
):
    """After a task ran on an in-process executor, so histograms and executor gauges have
    samples whose labels can be checked."""
    executor = await make_executor()
    service = await make_service(executors=ExecutorPool([executor.url], health_interval=0.2))
    await service.http.post("/tasks", json={"eval_id": "g-1", "code": "x"})

    async def ran() -> bool:
        return bool((await service.http.get("/tasks/g-1")).json()["status"] == "completed")

    await wait_for(ran)
    names = await exported(service)
    wanted = {m for expr in queries(load()) for m in METRIC.findall(expr)}
    assert "taskstream_oldest_waiting_seconds" in wanted
    missing = sorted(wanted - set(names))
    assert not missing, f"queried but not on /metrics: {missing}"
    checked = 0
    for expr in queries(load()):
        for group in BY.findall(expr):
            metrics = [names[m] for m in METRIC.findall(expr)]
            if any(labels is None for labels in metrics):
                continue  # no samples yet: the names are checked, the labels cannot be
            for label in (g.strip() for g in group.split(",")):
                assert any(label in labels for labels in metrics if labels), (label, expr)
                checked += 1
    assert checked > 30  # most groupings were checked against real samples
