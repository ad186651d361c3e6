"""The changelog-backed table of integration configs, keyed by tenant."""

from __future__ import annotations

import faust
from faust.types import TableT

__all__ = ["TABLES", "changelog_topic", "declare_config_table", "declare_health_table"]

TABLES = ("configs", "health")


def changelog_topic(app_id: str, table: str) -> str:
    """faust's name for a table's changelog topic."""
    return f"{app_id}-{table}-changelog"


def declare_config_table(app: faust.App, partitions: int) -> TableT:
    """tenant_id -> {integration_id: {"version": int, "config": dict | None}}.

    Kept in memory and rebuilt from its compacted changelog when a worker starts or is
    assigned a partition; configs are small, so recovery is quick.
    """
    return app.Table(
        TABLES[0],
        default=None,
        partitions=partitions,
        # No key_type/value_type: faust would treat `dict` as a Model and fail recovery
        # ("'dict' has no attribute 'from_data'"); plain JSON round-trips as is.
        help="integration configs by tenant",
    )


def declare_health_table(app: faust.App, partitions: int) -> TableT:
    """tenant_id -> {integration_id: health}, folded from the internal health topic."""
    return app.Table(TABLES[1], default=None, partitions=partitions, help="integration health")
