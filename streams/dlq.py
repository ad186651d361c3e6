"""`alertrelay dlq`: look at the dead-letter topic, and redrive what can be delivered.

`list` reads the DLQ topic from the beginning (or from --since) up to its high
watermarks with a throwaway consumer that never commits. `redrive` sends the alert of
each `deliver`-stage record to the replay topic with its original location and the one
integration it failed for, so the worker delivers it through the normal path with the
same idempotency key. Nothing is ever removed from the DLQ: Kafka topics are append-only.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from schemas.models import DeadLetter
from streams.replay import (
    DEDUP_NOTE,
    EXIT_FAILED,
    TIME_HELP,
    KafkaToolError,
    ReplayProducer,
    format_utc,
    iter_range,
    parse_time,
    plan_ranges,
    reader,
    replay_headers,
    topic_partitions,
)
from streams.settings import Settings

__all__ = [
    "DlqEntry",
    "DlqFilters",
    "dlq_group",
    "not_redrivable_reason",
    "plan_redrive",
    "read_dlq",
    "select",
]

STAGES = ("decode", "config", "route", "deliver")
REASON_WIDTH = 60


@dataclass(frozen=True)
class DlqEntry:
    """One DLQ record and where it sits on the DLQ topic."""

    record: DeadLetter
    partition: int
    offset: int


@dataclass(frozen=True)
class DlqFilters:
    tenant: str | None = None
    integration: str | None = None
    reason: str | None = None
    stage: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    alert_id: str | None = None

    def accepts(self, record: DeadLetter) -> bool:
        if self.tenant is not None and record.tenant_id != self.tenant:
            return False
        if self.integration is not None and record.integration_id != self.integration:
            return False
        if self.alert_id is not None and record.alert_id != self.alert_id:
            return False
        if self.stage is not None and record.stage != self.stage:
            return False
        if self.reason is not None and self.reason.casefold() not in record.reason.casefold():
            return False
        if self.since is not None and record.at < self.since.timestamp():
            return False
        return not (self.until is not None and record.at >= self.until.timestamp())


def select(entries: Iterable[DlqEntry], filters: DlqFilters, limit: int | None) -> list[DlqEntry]:
    """The matching records, oldest first; with a limit, the newest `limit` of them."""
    chosen = sorted(
        (e for e in entries if filters.accepts(e.record)),
        key=lambda e: (e.record.at, e.partition, e.offset),
    )
    return chosen[-limit:] if limit is not None else chosen


def not_redrivable_reason(record: DeadLetter) -> str | None:
    """Why a DLQ record cannot be redriven, or None if it can."""
    if record.stage == "decode":
        return "the payload itself is bad (not a valid alert): fix the producer and send it again"
    if record.stage == "config":
        return "the integration config was refused: fix it and save it again; no alert to send"
    if record.stage == "route":
        return "a routing record names no delivery: replay its time window (`alertrelay replay`)"
    if record.alert is None:
        return "the record carries no alert (the delivery record itself was unreadable)"
    if not record.integration_id or not record.tenant_id:
        return "the record names no integration or tenant"
    return None


@dataclass(frozen=True)
class RedrivePlan:
    redrive: list[DlqEntry]
    refused: list[tuple[DlqEntry, str]]
    duplicates: int


def plan_redrive(entries: Sequence[DlqEntry]) -> RedrivePlan:
    """Split records into those to redrive (once per alert, integration and source
    location, the newest record winning) and those that cannot be redriven."""
    chosen: dict[tuple[str, ...], DlqEntry] = {}
    refused: list[tuple[DlqEntry, str]] = []
    duplicates = 0
    for entry in entries:
        r = entry.record
        why = not_redrivable_reason(r)
        if why is not None:
            refused.append((entry, why))
            continue
        alert_id = r.alert.alert_id if r.alert is not None else ""
        key = (
            str(r.tenant_id),
            str(r.integration_id),
            alert_id,
            r.source_topic,
            str(r.source_partition),
            str(r.source_offset),
        )
        if key in chosen:
            duplicates += 1
        chosen[key] = entry
    return RedrivePlan(list(chosen.values()), refused, duplicates)


def read_dlq(
    bootstrap: str, topic: str, since: datetime | None, timeout: float
) -> tuple[list[DlqEntry], int]:
    """Every DLQ record up to the current high watermarks, and how many were unreadable.

    With `since`, reading starts at the record offsets stamped a minute before it (a
    record's Kafka timestamp is never earlier than its `at`), saving a full scan.
    """
    consumer = reader(bootstrap, "dlq")
    entries: list[DlqEntry] = []
    unreadable = 0
    try:
        partitions = topic_partitions(consumer, topic, bootstrap, timeout)
        start = since - timedelta(minutes=1) if since is not None else None
        ranges = plan_ranges(consumer, topic, partitions, start, None, timeout)
        for msg in iter_range(consumer, topic, ranges, stall_timeout=timeout):
            try:
                record = DeadLetter.model_validate_json(msg.value() or b"")
            except ValidationError:
                unreadable += 1
                continue
            entries.append(DlqEntry(record, int(msg.partition() or 0), int(msg.offset() or 0)))
    finally:
        consumer.close()
    return entries, unreadable


# -- output -----------------------------------------------------------------------------


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def truncate(text: str, width: int = REASON_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def list_rows(entries: Sequence[DlqEntry]) -> list[list[str]]:
    return [
        [
            format_utc(float(int(e.record.at))),
            e.record.stage,
            _cell(e.record.tenant_id),
            _cell(e.record.integration_id),
            _cell(e.record.alert_id),
            str(e.record.attempts),
            truncate(e.record.reason),
        ]
        for e in entries
    ]


LIST_HEADERS = ("TIME", "STAGE", "TENANT", "INTEGRATION", "ALERT", "ATTEMPTS", "REASON")


def entry_json(entry: DlqEntry) -> dict[str, Any]:
    data = entry.record.model_dump(mode="json")
    data["time"] = format_utc(entry.record.at)
    data["dlq_partition"] = entry.partition
    data["dlq_offset"] = entry.offset
    return data


# -- commands ---------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def _time_option(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


def _filter_options(func: F) -> F:
    options = [
        click.option("--tenant", help="only records of this tenant"),
        click.option("--integration", metavar="ID", help="only records of this integration"),
        click.option("--alert-id", help="only records of this alert"),
        click.option("--reason", help="only records whose reason contains this (any case)"),
        click.option("--stage", type=click.Choice(STAGES), help="only records of this stage"),
        click.option(
            "--since", metavar="TIME", help=f"only records dead-lettered at or after: {TIME_HELP}"
        ),
        click.option("--until", metavar="TIME", help="only records dead-lettered before TIME"),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            help="at most this many records: the most recent ones",
        ),
        click.option(
            "--bootstrap",
            default=Settings.bootstrap_servers,
            envvar="KAFKA_BOOTSTRAP_SERVERS",
            show_default=True,
            show_envvar=True,
            help="Kafka bootstrap servers",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=1),
            default=30.0,
            show_default=True,
            help="seconds to wait for the broker",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _selected(
    *,
    tenant: str | None,
    integration: str | None,
    alert_id: str | None,
    reason: str | None,
    stage: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    bootstrap: str,
    timeout: float,
) -> tuple[Settings, list[DlqEntry], int, int]:
    """(settings, matching records, records read, unreadable records)."""
    filters = DlqFilters(
        tenant=tenant,
        integration=integration,
        alert_id=alert_id,
        reason=reason,
        stage=stage,
        since=_time_option(since, "--since"),
        until=_time_option(until, "--until"),
    )
    if filters.since and filters.until and filters.since >= filters.until:
        raise click.UsageError("--since must be earlier than --until")
    settings = Settings.from_env()
    entries, unreadable = read_dlq(bootstrap, settings.topic_dlq, filters.since, timeout)
    return settings, select(entries, filters, limit), len(entries), unreadable


@click.group("dlq", context_settings={"help_option_names": ["-h", "--help"]})
def dlq_group() -> None:
    """The dead-letter topic: list it, redrive failed deliveries.

    The DLQ topic (ALERTRELAY_TOPIC_DLQ) holds what could not be decoded, configured or
    delivered, with the reason. `list` shows it; `redrive` sends the alerts of
    `deliver`-stage records through delivery again. Neither removes anything: Kafka
    topics are append-only.
    """


@dlq_group.command("list")
@_filter_options
@click.option("--json", "as_json", is_flag=True, help="one JSON object per record (JSON lines)")
def dlq_list(as_json: bool, **options: Any) -> None:
    """List DLQ records: time, stage, tenant, integration, alert, attempts, reason.

    Reads the whole DLQ topic (from --since when given) up to its current end without a
    consumer group, so nothing is committed and the worker is not affected. Records are
    shown oldest first; --json prints every field, including the alert and the original
    location (source_topic/source_partition/source_offset).

    \b
    Examples:
      alertrelay dlq list --since -1d
      alertrelay dlq list --integration soc-hook --stage deliver --limit 20
      alertrelay dlq list --reason timeout --json | jq .alert_id

    \b
    Exit codes:
      0  done (also when nothing matches)
      2  invalid options, or the DLQ topic does not exist
      3  cannot reach the Kafka broker
    """
    settings, chosen, total, unreadable = _selected(**options)
    if as_json:
        for entry in chosen:
            click.echo(json.dumps(entry_json(entry), ensure_ascii=False))
    elif chosen:
        click.echo(table(LIST_HEADERS, list_rows(chosen)))
    note = f", {unreadable} unreadable" if unreadable else ""
    click.echo(f"{len(chosen)} of {total} records on {settings.topic_dlq!r} shown{note}.", err=True)


_REDRIVE_EPILOG = f"""Redrive never deletes from the DLQ (Kafka topics are append-only): a later
`alertrelay dlq list` still shows the redriven records, and redriving them again sends
them again (narrow with --since, --integration or --alert-id). {DEDUP_NOTE}"""


@dlq_group.command("redrive", epilog=_REDRIVE_EPILOG)
@_filter_options
@click.option("--dry-run", is_flag=True, help="show what would be redriven; send nothing")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
def dlq_redrive(dry_run: bool, yes: bool, **options: Any) -> None:
    """Deliver the alerts of failed deliveries again, each to its one integration.

    For every matching `deliver`-stage record that carries its alert, the alert goes to
    the replay topic (<ALERTRELAY_APP_ID>-replay) with its original location and the
    integration it failed for. The worker delivers it through the normal path, to that
    integration only, as configured now (fix the integration first), with the same
    idempotency key. The same alert and integration dead-lettered several times is
    redriven once.

    Not redrivable, and listed with the reason: `decode` records (the payload itself is
    bad), `config` records (the config was refused: there is no alert to send), and
    records without an alert.

    \b
    Examples:
      alertrelay dlq redrive --integration soc-hook --since -6h --dry-run
      alertrelay dlq redrive --tenant acme --integration soc-hook --yes

    \b
    Exit codes:
      0  done (also when nothing matches)
      1  some alerts could not be produced, or the confirmation was declined
      2  invalid options, or a topic does not exist
      3  cannot reach the Kafka broker
    """
    started = time.monotonic()
    settings, chosen, _total, _unreadable = _selected(**options)
    plan = plan_redrive(chosen)
    target = settings.replay_topic
    click.echo(
        f"{plural(len(chosen), 'matching record')} on {settings.topic_dlq!r}: "
        f"{len(plan.redrive)} to redrive to {target!r}, {len(plan.refused)} not redrivable"
        + (f", {plan.duplicates} duplicates" if plan.duplicates else "")
        + "."
    )
    if plan.refused:
        click.echo("Not redrivable:")
        shown = plan.refused[:20]
        rows = [
            [
                e.record.stage,
                _cell(e.record.tenant_id),
                _cell(e.record.integration_id),
                f"{e.record.source_topic}/{e.record.source_partition}/{e.record.source_offset}",
                why,
            ]
            for e, why in shown
        ]
        click.echo(table(("STAGE", "TENANT", "INTEGRATION", "SOURCE", "WHY"), rows))
        if len(plan.refused) > len(shown):
            click.echo(f"... and {len(plan.refused) - len(shown)} more")
    if not plan.redrive:
        click.echo("Nothing to redrive.")
        return
    per_integration = Counter(
        f"{e.record.tenant_id}/{e.record.integration_id}" for e in plan.redrive
    )
    click.echo("To redrive, per tenant/integration:")
    for name, count in sorted(per_integration.items()):
        click.echo(f"  {name}: {count}")
    if dry_run:
        click.echo(
            f"Dry run: {plural(len(plan.redrive), 'alert')} would be redriven; nothing sent."
        )
        return
    if not yes:
        click.confirm(
            f"Redrive {plural(len(plan.redrive), 'alert')} to {target!r}?", abort=True, err=True
        )

    import orjson

    producer = ReplayProducer(options["bootstrap"], target, options["timeout"])
    for entry in plan.redrive:
        record = entry.record
        assert record.alert is not None and record.tenant_id is not None
        headers = replay_headers(
            None,
            record.source_topic,
            record.source_partition,
            record.source_offset,
            record.integration_id,
            redrive=True,
        )
        producer.send(record.tenant_id, orjson.dumps(record.alert.wire()), headers)
    producer.flush()
    elapsed = time.monotonic() - started
    click.echo(
        f"Redriven {producer.confirmed} of {len(plan.redrive)} alerts to {target!r} in "
        f"{elapsed:.2f} s. The DLQ records stay (Kafka topics are append-only): "
        "`alertrelay dlq list` still shows them."
    )
    if producer.failed:
        for reason, count in producer.errors.most_common(5):
            click.echo(f"  {count} not produced: {reason}", err=True)
        raise KafkaToolError(f"{producer.failed} alerts were not produced", EXIT_FAILED)
