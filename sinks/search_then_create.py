"""The delivery flow of sinks that create one item per alert at a vendor without an
idempotency key (Jira issues, Datadog incidents): search for the item carrying the
alert's dedup token, create it only if there is none.

Per token, deliveries in one process are serialised (`KeyedLocks`) and the items this
process created or found are remembered (`RecentlyCreated`), so a quick re-delivery
neither searches nor depends on the vendor's search having indexed the new item. Each
sink supplies what is the vendor's: the token, the search, the create, its HTTP
endpoint and headers, and its own actionable errors; the flow, the JSON request and the
wording of retryable errors are here once.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import httpx
from pydantic import BaseModel

from schemas.models import Delivery
from sinks.base import PerAlertSink
from sinks.errors import PermanentError, RetryableError
from sinks.http import Redactor, build_client, classify_response, send_json
from sinks.keyed import KeyedLocks, RecentlyCreated

if TYPE_CHECKING:
    from sinks.registry import SinkContext

__all__ = ["Existing", "SearchThenCreateSink"]

S = TypeVar("S", bound=BaseModel)

_MEMO_MAX = 4096


@dataclass(frozen=True)
class Existing:
    """An item the vendor's search found for an alert."""

    item: str
    """What to remember it by (issue key, incident id)."""
    status: int
    """The HTTP status of the search, returned by `send`."""
    shown: str
    """How the log names it, e.g. "Jira issue SEC-1 (status Open)"."""


class SearchThenCreateSink(PerAlertSink[S]):
    """Creates one item per alert unless the vendor's search finds it (see the module)."""

    vendor: ClassVar[str]
    """The vendor's name in messages: "Jira", "Datadog"."""
    _log: ClassVar[logging.Logger]
    """The sink module's logger, which logs the items found."""

    def __init__(self, ctx: SinkContext) -> None:
        self._client = build_client(overrides=ctx.overrides, guard=ctx.guard)
        self._created: RecentlyCreated[tuple[str, str]] = RecentlyCreated(_MEMO_MAX)
        self._locks = KeyedLocks()

    # -- what each vendor supplies -------------------------------------------------------

    @abstractmethod
    def _dedup(self, delivery: Delivery, settings: S) -> tuple[str, str]:
        """(scope, token): the token that marks the alert's item at the vendor, and the
        account or site it is unique in."""

    @abstractmethod
    async def _find(self, settings: S, token: str, redact: Redactor) -> Existing | None:
        """The item carrying `token`, if the vendor's search finds one."""

    @abstractmethod
    async def _create(self, delivery: Delivery, settings: S, redact: Redactor) -> tuple[str, int]:
        """Create the alert's item: (what to remember it by, the HTTP status)."""

    @abstractmethod
    def _base_url(self, settings: S) -> str:
        """Where the API paths start."""

    @abstractmethod
    def _what(self, settings: S) -> str:
        """The destination in messages, e.g. "Jira acme.atlassian.net"."""

    @abstractmethod
    def _headers(self, settings: S) -> dict[str, str]:
        """The request headers, authentication included."""

    def _redactor(self, settings: S) -> Redactor:
        """The redactor of deliveries and checks: the sink's own unless a sink hides
        more (Jira: its Basic credentials)."""
        return self.redactor(settings)

    # -- the shared part -----------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        settings: S,
        redact: Redactor,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
    ) -> httpx.Response:
        return await send_json(
            self._client,
            method,
            self._base_url(settings) + path,
            headers=self._headers(settings),
            redact=redact,
            what=self._what(settings),
            params=params,
            body=body,
        )

    def _classify(
        self, resp: httpx.Response, settings: S, redact: Redactor, action: str
    ) -> RetryableError | str:
        """A non-2xx answer to `action` (e.g. "create the issue"): the RetryableError
        that names the vendor and the action, or, when it is permanent, the generic
        message for the sink's own actionable one to fall back on."""
        status = resp.status_code
        what = self._what(settings)
        try:
            classify_response(resp, redact=redact, what=what)
        except RetryableError as exc:
            wait = f" (retry after {exc.retry_after:.0f} s)" if exc.retry_after is not None else ""
            kind = "rate limit" if status == 429 else "temporarily unavailable"
            return RetryableError(
                redact(
                    f"{status} from {self.vendor} ({kind}) trying to {action}{wait}: {exc.message}"
                ),
                status=status,
                retry_after=exc.retry_after,
            )
        except PermanentError as exc:
            return exc.message
        return f"{what} answered {status}"

    async def send(self, delivery: Delivery, settings: S) -> int | None:
        """Create the alert's item unless the search finds one carrying its token.

        Returns the create's status (201) when created, the search's (200) when it found
        the item, None when this process created or found it moments ago (no request).
        """
        redact = self._redactor(settings)
        scope, token = self._dedup(delivery, settings)
        async with self._locks.hold(f"{scope}\x00{token}"):
            if (scope, token) in self._created:
                return None
            found = await self._find(settings, token, redact)
            if found is not None:
                self._log.info(
                    "alert %s: %s already exists, not creating another",
                    delivery.alert.alert_id,
                    found.shown,
                )
                self._created.remember((scope, token), found.item)
                return found.status
            item, status = await self._create(delivery, settings, redact)
            self._created.remember((scope, token), item)
            return status

    async def aclose(self) -> None:
        await self._client.aclose()
