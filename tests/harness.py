"""Running a real worker process against the test broker, and talking to its topics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: bench/ and dev/demo.py load this file too
    import datetime as dt

    from schemas.models import Alert, Delivery, IntegrationConfig
    from sinks.base import Batch
    from sinks.registry import SinkContext

REPO_ROOT = Path(__file__).resolve().parent.parent
# One key for the whole session: workers restarted in a test must open what others sealed.
TEST_SECRET_KEYS = "test1:" + "dGVzdC1rZXktZm9yLWFsZXJ0cmVsYXktdGVzdHMtMDE="

__all__ = [
    "TEST_SECRET_KEYS",
    "TopicSet",
    "WorkerProcess",
    "batch_of",
    "consume",
    "delivery_of",
    "free_port",
    "make_alert",
    "produce",
    "put_configs",
    "sample_alert",
    "sink_context",
    "utf16_units",
    "webhook_config",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TopicSet:
    """Unique topic names and app id, so tests sharing one broker never see each other."""

    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")

    @property
    def app_id(self) -> str:
        return f"{self.prefix}-ar"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}-alerts"

    @property
    def integrations(self) -> str:
        return f"{self.prefix}-integrations"

    @property
    def status(self) -> str:
        return f"{self.prefix}-status"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}-dlq"

    @property
    def health(self) -> str:
        """The worker's internal health feed (what its health table folds)."""
        return f"{self.app_id}-health"

    def env(self) -> dict[str, str]:
        return {
            "ALERTRELAY_APP_ID": self.app_id,
            "ALERTRELAY_TOPIC_ALERTS": self.alerts,
            "ALERTRELAY_TOPIC_INTEGRATIONS": self.integrations,
            "ALERTRELAY_TOPIC_STATUS": self.status,
            "ALERTRELAY_TOPIC_DLQ": self.dlq,
        }


class WorkerProcess:
    """`alertrelay worker` as a child process, with its log kept for failure messages."""

    def __init__(
        self, bootstrap: str, topics: TopicSet, workdir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.log_path = workdir / f"worker-{self.port}.log"
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "ALERTRELAY_WEB_PORT": str(self.port),
            "ALERTRELAY_DATA_DIR": str(workdir / "data"),
            "ALERTRELAY_PARTITIONS": "4",
            "ALERTRELAY_RETRY_BASE_DELAY": "0.05",
            "ALERTRELAY_RETRY_MAX_DELAY": "0.5",
            "ALERTRELAY_EGRESS_ALLOW": "127.0.0.1/32",
            "ALERTRELAY_COMMIT_INTERVAL": "0.5",
            "PYTHONUNBUFFERED": "1",
            "ALERTRELAY_SECRET_KEYS": TEST_SECRET_KEYS,
            **topics.env(),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return dict(json.loads(r.read()))
        except Exception:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            health = self.health()
            if health and health.get("status") == "ok":
                return
            time.sleep(0.25)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_alert(n: int, tenant: str = "acme", **overrides: Any) -> dict[str, Any]:
    alert = {
        "alert_id": f"{tenant}-alert-{n}",
        "tenant_id": tenant,
        "event_type": "client_side_risk" if n % 2 == 0 else "pci_scope_change",
        "risk_level": ["low", "medium", "high", "critical"][n % 4],
        "title": f"New script detected #{n}",
        "detected_at": "2026-11-20T10:00:00Z",
        "description": "A new third-party script started reading payment form fields.",
        "page_url": "https://shop.example.com/checkout",
        "script_url": "https://cdn.tracker.example/x.js",
        "domain": "shop.example.com",
        "console_url": f"https://console.example.com/alerts/{n}",
        "details": {"pci_scope": "in", "script_hash": "abc123"},
    }
    alert.update(overrides)
    return alert


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[str | bytes | None, Any]],
    *,
    partitioner: str = "murmur2_random",
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Produce (key, value) pairs; dict values become JSON, None is a tombstone."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": partitioner,
            "linger.ms": 5,
            "message.max.bytes": 4 * 1024 * 1024,
        }
    )
    for key, value in records:
        if isinstance(value, dict | list):
            value = json.dumps(value).encode()
        producer.produce(topic, key=key, value=value, headers=headers)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} records not delivered to {topic}"


