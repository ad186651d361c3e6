"""Email integration settings (the `emails` list) and the SMTP relay environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sinks.base import BatchLimits
from sinks.email.config import MAX_RECIPIENTS, EmailSettings, ascii_address
from sinks.email.sink import NO_RELAY, EmailSink, SmtpRelay
from sinks.errors import PermanentError
from sinks.http import EgressGuard, HostOverrides
from sinks.registry import ConfigError, SinkContext, validate_integration

PASSWORD = "smtp-Pa55word-never-shown"


def email_config(emails: Any = None, **settings: Any) -> dict[str, Any]:
    return {
        "integration_id": "mail-1",
        "tenant_id": "tenant-a",
        "type": "email",
        "name": "SOC mailbox",
        "settings": {
            "emails": ["soc@example.com"] if emails is None else emails,
            **settings,
        },
    }


def errors_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        validate_integration(data)
    return info.value.errors


def emails_of(data: dict[str, Any]) -> list[str]:
    _, settings = validate_integration(data)
    assert isinstance(settings, EmailSettings)
    return settings.emails


# -- the emails list -------------------------------------------------------------------


def test_one_address_is_valid() -> None:
    config, settings = validate_integration(email_config())
    assert config.type == "email"
    assert isinstance(settings, EmailSettings)
    assert settings.emails == ["soc@example.com"]


def test_several_addresses_keep_their_order() -> None:
    emails = ["b@example.com", "a+alerts@sub.example.org", "c.d@example.net"]
    assert emails_of(email_config(emails)) == emails


def test_addresses_are_trimmed_and_domains_lower_cased() -> None:
    assert emails_of(email_config(["  Soc.Team@Example.COM "])) == ["Soc.Team@example.com"]


def test_duplicates_are_removed_case_insensitively_keeping_first_spelling() -> None:
    emails = ["Soc@example.com", "ops@example.com", "soc@EXAMPLE.com", "SOC@example.com"]
    assert emails_of(email_config(emails)) == ["Soc@example.com", "ops@example.com"]


def test_internationalized_domain_is_accepted_and_sent_as_idna() -> None:
    (address,) = emails_of(email_config(["soc@bücher.example"]))
    assert address == "soc@bücher.example"
    assert ascii_address(address) == "soc@xn--bcher-kva.example"


def test_at_most_max_recipients_after_duplicates_are_removed() -> None:
    exactly = [f"user{i}@example.com" for i in range(MAX_RECIPIENTS)]
    assert len(emails_of(email_config(exactly))) == MAX_RECIPIENTS
    with_duplicates = exactly + [a.upper() for a in exactly[:10]]
    assert len(emails_of(email_config(with_duplicates))) == MAX_RECIPIENTS

    too_many = [*exactly, "one.more@example.com"]
    errors = errors_of(email_config(too_many))
    assert errors == [
        (
            "settings.emails",
            f"at most {MAX_RECIPIENTS} email addresses are allowed (got {MAX_RECIPIENTS + 1}); "
            "use a distribution list for more",
        )
    ]


def test_a_huge_list_is_refused_before_each_entry_is_checked() -> None:
    errors = errors_of(email_config([f"u{i}@example.com" for i in range(5000)]))
    assert errors == [("settings.emails", f"at most {MAX_RECIPIENTS} email addresses are allowed")]


def test_empty_list_is_refused() -> None:
    assert errors_of(email_config([])) == [
        ("settings.emails", "at least one email address is required")
    ]


def test_missing_emails_is_refused() -> None:
    config = email_config()
    del config["settings"]["emails"]
    assert [field for field, _ in errors_of(config)] == ["settings.emails"]


def test_a_string_instead_of_a_list_is_refused() -> None:
    assert errors_of(email_config("soc@example.com")) == [
        ("settings.emails", "emails must be a list of email addresses")
    ]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("", "email address is empty"),
        ("   ", "email address is empty"),
        ("soc.example.com", "must have an @-sign"),
        ("soc@example", "It should have a period"),
        ("Soc Team <soc@example.com>", "display name"),
        ("soc@example.com\r\nBcc: evil@example.net", "invalid characters"),
        ("soc@example.com\n", "invalid characters"),
        ('"quoted"@example.com', "Quoting"),
        ("soc@[192.0.2.1]", "bracketed IP address"),
        ("soc@mailhost.local", "special-use or reserved name"),
        ("soc..team@example.com", "two periods in a row"),
        ("a" * 65 + "@example.com", "too long before the @-sign"),
        ("soc@" + "d" * 250 + ".com", "too long after the @-sign"),
        ("süc@example.com", "Internationalized characters before the @-sign"),
        ("soc@exa_mple.com", "invalid characters"),
    ],
)
def test_invalid_address_is_refused_with_its_position(address: str, reason: str) -> None:
    errors = errors_of(email_config(["ok@example.com", address]))
    assert len(errors) == 1
    field, message = errors[0]
    assert field == "settings.emails.1"
    assert reason in message


def test_error_quotes_a_long_address_shortened() -> None:
    address = "x" * 300 + "@@example.com"
    ((_, message),) = errors_of(email_config([address]))
    assert "…" in message and len(message) < 250


def test_non_string_entry_is_refused() -> None:
    ((field, _),) = errors_of(email_config(["ok@example.com", 42]))
    assert field == "settings.emails.1"


def test_every_bad_entry_is_named() -> None:
    errors = errors_of(email_config(["bad", "ok@example.com", "also bad"]))
    assert [field for field, _ in errors] == ["settings.emails.0", "settings.emails.2"]


def test_unknown_settings_are_refused() -> None:
    errors = errors_of(email_config(smtp_password=PASSWORD))
    assert [field for field, _ in errors] == ["settings.smtp_password"]
    assert PASSWORD not in str(ConfigError(errors))


def test_email_settings_hold_no_secrets() -> None:
    sink = EmailSink(SinkContext(HostOverrides(), EgressGuard(), BatchLimits()), relay=SmtpRelay())
    settings = EmailSettings(emails=["soc@example.com"])
    assert sink.secrets(settings) == []


# -- the relay from the environment --------------------------------------------------------


def relay_env(**values: str) -> dict[str, str]:
    base = {
        "HOST": "smtp.example.com",
        "PORT": "587",
        "USERNAME": "relay-user",
        "PASSWORD": PASSWORD,
        "STARTTLS": "true",
        "FROM": "Security alerts <alerts@example.com>",
    }
    base.update(values)
    return {f"ALERTRELAY_SMTP_{k}": v for k, v in base.items() if v is not None}


def test_full_relay_environment() -> None:
    relay = SmtpRelay.from_env(relay_env())
    assert relay.problem is None
    assert (relay.host, relay.port, relay.tls) == ("smtp.example.com", 587, "starttls")
    assert relay.username == "relay-user" and relay.password == PASSWORD
    assert relay.sender == "alerts@example.com"
    assert relay.from_header == "Security alerts <alerts@example.com>"
    assert relay.ca_file is None


def test_port_465_means_implicit_tls_whatever_starttls_says() -> None:
    for starttls in ("true", "false"):
        relay = SmtpRelay.from_env(relay_env(PORT="465", STARTTLS=starttls))
        assert relay.tls == "implicit" and relay.problem is None


def test_defaults_starttls_on_587() -> None:
    env = relay_env()
    del env["ALERTRELAY_SMTP_PORT"], env["ALERTRELAY_SMTP_STARTTLS"]
    relay = SmtpRelay.from_env(env)
    assert (relay.port, relay.tls, relay.problem) == (587, "starttls", None)


def test_plain_local_relay_without_credentials() -> None:
    env = {
        "ALERTRELAY_SMTP_HOST": "localhost",
        "ALERTRELAY_SMTP_STARTTLS": "FALSE",
        "ALERTRELAY_SMTP_FROM": "alerts@example.com",
    }
    relay = SmtpRelay.from_env(env)
    assert (relay.port, relay.tls, relay.username, relay.problem) == (25, "none", None, None)
    assert relay.from_header == "alertrelay <alerts@example.com>"


def test_sender_defaults_to_an_address_username() -> None:
    env = relay_env(USERNAME="alerts@example.com")
    del env["ALERTRELAY_SMTP_FROM"]
    relay = SmtpRelay.from_env(env)
    assert relay.sender == "alerts@example.com" and relay.problem is None


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"PORT": "smtp"}, "ALERTRELAY_SMTP_PORT must be a port number (1-65535)"),
        ({"PORT": "70000"}, "ALERTRELAY_SMTP_PORT must be a port number (1-65535)"),
        ({"STARTTLS": "maybe"}, "ALERTRELAY_SMTP_STARTTLS must be true or false"),
        ({"HOST": "smtp example com"}, "ALERTRELAY_SMTP_HOST must be a host name"),
        ({"USERNAME": ""}, "ALERTRELAY_SMTP_PASSWORD is set but ALERTRELAY_SMTP_USERNAME is not"),
        ({"PASSWORD": ""}, "ALERTRELAY_SMTP_USERNAME is set but ALERTRELAY_SMTP_PASSWORD is not"),
        ({"STARTTLS": "false"}, "refusing to send SMTP credentials without TLS"),
        ({"FROM": "not an address"}, "ALERTRELAY_SMTP_FROM must be an address"),
        ({"FROM": ""}, "no sender address: set ALERTRELAY_SMTP_FROM"),
        ({"CA_FILE": "/nonexistent/ca.pem"}, "ALERTRELAY_SMTP_CA_FILE '/nonexistent/ca.pem'"),
    ],
)
def test_bad_environment_is_reported_without_the_password(
    values: dict[str, str], problem: str
) -> None:
    relay = SmtpRelay.from_env(relay_env(**values))
    assert relay.problem is not None and problem in relay.problem
    assert PASSWORD not in relay.problem


def test_relay_repr_hides_the_password() -> None:
    relay = SmtpRelay.from_env(relay_env())
    assert PASSWORD not in repr(relay) and PASSWORD not in str(relay)


def test_ca_file_is_recorded(tmp_path: Path) -> None:
    import trustme

    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    relay = SmtpRelay.from_env(relay_env(CA_FILE=str(ca_file)))
    assert relay.ca_file == str(ca_file) and relay.problem is None


def test_unloadable_ca_file_fails_every_send(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not a certificate")
    sink = EmailSink(
        SinkContext(HostOverrides(), EgressGuard(), BatchLimits()),
        relay=SmtpRelay.from_env(relay_env(CA_FILE=str(ca_file))),
    )
    with pytest.raises(PermanentError, match="ALERTRELAY_SMTP_CA_FILE could not be loaded"):
        sink._usable_relay()


def test_the_sink_reads_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in relay_env(PORT="2525").items():
        monkeypatch.setenv(name, value)
    sink = EmailSink(SinkContext(HostOverrides(), EgressGuard(), BatchLimits()))
    monkeypatch.setenv("ALERTRELAY_SMTP_PORT", "2626")
    assert sink.relay.port == 2525
    assert sink.secrets(EmailSettings(emails=["soc@example.com"])) == [PASSWORD]


async def test_missing_host_makes_every_send_permanent(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in relay_env():
        monkeypatch.delenv(name, raising=False)
    sink = EmailSink(SinkContext(HostOverrides(), EgressGuard(), BatchLimits()))
    with pytest.raises(PermanentError) as info:
        sink._usable_relay()
    assert info.value.message == NO_RELAY == ("no SMTP relay configured (set ALERTRELAY_SMTP_HOST)")
