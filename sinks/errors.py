"""How a sink tells the retry policy what happened.

A sink never waits or loops: it raises one of these and the shared retry policy
(`sinks.retry`) decides whether and when to try again.
"""

from __future__ import annotations

__all__ = ["DeliveryError", "PermanentError", "RetryableError"]


class DeliveryError(Exception):
    """A failed delivery attempt; the message must already be free of secrets."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class RetryableError(DeliveryError):
    """Worth trying again (429, 5xx, timeouts, refused connections)."""

    retryable = True


class PermanentError(DeliveryError):
    """Trying again cannot help (bad config, rejected payload, denied access)."""

    retryable = False
