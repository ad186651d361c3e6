"""Bearer tokens of the HTTP API, stored as SHA-256 hashes in a JSON-lines file.

One object per line, never the token itself::

    {"id": "3f9c2a1b", "hash": "<sha256 hex>", "role": "editor", "tenant_id": "acme",
     "name": "console", "created": "2026-11-24T10:00:00Z"}

`alertrelay tokens create` appends a line (`create_token`); the worker's `TokenStore`
re-reads the file when it changes, so new tokens work without a restart. A token is
``ar_`` + 43 URL-safe characters (32 random bytes): unguessable, so a plain unsalted hash
is enough to store it, and the prefix makes a leaked one easy to find in code or logs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = [
    "DEFAULT_TOKENS_FILE",
    "ROLES",
    "TOKENS_FILE_ENV",
    "TOKEN_PREFIX",
    "Principal",
    "Role",
    "TokenRecord",
    "TokenStore",
    "create_token",
    "default_tokens_path",
    "hash_token",
    "read_records",
]

log = logging.getLogger(__name__)

Role = Literal["admin", "editor", "viewer"]
ROLES: tuple[Role, ...] = get_args(Role)
TOKEN_PREFIX = "ar_"
TOKENS_FILE_ENV = "ALERTRELAY_API_TOKENS_FILE"
DEFAULT_TOKENS_FILE = Path(".alertrelay/api-tokens.jsonl")

_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_NAME = 200
_MAX_TENANT = 256


def default_tokens_path() -> Path:
    """`ALERTRELAY_API_TOKENS_FILE`, else `.alertrelay/api-tokens.jsonl`."""
    raw = os.environ.get(TOKENS_FILE_ENV, "").strip()
    return Path(raw) if raw else DEFAULT_TOKENS_FILE


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _validate_role(role: str) -> Role:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def _validate_tenant(tenant_id: str) -> str:
    if not tenant_id or not tenant_id.strip():
        raise ValueError("tenant_id must not be empty")
    if tenant_id != tenant_id.strip():
        raise ValueError("tenant_id must not start or end with whitespace")
    if "/" in tenant_id:
        raise ValueError("tenant_id must not contain '/'")
    if len(tenant_id) > _MAX_TENANT or any(ord(c) < 32 or ord(c) == 127 for c in tenant_id):
        raise ValueError(f"tenant_id must be at most {_MAX_TENANT} printable characters")
    return tenant_id


def _validate_name(name: str) -> str:
    if len(name) > _MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"name must be at most {_MAX_NAME} printable characters")
    return name


@dataclass(frozen=True)
class TokenRecord:
    """One line of the tokens file (the hash, never the token)."""

    id: str
    hash: str
    role: Role
    tenant_id: str
    name: str
    created: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    def public(self) -> dict[str, str]:
        """What may be shown: everything but the hash."""
        return {
            "id": self.id,
            "role": self.role,
            "tenant_id": self.tenant_id,
            "name": self.name,
            "created": self.created,
        }

    @classmethod
    def from_obj(cls, obj: Any) -> TokenRecord:
        """Validate one parsed line; ValueError says which field (never its value)."""
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        for field in ("id", "hash", "role", "tenant_id"):
            if not isinstance(obj.get(field), str) or not obj[field]:
                raise ValueError(f"{field} missing or not a string")
        for field in ("name", "created"):
            if not isinstance(obj.get(field, ""), str):
                raise ValueError(f"{field} is not a string")
        if not _HASH_RE.match(obj["hash"]):
            raise ValueError("hash is not 64 lowercase hex digits")
        return cls(
            id=obj["id"],
            hash=obj["hash"],
            role=_validate_role(obj["role"]),
            tenant_id=_validate_tenant(obj["tenant_id"]),
            name=_validate_name(obj.get("name", "")),
            created=obj.get("created", ""),
        )


@dataclass(frozen=True)
class Principal:
    """Who made a request: the token's id, role and tenant."""

    token_id: str
    role: Role
    tenant_id: str


