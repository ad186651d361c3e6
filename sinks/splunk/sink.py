"""Splunk HTTP Event Collector sink: a batch becomes concatenated JSON event envelopes.

Wire format (VENDORS.md): one envelope per alert, ``{"time", "host", "source",
"sourcetype", "index"?, "event", "fields"}``, envelopes concatenated (newline-separated,
no array, no commas), split into several requests past ``MAX_REQUEST_BYTES``.

No duplicates where it can be helped. HEC has no idempotency key, so the sink remembers
which alerts (integration, destination, source partition and offset) Splunk accepted,
bounded to ``ACCEPTED_MEMORY`` entries. A batch retried after its second request failed
sends only what the first did not carry, and the same batch delivered again by this
process sends nothing. After a restart that memory is gone: at-least-once, so search
with ``| dedup alert_id`` where an exact count matters.

Indexer acknowledgement (``use_ack``) without waiting inside the sink: requests carry
``X-Splunk-Request-Channel``, each answer's ``ackId`` is remembered, and one ack query
follows the sends. What is not confirmed yet raises ``RetryableError`` (retry_after
``ACK_RETRY_AFTER``), so the shared retry policy does the waiting; the next attempt
queries those ackIds again instead of re-sending. Only an ackId still unconfirmed
``ACK_GIVE_UP_AFTER`` seconds after its send is treated as lost and its events sent
again (Splunk cannot tell "lost" from "not yet", so that re-send may duplicate). If the
retry budget ends first, the batch is dead-lettered with a message saying the events
were accepted but their indexing was not confirmed.

Risk mapping: none. Splunk has no severity in HEC; ``risk_level`` travels unchanged as
an indexed field, and its values are already CIM's severity words.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from schemas.models import IntegrationConfig
from sinks.base import Batch, BatchingSink, BatchRecord
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.http import Redactor, build_client, classify_exception, classify_response
from sinks.objectstore import get_codec
from sinks.splunk.config import SplunkSettings

if TYPE_CHECKING:
    from sinks.registry import SinkContext

__all__ = [
    "ACCEPTED_MEMORY",
    "ACK_GIVE_UP_AFTER",
    "ACK_RETRY_AFTER",
    "HEC_CODES",
    "MAX_REQUEST_BYTES",
    "SOURCETYPE",
    "HecCode",
    "SplunkSink",
    "build_requests",
    "envelope",
]

MAX_REQUEST_BYTES = 1_000_000
"""Uncompressed body size per request: under the 1 MB ``max_content_length`` of older
Splunk versions (recent ones allow ~800 MB); a single larger envelope goes alone."""

ACK_RETRY_AFTER = 2.0
"""Seconds the retry policy should wait before asking about unconfirmed ackIds again."""

ACK_GIVE_UP_AFTER = 300.0
"""An ackId unconfirmed this long after its send counts as lost: its events are re-sent."""

ACCEPTED_MEMORY = 100_000
"""Accepted alerts remembered per sink to skip on a retry or re-delivery (oldest forgotten)."""

HOST = "alertrelay"
SOURCE = "alertrelay"
SOURCETYPE = "alertrelay:alert"


@dataclass(frozen=True)
class HecCode:
    """One HEC status code: Splunk's text, whether a retry can help, what to do."""

    text: str
    retryable: bool
    hint: str


_BAD_TOKEN = "check api_token (it may have been deleted, or belong to another Splunk stack)"
_DISABLED = (
    "enable the token in Splunk (Settings > Data inputs > HTTP Event Collector) "
    "or configure another one"
)
_OUR_BUG = "alertrelay sent a request Splunk cannot read; please report this"

