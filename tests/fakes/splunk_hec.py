"""A local Splunk HTTP Event Collector that checks requests the way HEC does.

Endpoints (VENDORS.md "Splunk HTTP Event Collector"):

* ``POST /services/collector`` and ``/services/collector/event`` (also ``/1.0``):
  ``Authorization: Splunk <token>`` (missing → 401 code 2, malformed → 401 code 3,
  unknown → 403 code 4, disabled → 403 code 1); ``Content-Encoding: gzip`` decoded
  (anything else that is not identity → 400 code 6); an empty body → 400 code 5 (the
  "token is good" answer a connection test relies on); concatenated JSON objects (no
  array, no commas), each with a non-empty ``event`` (code 12 / 13), a numeric ``time``,
  string ``host``/``source``/``sourcetype``, an ``index`` the token may write to
  (code 7) and flat ``fields`` (code 15). Errors carry ``invalid-event-number``. A
  request is accepted whole or not at all.
* Indexer acknowledgement per token: such a token needs ``X-Splunk-Request-Channel``
  (or ``?channel=``; missing → 400 code 10, not a GUID → 400 code 11), answers carry
  ``ackId`` (counting from 0 per channel), ``POST /services/collector/ack`` with
  ``{"acks": [ids]}`` → ``{"acks": {"<id>": true|false}}``; a token without it answers
  400 code 14 there. ``hold_acks`` keeps acks false until ``release_acks()``.
* ``GET /services/collector/health`` → 200 code 17, or 503 code 18 when ``unhealthy``.
* ``script(...)``: the next event POSTs answer as scripted (503 code 9, 429 with
  ``Retry-After``, any HEC code) and are not accepted; ``None`` passes one through.
"""

from __future__ import annotations

import gzip
import json
import re
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes._server import AnswerQueue, FakeHTTPServer, read_body, reply, wait_for_count

__all__ = ["HecAnswer", "HecRequest", "SplunkHEC", "Token", "busy", "hec_error"]

COLLECTOR_PATHS = {
    "/services/collector",
    "/services/collector/event",
    "/services/collector/event/1.0",
}
HEALTH_PATHS = {"/services/collector/health", "/services/collector/health/1.0"}
ACK_PATH = "/services/collector/ack"
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_AUTH = re.compile(r"Splunk (\S+)")

# code -> (HTTP status, text), as Splunk answers them.
CODES: dict[int, tuple[int, str]] = {
    0: (200, "Success"),
    1: (403, "Token disabled"),
    2: (401, "Token is required"),
    3: (401, "Invalid authorization"),
    4: (403, "Invalid token"),
    5: (400, "No data"),
    6: (400, "Invalid data format"),
    7: (400, "Incorrect index"),
    8: (500, "Internal server error"),
    9: (503, "Server is busy"),
    10: (400, "Data channel is missing"),
    11: (400, "Invalid data channel"),
    12: (400, "Event field is required"),
    13: (400, "Event field cannot be blank"),
    14: (400, "ACK is disabled"),
    15: (400, "Error in handling indexed fields"),
    17: (200, "HEC is healthy"),
    18: (503, "HEC is unhealthy, queues are full"),
}


@dataclass(frozen=True)
class HecAnswer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def hec_error(code: int, *, event_number: int | None = None, **headers: str) -> HecAnswer:
    """Splunk's answer for `code` with its HTTP status and text."""
    status, text = CODES[code]
    body: dict[str, Any] = {"text": text, "code": code}
    if event_number is not None:
        body["invalid-event-number"] = event_number
    return HecAnswer(status, body, dict(headers))


def busy(retry_after: str | None = None) -> HecAnswer:
    """503 code 9, optionally with Retry-After."""
    return hec_error(9, **({"Retry-After": retry_after} if retry_after else {}))


@dataclass
class Token:
    value: str
    enabled: bool = True
    ack: bool = False
    default_index: str = "main"
    allowed_indexes: frozenset[str] | None = None  # None: every index the server has


