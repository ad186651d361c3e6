"""One HTTP/1.1 client connection: write a request, read its answer, one at a time.

The answer is parsed by llhttp (httptools, the parser behind uvicorn) from an
asyncio.Protocol, so a request costs one write and, for a small answer, one read
callback: about a third of aiohttp's CPU per request (bench/http_clients.py), which is
what per-alert fan-out is bound by. Pooling, the egress guard and how failures are
reported belong to sinks.http_client; this module only speaks the protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import httptools

__all__ = [
    "MAX_HEAD_BYTES",
    "Answer",
    "AnswerInvalid",
    "AnswerTooLarge",
    "Connection",
    "ConnectionBroke",
    "ExchangeError",
    "ReadTimedOut",
    "WriteTimedOut",
]

MAX_HEAD_BYTES = 64 * 1024
"""Longest status line plus headers accepted: a destination cannot make us buffer more."""


class ExchangeError(Exception):
    """A request/answer exchange that did not complete; the connection is unusable."""


class ConnectionBroke(ExchangeError):
    """Closed or reset before the answer was complete (the cause, if any, is chained)."""


class AnswerInvalid(ExchangeError):
    """The bytes received are not an HTTP/1.x answer."""


class AnswerTooLarge(ExchangeError):
    """The answer's body is over the limit."""


class ReadTimedOut(ExchangeError):
    """Nothing arrived for longer than the read timeout."""


class WriteTimedOut(ExchangeError):
    """The request could not be handed to the network within the write timeout."""


@dataclass(slots=True)
class Answer:
    status: int
    reason: bytes
    version: str  # "1.1"
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool  # the connection may carry another request


class Connection(asyncio.Protocol):
    """One connection's protocol. `exchange` may only run once at a time; after an
    ExchangeError (or a cancelled exchange) the caller must `close` it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        max_body: int,
        on_close: Callable[[Connection], None],
    ) -> None:
        self._loop = loop
        self._max_body = max_body
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._read_timeout = 0.0
        self._last_read = 0.0
        self._head_size = 0
        self._header_bytes = 0
        self._head_done = False
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake_writer()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if exc is None and self._head_done and self._until_eof():
                self._complete(keep_alive=False)  # a body delimited by the close
            else:
                error = ConnectionBroke()
                error.__cause__ = exc
                waiter.set_exception(error)
        self._on_close(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        waiter, parser = self._waiter, self._parser
        if waiter is None or parser is None or waiter.done():
            self.close()  # unasked-for bytes (e.g. a 408 before closing): not reusable
            return
        self._last_read = self._loop.time()
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(AnswerInvalid("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(AnswerInvalid(str(exc) or type(exc).__name__))
        else:
            if not self._head_done:
                self._head_size += len(data)
                if self._head_size > MAX_HEAD_BYTES:
                    self._fail(AnswerInvalid(f"answer head larger than {MAX_HEAD_BYTES} bytes"))

    # -- httptools callbacks --

    def on_message_begin(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():  # a second answer to one request
            self.close()
            return
        self._head_done = False
        self._header_bytes = 0
        self._reason = b""
        self._headers = []
        self._body = []
        self._body_size = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEAD_BYTES:
            self._fail(AnswerInvalid(f"answer head larger than {MAX_HEAD_BYTES} bytes"))
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._fail(AnswerTooLarge(f"answer larger than {self._max_body // (1024 * 1024)} MiB"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200:  # informational (e.g. 103 Early Hints): the answer follows
            self._head_size = 0
            return
        self._complete(keep_alive=parser.should_keep_alive())

    # -- the exchange --

    async def exchange(self, request: bytes, read_timeout: float, write_timeout: float) -> Answer:
        """Send `request` (head and body) and return the answer. Timeouts of 0 mean none."""
        transport = self._transport
        if self.closed or transport is None:
            raise ConnectionBroke()
        loop = self._loop
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._waiter = waiter
        self._parser = httptools.HttpResponseParser(self)
        self._head_size = 0
        self._head_done = False
        try:
            transport.write(request)
            if self._paused:
                await self._drain(write_timeout)
            self._read_timeout = read_timeout
            self._last_read = loop.time()
            if read_timeout and not waiter.done():
                self._timer = loop.call_at(self._last_read + read_timeout, self._check_read)
            return await waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._waiter = None
            self._parser = None
            self._body = []

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping what is not sent yet (a cancelled or failed exchange)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    # -- internals --

    async def _drain(self, within: float) -> None:
        while self._paused and not self.closed:
            drained = self._drained = self._loop.create_future()
            try:
                if within:
                    async with asyncio.timeout(within):
                        await drained
                else:
                    await drained
            except TimeoutError:
                raise WriteTimedOut() from None
        if self.closed and self._waiter is not None and not self._waiter.done():
            raise ConnectionBroke()

    def _wake_writer(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _check_read(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        due = self._last_read + self._read_timeout
        if self._loop.time() >= due:
            self._fail(ReadTimedOut())
        else:
            self._timer = self._loop.call_at(due, self._check_read)

    def _until_eof(self) -> bool:
        """The answer has neither a length nor chunks: its body ends with the connection."""
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                return False
        return True

    def _complete(self, *, keep_alive: bool) -> None:
        waiter, parser = self._waiter, self._parser
        if waiter is None or waiter.done():
            return
        body = self._body
        waiter.set_result(
            Answer(
                status=parser.get_status_code() if parser is not None else 0,
                reason=self._reason,
                version=parser.get_http_version() if parser is not None else "1.1",
                headers=self._headers,
                body=body[0] if len(body) == 1 else b"".join(body),
                keep_alive=keep_alive and not self.closed,
            )
        )

    def _fail(self, error: ExchangeError) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.abort()
