"""Slack delivery: one Block Kit message per alert through an incoming webhook.

What Slack's incoming webhooks give and do not give (VENDORS.md), and what follows:

- No idempotency: Slack has no dedup key, so a re-delivery (after a lost answer, a crash
  before the offset commit, or a replay) posts the message again. Nothing on our side can
  fix that honestly: we cannot ask Slack whether a message was posted.
- No no-op call: Test connection posts a real, clearly labelled test message.
- App webhooks ignore `channel` overrides, so the configured `#channel` is shown in the
  message's context block instead of being sent as an override.
- About 1 message/s per webhook with short bursts; 429 + Retry-After beyond it. The
  `WebhookPacer` below keeps us under that before Slack has to say so, without waiting.
- Errors are plain-text codes (`channel_not_found`, `invalid_token`, …), each mapped to
  retryable or permanent with an actionable message in `SLACK_ERRORS`.

Alert text is untrusted (page and script URLs, titles and details can come from an
attacker's page), so every piece that goes into `mrkdwn` is escaped (`&`, `<`, `>`): an
alert can neither mention `@channel` nor forge links, and only http(s) URLs become links.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import httpx

from schemas.models import Alert, Delivery, EventType, IntegrationConfig, RiskLevel
from sinks.base import PerAlertSink, test_delivery
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.http import Redactor, build_client, classify_response, send_json
from sinks.slack.config import SlackSettings
from sinks.text import ELLIPSIS, utf16_len

if TYPE_CHECKING:
    from sinks.registry import SinkContext

__all__ = [
    "EVENT_LABELS",
    "RISK_STYLE",
    "SLACK_ERRORS",
    "RiskStyle",
    "SlackError",
    "SlackSink",
    "WebhookPacer",
    "build_message",
]

# -- Slack's limits (Block Kit reference; VENDORS.md) ----------------------------------
MAX_BLOCKS: Final = 50
SECTION_TEXT_MAX: Final = 3000
FIELD_TEXT_MAX: Final = 2000
HEADER_TEXT_MAX: Final = 150
BUTTON_TEXT_MAX: Final = 75
BUTTON_URL_MAX: Final = 3000
TEXT_MAX: Final = 40_000
"""Slack truncates `text` past this; we never send that much."""
FALLBACK_TEXT_MAX: Final = 3000
"""Our own bound for the `text` fallback: it is a notification preview, not the message."""
_URL_LABEL_MAX: Final = 200
_DETAIL_VALUE_MAX: Final = 500


@dataclass(frozen=True)
class RiskStyle:
    emoji: str
    label: str


RISK_STYLE: Final[Mapping[RiskLevel, RiskStyle]] = {
    RiskLevel.CRITICAL: RiskStyle(":rotating_light:", "CRITICAL"),
    RiskLevel.HIGH: RiskStyle(":red_circle:", "HIGH"),
    RiskLevel.MEDIUM: RiskStyle(":large_orange_circle:", "MEDIUM"),
    RiskLevel.LOW: RiskStyle(":large_blue_circle:", "LOW"),
}
"""Risk level → emoji and label, shown first in the header and the fallback text so the
risk is what a reader sees before anything else (Slack has no severity field)."""

EVENT_LABELS: Final[Mapping[EventType, str]] = {
    EventType.CLIENT_SIDE_RISK: "Client-side risk",
    EventType.PCI_SCOPE_CHANGE: "PCI scope change",
}


# -- text helpers ----------------------------------------------------------------------
# Lengths are in UTF-16 code units (`utf16_len`): Slack counts them as JavaScript does.


def _escape_char(ch: str) -> str:
    if ch == "&":
        return "&amp;"
    if ch == "<":
        return "&lt;"
    if ch == ">":
        return "&gt;"
    return ch


def _clip(text: str, limit: int, *, escape: bool = False) -> str:
    """`text` (escaped for mrkdwn when asked) in at most `limit` UTF-16 units, cut with
    "…" at a character boundary, never inside an escape sequence."""
    pieces = [_escape_char(ch) for ch in text] if escape else list(text)
    total = sum(utf16_len(p) for p in pieces)
    if total <= limit:
        return "".join(pieces)
    budget = limit - len(ELLIPSIS)
    out: list[str] = []
    used = 0
    for piece in pieces:
        width = utf16_len(piece)
        if used + width > budget:
            break
        out.append(piece)
        used += width
    return "".join(out) + ELLIPSIS


def _esc(text: str) -> str:
    return _clip(text, len(text) * 5 + 10, escape=True)


def _is_http_url(url: str) -> bool:
    lowered = url.lower()
    return lowered.startswith(("https://", "http://")) and not any(c.isspace() for c in url)


def _link(url: str, limit: int, label: str | None = None) -> str:
    """A mrkdwn link when `url` is http(s) and fits, else the URL as escaped text.

    Other schemes (javascript:, data:) are never linked: alert URLs are untrusted.
    """
    shown = _clip(label or url, _URL_LABEL_MAX, escape=True)
    if _is_http_url(url):
        link = f"<{_esc(url.replace('|', '%7C'))}|{shown}>"
        if utf16_len(link) <= limit:
            return link
    return _clip(url, limit, escape=True)


def _slack_date(alert: Alert) -> str:
    """A Slack date token (shown in the reader's time zone) with an RFC 3339 fallback."""
    epoch = int(alert.detected_at.timestamp())
    iso = alert.detected_at.isoformat().replace("+00:00", "Z")
    return f"<!date^{epoch}^{{date_short_pretty}} {{time_secs}}|{iso}>"


# -- the message -----------------------------------------------------------------------


def _field(title: str, value: str) -> dict[str, str]:
    """A section field; callers bound `value` to FIELD_TEXT_MAX - 20 units."""
    return {"type": "mrkdwn", "text": f"*{title}*\n{value}"}


def _details_text(details: Mapping[str, str]) -> str:
    """`• *key*: value` lines within one section; what does not fit is counted, not cut."""
    head = "*Details*"
    lines: list[str] = []
    used = len(head)
    for index, (key, value) in enumerate(details.items()):
        line = f"• *{_clip(key, 100, escape=True)}*: {_clip(value, _DETAIL_VALUE_MAX, escape=True)}"
        rest = len(details) - index
        reserve = len(f"\n_…and {rest} more in the console_")
        if used + 1 + utf16_len(line) + reserve > SECTION_TEXT_MAX:
            lines.append(f"_…and {rest} more in the console_")
            break
        lines.append(line)
        used += 1 + utf16_len(line)
    return "\n".join([head, *lines])


def build_message(delivery: Delivery, settings: SlackSettings) -> dict[str, Any]:
    """The webhook body: Block Kit `blocks` plus the `text` fallback Slack uses for
    notifications and screen readers (kept even with blocks, as Slack asks)."""
    alert = delivery.alert
    style = RISK_STYLE[alert.risk_level]
    event = EVENT_LABELS[alert.event_type]

    header = f"{style.emoji} {style.label} risk: {' '.join(alert.title.split())}"  # one line
    fields = [
        _field("Risk", f"{style.emoji} {style.label}"),
        _field("Event", event),
    ]
    if alert.domain:
        fields.append(_field("Domain", _clip(alert.domain, 1000, escape=True)))
    fields.append(_field("Detected", _slack_date(alert)))
    if alert.page_url:
        fields.append(_field("Page", _link(alert.page_url, FIELD_TEXT_MAX - 20)))
    if alert.script_url:
        fields.append(_field("Script", _link(alert.script_url, FIELD_TEXT_MAX - 20)))

    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _clip(header, HEADER_TEXT_MAX), "emoji": True},
        },
        {"type": "section", "fields": fields[:10]},
    ]
    if alert.description:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _clip(alert.description, SECTION_TEXT_MAX, escape=True),
                },
            }
        )
    if alert.details:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _details_text(alert.details)}}
        )
    console = alert.console_url
    if console and _is_http_url(console) and len(console) <= BUTTON_URL_MAX:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in console", "emoji": True},
                        "url": console,
                        "action_id": "alertrelay_open_console",
                        "style": "primary",
                    }
                ],
            }
        )
    context = (
        f"Sent by alertrelay for *{_esc(settings.channel)}* · integration "
        f"“{_clip(delivery.integration.name, 200, escape=True)}” · alert "
        f"`{_clip(alert.alert_id, 600, escape=True)}`"
    )
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": _clip(context, SECTION_TEXT_MAX)}],
        }
    )

    fallback = (
        f"{style.emoji} {style.label} risk ({event}): {_clip(alert.title, 2000, escape=True)}"
    )
    if alert.domain:
        fallback += f" on {_clip(alert.domain, 300, escape=True)}"
    if console and _is_http_url(console):
        link = _link(console, 500, "Open in console")
        if link.startswith("<"):
            fallback += f" · {link}"
    # Bounded by construction: ~60 + 2000 + 304 + 505 < FALLBACK_TEXT_MAX < TEXT_MAX.
    return {"text": fallback, "blocks": blocks[:MAX_BLOCKS]}


