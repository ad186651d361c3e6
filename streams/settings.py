"""Worker settings, read once from the environment (names are the README's reference)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sinks.base import BatchLimits
from sinks.retry import RetryPolicy

__all__ = ["Settings"]


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


def _tiers(raw: str) -> tuple[int, ...]:
    try:
        tiers = tuple(sorted({int(part) for part in raw.split(",") if part.strip()}))
    except ValueError:
        tiers = ()
    if not tiers or tiers[0] < 1:
        raise SystemExit(f"ALERTRELAY_RETRY_TIERS must be whole seconds >= 1, got {raw!r}")
    return tiers


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    app_id: str = "alertrelay"
    topic_alerts: str = "alerts"
    topic_integrations: str = "integrations"
    topic_status: str = "alertrelay-delivery-status"
    topic_dlq: str = "alertrelay-dlq"
    partitions: int = 4
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    data_dir: Path = Path(".alertrelay")
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    batch_limits: BatchLimits = field(default_factory=BatchLimits)
    take_max: int = 500
    take_within: float = 0.005
    per_integration_concurrency: int = 4
    per_integration_backlog: int = 200
    max_in_flight: int = 2000
    batch_memory_cap: int = 64 * 1024 * 1024  # estimated bytes held per batching sink
    commit_interval: float = 1.0
    fetch_max_wait_ms: int = 100
    session_timeout: float = 10.0
    retry_tiers: tuple[int, ...] = (1, 5, 30, 120, 600)
    breaker_threshold: int = 5
    breaker_cooldown: float = 30.0
    log_level: str = "info"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            bootstrap_servers=_env("KAFKA_BOOTSTRAP_SERVERS", cls.bootstrap_servers),
            app_id=_env("ALERTRELAY_APP_ID", cls.app_id),
            topic_alerts=_env("ALERTRELAY_TOPIC_ALERTS", cls.topic_alerts),
            topic_integrations=_env("ALERTRELAY_TOPIC_INTEGRATIONS", cls.topic_integrations),
            topic_status=_env("ALERTRELAY_TOPIC_STATUS", cls.topic_status),
            topic_dlq=_env("ALERTRELAY_TOPIC_DLQ", cls.topic_dlq),
            partitions=_int("ALERTRELAY_PARTITIONS", cls.partitions),
            web_host=_env("ALERTRELAY_WEB_HOST", cls.web_host),
            web_port=_int("ALERTRELAY_WEB_PORT", cls.web_port),
            data_dir=Path(_env("ALERTRELAY_DATA_DIR", str(cls.data_dir))),
            retry=RetryPolicy(
                max_attempts=_int("ALERTRELAY_RETRY_MAX_ATTEMPTS", 10),
                base_delay=_float("ALERTRELAY_RETRY_BASE_DELAY", 1.0),
                max_delay=_float("ALERTRELAY_RETRY_MAX_DELAY", 600.0),
            ),
            retry_tiers=_tiers(_env("ALERTRELAY_RETRY_TIERS", "1,5,30,120,600")),
            breaker_threshold=_int("ALERTRELAY_BREAKER_THRESHOLD", cls.breaker_threshold),
            breaker_cooldown=_float("ALERTRELAY_BREAKER_COOLDOWN", cls.breaker_cooldown),
            batch_limits=BatchLimits(
                max_events=_int("ALERTRELAY_BATCH_MAX_EVENTS", 10_000),
                max_bytes=_int("ALERTRELAY_BATCH_MAX_BYTES", 8 * 1024 * 1024),
                max_age=_float("ALERTRELAY_BATCH_MAX_AGE", 30.0),
            ),
            take_max=_int("ALERTRELAY_TAKE_MAX", cls.take_max),
            take_within=_float("ALERTRELAY_TAKE_WITHIN", cls.take_within),
            per_integration_concurrency=_int(
                "ALERTRELAY_PER_INTEGRATION_CONCURRENCY", cls.per_integration_concurrency
            ),
            per_integration_backlog=_int(
                "ALERTRELAY_PER_INTEGRATION_BACKLOG", cls.per_integration_backlog
            ),
            max_in_flight=_int("ALERTRELAY_MAX_IN_FLIGHT", cls.max_in_flight),
            batch_memory_cap=_int("ALERTRELAY_BATCH_MEMORY_CAP", cls.batch_memory_cap),
            commit_interval=_float("ALERTRELAY_COMMIT_INTERVAL", cls.commit_interval),
            fetch_max_wait_ms=_int("ALERTRELAY_FETCH_MAX_WAIT_MS", cls.fetch_max_wait_ms),
            session_timeout=_float("ALERTRELAY_SESSION_TIMEOUT", cls.session_timeout),
            log_level=_env("ALERTRELAY_LOG_LEVEL", cls.log_level),
        )

    def delivery_topic(self, integration_type: str) -> str:
        return f"{self.app_id}-deliver-{integration_type}"

    @property
    def configs_by_tenant_topic(self) -> str:
        return f"{self.app_id}-configs-by-tenant"

    def retry_topic(self, tier: int) -> str:
        """Deliveries parked for a retry in at most about `tier` seconds."""
        return f"{self.app_id}-retry-{tier}s"

    @property
    def replay_topic(self) -> str:
        """Replayed and redriven alerts (`alertrelay replay`, `alertrelay dlq redrive`)."""
        return f"{self.app_id}-replay"

    @property
    def batch_lane_group(self) -> str:
        """The batch lane's consumer group (streams/batch_lane.py): its own positions."""
        return f"{self.app_id}-batching"

    @property
    def routing_lane_group(self) -> str:
        """The routing lane's consumer group (streams/routing_lane.py)."""
        return f"{self.app_id}-routing"

    @property
    def delivery_lane_group(self) -> str:
        """The delivery lanes' consumer group (streams/delivery_lane.py), all types."""
        return f"{self.app_id}-delivery"

    @property
    def alerts_by_tenant_topic(self) -> str:
        return f"{self.app_id}-alerts-by-tenant"

    @property
    def health_topic(self) -> str:
        """The status records that can change an integration's health (the health table's
        input; the delivery-status topic, which has every attempt, is for users)."""
        return f"{self.app_id}-health"
