"""How a sink tells the retry policy what happened.

A sink never waits or loops: it raises one of these and the shared retry policy
(`sinks.retry`) decides whether and when to try again.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["DeliveryError", "PermanentError", "RetryableError", "exception_chain"]


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


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it (`__cause__`, else `__context__`), and so on, each once.

    Sinks look through the chain for the underlying failure (a TLS verification or
    certificate error wrapped by httpx or aiosmtplib) to say what went wrong.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
