"""Secrets of integration settings, sealed with AES-256-GCM wherever they are stored.

Every `SecretStr` field of a settings model is replaced in stored configs (the
integrations topic when written by the API, the config table and its changelog, the
delivery topics) by an envelope `{"$sealed": "v1", "kid": ..., "nonce": ..., "ct": ...}`.
The additional data binds a sealed value to its tenant, integration and field, so a value
copied into another integration does not open. Keys come from configuration with an id,
so they can rotate: the first key seals, every key opens.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, SecretStr

__all__ = [
    "KEYS_ENV",
    "KEY_FILE_ENV",
    "SecretBox",
    "SecretBoxError",
    "generate_key_spec",
    "is_sealed",
]

KEYS_ENV = "ALERTRELAY_SECRET_KEYS"
KEY_FILE_ENV = "ALERTRELAY_SECRET_KEYS_FILE"
_MARK = "$sealed"


class SecretBoxError(ValueError):
    """A sealed value that cannot be opened, or keys that cannot be read (no key material
    in the message)."""


def is_sealed(value: object) -> bool:
    return isinstance(value, Mapping) and value.get(_MARK) == "v1"


def generate_key_spec(kid: str = "k1") -> str:
    """A new `kid:base64key` entry for ALERTRELAY_SECRET_KEYS."""
    return f"{kid}:{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()}"


@dataclass(frozen=True)
class SecretBox:
    keys: tuple[tuple[str, bytes], ...]  # (kid, 32-byte key); the first one seals

    @classmethod
    def parse(cls, spec: str) -> SecretBox:
        keys: list[tuple[str, bytes]] = []
        for item in (part.strip() for part in spec.replace("\n", ",").split(",")):
            if not item:
                continue
            kid, sep, encoded = item.partition(":")
            try:
                key = base64.urlsafe_b64decode(encoded.strip() + "=" * (-len(encoded) % 4))
            except ValueError:
                key = b""
            if not sep or not kid.strip() or len(key) != 32:
                raise SecretBoxError(
                    f"{KEYS_ENV}: each entry must be '<key id>:<base64 of 32 bytes>' "
                    f"(entry {len(keys) + 1} is not)"
                )
            keys.append((kid.strip(), key))
        if not keys:
            raise SecretBoxError(f"{KEYS_ENV} holds no key")
        if len({kid for kid, _ in keys}) != len(keys):
            raise SecretBoxError(f"{KEYS_ENV}: key ids must be unique")
        return cls(tuple(keys))

    @classmethod
    def from_env(cls) -> SecretBox:
        """Keys from ALERTRELAY_SECRET_KEYS, or the file named by ALERTRELAY_SECRET_KEYS_FILE."""
        spec = os.environ.get(KEYS_ENV, "").strip()
        path = os.environ.get(KEY_FILE_ENV, "").strip()
        if not spec and path:
            try:
                spec = Path(path).read_text().strip()
            except OSError as exc:
                raise SecretBoxError(f"cannot read {KEY_FILE_ENV}: {exc.strerror}") from None
        if not spec:
            raise SecretBoxError(
                f"no secret key: set {KEYS_ENV} (or {KEY_FILE_ENV}); "
                f"generate one with `alertrelay keys generate`"
            )
        return cls.parse(spec)

    def seal(self, plaintext: str, aad: str) -> dict[str, str]:
        kid, key = self.keys[0]
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), aad.encode())
        return {
            _MARK: "v1",
            "kid": kid,
            "nonce": base64.b64encode(nonce).decode(),
            "ct": base64.b64encode(sealed).decode(),
        }

    def open(self, envelope: Mapping[str, Any], aad: str) -> str:
        kid = envelope.get("kid")
        key = dict(self.keys).get(str(kid))
        if key is None:
            raise SecretBoxError(f"sealed with unknown key id {kid!r}: add it to {KEYS_ENV}")
        try:
            nonce = base64.b64decode(envelope["nonce"])
            sealed = base64.b64decode(envelope["ct"])
            return AESGCM(key).decrypt(nonce, sealed, aad.encode()).decode()
        except (InvalidTag, KeyError, ValueError, TypeError):
            raise SecretBoxError(f"a sealed value does not open ({aad})") from None

    # -- whole settings -------------------------------------------------------------

    def seal_settings(self, settings: BaseModel, scope: str) -> dict[str, Any]:
        """The settings as JSON, every SecretStr sealed (bound to `scope` and its path)."""
        dumped = settings.model_dump(mode="python")
        return {k: _seal_walk(v, self, scope, f"settings.{k}") for k, v in dumped.items()}

    def open_settings(self, data: Mapping[str, Any], scope: str) -> dict[str, Any]:
        """The stored settings with every sealed value opened, ready for validation."""
        return {k: _open_walk(v, self, scope, f"settings.{k}") for k, v in data.items()}


def _seal_walk(value: Any, box: SecretBox, scope: str, path: str) -> Any:
    if isinstance(value, SecretStr):
        return box.seal(value.get_secret_value(), f"{scope}:{path}")
    if isinstance(value, Mapping):
        return {k: _seal_walk(v, box, scope, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_seal_walk(v, box, scope, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _open_walk(value: Any, box: SecretBox, scope: str, path: str) -> Any:
    if is_sealed(value):
        return box.open(value, f"{scope}:{path}")
    if isinstance(value, Mapping):
        return {k: _open_walk(v, box, scope, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_open_walk(v, box, scope, f"{path}[{i}]") for i, v in enumerate(value)]
    return value
