"""Wire contracts (Avro schemas) and the loader for them."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import fastavro

__all__ = ["SCHEMA_FILES", "load_schema"]

# Order matters: later schemas refer to the named types of earlier ones.
SCHEMA_FILES = {
    "Alert": "alert.avsc",
    "IntegrationConfig": "integration_config.avsc",
    "Delivery": "delivery.avsc",
    "DeliveryStatus": "delivery_status.avsc",
    "DeadLetter": "dead_letter.avsc",
}


@cache
def _parsed() -> dict[str, Any]:
    named: dict[str, Any] = {}
    parsed: dict[str, Any] = {}
    for name, filename in SCHEMA_FILES.items():
        text = resources.files(__package__).joinpath(filename).read_text("utf-8")
        parsed[name] = fastavro.parse_schema(json.loads(text), named_schemas=named)
    return parsed


def load_schema(name: str) -> Any:
    """The parsed fastavro schema for one of `SCHEMA_FILES`."""
    return _parsed()[name]
