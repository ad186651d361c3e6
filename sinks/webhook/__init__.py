"""Generic HTTP webhook: the alert as JSON to a URL of the user's choosing."""

from sinks.webhook.config import WebhookSettings as SETTINGS
from sinks.webhook.sink import WebhookSink as SINK

__all__ = ["SETTINGS", "SINK"]
