"""The object stores' client modules, imported when a sink first writes or checks.

google-cloud-storage costs a worker ~20 MB of RSS and ~0.3 s of imports, boto3 ~9 MB
(measured: `import sinks.gcs.client` / `sinks.s3.client` after the rest of the worker):
paid only by workers with a GCS or S3 integration, and imported in a thread so that the
first write does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from types import ModuleType

__all__ = ["client_module"]


async def client_module(name: str) -> ModuleType:
    module = sys.modules.get(name)
    if module is None:
        module = await asyncio.to_thread(importlib.import_module, name)
    return module
