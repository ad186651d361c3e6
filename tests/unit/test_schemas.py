"""Alert decoding (JSON and Avro) and the models staying in step with the .avsc files."""

from __future__ import annotations

import datetime as dt
from typing import Any

import fastavro.validation
import orjson
import pytest
from pydantic import BaseModel

from schemas import load_schema
from schemas.codec import (
    MAX_ALERT_BYTES,
    DecodeError,
    decode_alert,
    encode_alert_avro,
    parse_alert,
    tenant_of,
    validate_alert,
)
from schemas.models import (
    Alert,
    DeadLetter,
    Delivery,
    DeliveryStatus,
    IntegrationConfig,
    Outcome,
    idempotency_key,
)

DETECTED = dt.datetime(2024, 5, 1, 12, 30, 15, tzinfo=dt.UTC)


def make_alert(**overrides: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": "alert-1",
        "tenant_id": "tenant-a",
        "event_type": "client_side_risk",
        "risk_level": "high",
        "title": "New script on checkout page",
        "detected_at": DETECTED,
        "description": "A script from an unknown domain appeared.",
        "page_url": "https://shop.example.com/checkout",
        "script_url": "https://cdn.evil.example/x.js",
        "domain": "cdn.evil.example",
        "console_url": "https://console.example.com/alerts/alert-1",
        "details": {"hash": "abc123", "first_seen": "2024-05-01"},
    }
    fields.update(overrides)
    return Alert.model_validate(fields)


def alert_json(**overrides: Any) -> dict[str, Any]:
    data = make_alert().wire()
    data.update(overrides)
    return data


def make_integration(**overrides: Any) -> IntegrationConfig:
    fields: dict[str, Any] = {
        "integration_id": "int-1",
        "tenant_id": "tenant-a",
        "type": "webhook",
        "name": "SOC webhook",
        "version": 3,
        "settings": {
            "webhook_url": "https://hooks.example.com/alerts/s3cr3t",
            "method": "POST",
            "protocol": "tcp",
            "client_certificate": None,
            "headers": [{"name": "X-Team", "value": "soc"}],
        },
    }
    fields.update(overrides)
    return IntegrationConfig.model_validate(fields)


def make_delivery() -> Delivery:
    alert = make_alert()
    integration = make_integration()
    return Delivery(
        alert=alert,
        integration=integration,
        config_version=3,
        idempotency_key=idempotency_key(alert.alert_id, integration.integration_id),
        source_topic="alerts",
        source_partition=2,
        source_offset=41,
        routed_at=1714566615.5,
        produced_at=1714566615.0,
    )


# -- decoding: the same alert in every accepted encoding ---------------------------------


def test_json_and_both_avro_framings_decode_to_the_same_alert() -> None:
    alert = make_alert()
    from_json = decode_alert(orjson.dumps(alert.wire()))
    confluent = decode_alert(encode_alert_avro(alert, confluent_schema_id=1))
    bare = decode_alert(encode_alert_avro(alert), [("content-type", b"avro/binary")])
    assert from_json == alert
    assert confluent == alert
    assert bare == alert


def test_minimal_alert_round_trips_through_avro() -> None:
    alert = Alert(
        alert_id="a",
        tenant_id="t",
        event_type="pci_scope_change",
        risk_level="low",
        title="scope changed",
        detected_at=DETECTED,
    )
    assert decode_alert(encode_alert_avro(alert, confluent_schema_id=7)) == alert
    assert decode_alert(orjson.dumps(alert.wire())) == alert


def test_header_mapping_and_parameters_are_accepted() -> None:
    alert = make_alert()
    body = encode_alert_avro(alert)
    assert decode_alert(body, {"Content-Type": b"application/avro; charset=binary"}) == alert


# -- decoding: refusals with a readable reason -------------------------------------------


def _reason(raw: bytes | None, headers: Any = None) -> str:
    with pytest.raises(DecodeError) as info:
        decode_alert(raw, headers)
    reason = str(info.value)
    assert reason  # never an empty reason
    return reason


def test_bad_json_is_refused() -> None:
    assert "invalid JSON" in _reason(b'{"alert_id": ')


def test_json_array_is_refused() -> None:
    assert "JSON object" in _reason(orjson.dumps([alert_json()]))


@pytest.mark.parametrize("field", ["alert_id", "tenant_id", "title", "detected_at", "risk_level"])
def test_missing_field_is_named(field: str) -> None:
    data = alert_json()
    del data[field]
    reason = _reason(orjson.dumps(data))
    assert field in reason
    assert "required" in reason.lower()


@pytest.mark.parametrize(
    ("field", "value"),
    [("event_type", "malware"), ("risk_level", "urgent")],
)
def test_unknown_enum_value_names_the_field(field: str, value: str) -> None:
    reason = _reason(orjson.dumps(alert_json(**{field: value})))
    assert field in reason


def test_oversized_record_is_refused() -> None:
    data = alert_json(description="x" * (MAX_ALERT_BYTES + 10))
    raw = orjson.dumps(data)
    assert len(raw) > MAX_ALERT_BYTES
    reason = _reason(raw)
    assert "exceeds" in reason
    assert str(MAX_ALERT_BYTES) in reason


@pytest.mark.parametrize("raw", [b"", None])
def test_empty_record_is_refused(raw: bytes | None) -> None:
    assert "empty" in _reason(raw)