HEC_CODES: dict[int, HecCode] = {
    1: HecCode("Token disabled", False, _DISABLED),
    2: HecCode("Token is required", False, "no token reached Splunk: check api_token"),
    3: HecCode(
        "Invalid authorization",
        False,
        "Splunk refused the Authorization header: api_token must be an HEC token",
    ),
    4: HecCode("Invalid token", False, f"Splunk does not know this token: {_BAD_TOKEN}"),
    5: HecCode("No data", False, _OUR_BUG),
    6: HecCode("Invalid data format", False, f"{_OUR_BUG} (or a proxy altered the request body)"),
    7: HecCode("Incorrect index", False, "{index_hint}"),
    8: HecCode("Internal server error", True, "Splunk had an internal error; will retry"),
    9: HecCode("Server is busy", True, "Splunk's indexing queues are full; will retry"),
    10: HecCode(
        "Data channel is missing",
        False,
        "this token has indexer acknowledgement enabled: turn use_ack on, or turn "
        "acknowledgement off for the token",
    ),
    11: HecCode("Invalid data channel", False, "Splunk refused the request channel id"),
    12: HecCode("Event field is required", False, _OUR_BUG),
    13: HecCode("Event field cannot be blank", False, _OUR_BUG),
    14: HecCode(
        "ACK is disabled",
        False,
        "indexer acknowledgement is disabled for this token: turn use_ack off, or enable "
        "acknowledgement on the token",
    ),
    15: HecCode(
        "Error in handling indexed fields",
        False,
        "Splunk refused the indexed fields (tenant_id, integration_id, event_type, risk_level)",
    ),
    16: HecCode(
        "Query string authorization is not enabled",
        False,
        "alertrelay sends the token as a header; a proxy may have rewritten the request",
    ),
    18: HecCode("HEC is unhealthy, queues are full", True, "will retry"),
    19: HecCode("HEC is unhealthy, ack service unavailable", True, "will retry"),
    20: HecCode("HEC is unhealthy, queues are full, ack service unavailable", True, "will retry"),
    21: HecCode("Invalid token", False, f"Splunk does not know this token: {_BAD_TOKEN}"),
    22: HecCode("Token disabled", False, _DISABLED),
    23: HecCode("Server is shutting down", True, "will retry"),
    26: HecCode(
        "HEC queue is at capacity and cannot process any more requests", True, "will retry"
    ),
    27: HecCode(
        "HEC ACK channel is at capacity and cannot process any more requests",
        True,
        "will retry",
    ),
}
"""Splunk's documented HEC answers (code → text, retry?, hint). Codes 0, 17, 24 and 25
are successes; a code not listed falls back to the HTTP status (429/5xx retryable)."""


def envelope(record: BatchRecord, integration_id: str, index: str | None) -> dict[str, Any]:
    """One HEC event: the alert as ``event`` (its stored JSON line, as is), its routing
    facts as indexed ``fields``."""
    alert = record.alert()
    body: dict[str, Any] = {
        "time": round(alert.detected_at.timestamp(), 3),
        "host": HOST,
        "source": SOURCE,
        "sourcetype": SOURCETYPE,
    }
    if index:
        body["index"] = index
    body["event"] = orjson.Fragment(record.line)
    body["fields"] = {
        "tenant_id": alert.tenant_id,
        "integration_id": integration_id,
        "event_type": alert.event_type.value,
        "risk_level": alert.risk_level.value,
    }
    return body


def build_requests(
    records: list[BatchRecord],
    integration_id: str,
    index: str | None,
    limit: int = MAX_REQUEST_BYTES,
) -> list[tuple[list[BatchRecord], bytes]]:
    """Records grouped into request bodies of at most `limit` bytes (uncompressed), in
    order; an envelope larger than `limit` on its own travels alone."""
    out: list[tuple[list[BatchRecord], bytes]] = []
    group: list[BatchRecord] = []
    parts: list[bytes] = []
    size = 0
    for record in records:
        encoded = orjson.dumps(envelope(record, integration_id, index)) + b"\n"
        if parts and size + len(encoded) > limit:
            out.append((group, b"".join(parts)))
            group, parts, size = [], [], 0
        group.append(record)
        parts.append(encoded)
        size += len(encoded)
    if parts:
        out.append((group, b"".join(parts)))
    return out


