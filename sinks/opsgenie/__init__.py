"""Opsgenie Alert API: one alert per alert, deduplicated by alias at Opsgenie."""

from sinks.opsgenie.config import OpsgenieSettings as SETTINGS
from sinks.opsgenie.sink import OpsgenieSink as SINK

__all__ = ["SETTINGS", "SINK"]
