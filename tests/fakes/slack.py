"""A local Slack incoming-webhook endpoint that checks requests as VENDORS.md states.

Real HTTP on 127.0.0.1 (`ThreadingHTTPServer` in a thread). Point a sink at it with
`ALERTRELAY_HOST_OVERRIDES=<fake.override>` while the configured URL stays
`https://hooks.slack.com/services/T…/B…/…`.

What it enforces (and answers exactly like Slack: plain-text codes, not JSON):
- `POST /services/T…/B…/<token>`; unknown workspace `404 no_team`, unknown webhook
  `404 no_service`, wrong token `403 invalid_token`.
- `Content-Type: application/json`, a JSON object, else `400 invalid_payload`.
- `text` present (VENDORS.md: keep the fallback even with blocks), else `400 no_text`.
- Block Kit limits, else `400 invalid_blocks`: ≤ 50 blocks of known types; header
  plain_text ≤ 150; section text ≤ 3000, ≤ 10 fields of ≤ 2000; actions ≤ 25 elements,
  button text plain_text ≤ 75 and url ≤ 3000; context ≤ 10 elements. Lengths are counted
  in UTF-16 units, as Slack (JavaScript) counts them.
- `text` longer than 40 000 is accepted and stored truncated, as Slack does.
- App-webhook semantics: `channel`/`username`/`icon_*` overrides are ignored (recorded).
- Per-webhook state: "ok" or any Slack error code (`channel_not_found`, …) with Slack's status.
- Optional per-webhook rate limit (token bucket): `429 rate_limited` with `Retry-After`.
- `script()` queues raw answers (e.g. 429 with Retry-After, 500 rollup_error) for the next
  requests, before any checking.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakes._server import Received, ScriptedFake, wait_for_count

__all__ = ["ERROR_STATUS", "Answer", "FakeSlack", "Message", "Received"]

ERROR_STATUS: dict[str, int] = {
    "invalid_payload": 400,
    "user_not_found": 400,
    "no_text": 400,
    "invalid_blocks": 400,
    "action_prohibited": 403,
    "team_disabled": 403,
    "invalid_token": 403,
    "no_active_hooks": 403,
    "channel_not_found": 404,
    "no_service": 404,
    "no_team": 404,
    "channel_is_archived": 410,
    "rollup_error": 500,
}
"""Slack's plain-text error codes and the HTTP status each comes with (VENDORS.md lists the
first six; the others as Slack's webhook docs show them)."""

