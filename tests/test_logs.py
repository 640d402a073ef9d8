"""Logs are JSON lines by default and never carry a secret: API keys, EAS tokens, task code."""

from __future__ import annotations

import httpx
import orjson

SECRETS = {
    "api_key": "key-5ecret-a1",
    "wrong_key": "key-wr0ng-b2",
    "eas_token": "tok-5ecret-c3",
    "code": "print('c0de-5ecret-d4')",
    "body": "b0dy-5ecret-e5",
}


def test_no_secret_reaches_the_log(spawn_service, redis_url, queue):
    process = spawn_service(
        {
            "REDIS_URL": redis_url,
            "QUEUE_NAME": queue,
            "API_KEY": SECRETS["api_key"],
            "EAS_TOKEN": SECRETS["eas_token"],
            "LOG_LEVEL": "DEBUG",
            # an executor that refuses connections: attempts fail and get logged
            "EXECUTOR_URLS": "http://127.0.0.1:1",
        }
    )
    good = {"X-API-Key": SECRETS["api_key"]}
    with httpx.Client(base_url=process.url, timeout=10) as http:
        assert http.get("/status", headers={"X-API-Key": SECRETS["wrong_key"]}).status_code == 401
        created = http.post("/tasks", headers=good, json={"code": SECRETS["code"]})
        assert created.status_code == 201
        eas = {"Authorization": SECRETS["eas_token"]}
        assert http.post("/api/predict/svc", headers=eas, content=SECRETS["body"]).is_success
        bad = {"Authorization": SECRETS["wrong_key"]}
        assert http.post("/api/predict/svc", headers=bad, content=b"x").status_code == 401
        assert http.get(f"/tasks/{created.json()['eval_id']}", headers=good).is_success
    process.proc.terminate()
    process.proc.wait(20)
    lines = [line for line in process.output().splitlines() if line.strip()]
    assert lines, "the service logged nothing"
    for line in lines:
        if line.startswith("{"):
            orjson.loads(line)  # JSON by default
    text = process.output()
    assert "service_started" in text
    for name, secret in SECRETS.items():
        assert secret not in text, f"{name} was logged"
