"""Email: one multipart message per alert to a list of addresses, via the SMTP relay."""

from sinks.email.config import EmailSettings as SETTINGS
from sinks.email.sink import EmailSink as SINK

__all__ = ["SETTINGS", "SINK"]