@dataclass(frozen=True)
class HecRequest:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes  # as received
    body: bytes  # decoded (gunzipped)
    status: int
    code: int | None
    at: float


class _Reject(Exception):
    def __init__(self, answer: HecAnswer) -> None:
        super().__init__(answer.body.get("text"))
        self.answer = answer


class SplunkHEC(FakeHTTPServer[HecRequest]):
    poll_interval = 0.05

    def __init__(
        self,
        tokens: list[Token] | None = None,
        *,
        indexes: set[str] | None = None,
        max_content_length: int = 1024 * 1024,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(host)
        self.tokens = {t.value: t for t in tokens or []}
        self.indexes = set(indexes or {"main"})
        self.max_content_length = max_content_length
        self.unhealthy = False
        self.hold_acks = False
        self.accepted: list[dict[str, Any]] = []  # every accepted envelope, in order
        self._script: AnswerQueue[HecAnswer] = AnswerQueue()
        self._acks: dict[str, dict[int, bool]] = {}  # channel -> ackId -> released

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        raw = read_body(handler)
        answer, decoded = self._dispatch(handler.command, handler.path, handler.headers, raw)
        self._record(
            HecRequest(
                handler.command,
                handler.path,
                dict(handler.headers.items()),
                raw,
                decoded,
                answer.status,
                answer.body.get("code"),
                time.time(),
            )
        )
        data = json.dumps(answer.body).encode()
        reply(
            handler,
            answer.status,
            data,
            answer.headers.items(),
            content_type="application/json; charset=UTF-8",
        )

    # -- scripting and inspection ----------------------------------------------------

    def add_token(self, token: Token) -> Token:
        with self._lock:
            self.tokens[token.value] = token
        return token

    def script(self, *answers: HecAnswer | None) -> None:
        """The next event POSTs get these answers (and are not accepted); None lets one
        through to be handled normally (e.g. "first request fine, second busy")."""
        self._script.extend(answer or HecAnswer(0, {}) for answer in answers)

    def release_acks(self) -> None:
        with self._lock:
            for acks in self._acks.values():
                for ack_id in acks:
                    acks[ack_id] = True

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.accepted)

    def alert_ids(self) -> list[str]:
        return [e["event"]["alert_id"] for e in self.events()]

    def received(self, path: str | None = None) -> list[HecRequest]:
        with self._lock:
            return [r for r in self.requests if path is None or urlsplit(r.path).path == path]

    def wait_for_events(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        return wait_for_count(self.events, count, timeout, "events")

    # -- the collector ---------------------------------------------------------------

    def _dispatch(
        self, method: str, target: str, headers: Any, raw: bytes
    ) -> tuple[HecAnswer, bytes]:
        parts = urlsplit(target)
        path, query = parts.path.rstrip("/") or "/", parse_qs(parts.query)
        try:
            if path in HEALTH_PATHS and method == "GET":
                return (hec_error(18) if self.unhealthy else hec_error(17)), b""
            if path in COLLECTOR_PATHS and method == "POST":
                scripted = self._script.next()
                if scripted is not None and scripted.status:
                    return scripted, raw
                return self._collect(headers, query, raw)
            if path == ACK_PATH and method == "POST":
                return self._ack(headers, query, raw), raw
        except _Reject as reject:
            return reject.answer, raw
        not_found = {"text": "The requested URL was not found on this server.", "code": 404}
        return HecAnswer(404, not_found), raw

    def _token(self, headers: Any) -> Token:
        value = headers.get("Authorization")
        if not value:
            raise _Reject(hec_error(2))
        match = _AUTH.fullmatch(value.strip())
        if match is None:
            raise _Reject(hec_error(3))
        token = self.tokens.get(match.group(1))
        if token is None:
            raise _Reject(hec_error(4))
        if not token.enabled:
            raise _Reject(hec_error(1))
        return token

    def _channel(self, token: Token, headers: Any, query: dict[str, list[str]]) -> str | None:
        channel = headers.get("X-Splunk-Request-Channel") or (query.get("channel") or [None])[0]
        if channel is None:
            if token.ack:
                raise _Reject(hec_error(10))
            return None
        if not _GUID.fullmatch(channel):
            raise _Reject(hec_error(11))
        return str(channel)

    def _decode(self, headers: Any, raw: bytes) -> bytes:
        if len(raw) > self.max_content_length:
            raise _Reject(HecAnswer(413, {"text": "Content-Length exceeds the limit"}))
        encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "identity":
            return raw
        if encoding != "gzip":
            raise _Reject(hec_error(6))
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            raise _Reject(hec_error(6)) from None

    def _collect(
        self, headers: Any, query: dict[str, list[str]], raw: bytes
    ) -> tuple[HecAnswer, bytes]:
        token = self._token(headers)
        channel = self._channel(token, headers, query)
        body = self._decode(headers, raw)
        if not body.strip():
            return hec_error(5), body
        envelopes = self._parse(token, body)
        answer: dict[str, Any] = {"text": "Success", "code": 0}
        with self._lock:
            self.accepted.extend(envelopes)
            if channel is not None and token.ack:
                acks = self._acks.setdefault(channel, {})
                ack_id = len(acks)
                acks[ack_id] = not self.hold_acks
                answer["ackId"] = ack_id
        return HecAnswer(200, answer), body

    def _parse(self, token: Token, body: bytes) -> list[dict[str, Any]]:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(hec_error(6, event_number=0)) from None
        decoder = json.JSONDecoder()
        envelopes: list[dict[str, Any]] = []
        position = 0
        while True:
            while position < len(text) and text[position] in " \t\r\n":
                position += 1
            if position >= len(text):
                return envelopes
            number = len(envelopes)
            try:
                value, position = decoder.raw_decode(text, position)
            except ValueError:
                raise _Reject(hec_error(6, event_number=number)) from None
            if not isinstance(value, dict):
                raise _Reject(hec_error(6, event_number=number))
            self._check_envelope(token, value, number)
            envelopes.append(value)

    def _check_envelope(self, token: Token, value: dict[str, Any], number: int) -> None:
        if "event" not in value:
            raise _Reject(hec_error(12, event_number=number))
        if value["event"] in (None, "", {}, []):
            raise _Reject(hec_error(13, event_number=number))
        stamp = value.get("time")
        if stamp is not None and (isinstance(stamp, bool) or not isinstance(stamp, int | float)):
            raise _Reject(hec_error(6, event_number=number))
        for name in ("host", "source", "sourcetype"):
            if name in value and not isinstance(value[name], str):
                raise _Reject(hec_error(6, event_number=number))
        index = value.get("index", token.default_index)
        allowed = self.indexes if token.allowed_indexes is None else token.allowed_indexes
        if not isinstance(index, str) or index not in self.indexes or index not in allowed:
            raise _Reject(hec_error(7, event_number=number))
        fields = value.get("fields", {})
        if not isinstance(fields, dict) or not all(
            isinstance(v, str | int | float)
            or (isinstance(v, list) and all(isinstance(i, str | int | float) for i in v))
            for v in fields.values()
        ):
            raise _Reject(hec_error(15, event_number=number))

    def _ack(self, headers: Any, query: dict[str, list[str]], raw: bytes) -> HecAnswer:
        token = self._token(headers)
        if not token.ack:
            raise _Reject(hec_error(14))
        channel = self._channel(token, headers, query)
        if channel is None:  # unreachable: an ack token demands a channel
            raise _Reject(hec_error(10))
        try:
            request = json.loads(raw or b"null")
        except ValueError:
            raise _Reject(hec_error(6)) from None
        ids = request.get("acks") if isinstance(request, dict) else None
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids
        ):
            raise _Reject(hec_error(6))
        with self._lock:
            acks = self._acks.get(channel, {})
            return HecAnswer(200, {"acks": {str(i): acks.get(i, False) for i in ids}})
