"""The faust App, and nothing else: agents register themselves on it in `streams.pipeline`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import faust
from faust.types import TransportT

from streams.settings import Settings
from streams.transport import Transport

__all__ = ["AlertrelayApp", "create_app"]


class AlertrelayApp(faust.App):  # type: ignore[misc]
    """faust's App on our Kafka transport (streams/transport.py)."""

    sparse_topics: frozenset[str] = frozenset()
    """Compacted topics: holes in their offsets are normal, not records skipped."""
    fetch_max_wait_ms: int | None = None
    """How long the broker may hold a fetch with nothing to return (faust: 1 500 ms)."""
    extra_flushes: tuple[Callable[[], Awaitable[None]], ...] = ()
    """Other producers whose records must be on the broker before any commit."""

    def _new_transport(self) -> TransportT:
        return Transport(self.conf.broker_consumer, self)

    def _new_producer_transport(self) -> TransportT:
        return Transport(self.conf.broker_producer, self)


def _broker_urls(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip())


def create_app(settings: Settings, partitions: int) -> faust.App:
    """One worker process's App; `partitions` is what the alerts topic really has."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = AlertrelayApp(
        settings.app_id,
        broker=_broker_urls(settings.bootstrap_servers),
        store="memory://",
        datadir=str(settings.data_dir / settings.app_id),
        topic_partitions=partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval,
        # A crashed worker's partitions move to the others after this long.
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=max(1.0, settings.session_timeout / 3),
        producer_acks=-1,
        producer_linger_ms=5,
        stream_wait_empty=False,
        # faust reads no hot path any more (the lanes read alerts and per-alert delivery
        # topics): configs, health, retry tiers. Its defaults (4 096 events buffered per
        # stream, 1 MB fetched per partition) let the five retry tiers' agents, which
        # sleep until their head is due, hold tens of MB of parked records.
        stream_buffer_maxsize=256,
        consumer_max_fetch_size=256 * 1024,
        web_enabled=True,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        autodiscover=False,
        # The config table's changelog uses these; every topic of ours says "raw" itself.
        key_serializer="json",
        value_serializer="json",
    )
    app.sparse_topics = frozenset({settings.topic_integrations})
    app.fetch_max_wait_ms = settings.fetch_max_wait_ms
    return app
