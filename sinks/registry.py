"""Which integration types exist, how their settings are checked, and building their sinks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from schemas.models import IntegrationConfig
from sinks.base import BatchLimits, Sink
from sinks.http import EgressGuard, HostOverrides

__all__ = [
    "ALL_TYPES",
    "ConfigError",
    "SinkContext",
    "available_types",
    "build_sinks",
    "validate_integration",
]

# Every type of the contract; the ones without a sink yet are refused with that reason.
ALL_TYPES = (
    "slack",
    "email",
    "jira",
    "datadog",
    "pagerduty",
    "splunk",
    "gcs",
    "s3",
    "opsgenie",
    "webhook",
)


class ConfigError(ValueError):
    """An integration config that cannot be used; `errors` lists (field, reason)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in errors))


def _settings_models() -> dict[str, type[BaseModel]]:
    from sinks.s3.config import S3Settings
    from sinks.webhook.config import WebhookSettings

    return {"webhook": WebhookSettings, "s3": S3Settings}


def available_types() -> list[str]:
    return sorted(_settings_models())


def _errors(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(config)"
        msg = err["msg"].removeprefix("Value error, ")
        out.append((field, msg))
    return out


def validate_integration(data: Mapping[str, Any]) -> tuple[IntegrationConfig, BaseModel]:
    """The common fields and the type's settings, or ConfigError naming every bad field."""
    try:
        config = IntegrationConfig.model_validate(data)
    except ValidationError as exc:
        errors = _errors(exc)
        kind = data.get("type")
        model = _settings_models().get(kind) if isinstance(kind, str) else None
        if model is not None and isinstance(data.get("settings"), Mapping):
            try:
                model.model_validate(data["settings"])
            except ValidationError as inner:
                errors += _errors(inner, "settings.")
        raise ConfigError(errors) from None
    model = _settings_models().get(config.type)
    if model is None:
        if config.type in ALL_TYPES:
            reason = f"'{config.type}' integrations are not available in this version"
        else:
            reason = f"unknown type '{config.type}'"
        raise ConfigError([("type", f"{reason} (available: {', '.join(available_types())})")])
    try:
        settings = model.model_validate(config.settings)
    except ValidationError as exc:
        raise ConfigError(_errors(exc, "settings.")) from None
    return config, settings


@dataclass(frozen=True)
class SinkContext:
    """What sinks share: where requests may go, and batch limits."""

    overrides: HostOverrides
    guard: EgressGuard
    batch_limits: BatchLimits

    @classmethod
    def from_env(cls, batch_limits: BatchLimits) -> SinkContext:
        return cls(HostOverrides.from_env(), EgressGuard.from_env(), batch_limits)


def build_sinks(ctx: SinkContext) -> dict[str, Sink[Any]]:
    from sinks.s3.sink import S3Sink
    from sinks.webhook.sink import WebhookSink

    return {"webhook": WebhookSink(ctx), "s3": S3Sink(ctx)}
