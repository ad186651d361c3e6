"""Reading delivery records in the sink agents, and the per-version settings cache.

Records are read with `orjson` and a config snapshot validated once per identical
snapshot; what does not parse or validate is still dead-lettered with the reason, and a
record never borrows another record's config or settings, whatever version it claims.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas.models import DeadLetter, Delivery, IntegrationConfig, idempotency_key
from sinks.base import PerAlertSink
from sinks.secretbox import SecretBox, generate_key_spec
from sinks.webhook.config import WebhookSettings
from streams.agents.sinks import _parse, _read_delivery
from streams.delivery import _SettingsCache

BOX = SecretBox.parse(generate_key_spec())
TOPIC = "alertrelay-deliver-webhook"


def config(url: str = "https://hooks.example.com/a", version: int = 3) -> dict[str, Any]:
    """A config snapshot as the table holds it (sealing draws a new nonce every time)."""
    settings = WebhookSettings.model_validate({"webhook_url": url, "method": "POST"})
    return {
        "integration_id": "hook-1",
        "tenant_id": "acme",
        "type": "webhook",
        "name": "SOC hook",
        "enabled": True,
        "event_types": ["client_side_risk", "pci_scope_change"],
        "min_risk_level": "low",
        "version": version,
        "settings": BOX.seal_settings(settings, "acme/hook-1"),
    }


CONFIG = config()  # sealed once, as the config agent does: every record carries this


def record(alert_id: str = "a-1", **changes: Any) -> dict[str, Any]:
    """A delivery record as the router writes it."""
    out: dict[str, Any] = {
        "alert": {
            "alert_id": alert_id,
            "tenant_id": "acme",
            "event_type": "client_side_risk",
            "risk_level": "high",
            "title": "New script reads the payment form",
            "detected_at": "2026-11-24T10:00:00Z",
            "details": {"field": "card"},
        },
        "integration": orjson.loads(orjson.dumps(CONFIG)),
        "config_version": 3,
        "idempotency_key": idempotency_key(alert_id, "hook-1"),
        "source_topic": "alerts",
        "source_partition": 1,
        "source_offset": 42,
        "routed_at": time.time(),
        "produced_at": time.time(),
        "redrive": False,
    }
    out.update(changes)
    return out


class Message:
    def __init__(self, value: bytes | None) -> None:
        self.topic, self.partition, self.offset, self.value = TOPIC, 2, 9, value


class Event:
    def __init__(self, value: bytes | None) -> None:
        self.message = Message(value)


class Recorder:
    def __init__(self) -> None:
        self.dead: list[DeadLetter] = []

    async def status(self, record: Any) -> None:
        raise AssertionError("reading a record reports no status")

    async def dead_letter(self, record: DeadLetter) -> None:
        self.dead.append(record)


def test_a_record_reads_as_full_validation_reads_it() -> None:
    raw = orjson.dumps(record())
    assert _read_delivery(raw) == Delivery.model_validate_json(raw)
    again = _read_delivery(raw)  # now with the cached config
    assert again == Delivery.model_validate_json(raw)


def test_records_with_the_same_snapshot_share_one_validated_config() -> None:
    first = _read_delivery(orjson.dumps(record("a-1")))
    second = _read_delivery(orjson.dumps(record("a-2")))
    assert second.integration is first.integration
    assert second.alert.alert_id == "a-2"


def test_a_record_claiming_the_same_version_with_other_settings_gets_its_own() -> None:
    genuine = _read_delivery(orjson.dumps(record()))
    forged_config = config(url="https://attacker.example.net/x")
    forged = _read_delivery(orjson.dumps(record(integration=forged_config)))
    assert forged.integration is not genuine.integration
    assert forged.integration.settings == forged_config["settings"]
    assert forged.config_version == genuine.config_version == 3
    # ...and the genuine snapshot still reads as itself afterwards.
    assert _read_delivery(orjson.dumps(record())).integration is genuine.integration


def test_an_invalid_snapshot_is_refused_every_time_not_cached() -> None:
    bad = record(integration={**CONFIG, "name": "   "})
    for _ in range(2):
        with pytest.raises(ValidationError, match=r"integration\.name"):
            _read_delivery(orjson.dumps(bad))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "invalid JSON"),
        (b"\xff\xfe\x00garbage", "invalid JSON"),
        (b'{"alert": {', "invalid JSON"),
        (b"[1, 2]", "(record)"),
        (b'"just a string"', "(record)"),
        (orjson.dumps({**record(), "integration": "x"}), "integration"),
        (orjson.dumps({k: v for k, v in record().items() if k != "alert"}), "alert: Field"),
        (orjson.dumps(record(alert={**record()["alert"], "risk_level": "huge"})), "risk_level"),
        (orjson.dumps(record(alert={**record()["alert"], "detected_at": 5})), "detected_at"),
        (orjson.dumps(record(source_offset="later")), "source_offset"),
        (orjson.dumps(record(config_version=None)), "config_version"),
    ],
)
async def test_an_unreadable_record_is_dead_lettered_with_the_reason(
    value: bytes, reason: str
) -> None:
    reporter = Recorder()
    assert await _parse(Event(value), reporter, "webhook") is None  # type: ignore[arg-type]
    (dead,) = reporter.dead
    assert dead.reason.startswith("unreadable delivery record: ")
    assert reason in dead.reason
    assert (dead.stage, dead.source_topic, dead.source_partition, dead.source_offset) == (
        "deliver",
        TOPIC,
        2,
        9,
    )
    assert dead.integration_type == "webhook"
    assert base64.b64decode(dead.payload_b64 or "") == value


async def test_a_readable_record_is_not_dead_lettered() -> None:
    reporter = Recorder()
    delivery = await _parse(Event(orjson.dumps(record())), reporter, "webhook")  # type: ignore[arg-type]
    assert delivery is not None and not reporter.dead


class Sink(PerAlertSink[WebhookSettings]):
    type_name = "webhook"
    settings_model = WebhookSettings

    async def send(self, delivery: Delivery, settings: WebhookSettings) -> int | None:
        return 200

    async def check(self, integration: IntegrationConfig, settings: WebhookSettings) -> str:
        return "ok"


def test_settings_are_prepared_once_per_snapshot_and_never_shared_with_another() -> None:
    cache = _SettingsCache(Sink(), BOX)
    genuine = _read_delivery(orjson.dumps(record()))
    prepared = cache.get(genuine)
    assert cache.get(_read_delivery(orjson.dumps(record("a-2")))) is prepared

    forged = _read_delivery(orjson.dumps(record(integration=config("https://evil.example/x"))))
    theirs = cache.get(forged)
    assert theirs is not prepared
    assert isinstance(theirs.settings, WebhookSettings)
    assert theirs.settings.webhook_url.get_secret_value() == "https://evil.example/x"
    mine = cache.get(genuine)
    assert isinstance(mine.settings, WebhookSettings)
    assert mine.settings.webhook_url.get_secret_value() == "https://hooks.example.com/a"


def test_equal_settings_in_another_object_use_the_prepared_entry() -> None:
    cache = _SettingsCache(Sink(), BOX)
    first = Delivery.model_validate_json(orjson.dumps(record()))
    second = Delivery.model_validate_json(orjson.dumps(record()))
    assert first.integration.settings is not second.integration.settings
    assert cache.get(second) is cache.get(first)