# -- Slack's error codes ---------------------------------------------------------------


@dataclass(frozen=True)
class SlackError:
    retryable: bool
    advice: str


SLACK_ERRORS: Final[Mapping[str, SlackError]] = {
    "invalid_payload": SlackError(
        False, "the message was malformed; this is an alertrelay bug, please report it"
    ),
    "user_not_found": SlackError(
        False, "the user who created the webhook no longer exists: create a new webhook"
    ),
    "action_prohibited": SlackError(
        False, "a workspace admin restricted posting there: ask them to allow this app"
    ),
    "channel_not_found": SlackError(False, "the webhook's channel was deleted or archived"),
    "channel_is_archived": SlackError(
        False, "the webhook's channel is archived: unarchive it or create a webhook for another"
    ),
    "rollup_error": SlackError(True, "Slack had an internal error; will retry"),
    "no_service": SlackError(
        False, "the webhook was disabled or removed: create a new one and update the URL"
    ),
    "no_service_id": SlackError(False, "the webhook URL is incomplete: copy it again from Slack"),
    "no_team": SlackError(
        False, "the workspace in the webhook URL does not exist: copy the URL again from Slack"
    ),
    "team_disabled": SlackError(False, "the Slack workspace was disabled"),
    "invalid_token": SlackError(
        False, "the webhook's token is invalid or revoked: create a new webhook"
    ),
    "no_text": SlackError(
        False, "the message had no text; this is an alertrelay bug, please report it"
    ),
    "no_active_hooks": SlackError(
        False, "the app's incoming webhooks are turned off: turn Incoming Webhooks on again"
    ),
    "invalid_blocks": SlackError(
        False, "Slack refused the message layout; this is an alertrelay bug, please report it"
    ),
    "posting_to_general_channel_denied": SlackError(
        False, "only admins may post to this channel: pick another channel for the webhook"
    ),
}
"""Slack's plain-text error codes → retryable or not, and what the user should do."""


