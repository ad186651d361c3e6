"""API bearer tokens: stored as hashes (0600), authenticated in constant time, picked up
from the file while a store is alive, malformed lines skipped without leaking them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from pathlib import Path

import pytest

from streams.api.tokens import (
    DEFAULT_TOKENS_FILE,
    TOKENS_FILE_ENV,
    Principal,
    TokenStore,
    create_token,
    read_records,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bump_mtime(path: Path) -> None:
    """Make the change visible even on file systems with coarse timestamps."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_create_then_authenticate(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    token, record = create_token(path, role="editor", tenant_id="acme", name="console")
    assert re.fullmatch(r"ar_[A-Za-z0-9_-]{43}", token)
    assert record.role == "editor" and record.tenant_id == "acme" and record.name == "console"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record.created)

    store = TokenStore(path)
    assert store.configured
    principal = store.authenticate(f"Bearer {token}")
    assert principal == Principal(token_id=record.id, role="editor", tenant_id="acme")
    # The scheme is case-insensitive and surrounding spaces do not matter.
    assert store.authenticate(f"  bearer   {token} ") == principal


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "ar_notarealtoken",
    ],
)
def test_missing_or_malformed_header_is_none(tmp_path: Path, header: str | None) -> None:
    path = tmp_path / "tokens.jsonl"
    create_token(path, role="admin", tenant_id="acme")
    assert TokenStore(path).authenticate(header) is None


