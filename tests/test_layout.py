"""Every Redis key docs/operations.md names (its "Redis layout", and the dashboard's keys)
exists, under that name, after a workload that touches each structure: what an operator
reads there, redis-cli finds."""

from __future__ import annotations

from app.engine.client import connect
from tests.conftest import ROOT

# name in docs/operations.md -> glob for SCAN ({q} = the queue, S = a PAI-EAS service)
NAMED = {
    "ts:{q}:stream:high": "ts:{%(q)s}:stream:high",
    "ts:{q}:task:<eval_id>": "ts:{%(q)s}:task:*",
    "ts:{q}:leases": "ts:{%(q)s}:leases",
    "ts:{q}:scheduled": "ts:{%(q)s}:scheduled",
    "ts:{q}:deferred": "ts:{%(q)s}:deferred",
    "ts:{q}:pace": "ts:{%(q)s}:pace",
    "ts:{q}:expiries": "ts:{%(q)s}:expiries",
    "ts:{q}:dedup": "ts:{%(q)s}:dedup",
    "ts:{q}:dedup:ttl": "ts:{%(q)s}:dedup:ttl",
    "ts:{q}:counters": "ts:{%(q)s}:counters",
    "ts:{q}:holes:<prio>": "ts:{%(q)s}:holes:*",
    "ts:{q}:stream:<prio>:tenants": "ts:{%(q)s}:stream:low:tenants",
    "ts:{q}:tenants:<prio>:waiting": "ts:{%(q)s}:tenants:low:waiting",
    "ts:{q}:tenants:<prio>": "ts:{%(q)s}:tenants:low",
    "ts:{q}:dlq": "ts:{%(q)s}:dlq",
    "ts:{q}:dlq:index": "ts:{%(q)s}:dlq:index",
    "ts:{q}:cleanup-lock": "ts:{%(q)s}:cleanup-lock",
    "ts:{q}:probe:<host:pid>": "ts:{%(q)s}:probe:*",
    "ts:{q}:events": "ts:{%(q)s}:events",
    "ts:{q}:stats": "ts:{%(q)s}:stats",
    "ts:{q}:expiring": "ts:{%(q)s/gpu}:expiring",
    "ts:{q}:paused": "ts:{%(q)s}:paused",
    "ts:{q}:callbacks": "ts:{%(q)s}:callbacks",
    "ts:{eas:S}:index": "ts:{eas:%(s)s}:index",
    "ts:{eas:S}:sink:index": "ts:{eas:%(s)s}:sink:index",
    "ts:{eas:S}:sink:rid": "ts:{eas:%(s)s}:sink:rid",
    "ts:{<QUEUE_NAME>}:eas:services": "ts:{%(q)s}:eas:services",
    "ts:{<QUEUE_NAME>}:queues": "ts:{%(q)s}:queues",
    "ts:{<QUEUE_NAME>/<name>}:": "ts:{%(q)s/gpu}:stream:default",
    "ts:{<QUEUE_NAME>}:layout": "ts:{%(q)s}:layout",
}


async def test_every_key_the_docs_name_exists(service, redis_url, queue):
    doc = (ROOT / "docs" / "operations.md").read_text()
    for name in NAMED:
        assert f"`{name}" in doc, f"docs/operations.md does not name {name}"
    http, svc = service.http, f"s.{queue[:8]}"
    for i in range(3):
        body = {"eval_id": f"t{i}", "code": "x", "priority": "high"}
        assert (await http.post("/tasks", json=body)).status_code == 201
    assert (await http.post("/tasks", json={"code": "x", "delay": 600})).status_code == 201
    flow = {"code": "x", "delay": 600, "expires": 900, "dedup_key": "d"}
    assert (await http.post("/tasks", json=flow)).status_code == 201
    flow = {"code": "x", "dedup_key": "t", "dedup": "throttle", "dedup_ttl": 600}
    assert (await http.post("/tasks", json=flow)).status_code == 201
    hook = {"eval_id": "cb", "code": "x", "delay": 600, "callback_url": "http://127.0.0.1:9/"}
    assert (await http.post("/tasks", json=hook)).status_code == 201
    assert (await http.post("/tasks/cb/cancel")).status_code == 200  # a callbacks entry
    assert (await http.get("/tasks/next")).json()["eval_id"] == "t0"  # leased
    child = await http.post("/tasks", json={"code": "x", "depends_on": ["t0"]})
    assert child.json()["status"] == "deferred"
    assert (await http.post("/tasks/t2/cancel")).status_code == 200  # a hole above head
    assert (await http.get("/tasks/t1")).json()["status"] == "queued"  # an ETA question: pace
    assert (await http.get("/tasks/next")).json()["eval_id"] == "t1"
    dead = await http.post("/tasks/t1/fail", json={"error": "x", "retry": False})
    assert dead.json()["status"] == "failed"
    assert (await http.post(f"/queues/{queue}/pause")).status_code == 200
    assert (await http.get("/health")).status_code == 200  # the write probe
    fair = await http.post("/tasks", json={"code": "x", "priority": "low", "tenant": "acme"})
    assert fair.json()["status"] == "queued"
    named = await http.post("/tasks", json={"code": "x", "queue": "gpu"})
    assert named.json()["status"] == "queued"
    gone = await http.post("/tasks", json={"eval_id": "g", "code": "x", "queue": "gpu"})
    assert gone.json()["status"] == "queued"
    assert (await http.post("/tasks/g/cancel")).status_code == 200  # expiring
    auth = {"Authorization": "any"}
    assert (await http.post(f"/api/predict/{svc}", content=b"in", headers=auth)).is_success
    sink = f"/api/predict/{svc}/sink?requestId=r1"
    assert (await http.post(sink, content=b"out", headers=auth)).is_success

    client = connect(redis_url)
    try:
        for name, pattern in NAMED.items():
            found = [k async for k in client.scan_iter(match=pattern % {"q": queue, "s": svc})]
            assert found, f"{name}: no key matches {pattern % {'q': queue, 's': svc}}"
    finally:
        await client.aclose()
