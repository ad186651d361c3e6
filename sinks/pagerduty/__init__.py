"""PagerDuty Events API v2: one trigger event per alert, deduplicated by PagerDuty."""

from sinks.pagerduty.config import PagerDutySettings as SETTINGS
from sinks.pagerduty.sink import PagerDutySink as SINK

__all__ = ["SETTINGS", "SINK"]
