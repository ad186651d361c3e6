"""Fixtures several integration modules share: a webhook receiver, the module's own
topics and a worker process on them (all module-scoped).

A module that needs a differently configured worker (extra environment, other fakes)
defines its own `worker` fixture, which takes precedence over this one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.webhook_receiver import WebhookReceiver
from tests.harness import TopicSet, WorkerProcess, free_port


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[str]:
    """moto's S3 server for the module: its endpoint URL. A module that needs a bucket
    overrides this fixture, asking for it by the same name, and creates it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def topics() -> TopicSet:
    return TopicSet()


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str,
    topics: TopicSet,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[WorkerProcess]:
    """A worker on `topics` with the harness's default settings; its log tail is printed
    when the module is done (shown for failures)."""
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    proc = WorkerProcess(kafka_bootstrap, topics, tmp_path_factory.mktemp(f"{name}-worker"))
    proc.start()
    yield proc
    proc.stop()
    print(proc.log_tail(40))
