"""Splunk HTTP Event Collector: batches of alerts as HEC event envelopes."""

from sinks.splunk.config import SplunkSettings as SETTINGS
from sinks.splunk.sink import SplunkSink as SINK

__all__ = ["SETTINGS", "SINK"]