def consume(
    bootstrap: str, topic: str, *, min_count: int, timeout: float = 60.0, until: Any = None
) -> list[dict[str, Any]]:
    """Read a topic from the start until `min_count` JSON records (or `until(records)`)."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None and msg.value() is not None:
                out.append(json.loads(msg.value()))
            done = until(out) if until is not None else len(out) >= min_count
            if done:
                return out
    finally:
        consumer.close()
    raise AssertionError(f"{topic}: expected {min_count} records, got {len(out)}: {out[-3:]}")


# -- shared by the integration tests ------------------------------------------------------


def webhook_config(tenant: str, iid: str, url: str, **extra: Any) -> dict[str, Any]:
    """A webhook integration config posting to `url`; `settings=` adds settings, any other
    keyword sets a top-level field."""
    config: dict[str, Any] = {
        "integration_id": iid,
        "tenant_id": tenant,
        "type": "webhook",
        "name": f"hook {iid}",
        "settings": {"webhook_url": url, "method": "POST", "protocol": "tcp"},
    }
    settings = extra.pop("settings", {})
    config["settings"].update(settings)
    config.update(extra)
    return config


def put_configs(
    bootstrap: str,
    topics: TopicSet,
    worker: WorkerProcess | None,
    *configs: dict[str, Any],
    timeout: float = 60.0,
) -> None:
    """Produce configs; with a worker, wait until it holds them (they apply asynchronously)."""
    before = (worker.health() or {}).get("integrations", 0) if worker else 0
    produce(
        bootstrap,
        topics.integrations,
        [(f"{c['tenant_id']}/{c['integration_id']}", c) for c in configs],
    )
    if worker is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (worker.health() or {}).get("integrations", 0) >= before + len(configs):
            return
        time.sleep(0.1)
    raise AssertionError(f"worker never held the {len(configs)} new configs:\n{worker.log_tail()}")


def sample_alert(**overrides: Any) -> Alert:
    """The alert the vendor contract tests start from: every field set."""
    import datetime as dt

    from schemas.models import Alert

    fields: dict[str, Any] = {
        "alert_id": "alert-1",
        "tenant_id": "tenant-a",
        "event_type": "client_side_risk",
        "risk_level": "high",
        "title": "New script reads the payment form",
        "detected_at": dt.datetime(2024, 5, 1, 12, 0, 1, tzinfo=dt.UTC),
        "description": "cdn.tracker.example/x.js started reading card fields.",
        "page_url": "https://shop.example.com/checkout",
        "script_url": "https://cdn.tracker.example/x.js",
        "domain": "shop.example.com",
        "console_url": "https://console.example.com/alerts/1",
        "details": {"pci_scope": "in", "script_hash": "abc123"},
    }
    fields.update(overrides)
    return Alert.model_validate(fields)


def delivery_of(
    alert: Alert,
    integration: IntegrationConfig,
    *,
    offset: int = 1,
    config_version: int = 1,
    topic: str = "alerts",
    partition: int = 0,
    produced_at: float | None = None,
) -> Delivery:
    """`alert` routed to `integration` now, as read from `topic`/`partition` at `offset`."""
    from schemas.models import Delivery, idempotency_key

    return Delivery(
        alert=alert,
        integration=integration,
        config_version=config_version,
        idempotency_key=idempotency_key(alert.alert_id, integration.integration_id),
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        routed_at=time.time(),
        produced_at=produced_at,
    )


def batch_of(records: Sequence[Delivery], *, day: dt.date, bytes_per_record: int) -> Batch:
    """One batch of `records` (all of one integration, topic and partition, in order), as
    the batcher makes it: slim records, the newest config once. `bytes_per_record` sets
    its memory estimate."""
    from sinks.base import Batch, BatchRecord

    first = records[0]
    newest = max(records, key=lambda d: d.config_version)
    slim = [BatchRecord.of(d) for d in records]
    return Batch(
        integration=newest.integration,
        config_version=newest.config_version,
        topic=first.source_topic,
        partition=first.source_partition,
        first_offset=first.source_offset,
        last_offset=records[-1].source_offset,
        day=day,
        records=slim,
        size_bytes=sum(len(r.line) + 1 for r in slim),
        memory_bytes=bytes_per_record * len(records),
    )


def sink_context(overrides: str = "") -> SinkContext:
    """A sink's context in tests: `overrides` (ALERTRELAY_HOST_OVERRIDES form) send vendor
    hosts to local fakes, and only 127.0.0.1 may be reached."""
    from sinks.base import BatchLimits
    from sinks.http import EgressGuard, HostOverrides
    from sinks.registry import SinkContext

    return SinkContext(
        HostOverrides.parse(overrides), EgressGuard.parse("127.0.0.1/32"), BatchLimits()
    )


def utf16_units(text: str) -> int:
    """Length in UTF-16 code units, as JavaScript and Java count it (the tests' own
    measure, independent of the sinks' code)."""
    return len(text.encode("utf-16-le")) // 2
