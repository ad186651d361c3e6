"""The batching memory cap: past it, a batching sink writes what it holds and stops
taking records until the writes are done — nothing is dropped, memory stays bounded."""

from __future__ import annotations

import gzip
import json
import time

import boto3
import pytest

from tests.harness import TopicSet, WorkerProcess, free_port, make_alert, produce

pytestmark = pytest.mark.integration


def test_memory_cap_forces_writes_and_loses_nothing(
    kafka_bootstrap: str, tmp_path: pytest.TempPathFactory
) -> None:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="AKIATESTTEST0000",
            aws_secret_access_key="x" * 40,
        )
        s3.create_bucket(Bucket="capped")
        topics = TopicSet()
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            # The count limit never triggers; the age limit only writes the tail that
            # stays under the cap at the end...
            "ALERTRELAY_BATCH_MAX_EVENTS": "100000",
            "ALERTRELAY_BATCH_MAX_AGE": "5",
            # ...so the memory cap (~40 buffered records of ~1.5 KB) must have cut the rest.
            "ALERTRELAY_BATCH_MEMORY_CAP": "60000",
        }
        with WorkerProcess(kafka_bootstrap, topics, tmp_path, env) as worker:  # type: ignore[arg-type]
            config = {
                "integration_id": "lake",
                "tenant_id": "t-cap",
                "type": "s3",
                "name": "lake",
                "settings": {
                    "access_key_id": "AKIATESTTEST0000",
                    "secret_access_key": "x" * 40,
                    "region": "us-east-1",
                    "bucket": "capped",
                },
            }
            produce(kafka_bootstrap, topics.integrations, [("t-cap/lake", config)])
            deadline = time.monotonic() + 60
            while (worker.health() or {}).get("integrations") != 1:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            alerts = [make_alert(i, "t-cap") for i in range(400)]
            produce(kafka_bootstrap, topics.alerts, [("t-cap", a) for a in alerts])

            expected = {a["alert_id"] for a in alerts}
            stored: list[str] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                stored = []
                for obj in s3.list_objects_v2(Bucket="capped").get("Contents", []):
                    body = s3.get_object(Bucket="capped", Key=obj["Key"])["Body"].read()
                    stored += [
                        json.loads(line)["alert_id"] for line in gzip.decompress(body).splitlines()
                    ]
                if set(stored) >= expected:
                    break
                time.sleep(0.5)
            assert sorted(stored) == sorted(expected)  # all there, none twice
            assert "alertrelay_batch_backpressure_total" in worker.metrics()
            assert 'alertrelay_batch_backpressure_total{type="s3"} 0.0' not in worker.metrics()
    finally:
        server.stop()
