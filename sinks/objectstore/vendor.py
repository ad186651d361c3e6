"""The object stores' client modules, loaded only by workers that use them.

google-cloud-storage costs a worker ~20 MB of RSS and ~0.14 s of imports, boto3 ~9 MB
and ~0.08 s (measured: `import sinks.gcs.client` / `sinks.s3.client` after the rest of
the worker). The batch lane has a sink import its module when it first reads an alert
for one of its integrations (`BatchingSink.prepare`); a write or check that comes first
(the delivery-topic agent, the API's check) imports it here, in a thread.
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