HOST = "hooks.slack.com"
TEXT_TRUNCATE = 40_000


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """An accepted post, as the channel would show it."""

    path: str
    text: str
    blocks: list[dict[str, Any]]
    ignored_overrides: dict[str, Any]
    at: float


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class _Invalid(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _text_object(obj: Any, limit: int, *, plain_only: bool = False) -> None:
    if not isinstance(obj, dict) or obj.get("type") not in ("plain_text", "mrkdwn"):
        raise _Invalid("invalid_blocks")
    if plain_only and obj["type"] != "plain_text":
        raise _Invalid("invalid_blocks")
    text = obj.get("text")
    if not isinstance(text, str) or not text or _units(text) > limit:
        raise _Invalid("invalid_blocks")


def _check_blocks(blocks: Any) -> None:
    if not isinstance(blocks, list) or len(blocks) > 50:
        raise _Invalid("invalid_blocks")
    for block in blocks:
        if not isinstance(block, dict):
            raise _Invalid("invalid_blocks")
        kind = block.get("type")
        if kind == "header":
            _text_object(block.get("text"), 150, plain_only=True)
        elif kind == "section":
            if "text" not in block and "fields" not in block:
                raise _Invalid("invalid_blocks")
            if "text" in block:
                _text_object(block["text"], 3000)
            if "fields" in block:
                fields = block["fields"]
                if not isinstance(fields, list) or not 1 <= len(fields) <= 10:
                    raise _Invalid("invalid_blocks")
                for item in fields:
                    _text_object(item, 2000)
        elif kind == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
                raise _Invalid("invalid_blocks")
            for element in elements:
                if not isinstance(element, dict) or element.get("type") != "button":
                    raise _Invalid("invalid_blocks")
                _text_object(element.get("text"), 75, plain_only=True)
                url = element.get("url")
                if url is not None and (not isinstance(url, str) or _units(url) > 3000):
                    raise _Invalid("invalid_blocks")
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                raise _Invalid("invalid_blocks")
            for element in elements:
                _text_object(element, 3000)
        elif kind == "divider":
            continue
        else:
            raise _Invalid("invalid_blocks")


@dataclass
class _Bucket:
    tokens: float
    at: float


class FakeSlack(ScriptedFake[Answer]):
    """Slack's incoming webhooks on a local port; see the module docstring."""

    hosts = (HOST,)

    def __init__(self, rate_limit: tuple[float, int] | None = None) -> None:
        super().__init__()
        self.messages: list[Message] = []
        self._webhooks: dict[tuple[str, str], tuple[str, str]] = {}  # (T, B) -> (token, state)
        self._rate_limit = rate_limit
        self._buckets: dict[str, _Bucket] = {}

    def _encode(self, body: str) -> tuple[bytes, str]:
        return body.encode(), "text/html"

    # -- set-up --------------------------------------------------------------------------

    def add_webhook(
        self,
        team: str = "T00000001",
        hook: str = "B00000001",
        token: str = "abcdefghijklmnopqrstuvwx",
        state: str = "ok",
    ) -> str:
        """Register a webhook; returns its real-form URL (https://hooks.slack.com/...)."""
        with self._lock:
            self._webhooks[(team, hook)] = (token, state)
        return f"https://{HOST}/services/{team}/{hook}/{token}"

    def set_state(self, url: str, state: str) -> None:
        """ "ok" or a Slack error code the webhook answers from now on."""
        team, hook, token = url.rsplit("/", 3)[1:]
        with self._lock:
            self._webhooks[(team, hook)] = (token, state)

    def messages_for(self, url: str) -> list[Message]:
        path = "/" + url.split("/", 3)[3]
        with self._lock:
            return [m for m in self.messages if m.path == path]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Message]:
        return wait_for_count(self._messages, count, timeout, "Slack messages")

    def _messages(self) -> list[Message]:
        with self._lock:
            return list(self.messages)

    # -- Slack's behaviour ---------------------------------------------------------------

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        try:
            return self._post(method, path, headers, body)
        except _Invalid as bad:
            return Answer(ERROR_STATUS.get(bad.code, 400), bad.code)

    def _post(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        parts = path.split("?")[0].split("/")
        if len(parts) != 5 or parts[1] != "services":
            return Answer(404, "no_service")
        _, _, team, hook, token = parts
        if method != "POST":
            return Answer(405, "invalid_method")
        with self._lock:
            known_team = any(t == team for t, _ in self._webhooks)
            entry = self._webhooks.get((team, hook))
        if not known_team:
            raise _Invalid("no_team")
        if entry is None:
            raise _Invalid("no_service")
        if entry[0] != token:
            raise _Invalid("invalid_token")
        if entry[1] != "ok":
            raise _Invalid(entry[1])
        limited = self._rate_limited(path)
        if limited is not None:
            return Answer(429, "rate_limited", {"Retry-After": str(limited)})
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise _Invalid("invalid_payload")
        try:
            message = json.loads(body)
        except ValueError:
            raise _Invalid("invalid_payload") from None
        if not isinstance(message, dict):
            raise _Invalid("invalid_payload")
        text = message.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _Invalid("no_text")
        blocks = message.get("blocks", [])
        _check_blocks(blocks)
        ignored = {
            k: v
            for k, v in message.items()
            if k in ("channel", "username", "icon_emoji", "icon_url")
        }
        with self._lock:
            self.messages.append(
                Message(path, text[:TEXT_TRUNCATE], blocks, ignored, time.monotonic())
            )
        return Answer(200, "ok")

    def _rate_limited(self, path: str) -> int | None:
        """Seconds to wait (Retry-After) when this webhook is over its limit, else None."""
        if self._rate_limit is None:
            return None
        rate, burst = self._rate_limit
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(path, _Bucket(float(burst), now))
            bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            return max(1, math.ceil((1.0 - bucket.tokens) / rate))

    @property
    def rate_limited_count(self) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.status == 429)
