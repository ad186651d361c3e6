"""Secrets sealed at rest: round trip, binding to their place, key rotation, and the
intake's rule that stored settings never hold a secret in clear."""

from __future__ import annotations

import json

import pytest

from sinks.secretbox import SecretBox, SecretBoxError, generate_key_spec, is_sealed
from sinks.webhook.config import WebhookSettings
from streams.agents.config import apply_change

URL = "https://hooks.example.com/services/T0/B0/SECRETPATH123"


def webhook() -> WebhookSettings:
    return WebhookSettings.model_validate(
        {"webhook_url": URL, "headers": [{"name": "Authorization", "value": "Bearer TOKEN42"}]}
    )


def test_settings_round_trip_and_nothing_in_clear() -> None:
    box = SecretBox.parse(generate_key_spec("k1"))
    sealed = box.seal_settings(webhook(), "acme/hook")
    text = json.dumps(sealed)
    assert "SECRETPATH123" not in text and "TOKEN42" not in text
    assert is_sealed(sealed["webhook_url"]) and is_sealed(sealed["headers"][0]["value"])
    assert sealed["headers"][0]["name"] == "Authorization"  # only secrets are sealed
    opened = box.open_settings(sealed, "acme/hook")
    assert WebhookSettings.model_validate(opened) == webhook()


def test_a_sealed_value_only_opens_in_its_own_place() -> None:
    box = SecretBox.parse(generate_key_spec())
    sealed = box.seal_settings(webhook(), "acme/hook")
    with pytest.raises(SecretBoxError):
        box.open_settings(sealed, "other-tenant/hook")
    moved = {**sealed, "webhook_url": sealed["headers"][0]["value"]}
    with pytest.raises(SecretBoxError):
        box.open_settings(moved, "acme/hook")


def test_rotation_old_keys_open_new_key_seals() -> None:
    old = generate_key_spec("old")
    sealed = SecretBox.parse(old).seal_settings(webhook(), "acme/hook")
    rotated = SecretBox.parse(f"{generate_key_spec('new')},{old}")
    assert rotated.open_settings(sealed, "acme/hook")["webhook_url"] == URL
    assert rotated.seal("x", "a")["kid"] == "new"
    with pytest.raises(SecretBoxError, match="unknown key id 'old'"):
        SecretBox.parse(generate_key_spec("new")).open_settings(sealed, "acme/hook")


def test_tampering_is_detected() -> None:
    box = SecretBox.parse(generate_key_spec())
    envelope = box.seal("secret", "scope")
    envelope["ct"] = envelope["ct"][:-4] + "AAAA"
    with pytest.raises(SecretBoxError):
        box.open(envelope, "scope")


@pytest.mark.parametrize("spec", ["", "k1", "k1:short", "k1:!!!", f"{generate_key_spec('a')},a:x"])
def test_bad_key_specs_are_refused_without_echoing_them(spec: str) -> None:
    with pytest.raises(SecretBoxError) as err:
        SecretBox.parse(spec)
    if ":" in spec:
        assert spec.split(":", 1)[1][:8] not in str(err.value) or len(spec) < 10


def test_plaintext_settings_pass_through_open() -> None:
    box = SecretBox.parse(generate_key_spec())
    assert box.open_settings({"webhook_url": URL}, "acme/hook") == {"webhook_url": URL}


def test_unversioned_writes_apply_as_the_next_version() -> None:
    first = apply_change(None, {"integration_id": "a", "version": None, "config": {"n": 1}})
    assert first is not None and first["a"]["version"] == 1
    second = apply_change(first, {"integration_id": "a", "version": None, "config": {"n": 2}})
    assert second is not None and second["a"] == {"version": 2, "config": {"n": 2, "version": 2}}
    stale = apply_change(second, {"integration_id": "a", "version": 2, "config": {"n": 0}})
    assert stale is None
    deleted = apply_change(second, {"integration_id": "a", "version": None, "deleted": True})
    assert deleted is not None and deleted["a"] == {"version": 2, "config": None}
