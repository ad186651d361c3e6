"""The S3 destination: batches of alerts as JSON Lines objects in a customer's bucket."""

from __future__ import annotations

from sinks.s3.client import S3Writer

__all__ = ["S3Writer"]