def test_naive_datetime_is_refused() -> None:
    reason = _reason(orjson.dumps(alert_json(detected_at="2024-05-01T12:30:15")))
    assert "detected_at" in reason
    assert "time zone" in reason


def test_naive_datetime_in_avro_is_refused() -> None:
    alert = make_alert()
    # Build the Avro body by hand: the model refuses to hold a naive time itself.
    import io

    import fastavro

    record = alert.model_dump(mode="json") | {"detected_at": "2024-05-01T12:30:15"}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, load_schema("Alert"), record)
    reason = _reason(out.getvalue(), {"content-type": b"avro/binary"})
    assert "detected_at" in reason


@pytest.mark.parametrize(
    ("raw", "headers"),
    [
        # Confluent framing, body cut short
        (b"\x00\x00\x00\x00\x01" + encode_alert_avro(make_alert())[:10], None),
        # Confluent framing, garbage body
        (b"\x00\x00\x00\x00\x01" + b"\xff" * 12, None),
        # bare body announced by header, cut short
        (encode_alert_avro(make_alert())[:10], [("content-type", b"avro/binary")]),
    ],
)
def test_corrupt_avro_is_refused(raw: bytes, headers: Any) -> None:
    assert "Avro" in _reason(raw, headers)


def test_trailing_bytes_after_avro_body_are_refused() -> None:
    raw = encode_alert_avro(make_alert(), confluent_schema_id=1) + b"trailing garbage"
    with pytest.raises(DecodeError):
        decode_alert(raw)


@pytest.mark.parametrize("value", [1714566615, "1714566615"])
def test_numeric_detected_at_is_refused(value: object) -> None:
    with pytest.raises(DecodeError):
        decode_alert(orjson.dumps(alert_json(detected_at=value)))


def test_reason_does_not_echo_the_payload() -> None:
    secret = "token-that-must-not-leak"
    reason = _reason(orjson.dumps(alert_json(risk_level=secret)))
    assert secret not in reason


# -- models and .avsc in step ------------------------------------------------------------


def _examples() -> list[tuple[str, BaseModel]]:
    delivery = make_delivery()
    status = DeliveryStatus(
        alert_id="alert-1",
        tenant_id="tenant-a",
        integration_id="int-1",
        integration_type="webhook",
        idempotency_key=delivery.idempotency_key,
        attempt=2,
        outcome=Outcome.RETRYING,
        http_status=503,
        latency_ms=12.5,
        error="webhook https://hooks.example.com answered 503",
        at=1714566616.0,
    )
    dead = DeadLetter(
        reason="webhook answered 400",
        stage="deliver",
        source_topic="alerts",
        source_partition=2,
        source_offset=41,
        at=1714566617.0,
        tenant_id="tenant-a",
        integration_id="int-1",
        integration_type="webhook",
        alert_id="alert-1",
        idempotency_key=delivery.idempotency_key,
        attempts=1,
        alert=make_alert(),
    )
    return [
        ("Alert", make_alert()),
        ("IntegrationConfig", make_integration()),
        ("Delivery", delivery),
        ("DeliveryStatus", status),
        ("DeadLetter", dead),
    ]


@pytest.mark.parametrize(("name", "model"), _examples(), ids=lambda v: str(v)[:20])
def test_model_matches_its_avro_schema(name: str, model: BaseModel) -> None:
    record = model.model_dump(mode="json")
    assert fastavro.validation.validate(record, load_schema(name), raise_errors=True)


def test_minimal_records_match_their_avro_schemas() -> None:
    bare_alert = Alert(
        alert_id="a",
        tenant_id="t",
        event_type="client_side_risk",
        risk_level="low",
        title="x",
        detected_at=DETECTED,
    )
    decode_dead = DeadLetter(
        reason="invalid JSON",
        stage="decode",
        source_topic="alerts",
        source_partition=0,
        source_offset=0,
        at=0.0,
        payload_b64="e30=",
    )
    for name, model in (("Alert", bare_alert), ("DeadLetter", decode_dead)):
        assert fastavro.validation.validate(
            model.model_dump(mode="json"), load_schema(name), raise_errors=True
        )


# -- idempotency key ---------------------------------------------------------------------


def test_idempotency_key_is_stable_and_per_integration() -> None:
    key = idempotency_key("alert-1", "int-1")
    assert key == idempotency_key("alert-1", "int-1")
    assert key != idempotency_key("alert-1", "int-2")
    assert key != idempotency_key("alert-2", "int-1")
    # no ambiguity from concatenation
    assert idempotency_key("ab", "c") != idempotency_key("a", "bc")
    assert key.startswith("ar-")


@pytest.mark.parametrize("tenant", ["t", "x" * 256, "", "x" * 257, 7, None, ["t"]])
def test_the_tenant_read_before_validation_follows_the_models_rule(tenant: object) -> None:
    """The routing lane routes by `tenant_of` without validating (streams/lane.py): it
    must refuse exactly the tenants the model refuses, or an alert could be dead-lettered
    by both lanes or by neither."""
    data = alert_json(tenant_id=tenant)
    if tenant is None:
        del data["tenant_id"]
    try:
        validate_alert(dict(data))
        model_ok = True
    except DecodeError:
        model_ok = False
    try:
        assert tenant_of(parse_alert(orjson.dumps(data))) == tenant
        parsed_ok = True
    except DecodeError as exc:
        assert "tenant_id" in str(exc)
        parsed_ok = False
    assert parsed_ok == model_ok
