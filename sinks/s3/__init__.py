"""AWS S3: batches of alerts as compressed JSON-lines objects, each written once."""

from sinks.s3.config import S3Settings as SETTINGS
from sinks.s3.sink import S3Sink as SINK

__all__ = ["SETTINGS", "SINK"]