def test_wrong_token_is_none(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    token, _ = create_token(path, role="admin", tenant_id="acme")
    store = TokenStore(path)
    assert store.authenticate(f"Bearer {token}x") is None
    assert store.authenticate(f"Bearer {token[:-1]}") is None
    # The stored hash itself is not a token.
    stored_hash = read_records(path)[0].hash
    assert store.authenticate(f"Bearer {stored_hash}") is None


def test_several_tokens_each_map_to_their_own_principal(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    admin, admin_rec = create_token(path, role="admin", tenant_id="acme")
    viewer, viewer_rec = create_token(path, role="viewer", tenant_id="globex", name="dash")
    store = TokenStore(path)
    assert store.authenticate(f"Bearer {admin}") == Principal(admin_rec.id, "admin", "acme")
    assert store.authenticate(f"Bearer {viewer}") == Principal(viewer_rec.id, "viewer", "globex")
    assert admin_rec.id != viewer_rec.id
    assert [r.id for r in store.records()] == [admin_rec.id, viewer_rec.id]


def test_file_holds_only_the_hash_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "new-folder" / "tokens.jsonl"
    token, record = create_token(path, role="viewer", tenant_id="acme", name="ci")
    text = path.read_text()
    assert token not in text
    assert token[3:] not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines == [
        {
            "id": record.id,
            "hash": hashlib.sha256(token.encode()).hexdigest(),
            "role": "viewer",
            "tenant_id": "acme",
            "name": "ci",
            "created": record.created,
        }
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_existing_loose_file_is_tightened_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    first, _ = create_token(path, role="admin", tenant_id="acme")
    path.chmod(0o644)
    second, _ = create_token(path, role="viewer", tenant_id="acme")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store = TokenStore(path)
    assert store.authenticate(f"Bearer {first}") is not None
    assert store.authenticate(f"Bearer {second}") is not None


def test_a_half_written_last_line_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    create_token(path, role="admin", tenant_id="acme")
    with path.open("a") as f:
        f.write('{"id": "broken", "hash": "ab')  # a writer died mid-line
    token, _ = create_token(path, role="editor", tenant_id="acme")
    assert TokenStore(path).authenticate(f"Bearer {token}") is not None


def test_token_appended_while_store_is_alive_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    clock = Clock()
    store = TokenStore(path, clock=clock)
    assert not store.configured  # no file yet

    first, _ = create_token(path, role="admin", tenant_id="acme")
    # Checked at most once a second: within the second the old view stands.
    assert store.authenticate(f"Bearer {first}") is None
    clock.now += 1.5
    assert store.authenticate(f"Bearer {first}") is not None

    second, rec = create_token(path, role="viewer", tenant_id="acme")
    bump_mtime(path)
    assert store.authenticate(f"Bearer {second}") is None  # still within the second
    clock.now += 1.5
    assert store.authenticate(f"Bearer {second}") == Principal(rec.id, "viewer", "acme")
    assert store.configured


def test_store_with_the_real_clock_reloads_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    create_token(path, role="admin", tenant_id="acme")
    store = TokenStore(path, reload_interval=0.0)
    assert store.configured
    token, _ = create_token(path, role="editor", tenant_id="acme")
    bump_mtime(path)
    assert store.authenticate(f"Bearer {token}") is not None


def test_deleted_file_means_no_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    token, _ = create_token(path, role="admin", tenant_id="acme")
    store = TokenStore(path, reload_interval=0.0)
    assert store.authenticate(f"Bearer {token}") is not None
    path.unlink()
    assert store.authenticate(f"Bearer {token}") is None
    assert not store.configured


def test_malformed_lines_are_skipped_with_a_warning_that_leaks_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.jsonl"
    token, record = create_token(path, role="editor", tenant_id="acme")
    secret_hash = "f" * 64
    with path.open("a") as f:
        f.write("this is not json\n")
        f.write("\n")  # blank lines are fine
        f.write("[1, 2, 3]\n")
        f.write(json.dumps({"id": "x1", "hash": secret_hash, "role": "root", "tenant_id": "a"}))
        f.write("\n")
        f.write(json.dumps({"id": "x2", "hash": "NOTHEX", "role": "admin", "tenant_id": "a"}))
        f.write("\n")
        f.write(json.dumps({"id": "x3", "hash": secret_hash, "role": "admin", "tenant_id": ""}))
        f.write("\n")
        f.write(json.dumps({"id": "x4", "hash": secret_hash, "role": "admin"}) + "\n")
        f.write(json.dumps({"id": "x5", "hash": secret_hash, "role": "admin", "tenant_id": "a/b"}))
        f.write("\n")
    with caplog.at_level(logging.WARNING, logger="streams.api.tokens"):
        store = TokenStore(path)
        assert store.configured
        assert [r.id for r in store.records()] == [record.id]
        assert store.authenticate(f"Bearer {token}") is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 7, warnings
    assert any("line 2" in w and "invalid JSON" in w for w in warnings)
    joined = "\n".join(warnings)
    assert secret_hash not in joined and record.hash not in joined and token not in joined
    assert "this is not json" not in joined


def test_a_file_of_only_bad_lines_is_not_configured(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    path.write_text("garbage\n{}\n")
    assert not TokenStore(path).configured


@pytest.mark.parametrize("role", ["root", "Admin", "", "owner"])
def test_create_refuses_unknown_roles(tmp_path: Path, role: str) -> None:
    path = tmp_path / "tokens.jsonl"
    with pytest.raises(ValueError, match="role"):
        create_token(path, role=role, tenant_id="acme")
    assert not path.exists()


@pytest.mark.parametrize("tenant", ["", "   ", "acme/other", "/", " acme", "ac\nme"])
def test_create_refuses_bad_tenants(tmp_path: Path, tenant: str) -> None:
    path = tmp_path / "tokens.jsonl"
    with pytest.raises(ValueError, match="tenant_id"):
        create_token(path, role="admin", tenant_id=tenant)
    assert not path.exists()


def test_create_refuses_a_multiline_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name"):
        create_token(tmp_path / "t.jsonl", role="admin", tenant_id="acme", name="a\nb")


def test_tokens_are_unique(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    made = [create_token(path, role="viewer", tenant_id="acme") for _ in range(20)]
    assert len({t for t, _ in made}) == 20
    assert len({r.id for _, r in made}) == 20
    assert len(read_records(path)) == 20


def test_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKENS_FILE_ENV, raising=False)
    assert TokenStore.from_env().path == DEFAULT_TOKENS_FILE
    path = tmp_path / "elsewhere.jsonl"
    token, _ = create_token(path, role="admin", tenant_id="acme")
    monkeypatch.setenv(TOKENS_FILE_ENV, str(path))
    store = TokenStore.from_env()
    assert store.path == path
    assert store.authenticate(f"Bearer {token}") is not None


def test_public_view_has_no_hash(tmp_path: Path) -> None:
    _, record = create_token(tmp_path / "t.jsonl", role="admin", tenant_id="acme", name="n")
    assert "hash" not in record.public()
    assert set(record.public()) == {"id", "role", "tenant_id", "name", "created"}
