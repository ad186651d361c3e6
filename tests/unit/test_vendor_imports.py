"""A worker imports boto3 and google-cloud-storage only once an S3 or GCS integration
writes (sinks/objectstore/vendor.py): ~30 MB of RSS it need not carry otherwise."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("boto3", "botocore", "google.cloud.storage")

SINKS_BUILT = f"""
import sys
from sinks.base import BatchLimits
from sinks.registry import SinkContext, build_sinks
import streams.pipeline
build_sinks(SinkContext.from_env(BatchLimits(max_events=10, max_bytes=1000, max_age=1.0)))
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_building_every_sink_imports_no_object_store_client() -> None:
    # In a child: this test process may have imported them already.
    result = subprocess.run(
        [sys.executable, "-c", SINKS_BUILT], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
