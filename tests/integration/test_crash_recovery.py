"""An offset is committed only after its alert was delivered or dead-lettered: a worker
killed with SIGKILL while deliveries are in flight loses none of them."""

from __future__ import annotations

import time

import pytest

from tests.fakes.webhook_receiver import Answer, WebhookReceiver
from tests.harness import TopicSet, WorkerProcess, make_alert, produce

pytestmark = pytest.mark.integration


def test_sigkill_mid_delivery_loses_nothing(
    kafka_bootstrap: str, tmp_path: pytest.TempPathFactory
) -> None:
    topics = TopicSet()
    tenant = "t-crash"
    config = {
        "integration_id": "slow",
        "tenant_id": tenant,
        "type": "webhook",
        "name": "slow hook",
        "settings": {"webhook_url": "placeholder"},
    }
    with WebhookReceiver() as receiver:
        # Every answer takes 0.3 s: with 4 in flight per integration, ~13 alerts/s.
        receiver.script("/slow", default=Answer(200, b"ok", delay=0.3))
        config["settings"] = {"webhook_url": receiver.url + "/slow"}
        env = {"ALERTRELAY_PER_INTEGRATION_CONCURRENCY": "4"}
        first = WorkerProcess(kafka_bootstrap, topics, tmp_path, env)  # type: ignore[arg-type]
        first.start()
        try:
            produce(kafka_bootstrap, topics.integrations, [(f"{tenant}/slow", config)])
            deadline = time.monotonic() + 60
            while (first.health() or {}).get("integrations") != 1:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            alerts = [make_alert(i, tenant) for i in range(60)]
            produce(kafka_bootstrap, topics.alerts, [(tenant, a) for a in alerts])
            receiver.wait_for(15, "/slow")
        finally:
            first.kill()  # SIGKILL: no flush, no commit on the way out
        assert len({r.json()["alert_id"] for r in receiver.received("/slow")}) < len(alerts)

        with WorkerProcess(kafka_bootstrap, topics, tmp_path, env):  # type: ignore[arg-type]
            # generous: on an overloaded machine timeouts may open the circuit (30 s) first
            deadline = time.monotonic() + 180
            expected = {a["alert_id"] for a in alerts}
            while time.monotonic() < deadline:
                got = {r.json()["alert_id"] for r in receiver.received("/slow")}
                if got >= expected:
                    break
                time.sleep(0.2)
            got = {r.json()["alert_id"] for r in receiver.received("/slow")}
            assert got == expected, f"lost: {sorted(expected - got)[:10]}"
            duplicates = len(receiver.received("/slow")) - len(got)
            print(f"redelivered after the crash: {duplicates}")