@dataclass
class _InFlight:
    """A request HEC accepted under an ackId that is not confirmed yet."""

    ack_id: int
    channel: str
    sent_at: float
    offsets: frozenset[int]


Place = tuple[str, str, int]  # destination, source topic, source partition


class SplunkSink(BatchingSink[SplunkSettings]):
    type_name = "splunk"
    settings_model = SplunkSettings
    max_request_bytes: int = MAX_REQUEST_BYTES

    def __init__(self, ctx: SinkContext) -> None:
        self.limits = ctx.batch_limits
        self._client = build_client(overrides=ctx.overrides, guard=ctx.guard)
        self._accepted: OrderedDict[tuple[str, str, int, int], None] = OrderedDict()
        self._inflight: dict[Place, list[_InFlight]] = {}
        self._channels: dict[str, str] = {}

    # -- delivery ------------------------------------------------------------------

    async def write(self, batch: Batch, settings: SplunkSettings) -> int | None:
        redact = self.redactor(settings)
        place: Place = (_destination(batch.integration, settings), batch.topic, batch.partition)
        pending = self._unaccepted(place, batch.records)
        if not pending:
            return 200
        waiting: set[int] = set()
        if settings.use_ack and self._inflight.get(place):
            waiting = await self._settle(place, pending, settings, redact)
            pending = self._unaccepted(place, pending)
        status = 200
        awaiting_acks = False
        sends = [r for r in pending if r.source_offset not in waiting]
        requests = build_requests(
            sends, batch.integration.integration_id, settings.index, self.max_request_bytes
        )
        for number, (group, body) in enumerate(requests, start=1):
            what = f"Splunk HEC {_origin(settings)} (request {number} of {len(requests)})"
            channel = self._channel(settings) if settings.use_ack else None
            answer, status = await self._post(settings, body, channel, redact, what)
            ack_id = answer.get("ackId")
            offsets = frozenset(r.source_offset for r in group)
            if channel is not None and isinstance(ack_id, int):
                self._forget_stale_acks(keep=place)
                entry = _InFlight(ack_id, channel, time.monotonic(), offsets)
                self._inflight.setdefault(place, []).append(entry)
                awaiting_acks = True
            else:
                self._remember(place, offsets)
        if awaiting_acks:
            # One query for the old and the new ackIds: the fast path of a quick indexer.
            await self._settle(place, self._unaccepted(place, pending), settings, redact)
        if settings.use_ack:
            # Delivered means every event confirmed; anything else is asked about (or,
            # when presumed lost, sent again) on the next attempt.
            missing = self._unaccepted(place, batch.records)
            if missing:
                raise RetryableError(
                    f"Splunk HEC {_origin(settings)} has not confirmed indexing {len(missing)} "
                    f"of {len(batch.records)} events yet (indexer acknowledgement); asking "
                    "again on the next attempt, without re-sending what it accepted",
                    status=status,
                    retry_after=ACK_RETRY_AFTER,
                )
        return status

    def _forget_stale_acks(self, keep: Place) -> None:
        """Drop ackIds past ACK_GIVE_UP_AFTER elsewhere: a batch dead-lettered while
        waiting never asks about its ackIds again, so nothing else would remove them.
        `keep` (the batch being written) is left to `_settle`, which decides on re-sends."""
        now = time.monotonic()
        for place in list(self._inflight):
            if place == keep:
                continue
            fresh = [e for e in self._inflight[place] if now - e.sent_at < ACK_GIVE_UP_AFTER]
            if fresh:
                self._inflight[place] = fresh
            else:
                del self._inflight[place]

    def _unaccepted(self, place: Place, records: list[BatchRecord]) -> list[BatchRecord]:
        dest, topic, partition = place
        return [
            r for r in records if (dest, topic, partition, r.source_offset) not in self._accepted
        ]

    def _remember(self, place: Place, offsets: frozenset[int]) -> None:
        dest, topic, partition = place
        for offset in sorted(offsets):
            self._accepted[(dest, topic, partition, offset)] = None
        while len(self._accepted) > ACCEPTED_MEMORY:
            self._accepted.popitem(last=False)

    async def _settle(
        self,
        place: Place,
        records: list[BatchRecord],
        settings: SplunkSettings,
        redact: Redactor,
    ) -> set[int]:
        """Ask about the ackIds covering `records`; the offsets still unconfirmed."""
        wanted = {r.source_offset for r in records}
        entries = [e for e in self._inflight.get(place, []) if e.offsets & wanted]
        if not entries:
            return set()
        confirmed: set[tuple[str, int]] = set()
        for channel in sorted({e.channel for e in entries}):
            ids = sorted({e.ack_id for e in entries if e.channel == channel})
            acked = await self._query_acks(settings, channel, ids, redact)
            confirmed.update((channel, ack_id) for ack_id in acked)
        asked = {id(e) for e in entries}
        waiting: set[int] = set()
        now = time.monotonic()
        kept = []
        for entry in self._inflight.get(place, []):
            if id(entry) not in asked:
                kept.append(entry)
            elif (entry.channel, entry.ack_id) in confirmed:
                self._remember(place, entry.offsets)
            elif now - entry.sent_at < ACK_GIVE_UP_AFTER:
                kept.append(entry)
                waiting |= entry.offsets & wanted
            # else: unconfirmed for too long, presumed lost: its events are sent again
        if kept:
            self._inflight[place] = kept
        else:
            self._inflight.pop(place, None)
        return waiting

    async def _query_acks(
        self, settings: SplunkSettings, channel: str, ids: list[int], redact: Redactor
    ) -> set[int]:
        what = f"Splunk HEC {_origin(settings)} acknowledgement query"
        body = orjson.dumps({"acks": ids})
        url = f"{_origin(settings)}/services/collector/ack"
        answer, _ = await self._post(settings, body, channel, redact, what, url=url, gzip=False)
        acks = answer.get("acks")
        if not isinstance(acks, dict):
            raise RetryableError(f"{what}: answer without an 'acks' object")
        return {i for i in ids if acks.get(str(i)) is True}

    # -- HTTP ----------------------------------------------------------------------

    def _channel(self, settings: SplunkSettings) -> str:
        """One channel per (stack, token) for this process: ackIds are per channel."""
        token = settings.api_token.get_secret_value()
        key = settings.webhook_url + "\x00" + hashlib.sha256(token.encode()).hexdigest()
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = str(uuid.uuid4())
        return channel

    def _headers(self, settings: SplunkSettings, channel: str | None) -> dict[str, str]:
        headers = {
            "Authorization": f"Splunk {settings.api_token.get_secret_value()}",
            "Content-Type": "application/json",
        }
        if channel is not None:
            headers["X-Splunk-Request-Channel"] = channel
        return headers

    async def _post(
        self,
        settings: SplunkSettings,
        body: bytes,
        channel: str | None,
        redact: Redactor,
        what: str,
        *,
        url: str | None = None,
        gzip: bool = True,
    ) -> tuple[dict[str, Any], int]:
        """POST and return HEC's JSON answer and status, or raise the classified error.
        Event bodies follow the `compression` setting; ack queries go plain."""
        headers = self._headers(settings, channel)
        if gzip and settings.compression == "gzip" and body:
            codec = get_codec("gzip")
            body = await asyncio.to_thread(codec.compress, body)
            headers["Content-Encoding"] = "gzip"
        try:
            response = await self._client.post(
                url or settings.webhook_url, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            raise classify_exception(exc, redact=redact, what=what) from None
        return _answer(response, settings, redact, what), response.status_code

    # -- test connection -----------------------------------------------------------

    async def check(self, integration: IntegrationConfig, settings: SplunkSettings) -> str:
        """HEC health (no token needed), then an empty POST with the token: code 5
        ("No data") is Splunk's way of saying the token is good; with use_ack, an ack
        query proves acknowledgement is enabled for the token."""
        redact = self.redactor(settings)
        origin = _origin(settings)
        what = f"Splunk HEC health check at {origin}"
        try:
            response = await self._client.get(f"{origin}/services/collector/health")
        except httpx.HTTPError as exc:
            raise classify_exception(exc, redact=redact, what=what) from None
        health = _answer(response, settings, redact, what)
        if health.get("code") != 17:
            raise PermanentError(
                f"{what}: unexpected answer {response.status_code}: is HEC enabled at this URL?",
                status=response.status_code,
            )

        channel = self._channel(settings) if settings.use_ack else None
        what = f"Splunk HEC token check at {origin}"
        try:
            response = await self._client.post(
                settings.webhook_url, content=b"", headers=self._headers(settings, channel)
            )
        except httpx.HTTPError as exc:
            raise classify_exception(exc, redact=redact, what=what) from None
        code = _code(response)
        if code != 5:
            _answer(response, settings, redact, what)  # raises for every HEC error code
            raise PermanentError(
                f"{what}: expected Splunk's 'No data' answer (code 5) to an empty request, "
                f"got HTTP {response.status_code}: is this a Splunk HEC endpoint?",
                status=response.status_code,
            )
        notes = ["HEC is healthy", "the token is accepted"]
        if channel is not None:
            await self._query_acks(settings, channel, [0], redact)
            notes.append("indexer acknowledgement is enabled")
        index = f"index {settings.index!r}" if settings.index else "the token's default index"
        notes.append(f"events go to {index} (checked by Splunk at the first delivery)")
        return f"Splunk HEC {origin}: " + "; ".join(notes)

    async def aclose(self) -> None:
        await self._client.aclose()


def _destination(integration: IntegrationConfig, settings: SplunkSettings) -> str:
    """What 'already accepted' is relative to: the integration and where events land."""
    return "\x00".join([integration.key, settings.webhook_url, settings.index or ""])


def _origin(settings: SplunkSettings) -> str:
    url = httpx.URL(settings.webhook_url)
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"


def _code(response: httpx.Response) -> int | None:
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) else None


