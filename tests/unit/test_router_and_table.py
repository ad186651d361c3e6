"""The config table fold (apply_change), integration matching, and tenant partitioning."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.agents.config import apply_change
from streams.agents.router import matching, tenant_partition


def stored(iid: str, version: int, **overrides: Any) -> dict[str, Any]:
    """A config as the intake agent stores it (model_dump(mode="json") + version)."""
    config: dict[str, Any] = {
        "integration_id": iid,
        "tenant_id": "tenant-a",
        "type": "webhook",
        "name": f"integration {iid}",
        "enabled": True,
        "event_types": ["client_side_risk", "pci_scope_change"],
        "min_risk_level": "low",
        "version": version,
        "settings": {"webhook_url": "https://hooks.example.com/x"},
    }
    config.update(overrides)
    return config


def write(iid: str, version: int, **overrides: Any) -> dict[str, Any]:
    return {"integration_id": iid, "version": version, "config": stored(iid, version, **overrides)}


def delete(iid: str, version: int) -> dict[str, Any]:
    return {"integration_id": iid, "version": version, "deleted": True}


def fold(*changes: dict[str, Any]) -> dict[str, Any] | None:
    """Apply changes in order as the apply agent does (None = unchanged)."""
    table: dict[str, Any] | None = None
    for change in changes:
        updated = apply_change(table, change)
        if updated is not None:
            table = updated
    return table


# -- apply_change ----------------------------------------------------------------------


def test_create_into_an_empty_tenant() -> None:
    result = apply_change(None, write("i1", 1))
    assert result == {"i1": {"version": 1, "config": stored("i1", 1)}}


def test_create_keeps_other_integrations_and_does_not_mutate_input() -> None:
    current = {"i1": {"version": 1, "config": stored("i1", 1)}}
    snapshot = {"i1": dict(current["i1"])}
    result = apply_change(current, write("i2", 5))
    assert result is not None
    assert set(result) == {"i1", "i2"}
    assert current == snapshot


def test_newer_version_replaces() -> None:
    current = apply_change(None, write("i1", 1, name="old"))
    result = apply_change(current, write("i1", 2, name="new"))
    assert result is not None
    assert result["i1"]["version"] == 2
    assert result["i1"]["config"]["name"] == "new"


@pytest.mark.parametrize("version", [1, 2])  # stale, then repeated
def test_stale_or_repeated_version_is_ignored(version: int) -> None:
    current = apply_change(None, write("i1", 2, name="current"))
    assert apply_change(current, write("i1", version, name="stale")) is None


def test_delete_keeps_the_version() -> None:
    current = apply_change(None, write("i1", 7))
    result = apply_change(current, delete("i1", 100))
    assert result == {"i1": {"version": 7, "config": None}}


def test_delete_of_unknown_or_deleted_changes_nothing() -> None:
    assert apply_change(None, delete("i1", 3)) is None
    assert apply_change({}, delete("i1", 3)) is None
    gone = {"i1": {"version": 7, "config": None}}
    assert apply_change(gone, delete("i1", 9)) is None


def test_late_older_write_after_delete_does_not_resurrect() -> None:
    table = fold(write("i1", 1), write("i1", 3), delete("i1", 10), write("i1", 2))
    assert table == {"i1": {"version": 3, "config": None}}
    assert matching(table, "client_side_risk", "critical") == []


def test_newer_write_after_delete_recreates() -> None:
    table = fold(write("i1", 3), delete("i1", 4), write("i1", 5, name="back"))
    assert table is not None
    assert table["i1"]["config"]["name"] == "back"


def test_replaying_the_same_changes_is_idempotent() -> None:
    changes = [write("i1", 1), write("i2", 2), write("i1", 3), delete("i2", 4)]
    once = fold(*changes)
    assert fold(*changes, *changes) == once


# -- matching --------------------------------------------------------------------------


def _entries(**configs: dict[str, Any] | None) -> dict[str, Any]:
    return {iid: {"version": 1, "config": config} for iid, config in configs.items()}


LEVELS = ["low", "medium", "high", "critical"]


@pytest.mark.parametrize(
    ("config", "event", "risk", "matches"),
    [
        # event type filter
        (stored("i", 1, event_types=["client_side_risk"]), "client_side_risk", "low", True),
        (stored("i", 1, event_types=["client_side_risk"]), "pci_scope_change", "critical", False),
        (stored("i", 1, event_types=["pci_scope_change"]), "pci_scope_change", "low", True),
        (stored("i", 1), "pci_scope_change", "low", True),
        # min risk level: low < medium < high < critical
        *[
            (stored("i", 1, min_risk_level=minimum), "client_side_risk", risk, ok)
            for minimum in LEVELS
            for risk in LEVELS
            for ok in [LEVELS.index(risk) >= LEVELS.index(minimum)]
        ],
        # disabled
        (stored("i", 1, enabled=False), "client_side_risk", "critical", False),
        # deleted entry
        (None, "client_side_risk", "critical", False),
    ],
)
def test_matching_filters(
    config: dict[str, Any] | None, event: str, risk: str, matches: bool
) -> None:
    result = matching(_entries(i=config), event, risk)
    assert result == ([config] if matches else [])


@pytest.mark.parametrize("entries", [None, {}])
def test_unknown_tenant_matches_nothing(entries: dict[str, Any] | None) -> None:
    assert matching(entries, "client_side_risk", "critical") == []


def test_matching_returns_every_matching_integration_as_stored() -> None:
    entries = _entries(
        a=stored("a", 1),
        b=stored("b", 1, min_risk_level="critical"),
        c=stored("c", 1, type="s3", event_types=["client_side_risk"]),
        d=None,
        e=stored("e", 1, enabled=False),
    )
    got = matching(entries, "client_side_risk", "high")
    assert sorted(c["integration_id"] for c in got) == ["a", "c"]
    assert {c["type"] for c in got} == {"webhook", "s3"}


def test_matching_accepts_enum_values() -> None:
    from schemas.models import EventType, RiskLevel

    entries = _entries(a=stored("a", 1, min_risk_level="medium"))
    assert len(matching(entries, EventType.CLIENT_SIDE_RISK, RiskLevel.HIGH)) == 1
    assert matching(entries, EventType.CLIENT_SIDE_RISK, RiskLevel.LOW) == []


# -- tenant_partition ------------------------------------------------------------------

TENANTS = ["tenant-a", "tenant-b", "acme", "21", "x", "ünïcødé-tenant", "a" * 300, ""]


@pytest.mark.parametrize("partitions", [1, 2, 3, 6, 12, 64, 100])
@pytest.mark.parametrize("tenant", TENANTS)
def test_tenant_partition_equals_the_default_partitioner(tenant: str, partitions: int) -> None:
    all_partitions = list(range(partitions))
    expected = DefaultPartitioner()(tenant.encode("utf-8"), all_partitions, all_partitions)
    got = tenant_partition(tenant, partitions)
    assert got == expected
    assert 0 <= got < partitions
    assert tenant_partition(tenant, partitions) == got  # stable


# Java's Utils.murmur2 on these keys (Kafka's UtilsTest); partition = toPositive(h) % n.
JAVA_MURMUR2 = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


@pytest.mark.parametrize(("key", "java_hash"), sorted(JAVA_MURMUR2.items()))
@pytest.mark.parametrize("partitions", [3, 7, 24])
def test_tenant_partition_equals_java(key: str, java_hash: int, partitions: int) -> None:
    assert tenant_partition(key, partitions) == (java_hash & 0x7FFFFFFF) % partitions


def test_tenant_partition_spreads_tenants() -> None:
    seen = {tenant_partition(f"tenant-{i}", 8) for i in range(200)}
    assert seen == set(range(8))
