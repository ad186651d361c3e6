"""Which integration types exist, how their settings are checked, and building their sinks."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import ModuleType
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


@cache
def _packages() -> dict[str, ModuleType]:
    """Each type with a package `sinks.<type>` exporting SETTINGS and SINK is available.

    A new integration is a new package: nothing here changes.
    """
    found = {}
    for kind in ALL_TYPES:
        try:
            module = importlib.import_module(f"sinks.{kind}")
        except ModuleNotFoundError as exc:
            if exc.name != f"sinks.{kind}":
                raise
            continue
        if hasattr(module, "SETTINGS") and hasattr(module, "SINK"):
            found[kind] = module
    return found


def _settings_models() -> dict[str, type[BaseModel]]:
    return {kind: module.SETTINGS for kind, module in _packages().items()}


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


def _type_error(kind: object) -> tuple[str, str] | None:
    if isinstance(kind, str) and kind in _settings_models():
        return None
    if isinstance(kind, str) and kind in ALL_TYPES:
        reason = f"'{kind}' integrations are not available in this version"
    elif isinstance(kind, str):
        reason = f"unknown type '{kind}'"
    else:
        return None  # reported by the model as missing or not a string
    return ("type", f"{reason} (available: {', '.join(available_types())})")


def validate_integration(data: Mapping[str, Any]) -> tuple[IntegrationConfig, BaseModel]:
    """The common fields and the type's settings, or ConfigError naming every bad field."""
    errors: list[tuple[str, str]] = []
    config: IntegrationConfig | None = None
    try:
        config = IntegrationConfig.model_validate(data)
    except ValidationError as exc:
        errors += _errors(exc)
    kind = data.get("type")
    type_error = _type_error(kind)
    if type_error is not None:
        errors.append(type_error)
    settings: BaseModel | None = None
    model = _settings_models().get(kind) if isinstance(kind, str) else None
    raw_settings = data.get("settings", {})
    if model is not None and isinstance(raw_settings, Mapping):
        try:
            settings = model.model_validate(raw_settings)
        except ValidationError as exc:
            errors += _errors(exc, "settings.")
    if errors or config is None or settings is None:
        raise ConfigError(errors or [("settings", "must be an object")])
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
    return {kind: module.SINK(ctx) for kind, module in _packages().items()}
