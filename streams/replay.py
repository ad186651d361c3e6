"""`alertrelay replay`: send the alerts of a time window through delivery again.

The alerts topic is read by record timestamp with a throwaway consumer that only assigns
partitions and never commits, so the worker's consumer group and its offsets never move.
Each alert in the window goes to the replay topic (`<app_id>-replay`) with the location
it was first read from (`x-alertrelay-source`), so the routing lane gives it the same
idempotency key and the same object names as on its first delivery; with
`--integration` it also names the one integration to deliver to (`x-alertrelay-only`).

The Kafka helpers here (time parsing, reading partitions between two offsets, producing
to the replay topic) are shared with `alertrelay dlq` (streams/dlq.py).
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from schemas.models import Alert, EventType
from streams.settings import Settings

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message, Producer

__all__ = [
    "DEDUP_NOTE",
    "EXIT_FAILED",
    "EXIT_INVALID",
    "EXIT_UNREACHABLE",
    "TIME_HELP",
    "AlertFilters",
    "KafkaToolError",
    "PartitionRange",
    "ReplayProducer",
    "ReplaySummary",
    "format_utc",
    "iter_range",
    "parse_time",
    "plan_ranges",
    "reader",
    "replay_command",
    "replay_headers",
    "resolve_range",
    "to_ms",
    "topic_partitions",
]

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_UNREACHABLE = 3

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE = re.compile(r"^-\s*((?:\d+(?:\.\d+)?\s*[smhdw]\s*)+)$", re.IGNORECASE)
_RELATIVE_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
TIME_HELP = "RFC 3339 (2026-11-24T10:00:00Z) or relative to now (-2h, -30m, -1d, -1h30m, now)"


class KafkaToolError(click.ClickException):
    """A failure with a message for the user and the exit code documented in --help."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- times ------------------------------------------------------------------------------


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from RFC 3339 text or a relative time (`-2h`, `-1d`, `now`).

    A time without a zone is refused rather than guessed: a replay window shifted by the
    local UTC offset would re-send the wrong alerts.
    """
    raw = text.strip()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if raw.lower() == "now":
        return now
    match = _RELATIVE.match(raw)
    if match:
        seconds = sum(
            float(number) * _UNITS[unit.lower()]
            for number, unit in _RELATIVE_PART.findall(match.group(1))
        )
        return now - timedelta(seconds=seconds)
    try:
        value = datetime.fromisoformat(raw.replace("z", "Z").replace("t", "T"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use {TIME_HELP}") from None
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add Z (UTC) or an offset such as +02:00")
    return value.astimezone(UTC)


def format_utc(value: datetime | float) -> str:
    """`2026-11-24T10:00:00Z` (milliseconds shown only when there are some)."""
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    value = value.astimezone(UTC)
    text = value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


# -- reading partitions between two offsets ---------------------------------------------


@dataclass(frozen=True)
class PartitionRange:
    """Offsets [start, end) of one partition."""

    partition: int
    start: int
    end: int

    @property
    def count(self) -> int:
        return max(0, self.end - self.start)


def resolve_range(partition: int, start: int, end: int, low: int, high: int) -> PartitionRange:
    """The offsets to read from what `offsets_for_times` answered (-1: no such record).

    No record at or after the start time: nothing to read. No record at or after the end
    time: read up to the high watermark as it is now (later records are not included).
    """
    end = high if end < 0 else min(end, high)
    start = high if start < 0 else max(start, low)
    return PartitionRange(partition, start, max(start, end))


def _quiet_logger(name: str) -> logging.Logger:
    logger = logging.Logger(name)
    logger.addHandler(logging.NullHandler())
    return logger


def reader(bootstrap: str, purpose: str) -> Consumer:
    """A consumer that never joins or commits for any group (assign only)."""
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Only needed by the client; assign() never joins it and nothing is committed.
            "group.id": f"alertrelay-{purpose}-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "allow.auto.create.topics": False,
            "client.id": f"alertrelay-{purpose}",
            "logger": _quiet_logger(f"alertrelay.{purpose}.kafka"),
        }
    )


def _kafka_message(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    return str(arg.str() if hasattr(arg, "str") else arg)


def topic_partitions(
    client: Consumer | Producer, topic: str, bootstrap: str, timeout: float
) -> int:
    """Partition count of an existing topic; exits 3 if the broker does not answer."""
    from confluent_kafka import KafkaException

    try:
        metadata = client.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise KafkaToolError(
            f"cannot reach Kafka at {bootstrap}: {_kafka_message(exc)}. Set --bootstrap or "
            "KAFKA_BOOTSTRAP_SERVERS.",
            EXIT_UNREACHABLE,
        ) from None
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise KafkaToolError(
            f"topic {topic!r} does not exist at {bootstrap}. Start the worker once to create "
            "its topics (`make run`), or check ALERTRELAY_APP_ID / ALERTRELAY_TOPIC_*.",
            EXIT_INVALID,
        )
    return len(info.partitions)


def plan_ranges(
    consumer: Consumer,
    topic: str,
    partitions: int,
    start: datetime | None,
    end: datetime | None,
    timeout: float,
) -> list[PartitionRange]:
    """Per partition, the offsets of the records stamped in [start, end) (None: unbounded)."""
    from confluent_kafka import KafkaException, TopicPartition

    def lookup(when: datetime | None, fallback: int) -> list[int]:
        if when is None:
            return [fallback] * partitions
        wanted = [TopicPartition(topic, p, to_ms(when)) for p in range(partitions)]
        found = consumer.offsets_for_times(wanted, timeout=timeout)
        by_partition = {tp.partition: tp for tp in found}
        offsets = []
        for p in range(partitions):
            tp = by_partition.get(p)
            if tp is None or tp.error is not None:
                raise KafkaToolError(f"cannot look up offsets by time on {topic}[{p}]: {tp}")
            offsets.append(tp.offset)
        return offsets

    try:
        starts = lookup(start, 0)
        ends = lookup(end, -1)
        ranges = []
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=timeout, cached=False
            )
            ranges.append(resolve_range(p, starts[p], ends[p], low, high))
    except KafkaException as exc:
        raise KafkaToolError(
            f"cannot read the offsets of {topic}: {_kafka_message(exc)}", EXIT_UNREACHABLE
        ) from None
    return ranges


def iter_range(
    consumer: Consumer,
    topic: str,
    ranges: Iterable[PartitionRange],
    *,
    stall_timeout: float = 30.0,
) -> Iterator[Message]:
    """Every record of each partition range, then stop (never past a range's end).

    Ends a partition at its end offset, at the end of the partition, or when its position
    passes the end with no record to show for it (transaction markers, compacted gaps).
    """
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    pending = {r.partition: r for r in ranges if r.count > 0}
    if not pending:
        return
    consumer.assign([TopicPartition(topic, r.partition, r.start) for r in pending.values()])

    def finish(partition: int) -> None:
        if pending.pop(partition, None) is not None:
            consumer.pause([TopicPartition(topic, partition)])

    last_progress = time.monotonic()
    try:
        while pending:
            messages = consumer.consume(num_messages=500, timeout=0.5)
            if not messages:
                positions = consumer.position([TopicPartition(topic, p) for p in pending])
                for tp in positions:
                    if tp.offset >= 0 and tp.offset >= pending[tp.partition].end:
                        finish(tp.partition)
                if pending and time.monotonic() - last_progress > stall_timeout:
                    left = ", ".join(f"{p}@{r.start}..{r.end}" for p, r in sorted(pending.items()))
                    raise KafkaToolError(
                        f"no progress reading {topic} for {stall_timeout:g} s (left: {left})",
                        EXIT_UNREACHABLE,
                    )
                continue
            last_progress = time.monotonic()
            for msg in messages:
                err = msg.error()
                partition = msg.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF and partition is not None:
                        finish(partition)  # at the high watermark, which is >= the end
                        continue
                    raise KafkaToolError(f"cannot read {topic}: {err.str()}", EXIT_UNREACHABLE)
                wanted = pending.get(partition) if partition is not None else None
                offset = msg.offset()
                if wanted is None or offset is None:
                    continue
                if offset >= wanted.end:
                    finish(wanted.partition)
                    continue
                yield msg
                if offset >= wanted.end - 1:
                    finish(wanted.partition)
    except KafkaException as exc:
        raise KafkaToolError(
            f"cannot read {topic}: {_kafka_message(exc)}", EXIT_UNREACHABLE
        ) from None
    finally:
        consumer.unassign()


# -- producing to the replay topic ------------------------------------------------------


Header = tuple[str, bytes]


def replay_headers(
    original: Sequence[Header] | None,
    topic: str,
    partition: int,
    offset: int,
    only: str | None = None,
    redrive: bool = False,
) -> list[Header]:
    """Headers of a replayed record: the original ones (e.g. an Avro content-type) minus
    any alertrelay routing headers, then where the alert was first read and, with
    `only`, the one integration to deliver to. `redrive` marks an alert known not to be
    at its destination (it came from the DLQ), so object sinks must not skip it."""
    from streams.agents.router import ONLY_HEADER, REDRIVE_HEADER, SOURCE_HEADER

    ours = {SOURCE_HEADER, ONLY_HEADER, REDRIVE_HEADER}
    headers: list[Header] = [(k, v) for k, v in original or () if k.lower() not in ours]
    headers.append((SOURCE_HEADER, f"{topic}/{partition}/{offset}".encode()))
    if only is not None:
        headers.append((ONLY_HEADER, only.encode()))
    if redrive:
        headers.append((REDRIVE_HEADER, b"1"))
    return headers


class ReplayProducer:
    """Produces alerts to the replay topic, each on the partition of its tenant."""

    def __init__(self, bootstrap: str, topic: str, timeout: float) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.timeout = timeout
        self.bootstrap = bootstrap
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                # A missing replay topic is an error, never created with the broker's
                # default partition count (it must match the alerts topic).
                "allow.auto.create.topics": False,
                "linger.ms": 5,
                "message.timeout.ms": int(timeout * 1000),
                "client.id": "alertrelay-replay",
                "logger": _quiet_logger("alertrelay.replay.producer"),
            }
        )
        self.partitions = topic_partitions(self.producer, topic, bootstrap, timeout)
        self.confirmed = 0
        self.errors: Counter[str] = Counter()

    def _on_delivery(self, err: Any, msg: Message) -> None:
        if err is not None:
            self.errors[str(err.str() if hasattr(err, "str") else err)] += 1
        else:
            self.confirmed += 1

    def send(
        self, tenant_id: str, value: bytes, headers: list[Header], timestamp: int | None = None
    ) -> None:
        from confluent_kafka import KafkaException

        from streams.agents.router import tenant_partition

        wire_headers: list[tuple[str, str | bytes | None]] = list(headers)
        kwargs: dict[str, Any] = {}
        if timestamp is not None and timestamp > 0:
            kwargs["timestamp"] = timestamp
        while True:
            try:
                self.producer.produce(
                    self.topic,
                    key=tenant_id.encode(),
                    value=value,
                    partition=tenant_partition(tenant_id, self.partitions),
                    headers=wire_headers,
                    on_delivery=self._on_delivery,
                    **kwargs,
                )
                break
            except BufferError:  # the local queue is full: let deliveries drain
                self.producer.poll(0.5)
            except KafkaException as exc:
                self.errors[_kafka_message(exc)] += 1
                break
        self.producer.poll(0)

    def flush(self) -> None:
        left = self.producer.flush(self.timeout + 5)
        if left:
            self.errors["not confirmed before the timeout"] += left

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


# -- the replay command -----------------------------------------------------------------


@dataclass(frozen=True)
class AlertFilters:
    tenant: str | None = None
    event_types: frozenset[str] = frozenset()

    def rejects(self, alert: Alert) -> str | None:
        """Why the filters leave this alert out ("tenant", "event type"), or None."""
        if self.tenant is not None and alert.tenant_id != self.tenant:
            return "tenant"
        if self.event_types and alert.event_type.value not in self.event_types:
            return "event type"
        return None


@dataclass
class ReplaySummary:
    in_range: int = 0
    read: int = 0
    replayed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # tenant, event type
    outside_window: int = 0
    undecodable: int = 0
    failed: int = 0
    per_kind: Counter[tuple[str, str]] = field(default_factory=Counter)
    elapsed: float = 0.0

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would replay" if dry_run else "replayed"
        skipped = sum(self.skipped.values())
        detail = ", ".join(f"{why} {n}" for why, n in sorted(self.skipped.items()))
        out = [
            f"  records in the offset range  {self.in_range}",
            f"  read                         {self.read}",
            f"  {verb:<28} {self.replayed}",
            f"  skipped by filter            {skipped}" + (f" ({detail})" if detail else ""),
        ]
        if self.outside_window:
            out.append(
                f"  outside the window           {self.outside_window} "
                "(timestamps out of order in the partition)"
            )
        out.append(
            f"  undecodable                  {self.undecodable}"
            + (
                " (skipped: the worker dead-lettered them, stage decode)"
                if self.undecodable
                else ""
            )
        )
        if not dry_run:
            out.append(f"  failed to produce            {self.failed}")
        out.append(f"  elapsed                      {self.elapsed:.2f} s")
        if self.per_kind:
            width = max(len("TENANT"), *(len(t) for t, _ in self.per_kind))
            out.append(f"  {verb} per tenant and event type:")
            out.append(f"    {'TENANT':<{width}}  {'EVENT TYPE':<16}  ALERTS")
            for (tenant, kind), count in sorted(self.per_kind.items()):
                out.append(f"    {tenant:<{width}}  {kind:<16}  {count}")
        return out


def _headers_of(msg: Message) -> list[Header]:
    raw = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in items]


def _timestamp_of(msg: Message) -> int | None:
    from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

    kind, value = msg.timestamp()
    return None if kind == TIMESTAMP_NOT_AVAILABLE else int(value)


DEDUP_NOTE = (
    "Destinations that deduplicate see no duplicate: PagerDuty (dedup_key), Opsgenie "
    "(alias), Jira (label), webhooks (Idempotency-Key header, if the receiver honours it), "
    "S3 and GCS (the same object names: nothing is written again). Slack and email have "
    "no way to tell and get the alert again; Datadog (a best-effort search for the "
    "incident marker) and Splunk (only what the running worker remembers) may too."
)

_DEDUP_HELP = f"""\b
Duplicates at the destinations:
  A replayed alert keeps the location it was first read from, so it gets the same
  idempotency key and the same object names as on its first delivery.

{DEDUP_NOTE}"""


@click.command(
    "replay",
    epilog=_DEDUP_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("--from", "start_text", required=True, metavar="TIME", help=f"start: {TIME_HELP}")
@click.option(
    "--to",
    "end_text",
    default="now",
    show_default=True,
    metavar="TIME",
    help="end (exclusive), same forms as --from",
)
@click.option("--tenant", help="only the alerts of this tenant")
@click.option(
    "--integration",
    metavar="ID",
    help="deliver to this integration of --tenant only (its filters still apply)",
)
@click.option(
    "--event-type",
    "event_types",
    multiple=True,
    type=click.Choice([e.value for e in EventType]),
    help="only alerts of this event type (repeatable)",
)
@click.option("--dry-run", is_flag=True, help="read and count what would be replayed; send nothing")
@click.option(
    "--bootstrap",
    default=Settings.bootstrap_servers,
    envvar="KAFKA_BOOTSTRAP_SERVERS",
    show_default=True,
    show_envvar=True,
    help="Kafka bootstrap servers",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="seconds to wait for the broker (metadata, offsets, confirmations)",
)
def replay_command(
    start_text: str,
    end_text: str,
    tenant: str | None,
    integration: str | None,
    event_types: tuple[str, ...],
    dry_run: bool,
    bootstrap: str,
    timeout: float,
) -> None:
    """Deliver the alerts of a time window again.

    Reads the alerts topic (ALERTRELAY_TOPIC_ALERTS) between --from (inclusive) and --to
    (exclusive) by record timestamp, and produces every alert that passes the filters to
    the replay topic <ALERTRELAY_APP_ID>-replay. The running worker routes them like new
    alerts: to every matching integration of their tenant as configured now, or with
    --integration to that one only.

    Each partition is read from its first record stamped at or after --from up to its
    first record stamped at or after --to (the broker's time index); records in that
    range stamped outside the window are counted and skipped. The alerts topic is read
    without a consumer group: the worker's committed offsets never move. Records that
    cannot be decoded are counted and skipped (the worker dead-lettered them the first
    time). Prints the resolved UTC window, a progress bar
    on a terminal, and a summary.

    \b
    Examples:
      alertrelay replay --from -2h --dry-run
      alertrelay replay --from 2026-11-24T08:00:00Z --to 2026-11-24T09:30:00Z
      alertrelay replay --from -1d --tenant acme --integration soc-hook \\
                        --event-type pci_scope_change

    \b
    Exit codes:
      0  done
      1  some alerts could not be produced to the replay topic
      2  invalid options, or a topic does not exist
      3  cannot reach the Kafka broker
    """
    now = datetime.now(UTC)
    try:
        start = parse_time(start_text, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--from") from None
    try:
        end = parse_time(end_text, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--to") from None
    if start >= end:
        raise click.UsageError(
            f"--from ({format_utc(start)}) must be earlier than --to ({format_utc(end)})"
        )
    if integration is not None and tenant is None:
        raise click.UsageError("--integration needs --tenant (integration ids are per tenant)")

    settings = Settings.from_env()
    filters = AlertFilters(tenant, frozenset(event_types))
    source_topic = settings.topic_alerts
    target = settings.replay_topic
    click.echo(
        f"Replay {'(dry run) ' if dry_run else ''}from {source_topic!r} to {target!r} "
        f"at {bootstrap}"
    )
    click.echo(f"  from {format_utc(start)}  ({start_text.strip()})")
    click.echo(f"  to   {format_utc(end)}  ({end_text.strip()}, exclusive)")
    if filters.tenant or filters.event_types or integration:
        parts = [f"tenant {tenant}"] if tenant else []
        parts += [f"event type {', '.join(sorted(filters.event_types))}"] if event_types else []
        parts += [f"integration {integration} only"] if integration else []
        click.echo(f"  filters: {'; '.join(parts)}")

    summary = run_replay(
        bootstrap=bootstrap,
        source_topic=source_topic,
        target_topic=target,
        start=start,
        end=end,
        filters=filters,
        integration=integration,
        dry_run=dry_run,
        timeout=timeout,
    )
    click.echo("Summary" + (" (dry run: nothing produced)" if dry_run else "") + ":")
    for line in summary.lines(dry_run):
        click.echo(line)
    if summary.failed:
        raise KafkaToolError(f"{summary.failed} alerts were not produced to {target!r}")


def run_replay(
    *,
    bootstrap: str,
    source_topic: str,
    target_topic: str,
    start: datetime,
    end: datetime,
    filters: AlertFilters,
    integration: str | None,
    dry_run: bool,
    timeout: float,
) -> ReplaySummary:
    from tqdm import tqdm

    from schemas.codec import DecodeError, decode_alert

    started = time.monotonic()
    summary = ReplaySummary()
    consumer = reader(bootstrap, "replay")
    try:
        partitions = topic_partitions(consumer, source_topic, bootstrap, timeout)
        producer = None if dry_run else ReplayProducer(bootstrap, target_topic, timeout)
        ranges = plan_ranges(consumer, source_topic, partitions, start, end, timeout)
        summary.in_range = sum(r.count for r in ranges)
        start_ms, end_ms = to_ms(start), to_ms(end)
        bar = tqdm(
            total=summary.in_range,
            unit="record",
            file=sys.stderr,
            disable=None if summary.in_range else True,
            leave=False,
        )
        try:
            for msg in iter_range(consumer, source_topic, ranges, stall_timeout=timeout):
                bar.update(1)
                summary.read += 1
                stamp = _timestamp_of(msg)
                if stamp is not None and not start_ms <= stamp < end_ms:
                    summary.outside_window += 1
                    continue
                try:
                    alert = decode_alert(msg.value(), _headers_of(msg))
                except DecodeError:
                    summary.undecodable += 1
                    continue
                why = filters.rejects(alert)
                if why is not None:
                    summary.skipped[why] += 1
                    continue
                summary.replayed += 1
                summary.per_kind[(alert.tenant_id, alert.event_type.value)] += 1
                if producer is not None:
                    headers = replay_headers(
                        _headers_of(msg),
                        source_topic,
                        int(msg.partition() or 0),
                        int(msg.offset() or 0),
                        integration,
                    )
                    producer.send(alert.tenant_id, msg.value() or b"", headers, stamp)
        finally:
            bar.close()
        if producer is not None:
            producer.flush()
            summary.failed = producer.failed
            summary.replayed -= producer.failed
            for reason, count in producer.errors.most_common(5):
                click.echo(f"  {count} not produced: {reason}", err=True)
    finally:
        consumer.close()
    summary.elapsed = time.monotonic() - started
    return summary
