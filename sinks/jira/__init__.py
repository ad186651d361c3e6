"""Jira Cloud: one issue per alert through REST v2, deduplicated by a label."""

from sinks.jira.config import JiraSettings as SETTINGS
from sinks.jira.sink import JiraSink as SINK

__all__ = ["SETTINGS", "SINK"]
