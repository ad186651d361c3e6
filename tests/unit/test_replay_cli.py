"""`alertrelay replay` and `alertrelay dlq` without a broker: time parsing, filters,
headers, redrive planning, --help texts and option errors (CliRunner)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner, Result

from schemas.models import Alert, DeadLetter
from streams.agents.router import ONLY_HEADER, SOURCE_HEADER, _source_of
from streams.cli import main
from streams.dlq import (
    DlqEntry,
    DlqFilters,
    entry_json,
    list_rows,
    not_redrivable_reason,
    plan_redrive,
    select,
    truncate,
)
from streams.replay import (
    AlertFilters,
    PartitionRange,
    ReplaySummary,
    format_utc,
    parse_time,
    replay_headers,
    resolve_range,
)
from tests.harness import free_port, make_alert

NOW = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "ALERTRELAY_APP_ID", "ALERTRELAY_TOPIC_ALERTS"):
        monkeypatch.delenv(name, raising=False)


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


# -- times ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-2h", NOW - timedelta(hours=2)),
        ("-30m", NOW - timedelta(minutes=30)),
        ("-1d", NOW - timedelta(days=1)),
        ("-1w", NOW - timedelta(weeks=1)),
        ("-45s", NOW - timedelta(seconds=45)),
        ("-1h30m", NOW - timedelta(hours=1, minutes=30)),
        ("- 2H", NOW - timedelta(hours=2)),
        ("-1.5h", NOW - timedelta(hours=1, minutes=30)),
        ("now", NOW),
        ("2026-11-24T08:00:00Z", datetime(2026, 11, 24, 8, tzinfo=UTC)),
        ("2026-11-24t08:00:00z", datetime(2026, 11, 24, 8, tzinfo=UTC)),
        ("2026-11-24T08:00:00.250Z", datetime(2026, 11, 24, 8, 0, 0, 250000, tzinfo=UTC)),
        ("2026-11-24T10:00:00+02:00", datetime(2026, 11, 24, 8, tzinfo=UTC)),
        ("2026-11-24 08:00:00-01:30", datetime(2026, 11, 24, 9, 30, tzinfo=UTC)),
    ],
)
def test_parse_time_accepts_rfc3339_and_relative_times(text: str, expected: datetime) -> None:
    got = parse_time(text, NOW)
    assert got == expected
    assert got.tzinfo is not None and got.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-11-24T08:00:00", "no time zone"),
        ("2026-11-24", "no time zone"),
        ("yesterday", "not a time"),
        ("2h", "not a time"),  # a relative time goes back: it needs the minus
        ("-2x", "not a time"),
        ("", "not a time"),
    ],
)
def test_parse_time_refuses_ambiguous_or_bad_times(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_time(text, NOW)


def test_format_utc_shows_z_and_milliseconds_only_when_present() -> None:
    assert format_utc(datetime(2026, 11, 24, 10, tzinfo=UTC)) == "2026-11-24T10:00:00Z"
    assert format_utc(NOW.timestamp() + 0.25) == "2026-11-24T10:00:00.250Z"
    local = datetime(2026, 11, 24, 12, tzinfo=UTC).astimezone(datetime.now().astimezone().tzinfo)
    assert format_utc(local) == "2026-11-24T12:00:00Z"


# -- offset ranges and filters ----------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "low", "high", "expected"),
    [
        (3, 7, 0, 10, (3, 7)),  # both times inside the partition
        (3, -1, 0, 10, (3, 10)),  # --to later than the newest record: up to the watermark
        (-1, -1, 0, 10, (10, 10)),  # --from later than the newest record: nothing
        (0, 4, 2, 10, (2, 4)),  # retention removed the oldest records
        (5, 12, 0, 10, (5, 10)),  # never past the high watermark
        (0, 0, 0, 0, (0, 0)),  # an empty partition
    ],
)
def test_resolve_range(
    start: int, end: int, low: int, high: int, expected: tuple[int, int]
) -> None:
    got = resolve_range(2, start, end, low, high)
    assert (got.partition, got.start, got.end) == (2, *expected)
    assert got.count == expected[1] - expected[0]


def test_partition_range_count_is_never_negative() -> None:
    assert PartitionRange(0, 9, 3).count == 0


def alert(n: int, tenant: str = "acme", **kw: Any) -> Alert:
    return Alert.model_validate(make_alert(n, tenant, **kw))


def test_alert_filters() -> None:
    assert AlertFilters().rejects(alert(0)) is None
    only_acme = AlertFilters(tenant="acme")
    assert only_acme.rejects(alert(0)) is None
    assert only_acme.rejects(alert(0, "globex")) == "tenant"
    pci = AlertFilters(event_types=frozenset({"pci_scope_change"}))
    assert pci.rejects(alert(1)) is None  # odd numbers are pci_scope_change
    assert pci.rejects(alert(0)) == "event type"
    both = AlertFilters("acme", frozenset({"client_side_risk", "pci_scope_change"}))
    assert both.rejects(alert(0)) is None and both.rejects(alert(1)) is None


# -- headers ----------------------------------------------------------------------------


def test_replay_headers_name_the_original_location_and_the_integration() -> None:
    assert SOURCE_HEADER == "x-alertrelay-source" and ONLY_HEADER == "x-alertrelay-only"
    original = [
        ("content-type", b"avro/binary"),
        ("x-alertrelay-source", b"forged/0/0"),
        ("X-Alertrelay-Only", b"forged"),
        ("trace-id", b"abc"),
    ]
    headers = replay_headers(original, "alerts", 2, 41, "soc-hook")
    assert headers == [
        ("content-type", b"avro/binary"),
        ("trace-id", b"abc"),
        ("x-alertrelay-source", b"alerts/2/41"),
        ("x-alertrelay-only", b"soc-hook"),
    ]
    assert replay_headers(None, "my.alerts/x", 0, 7) == [
        ("x-alertrelay-source", b"my.alerts/x/0/7")
    ]
    # The router reads them back as the alert's first location.
    assert _source_of("ar-replay", 0, 5, headers) == ("alerts", 2, 41)
    slashed = replay_headers(None, "my.alerts/x", 0, 7)
    assert _source_of("ar-replay", 0, 5, slashed) == ("my.alerts/x", 0, 7)


def test_summary_lines() -> None:
    summary = ReplaySummary(in_range=10, read=10, replayed=4, undecodable=1, elapsed=1.234)
    summary.skipped.update({"tenant": 3, "event type": 2})
    summary.per_kind.update({("acme", "client_side_risk"): 3, ("acme", "pci_scope_change"): 1})
    text = "\n".join(summary.lines(dry_run=False))
    assert "replayed                     4" in text
    assert "skipped by filter            5 (event type 2, tenant 3)" in text
    assert "undecodable                  1" in text and "failed to produce            0" in text
    assert "acme    client_side_risk  3" in text and "1.23 s" in text
    dry = "\n".join(summary.lines(dry_run=True))
    assert "would replay                 4" in dry and "failed" not in dry


# -- the DLQ ----------------------------------------------------------------------------


def dead(stage: str = "deliver", at: float = 1000.0, **kw: Any) -> DeadLetter:
    fields: dict[str, Any] = {
        "reason": "webhook answered 400: invalid_payload",
        "stage": stage,
        "source_topic": "alerts",
        "source_partition": 1,
        "source_offset": 5,
        "at": at,
        "tenant_id": "acme",
        "integration_id": "hook",
        "alert_id": "a-1",
        "attempts": 1,
    }
    if stage == "deliver":
        fields["alert"] = make_alert(1, "acme", alert_id="a-1")
    fields.update(kw)
    return DeadLetter.model_validate(fields)


def entry(record: DeadLetter, offset: int = 0) -> DlqEntry:
    return DlqEntry(record, 0, offset)


def test_dlq_filters() -> None:
    record = dead()
    assert DlqFilters().accepts(record)
    assert DlqFilters(tenant="acme", integration="hook", alert_id="a-1").accepts(record)
    assert not DlqFilters(tenant="globex").accepts(record)
    assert not DlqFilters(integration="other").accepts(record)
    assert not DlqFilters(alert_id="a-2").accepts(record)
    assert DlqFilters(reason="INVALID_pay").accepts(record)
    assert not DlqFilters(reason="timeout").accepts(record)
    assert DlqFilters(stage="deliver").accepts(record)
    assert not DlqFilters(stage="decode").accepts(record)
    at = datetime.fromtimestamp(1000, UTC)
    assert DlqFilters(since=at).accepts(record)  # since is inclusive
    assert not DlqFilters(since=at + timedelta(seconds=1)).accepts(record)
    assert not DlqFilters(until=at).accepts(record)  # until is exclusive
    assert DlqFilters(until=at + timedelta(seconds=1)).accepts(record)


def test_select_sorts_oldest_first_and_limit_keeps_the_newest() -> None:
    entries = [entry(dead(at=t, alert_id=f"a{t:g}"), i) for i, t in enumerate([30, 10, 20])]
    assert [e.record.at for e in select(entries, DlqFilters(), None)] == [10, 20, 30]
    assert [e.record.at for e in select(entries, DlqFilters(), 2)] == [20, 30]
    assert select(entries, DlqFilters(tenant="nobody"), 5) == []


def test_only_deliver_records_with_an_alert_are_redrivable() -> None:
    assert not_redrivable_reason(dead()) is None
    assert "payload itself is bad" in str(
        not_redrivable_reason(dead("decode", tenant_id=None, integration_id=None))
    )
    assert "config was refused" in str(not_redrivable_reason(dead("config")))
    assert "replay" in str(not_redrivable_reason(dead("route")))
    assert "no alert" in str(not_redrivable_reason(dead("deliver", alert=None)))
    assert "no integration" in str(not_redrivable_reason(dead(integration_id=None)))


def test_plan_redrive_once_per_alert_integration_and_location() -> None:
    first = entry(dead(at=1), 0)
    again = entry(dead(at=2), 1)  # the same alert failed again after an earlier redrive
    other_hook = entry(dead(at=3, integration_id="hook2"), 2)
    decode = entry(dead("decode", tenant_id=None, integration_id=None), 3)
    plan = plan_redrive([first, again, other_hook, decode])
    assert plan.redrive == [again, other_hook]
    assert plan.duplicates == 1
    assert [(e, "decode") for e, _ in plan.refused] == [(decode, "decode")]


def test_list_rows_and_json() -> None:
    long_reason = "webhook answered 400:\n" + "x" * 200
    rows = list_rows([entry(dead(reason=long_reason, at=NOW.timestamp()), 7)])
    assert rows[0][:6] == ["2026-11-24T10:00:00Z", "deliver", "acme", "hook", "a-1", "1"]
    assert len(rows[0][6]) == 60 and rows[0][6].endswith("…") and "\n" not in rows[0][6]
    assert list_rows([entry(dead("decode", tenant_id=None, integration_id=None))])[0][2] == "-"
    assert truncate("short") == "short"
    data = entry_json(entry(dead(), 7))
    assert data["dlq_offset"] == 7 and data["alert"]["alert_id"] == "a-1"


# -- the commands -----------------------------------------------------------------------


def test_replay_help_explains_window_filters_and_duplicates() -> None:
    result = run("replay", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for words in (
        "--from TIME",
        "--to TIME",
        "--tenant",
        "--integration ID",
        "--event-type",
        "--dry-run",
        "--bootstrap",
        "-2h",
        "RFC 3339",
        "committed offsets never move",
        "PagerDuty (dedup_key)",
        "Opsgenie (alias)",
        "Jira (label)",
        "Idempotency-Key",
        "S3 and GCS",
        "Slack and email",
        "get the alert again",
    ):
        assert words in text, words


def test_dlq_help_texts() -> None:
    group = run("dlq", "--help")
    assert group.exit_code == 0 and "list" in group.output and "redrive" in group.output
    listing = " ".join(run("dlq", "list", "--help").output.split())
    for words in ("--tenant", "--integration", "--reason", "--stage", "--since", "--until"):
        assert words in listing
    assert "--limit" in listing and "--json" in listing
    redrive = " ".join(run("dlq", "redrive", "--help").output.split())
    for words in (
        "never deletes from the DLQ",
        "append-only",
        "`alertrelay dlq list` still shows",
        "same idempotency key",
        "payload itself is bad",
        "config was refused",
        "--yes",
        "--dry-run",
        "Slack and email",
    ):
        assert words in redrive, words


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "yesterday"], "Invalid value for --from"),
        (["--from", "2026-11-24T08:00:00"], "no time zone"),
        (["--from", "-1h", "--to", "soon"], "Invalid value for --to"),
        (["--from", "-1h", "--to", "-2h"], "must be earlier than --to"),
        (["--from", "-1h", "--integration", "hook"], "--integration needs --tenant"),
        (["--from", "-1h", "--event-type", "other"], "Invalid value for '--event-type'"),
        ([], "Missing option '--from'"),
    ],
)
def test_replay_option_errors(args: list[str], message: str) -> None:
    result = run("replay", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--since", "last week"], "Invalid value for --since"),
        (["list", "--since", "-1h", "--until", "-2h"], "--since must be earlier than --until"),
        (["list", "--stage", "nope"], "Invalid value for '--stage'"),
        (["redrive", "--limit", "0"], "Invalid value for '--limit'"),
    ],
)
def test_dlq_option_errors(args: list[str], message: str) -> None:
    result = run("dlq", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize(
    "args",
    [["replay", "--from", "-1h"], ["dlq", "list"], ["dlq", "redrive", "--yes"]],
)
def test_unreachable_broker_exits_3(args: list[str]) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    result = run(*args, "--bootstrap", bootstrap, "--timeout", "1")
    assert result.exit_code == 3, result.output
    assert f"cannot reach Kafka at {bootstrap}" in result.output