def read_records(path: Path) -> list[TokenRecord]:
    """Every valid record of the file ([] when it does not exist); bad lines are skipped
    with a warning naming the line number and the reason, never the content."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    records: list[TokenRecord] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            records.append(TokenRecord.from_obj(json.loads(raw)))
        except (ValueError, UnicodeDecodeError) as exc:
            reason = "invalid JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)
            log.warning("%s line %d skipped: %s", path, number, reason)
    return records


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def create_token(
    path: Path, *, role: str, tenant_id: str, name: str = ""
) -> tuple[str, TokenRecord]:
    """Append a new token's record to `path` and return the token (the only time it exists
    in clear) with its record. Creates the file (mode 0600) and its folder (0700)."""
    valid_role = _validate_role(role)
    _validate_tenant(tenant_id)
    _validate_name(name)
    taken = {r.id for r in read_records(path)}
    token_id = secrets.token_hex(4)
    while token_id in taken:
        token_id = secrets.token_hex(4)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = TokenRecord(
        id=token_id,
        hash=hash_token(token),
        role=valid_role,
        tenant_id=tenant_id,
        name=name,
        created=_now_rfc3339(),
    )
    line = record.to_json().encode("utf-8") + b"\n"

    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        # Tighten a file made by hand with looser permissions: it lists who may do what.
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        size = os.fstat(fd).st_size
        if size:
            # A previous writer that died mid-line must not swallow this record.
            with open(path, "rb") as existing:
                existing.seek(size - 1)
                if existing.read(1) != b"\n":
                    line = b"\n" + line
        # O_APPEND and one write: concurrent writers never interleave within a line.
        written = os.write(fd, line)
        if written != len(line):  # pragma: no cover - only on a full disk
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        dir_fd = os.open(parent if str(parent) else Path("."), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return token, record


class TokenStore:
    """Authenticates `Authorization: Bearer <token>` headers against the tokens file.

    The file is re-read when its mtime, size or inode changes, checked at most once per
    `reload_interval` seconds, so tokens created while the worker runs work at once
    (within a second). Thread-safe.
    """

    def __init__(
        self,
        path: Path,
        *,
        reload_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._reload_interval = reload_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._records: tuple[TokenRecord, ...] = ()
        self._signature: tuple[int, int, int] | None = None
        self._checked_at: float | None = None
        self._warned_mode = False

    @classmethod
    def from_env(cls) -> TokenStore:
        return cls(default_tokens_path())

    def _stat_signature(self) -> tuple[int, int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode

    def _refresh(self) -> tuple[TokenRecord, ...]:
        with self._lock:
            now = self._clock()
            if self._checked_at is not None and now - self._checked_at < self._reload_interval:
                return self._records
            self._checked_at = now
            current = self._stat_signature()
            if current is None:
                if self._signature is not None:
                    log.warning("API tokens file %s is gone: no token is accepted", self.path)
                self._signature, self._records = None, ()
                return self._records
            signature = current[:3]
            if signature != self._signature:
                if current[3] & 0o077 and not self._warned_mode:
                    self._warned_mode = True
                    log.warning(
                        "API tokens file %s is readable by others (mode %o): chmod 600 it",
                        self.path,
                        stat.S_IMODE(current[3]),
                    )
                try:
                    self._records = tuple(read_records(self.path))
                except OSError as exc:
                    # Keep the last good view; try again at the next check.
                    log.warning("cannot read API tokens file %s: %s", self.path, exc.strerror)
                    return self._records
                self._signature = signature
                log.info("loaded %d API token(s) from %s", len(self._records), self.path)
            return self._records

    @property
    def configured(self) -> bool:
        """True when the file exists and holds at least one valid token."""
        return bool(self._refresh())

    def records(self) -> tuple[TokenRecord, ...]:
        return self._refresh()

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal of an `Authorization` header value, or None when it is missing,
        malformed or names no known token."""
        if not authorization:
            return None
        scheme, _, credentials = authorization.strip().partition(" ")
        token = credentials.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        presented = hash_token(token).encode("ascii")
        found: TokenRecord | None = None
        # Compare against every record, without stopping at a match.
        for record in self._refresh():
            if hmac.compare_digest(presented, record.hash.encode("ascii")) and found is None:
                found = record
        if found is None:
            return None
        return Principal(token_id=found.id, role=found.role, tenant_id=found.tenant_id)
