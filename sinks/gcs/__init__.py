"""Google Cloud Storage: batches of alerts as compressed JSON-lines objects, each written once."""

from sinks.gcs.config import GCSSettings as SETTINGS
from sinks.gcs.sink import GCSSink as SINK

__all__ = ["SETTINGS", "SINK"]
