"""The records that cross Kafka, as pydantic models.

The Avro files beside this module are the wire contracts; these models are how the code
reads and writes them (tests keep the two in step).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "MAX_TENANT_CHARS",
    "RISK_ORDER",
    "Alert",
    "DeadLetter",
    "Delivery",
    "DeliveryStatus",
    "EventType",
    "IntegrationConfig",
    "Outcome",
    "RiskLevel",
    "idempotency_key",
]

MAX_TEXT = 64 * 1024
MAX_TENANT_CHARS = 256
_RFC3339_START = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


class EventType(StrEnum):
    CLIENT_SIDE_RISK = "client_side_risk"
    PCI_SCOPE_CHANGE = "pci_scope_change"


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


RISK_ORDER: dict[RiskLevel, int] = {
    RiskLevel.LOW: 0,
    RiskLevel.MEDIUM: 1,
    RiskLevel.HIGH: 2,
    RiskLevel.CRITICAL: 3,
}


class Alert(BaseModel):
    """A client-side security alert (DESIGN.md contract)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    alert_id: str = Field(min_length=1, max_length=512)
    tenant_id: str = Field(min_length=1, max_length=MAX_TENANT_CHARS)
    event_type: EventType
    risk_level: RiskLevel
    title: str = Field(min_length=1, max_length=MAX_TEXT)
    detected_at: datetime
    description: str | None = Field(default=None, max_length=MAX_TEXT)
    page_url: str | None = Field(default=None, max_length=8192)
    script_url: str | None = Field(default=None, max_length=8192)
    domain: str | None = Field(default=None, max_length=1024)
    console_url: str | None = Field(default=None, max_length=8192)
    details: dict[str, str] | None = None

    @field_validator("detected_at", mode="before")
    @classmethod
    def _rfc3339_text(cls, value: object) -> object:
        if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339_START.match(value)):
            return value
        raise ValueError("detected_at must be an RFC 3339 date-time string")

    @field_validator("detected_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("detected_at must be RFC 3339 with a time zone offset")
        return value

    def wire(self) -> dict[str, Any]:
        """The JSON shape of the contract (RFC 3339 time, no nulls added)."""
        return self.model_dump(mode="json", exclude_none=True)


def _default_event_types() -> list[EventType]:
    return [EventType.CLIENT_SIDE_RISK, EventType.PCI_SCOPE_CHANGE]


class IntegrationConfig(BaseModel):
    """The common part of an integration; `settings` are checked by the type's own model."""

    model_config = ConfigDict(extra="forbid")

    integration_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    tenant_id: str = Field(min_length=1, max_length=256)
    type: str
    name: str = Field(min_length=1, max_length=200)
    enabled: bool = True
    event_types: list[EventType] = Field(default_factory=_default_event_types, min_length=1)
    min_risk_level: RiskLevel = RiskLevel.LOW
    version: int | None = Field(default=None, ge=0)
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("integration name is required")
        return value.strip()

    @field_validator("event_types")
    @classmethod
    def _dedupe(cls, value: list[EventType]) -> list[EventType]:
        return list(dict.fromkeys(value))

    def matches(self, alert: Alert) -> bool:
        return (
            self.enabled
            and alert.event_type in self.event_types
            and RISK_ORDER[alert.risk_level] >= RISK_ORDER[self.min_risk_level]
        )

    @property
    def key(self) -> str:
        return f"{self.tenant_id}/{self.integration_id}"


def idempotency_key(alert_id: str, integration_id: str) -> str:
    """One key per (alert, integration): every re-delivery and replay reuses it."""
    digest = hashlib.sha256(f"{alert_id}\x00{integration_id}".encode()).hexdigest()
    return f"ar-{digest[:40]}"


class Delivery(BaseModel):
    """One alert for one integration, as the router hands it to a sink agent."""

    model_config = ConfigDict(extra="ignore")

    alert: Alert
    integration: IntegrationConfig
    config_version: int
    idempotency_key: str
    source_topic: str
    source_partition: int
    source_offset: int
    routed_at: float
    produced_at: float | None = None
    attempt: int = 0
    not_before: float | None = None
    redrive: bool = False


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRYING = "retrying"
    DEAD_LETTERED = "dead_lettered"


class DeliveryStatus(BaseModel):
    """One record per attempt on the delivery-status topic (errors already redacted)."""

    alert_id: str
    tenant_id: str
    integration_id: str
    integration_type: str
    idempotency_key: str
    attempt: int
    outcome: Outcome
    http_status: int | None = None
    latency_ms: float
    error: str | None = None
    at: float
    next_attempt_at: float | None = None
    circuit: Literal["closed", "open", "half_open"] | None = None


class DeadLetter(BaseModel):
    """What could never be delivered, with the reason; never carries secrets."""

    reason: str
    stage: Literal["decode", "config", "route", "deliver"]
    source_topic: str
    source_partition: int
    source_offset: int
    at: float
    tenant_id: str | None = None
    integration_id: str | None = None
    integration_type: str | None = None
    alert_id: str | None = None
    idempotency_key: str | None = None
    attempts: int = 0
    payload_b64: str | None = None
    alert: Alert | None = None
