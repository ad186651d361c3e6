"""The integrations API on a running worker with the real broker: roles, tenant
isolation, validation, masked secrets, Test connection, and no secret in clear on the
integrations topic."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streams.api.tokens import create_token
from tests.fakes.webhook_receiver import Answer, WebhookReceiver
from tests.harness import TopicSet, WorkerProcess, make_alert, produce

pytestmark = pytest.mark.integration

S3_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HOOK_TOKEN = "SECRETHOOKTOKEN42"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("tokens") / "tokens.jsonl"
    tokens = {
        name: create_token(path, role=role, tenant_id=tenant, name=name)[0]
        for name, role, tenant in [
            ("admin", "admin", "acme"),
            ("editor", "editor", "acme"),
            ("viewer", "viewer", "acme"),
            ("other", "admin", "globex"),
        ]
    }
    return {"path": path, "tokens": tokens}


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, env: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, TopicSet]]:
    topics = TopicSet()
    proc = WorkerProcess(
        kafka_bootstrap,
        topics,
        tmp_path_factory.mktemp("api-worker"),
        {"ALERTRELAY_API_TOKENS_FILE": str(env["path"])},
    )
    with proc:
        yield proc, topics


def api(
    worker: WorkerProcess,
    token: str | None,
    method: str,
    path: str = "",
    body: Any = None,
    tenant: str = "acme",
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"http://127.0.0.1:{worker.port}/api/v1/tenants/{tenant}/integrations{path}"
    return httpx.request(method, url, json=body, headers=headers, timeout=30)


def s3_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "integration_id": "lake",
        "type": "s3",
        "name": "Data lake",
        "settings": {
            "access_key_id": "AKIAIOSFODNN7EXAMPLE",
            "secret_access_key": S3_SECRET,
            "region": "us-east-1",
            "bucket": "acme-alerts",
        },
    }
    config.update(overrides)
    return config


def hook_config(url: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "integration_id": "hook",
        "type": "webhook",
        "name": "SOC hook",
        "settings": {
            "webhook_url": url,
            "headers": [{"name": "Authorization", "value": f"Bearer {HOOK_TOKEN}"}],
        },
    }
    config.update(overrides)
    return config


def test_authentication_and_roles(
    worker: tuple[WorkerProcess, TopicSet], env: dict[str, Any], receiver: WebhookReceiver
) -> None:
    proc, _ = worker
    tok = env["tokens"]
    assert api(proc, None, "GET").status_code == 401
    assert api(proc, "ar_not-a-real-token", "GET").status_code == 401
    assert api(proc, tok["viewer"], "GET").status_code == 200
    assert api(proc, tok["viewer"], "POST", body=s3_config()).status_code == 403

    created = api(proc, tok["editor"], "POST", body=s3_config())
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["version"] > 0
    settings = body["integration"]["settings"]
    assert settings["secret_access_key"] == "****" + S3_SECRET[-4:]
    assert settings["access_key_id"] == "AKIAIOSFODNN7EXAMPLE"
    assert S3_SECRET not in created.text

    # Only admin may create or change an HTTP webhook (the spec).
    hook = hook_config(receiver.url + "/api-hook")
    assert api(proc, tok["editor"], "POST", body=hook).status_code == 403
    assert api(proc, tok["admin"], "POST", body=hook).status_code == 201

    listed = api(proc, tok["viewer"], "GET").json()["integrations"]
    assert {i["integration_id"] for i in listed} >= {"lake", "hook"}
    assert HOOK_TOKEN not in json.dumps(listed) and S3_SECRET not in json.dumps(listed)


def test_tenant_isolation(worker: tuple[WorkerProcess, TopicSet], env: dict[str, Any]) -> None:
    proc, _ = worker
    other = env["tokens"]["other"]
    assert api(proc, other, "GET").status_code == 404
    assert api(proc, other, "GET", "/lake").status_code == 404
    assert api(proc, other, "DELETE", "/lake").status_code == 404
    assert api(proc, other, "GET", tenant="globex").json() == {"integrations": []}


def test_validation_lists_every_invalid_field(
    worker: tuple[WorkerProcess, TopicSet], env: dict[str, Any]
) -> None:
    proc, _ = worker
    bad = s3_config(integration_id="bad", name="", min_risk_level="extreme")
    bad["settings"] = {**bad["settings"], "region": "mars-1", "bucket": "A_B"}
    answer = api(proc, env["tokens"]["editor"], "POST", body=bad)
    assert answer.status_code == 422
    fields = {e["field"] for e in answer.json()["errors"]}
    assert {"name", "min_risk_level", "settings.region", "settings.bucket"} <= fields
    assert S3_SECRET not in answer.text

    dup = s3_config(integration_id="lake2", name="data LAKE")
    answer = api(proc, env["tokens"]["editor"], "POST", body=dup)
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "name"


def test_update_keeps_masked_secrets_and_delivers(
    kafka_bootstrap: str,
    worker: tuple[WorkerProcess, TopicSet],
    env: dict[str, Any],
    receiver: WebhookReceiver,
) -> None:
    proc, topics = worker
    admin = env["tokens"]["admin"]
    current = api(proc, admin, "GET", "/hook").json()
    changed = dict(current["integration"])
    changed["min_risk_level"] = "high"  # settings come back masked: they must stay as stored
    answer = api(proc, admin, "PUT", "/hook", body=changed)
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] > current["version"]

    produce(
        kafka_bootstrap,
        topics.alerts,
        [
            ("acme", make_alert(1, "acme", alert_id="api-low", risk_level="low")),
            ("acme", make_alert(2, "acme", alert_id="api-high", risk_level="high")),
        ],
    )
    got = receiver.wait_for(1, "/api-hook")
    time.sleep(1)
    assert [r.json()["alert_id"] for r in receiver.received("/api-hook")] == ["api-high"]
    assert got[0].headers["Authorization"] == f"Bearer {HOOK_TOKEN}"

    # Health: the success, then a failing destination with its redacted reason.
    health = wait_health(proc, admin, lambda h: h.get("last_success_at"))
    assert health["consecutive_failures"] == 0 and health["circuit"] == "closed"
    receiver.script("/api-hook", default=Answer(503, f"down {HOOK_TOKEN}".encode()))
    produce(
        kafka_bootstrap,
        topics.alerts,
        [("acme", make_alert(3, "acme", alert_id="api-fail", risk_level="critical"))],
    )
    health = wait_health(proc, admin, lambda h: h.get("consecutive_failures", 0) >= 2)
    assert "503" in health["last_error"] and HOOK_TOKEN not in json.dumps(health)
    assert health["last_failure_at"] > health["last_success_at"]
    receiver.script("/api-hook", default=Answer(200, b"ok"))
    wait_health(proc, admin, lambda h: h.get("consecutive_failures") == 0)


def wait_health(proc: WorkerProcess, token: str, done: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        health = api(proc, token, "GET", "/hook").json().get("health") or {}
        if done(health):
            return dict(health)
        assert time.monotonic() < deadline, f"health never got there: {health}"
        time.sleep(0.3)


def test_test_connection_saved_and_unsaved(
    worker: tuple[WorkerProcess, TopicSet], env: dict[str, Any], receiver: WebhookReceiver
) -> None:
    proc, _ = worker
    tok = env["tokens"]
    unsaved = hook_config(receiver.url + "/probe", integration_id="probe", name="probe")
    assert api(proc, tok["editor"], "POST", "/test", body=unsaved).status_code == 403
    answer = api(proc, tok["admin"], "POST", "/test", body=unsaved)
    assert answer.status_code == 200 and answer.json()["ok"] is True, answer.text
    assert receiver.wait_for(1, "/probe")[0].json()["title"].startswith("[TEST]")

    receiver.script("/api-hook", Answer(401, b"bad token"))
    answer = api(proc, tok["editor"], "POST", "/hook/test").json()
    assert answer["ok"] is False and "401" in answer["detail"]
    assert HOOK_TOKEN not in answer["detail"] and answer["latency_ms"] >= 0


def test_delete_and_raw_topic_has_no_secret(
    kafka_bootstrap: str, worker: tuple[WorkerProcess, TopicSet], env: dict[str, Any]
) -> None:
    proc, topics = worker
    editor = env["tokens"]["editor"]
    assert api(proc, editor, "DELETE", "/lake").status_code == 204
    assert api(proc, editor, "GET", "/lake").status_code == 404

    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"raw-{time.time()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topics.integrations])
    raw: list[bytes] = []
    idle = time.monotonic() + 5
    while time.monotonic() < idle:
        msg = consumer.poll(0.3)
        if msg is not None and msg.error() is None:
            raw.append(msg.value() or b"")
            idle = time.monotonic() + 2
    consumer.close()
    assert len(raw) >= 4 and b"$sealed" in b"".join(raw)
    for value in raw:
        assert S3_SECRET.encode() not in value and HOOK_TOKEN.encode() not in value


def test_tokens_file_holds_hashes_and_new_tokens_work_without_restart(
    worker: tuple[WorkerProcess, TopicSet], env: dict[str, Any]
) -> None:
    proc, _ = worker
    path: Path = env["path"]
    text = path.read_text()
    for token in env["tokens"].values():
        assert token not in text
    fresh, _ = create_token(path, role="viewer", tenant_id="acme", name="late")
    deadline = time.monotonic() + 10
    while api(proc, fresh, "GET").status_code != 200:
        assert time.monotonic() < deadline, "a new token was not picked up"
        time.sleep(0.5)
