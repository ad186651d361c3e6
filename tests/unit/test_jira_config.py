"""Jira settings: every rule of the spec, valid and invalid, through validate_integration."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from sinks.base import BatchLimits
from sinks.http import EgressGuard, HostOverrides
from sinks.jira.config import JiraSettings
from sinks.jira.sink import JiraSink
from sinks.registry import ConfigError, SinkContext, validate_integration

TOKEN = "ATATT3xFfGF0SecretJiraToken0123456789"
URL = "https://acme.atlassian.net/rest/api/2/issue/"


def config(**settings: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "integration_id": "jira-1",
        "tenant_id": "tenant-a",
        "type": "jira",
        "name": "SOC Jira",
        "settings": {
            "webhook_url": URL,
            "project_id": "10000",
            "api_token": TOKEN,
            "reporter_email": "soc@example.com",
        },
    }
    base["settings"].update(settings)
    base["settings"] = {k: v for k, v in base["settings"].items() if v is not ...}
    return base


def settings_of(**settings: Any) -> JiraSettings:
    _, parsed = validate_integration(config(**settings))
    assert isinstance(parsed, JiraSettings)
    return parsed


def error_for(field: str, **settings: Any) -> str:
    with pytest.raises(ConfigError) as info:
        validate_integration(config(**settings))
    assert TOKEN not in str(info.value)
    reasons = [reason for name, reason in info.value.errors if name == f"settings.{field}"]
    assert reasons, info.value.errors
    return reasons[0]


def test_minimal_config_and_defaults() -> None:
    parsed = settings_of()
    assert parsed.webhook_url == "https://acme.atlassian.net/rest/api/2/issue"
    assert parsed.site == "acme.atlassian.net"
    assert parsed.base_url == "https://acme.atlassian.net"
    assert parsed.project_id == "10000"
    assert parsed.api_token.get_secret_value() == TOKEN
    assert parsed.issue_type is None and parsed.issue_type_name == "Task"
    assert parsed.priority_from_risk is False
    assert TOKEN not in repr(parsed)


@pytest.mark.parametrize(
    "url",
    [
        "https://acme.atlassian.net/rest/api/2/issue/",
        "https://acme.atlassian.net/rest/api/2/issue",
        "  https://ACME.atlassian.net/rest/api/2/issue/ ",
        "https://my-company-1.atlassian.net/rest/api/2/issue",
    ],
)
def test_v2_issue_urls_are_accepted_and_normalised(url: str) -> None:
    parsed = settings_of(webhook_url=url)
    assert parsed.webhook_url.endswith(".atlassian.net/rest/api/2/issue")
    assert parsed.webhook_url == parsed.webhook_url.lower()


@pytest.mark.parametrize(
    "url",
    [
        "https://acme.atlassian.net/rest/api/3/issue/",
        "https://acme.atlassian.net/rest/api/3/issue",
        "https://acme.atlassian.net/rest/api/3",
    ],
)
def test_v3_url_is_refused_with_the_reason(url: str) -> None:
    reason = error_for("webhook_url", webhook_url=url)
    assert "Jira's v2 API address is mandatory (v3 wants ADF descriptions)" in reason


def test_scoped_token_gateway_url_is_refused() -> None:
    reason = error_for(
        "webhook_url",
        webhook_url="https://api.atlassian.com/ex/jira/1234-abcd/rest/api/2/issue",
    )
    assert "scoped API tokens" in reason and "not supported" in reason


@pytest.mark.parametrize(
    "url",
    [
        "http://acme.atlassian.net/rest/api/2/issue/",
        "https://acme.atlassian.net/rest/api/2/issue/123",
        "https://acme.atlassian.net/rest/api/2/search",
        "https://acme.jira.example.com/rest/api/2/issue/",
        "https://atlassian.net/rest/api/2/issue/",
        "https://a.b.atlassian.net/rest/api/2/issue/",
        "https://acme.atlassian.net.evil.com/rest/api/2/issue/",
        "https://acme.atlassian.net/rest/api/2/issue?x=1",
        "acme.atlassian.net/rest/api/2/issue",
    ],
)
def test_other_urls_are_refused_with_the_form(url: str) -> None:
    reason = error_for("webhook_url", webhook_url=url)
    assert "atlassian.net/rest/api/2/issue/" in reason


def test_url_with_an_embedded_newline_is_refused() -> None:
    # Outer whitespace is stripped (pasted values); a newline inside is never accepted.
    error_for("webhook_url", webhook_url="https://acme.atlassian.net/rest/api/2/\nissue")


@pytest.mark.parametrize("project", ["10000", 10000, " 42 "])
def test_numeric_project_ids(project: Any) -> None:
    assert settings_of(project_id=project).project_id == str(project).strip()


def test_project_key_instead_of_id_is_explained() -> None:
    assert "project key" in error_for("project_id", project_id="SEC")


@pytest.mark.parametrize("project", ["", "10 000", "-1", "1.5", "12345678901234567890", True])
def test_non_numeric_project_ids_are_refused(project: Any) -> None:
    error_for("project_id", project_id=project)


def test_missing_required_fields_are_each_reported() -> None:
    with pytest.raises(ConfigError) as info:
        validate_integration(
            config(webhook_url=..., project_id=..., api_token=..., reporter_email=...)
        )
    fields = {name for name, _ in info.value.errors}
    assert {
        "settings.webhook_url",
        "settings.project_id",
        "settings.api_token",
        "settings.reporter_email",
    } <= fields


@pytest.mark.parametrize("token", ["", "   ", "short", "has space inside token", "tab\there12345"])
def test_bad_tokens_are_refused_without_echo(token: str) -> None:
    reason = error_for("api_token", api_token=token)
    assert token.strip() == "" or token not in reason


def test_token_is_stripped() -> None:
    assert settings_of(api_token=f"  {TOKEN}\n").api_token.get_secret_value() == TOKEN


@pytest.mark.parametrize("email", ["soc@example.com", "first.last+jira@sub.example.co.uk"])
def test_valid_reporter_emails(email: str) -> None:
    assert settings_of(reporter_email=email).reporter_email == email


@pytest.mark.parametrize(
    "email",
    [
        "",
        "soc",
        "soc@",
        "@example.com",
        "soc@example",
        "a b@example.com",
        "a:b@example.com",
        "soc@exam\nple.com",
        "soc@-example.com",
    ],
)
def test_invalid_reporter_emails(email: str) -> None:
    assert "valid address" in error_for("reporter_email", reporter_email=email)


def test_issue_type_optional_blank_means_default_and_numeric_is_kept() -> None:
    assert settings_of(issue_type="Bug").issue_type_name == "Bug"
    assert settings_of(issue_type="  ").issue_type is None
    assert settings_of(issue_type=None).issue_type_name == "Task"
    assert settings_of(issue_type="10004").issue_type == "10004"


@pytest.mark.parametrize("issue_type", ["x" * 256, "Bug\nTask", 5])
def test_invalid_issue_types(issue_type: Any) -> None:
    error_for("issue_type", issue_type=issue_type)


def test_priority_from_risk_is_a_bool() -> None:
    assert settings_of(priority_from_risk=True).priority_from_risk is True
    assert settings_of(priority_from_risk="false").priority_from_risk is False
    error_for("priority_from_risk", priority_from_risk="sometimes")


def test_unknown_settings_are_refused() -> None:
    error_for("channel", channel="#x")


def test_no_secret_in_any_error_text() -> None:
    with pytest.raises(ConfigError) as info:
        validate_integration(
            config(
                webhook_url="https://acme.atlassian.net/rest/api/3/issue",
                project_id="SEC",
                reporter_email="nope",
                api_token=TOKEN,
            )
        )
    assert len(info.value.errors) == 3
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value.errors)


async def test_the_redactor_hides_the_basic_credentials_and_is_built_once() -> None:
    """The sink's redactor (the runner's too) hides email:token as it travels (base64);
    it is built once per settings object, not for every alert."""
    sink = JiraSink(SinkContext(HostOverrides(), EgressGuard(), BatchLimits()))
    try:
        settings = settings_of()
        basic = base64.b64encode(f"soc@example.com:{TOKEN}".encode()).decode()
        redact = sink.redactor(settings)
        assert sink.redactor(settings) is redact
        assert sink._redactor(settings) is redact
        shown = redact(f"sent Basic {basic} and {TOKEN}")
        assert basic not in shown and TOKEN not in shown
    finally:
        await sink.aclose()