def _error_code(response: httpx.Response) -> str:
    """The plain-text code Slack answers with ('' when the body is not one)."""
    try:
        text = response.text.strip()
    except httpx.ResponseNotRead:
        return ""
    word = text.split()[0] if text else ""
    return word if word.replace("_", "").isalnum() and word.islower() and len(word) <= 64 else ""


# -- pacing ----------------------------------------------------------------------------


@dataclass
class _Lane:
    tat: float  # GCRA theoretical arrival time
    reserved: dict[str, float] = field(default_factory=dict)  # idempotency key -> slot


class WebhookPacer:
    """About one message per second per webhook, short bursts allowed, decided without
    ever waiting (GCRA: a token bucket of `burst` refilled at `rate`).

    Why reservations: a sink must not sleep, so a send over the rate is refused with the
    seconds until its slot, and the shared retry policy does the waiting. The refused
    delivery keeps that slot (by idempotency key), so when it comes back it goes out; a
    burst of N alerts then leaves at 1/s with one retry each instead of N retries racing
    for the same next slot until they run out of attempts. Slots not claimed within
    `reservation_ttl` seconds are dropped (the delivery gave up or went elsewhere).

    Per process: several workers sharing one webhook pace on their own, and Slack's own
    429 stays the backstop; `hold()` feeds it back so nothing else is sent before it ends.
    """

    def __init__(
        self,
        rate: float = 1.0,
        burst: int = 3,
        *,
        clock: Callable[[], float] = time.monotonic,
        reservation_ttl: float = 900.0,
        max_lanes: int = 10_000,
        max_reservations: int = 10_000,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._ttl = reservation_ttl
        self._max_lanes = max_lanes
        self._max_reservations = max_reservations
        self._lanes: dict[str, _Lane] = {}

    _EARLY: Final = 0.05
    """A retry this close before its slot goes: timers and clocks are not exact."""

    @staticmethod
    def _lane_id(webhook: str) -> str:
        return hashlib.sha256(webhook.encode()).hexdigest()

    def _lane(self, webhook: str, now: float) -> _Lane:
        lane_id = self._lane_id(webhook)
        lane = self._lanes.get(lane_id)
        if lane is None:
            if len(self._lanes) >= self._max_lanes:
                self._prune(now)
            lane = self._lanes[lane_id] = _Lane(tat=now)
        for key in [k for k, slot in lane.reserved.items() if slot < now - self._ttl]:
            del lane.reserved[key]
        return lane

    def _prune(self, now: float) -> None:
        idle = [k for k, lane in self._lanes.items() if lane.tat <= now and not lane.reserved]
        for key in idle:
            del self._lanes[key]

    def acquire(self, webhook: str, key: str | None) -> float | None:
        """None: send now. A number: seconds until this delivery's slot (reserved for
        `key`; without a key nothing is reserved, e.g. for Test connection)."""
        now = self._clock()
        lane = self._lane(webhook, now)
        if key is not None and key in lane.reserved:
            slot = lane.reserved[key]
            if slot - now <= self._EARLY:
                del lane.reserved[key]
                return None
            return slot - now
        slot = max(now, lane.tat - self._tolerance)
        if slot - now <= self._EARLY:
            lane.tat = max(lane.tat, now) + self._interval
            return None
        if key is None:
            return slot - now
        if len(lane.reserved) < self._max_reservations:
            lane.reserved[key] = slot
            lane.tat = max(lane.tat, slot) + self._interval
        return slot - now

    def hold(self, webhook: str, seconds: float, key: str | None = None) -> None:
        """Slack answered 429: send nothing for `seconds`, then one per interval, the
        refused delivery (`key`) first and the reserved ones after it in order."""
        now = self._clock()
        lane = self._lane(webhook, now)
        start = now + max(0.0, seconds)
        order = sorted(lane.reserved, key=lane.reserved.__getitem__)
        if key is not None:
            order = [key, *(k for k in order if k != key)]
        lane.reserved = {k: start + i * self._interval for i, k in enumerate(order)}
        lane.tat = max(lane.tat, start + self._tolerance + len(order) * self._interval)


# -- the sink --------------------------------------------------------------------------


class SlackSink(PerAlertSink[SlackSettings]):
    """Posts each alert as one message; classifies every answer, never waits.

    Not idempotent: Slack offers no dedup key, so a re-delivered alert is posted again.
    """

    type_name = "slack"
    settings_model = SlackSettings

    def __init__(self, ctx: SinkContext, pacer: WebhookPacer | None = None) -> None:
        self._client = build_client(overrides=ctx.overrides, guard=ctx.guard)
        self._pacer = pacer or WebhookPacer()

    async def send(self, delivery: Delivery, settings: SlackSettings) -> int | None:
        url = settings.webhook_url.get_secret_value()
        wait = self._pacer.acquire(url, delivery.idempotency_key)
        if wait is not None:
            raise RetryableError(
                f"held back {wait:.1f}s: Slack allows about 1 message/s per webhook, and this "
                f"webhook ({settings.channel}) has a slot reserved for this alert then",
                retry_after=wait,
            )
        return await self._post(url, build_message(delivery, settings), settings, delivery)

    async def _post(
        self,
        url: str,
        message: dict[str, Any],
        settings: SlackSettings,
        delivery: Delivery | None,
    ) -> int:
        redact = self.redactor(settings)
        what = f"Slack webhook for {settings.channel}"
        response = await send_json(
            self._client, "POST", url, headers={}, redact=redact, what=what, body=message
        )
        try:
            classify_response(response, redact=redact, what=what)
        except DeliveryError as generic:
            if response.status_code == 429:
                seconds = generic.retry_after if generic.retry_after is not None else 1.0
                self._pacer.hold(url, seconds, delivery.idempotency_key if delivery else None)
                raise RetryableError(
                    f"Slack is rate limiting the webhook for {settings.channel} (429): "
                    f"about 1 message/s is allowed; retrying in {seconds:g}s",
                    status=429,
                    retry_after=seconds,
                ) from None
            raise self._vendor_error(response, generic, settings, redact) from None
        return response.status_code

    @staticmethod
    def _vendor_error(
        response: httpx.Response, generic: DeliveryError, settings: SlackSettings, redact: Redactor
    ) -> DeliveryError:
        code = _error_code(response)
        known = SLACK_ERRORS.get(code)
        if known is None:
            return generic  # unknown body: the generic status-based classification
        status = response.status_code
        message = redact(
            f"Slack says {code}: {known.advice} (HTTP {status}, webhook for {settings.channel})"
        )
        if known.retryable:
            return RetryableError(message, status=status, retry_after=generic.retry_after)
        return PermanentError(message, status=status)

    async def check(self, integration: IntegrationConfig, settings: SlackSettings) -> str:
        """Posts a clearly labelled test message: Slack has no call that proves a webhook
        works without posting (VENDORS.md)."""
        url = settings.webhook_url.get_secret_value()
        wait = self._pacer.acquire(url, None)
        if wait is not None:
            raise RetryableError(
                f"the webhook for {settings.channel} is busy (about 1 message/s): "
                f"try again in {wait:.0f}s",
                retry_after=wait,
            )
        probe = test_delivery(integration)
        status = await self._post(url, build_message(probe, settings), settings, None)
        return (
            f"Slack accepted the test message (HTTP {status}); it appears in the channel the "
            f"webhook was created for (configured: {settings.channel})"
        )

    async def aclose(self) -> None:
        await self._client.aclose()
