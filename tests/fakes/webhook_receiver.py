"""A local HTTP receiver that records requests and answers from a script.

Used as the destination of webhook tests and the demo: it answers 200 by default, or a
queued sequence of answers per path (e.g. three 503s then 200), so retry behaviour is
tested over a real socket.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes._server import AnswerQueue, FakeHTTPServer, read_body, reply, wait_for_count

__all__ = ["Answer", "Received", "WebhookReceiver"]


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver(FakeHTTPServer[Received]):
    methods = ("POST", "PUT", "PATCH", "GET", "DELETE")

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._script: AnswerQueue[Answer] = AnswerQueue()
        self._default: dict[str, Answer] = {}

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        body = read_body(handler)
        path = handler.path.split("?")[0]
        answer = self._answer_for(path)
        self._record(
            Received(
                handler.command, handler.path, dict(handler.headers.items()), body, time.time()
            )
        )
        if answer.delay:
            time.sleep(answer.delay)
        # the client may have gone away (a killed worker): nothing to answer then
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            reply(handler, answer.status, answer.body, answer.headers.items())

    def script(self, path: str, *answers: Answer, default: Answer | None = None) -> None:
        """Answer the next requests to `path` with `answers`, then with `default`."""
        self._script.replace(path, answers)
        if default is not None:
            with self._lock:
                self._default[path] = default

    def _answer_for(self, path: str) -> Answer:
        scripted = self._script.next(path)
        if scripted is not None:
            return scripted
        with self._lock:
            return self._default.get(path, Answer())

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path.split("?")[0] == path]

    def wait_for(
        self, count: int, path: str | None = None, timeout: float = 60.0
    ) -> list[Received]:
        return wait_for_count(
            lambda: self.received(path), count, timeout, f"requests to {path or '*'}"
        )
