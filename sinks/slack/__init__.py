"""Slack incoming webhooks: one Block Kit message per alert, paced to ~1 message/s."""

from sinks.slack.config import SlackSettings as SETTINGS
from sinks.slack.sink import SlackSink as SINK

__all__ = ["SETTINGS", "SINK"]
