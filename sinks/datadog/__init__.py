"""Datadog Incidents: one incident per alert through the v2 Incidents API."""

from sinks.datadog.config import DatadogSettings as SETTINGS
from sinks.datadog.sink import DatadogSink as SINK

__all__ = ["SETTINGS", "SINK"]