def _index_hint(settings: SplunkSettings) -> str:
    if settings.index:
        return (
            f"the index {settings.index!r} does not exist or the token may not write to it: "
            "create the index, or add it to the token's allowed indexes"
        )
    return (
        "the token's default index does not exist or is not writable: set index, or fix "
        "the token's default index in Splunk"
    )


def _answer(
    response: httpx.Response, settings: SplunkSettings, redact: Redactor, what: str
) -> dict[str, Any]:
    """HEC's JSON answer of a success, or the classified error for anything else."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    body = body if isinstance(body, dict) else {}
    code = body.get("code")
    if 200 <= status < 300:
        if not body and status != 204:
            # A 2xx that is not HEC's JSON: some proxy or login page, not the collector.
            raise PermanentError(
                f"{what} answered {status} without HEC's JSON: is this the collector URL?",
                status=status,
            )
        return body
    generic: DeliveryError | None = None
    try:
        classify_response(response, redact=redact, what=what)
    except DeliveryError as exc:
        generic = exc
    known = HEC_CODES.get(code) if isinstance(code, int) else None
    if known is None:
        if generic is None:  # cannot happen for a non-2xx status
            generic = PermanentError(f"{what} answered {status}", status=status)
        raise generic
    text = body.get("text") if isinstance(body.get("text"), str) else known.text
    hint = _index_hint(settings) if code == 7 else known.hint
    where = body.get("invalid-event-number")
    at = f" (event {where} of the request)" if isinstance(where, int) else ""
    message = redact(f'{what} answered {status} code {code} "{text}"{at}: {hint}')
    retry_after = generic.retry_after if generic is not None else None
    if known.retryable:
        raise RetryableError(message, status=status, retry_after=retry_after)
    raise PermanentError(message, status=status)
