"""The `alertrelay` command: tokens against a temp file, integrations against a small
fake of the worker's HTTP API (a real local server, so errors are real network errors),
alerts send without a broker (validation, samples, dry runs, unreachable broker)."""

from __future__ import annotations

import json
import random
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from schemas.codec import decode_alert, encode_alert_avro
from schemas.models import Alert
from streams.api.tokens import TokenStore
from streams.cli import main, sample_alerts
from tests.harness import free_port, make_alert

GOOD_TOKEN = "ar_good-token"
VIEWER_TOKEN = "ar_viewer-token"
SECRET_URL = "https://hooks.slack.com/services/T0/B0/SECRETSECRET1234"
SECRET_FIELDS = {"webhook_url", "api_key", "api_token", "secret_access_key"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "ALERTRELAY_API_URL",
        "ALERTRELAY_API_TOKEN",
        "ALERTRELAY_TENANT",
        "ALERTRELAY_API_TOKENS_FILE",
        "KAFKA_BOOTSTRAP_SERVERS",
        "ALERTRELAY_TOPIC_ALERTS",
    ):
        monkeypatch.delenv(name, raising=False)


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


# -- a fake of the integrations API (the contract in DESIGN.md and the CLI brief) ---------


@dataclass
class FakeApi:
    """Integrations per tenant, versions, recorded requests; secrets masked on the way out."""

    stored: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    version: int = 0
    url: str = ""

    @staticmethod
    def masked(config: dict[str, Any]) -> dict[str, Any]:
        settings = {
            k: ("****" + str(v)[-4:] if k in SECRET_FIELDS else v)
            for k, v in config.get("settings", {}).items()
        }
        return {**config, "settings": settings}

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
        auth = headers.get("authorization", "")
        if auth not in (f"Bearer {GOOD_TOKEN}", f"Bearer {VIEWER_TOKEN}"):
            return 401, {"error": "missing or unknown bearer token"}
        match = re.fullmatch(r"/api/v1/tenants/([^/]+)/integrations(?:/([^/]+))?(?:/(test))?", path)
        if match is None:
            return 404, {"error": "no such route"}
        tenant, ident, test = match.groups()
        if method != "GET" and auth == f"Bearer {VIEWER_TOKEN}":
            return 403, {"error": "viewer tokens may only read"}
        if ident == "test" and method == "POST":  # POST /test: an unsaved config
            return 200, self.test(body)
        if test:
            config = self.stored.get((tenant, ident))
            if config is None:
                return 404, {"error": f"no integration {ident!r}"}
            return 200, self.test(config)
        if ident is None and method == "GET":
            items = [self.masked(c) for (t, _), c in sorted(self.stored.items()) if t == tenant]
            return 200, {"integrations": items}
        if ident is None and method == "POST":
            return self.save(tenant, body, None, 201)
        if ident is not None and method == "GET":
            config = self.stored.get((tenant, ident))
            if config is None:
                return 404, {"error": f"no integration {ident!r}"}
            return 200, {"integration": self.masked(config), "version": config["version"]}
        if ident is not None and method == "PUT":
            if (tenant, ident) not in self.stored:
                return 404, {"error": f"no integration {ident!r}"}
            return self.save(tenant, body, ident, 200)
        if ident is not None and method == "DELETE":
            if self.stored.pop((tenant, ident), None) is None:
                return 404, {"error": f"no integration {ident!r}"}
            return 204, None
        return 405, {"error": "method not allowed"}

    def save(self, tenant: str, body: Any, ident: str | None, status: int) -> tuple[int, Any]:
        errors = []
        settings = body.get("settings", {})
        if body.get("type") not in ("slack", "webhook"):
            errors.append({"field": "type", "message": "unknown integration type"})
        url = settings.get("webhook_url", "")
        if not str(url).startswith("https://") and not str(url).startswith("****"):
            errors.append({"field": "settings.webhook_url", "message": "must be an https URL"})
        if not body.get("name"):
            errors.append({"field": "name", "message": "integration name is required"})
        if errors:
            return 422, {"errors": errors}
        ident = ident or body.get("integration_id") or uuid.uuid4().hex[:8]
        old = self.stored.get((tenant, ident), {}).get("settings", {})
        kept = {
            k: (old[k] if isinstance(v, str) and v.startswith("****") and k in old else v)
            for k, v in settings.items()
        }
        self.version += 1
        config = {
            "integration_id": ident,
            "tenant_id": tenant,
            "type": body["type"],
            "name": body["name"],
            "enabled": body.get("enabled", True),
            "event_types": body.get("event_types", ["client_side_risk", "pci_scope_change"]),
            "min_risk_level": body.get("min_risk_level", "low"),
            "settings": kept,
            "version": self.version,
        }
        self.stored[(tenant, ident)] = config
        return status, {"integration": self.masked(config), "version": self.version}

    @staticmethod
    def test(config: dict[str, Any]) -> dict[str, Any]:
        url = str(config.get("settings", {}).get("webhook_url", ""))
        if "good" in url or "SECRET" in url:
            return {"ok": True, "detail": "HTTP 200 from hooks.slack.com", "latency_ms": 42.4}
        return {"ok": False, "detail": "HTTP 404 from hooks.slack.com", "latency_ms": 12.0}

    def posted(self, path_suffix: str) -> list[dict[str, Any]]:
        return [
            r for r in self.requests if r["method"] == "POST" and r["path"].endswith(path_suffix)
        ]


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer = fake.handle(self.command, self.path, headers, body)
            data = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            if data:
                self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def cli(api: FakeApi, *args: str, token: str = GOOD_TOKEN, input: str | None = None) -> Result:
    command, rest = list(args[:2]), list(args[2:])
    common = ["--api-url", api.url, "--token", token, "--tenant", "acme"]
    return run(*command, *rest, *common, input=input)


def add_slack(api: FakeApi, ident: str = "soc", url: str = SECRET_URL) -> Result:
    return cli(
        api,
        "integrations",
        "add",
        "--id",
        ident,
        "--type",
        "slack",
        "--name",
        f"SOC {ident}",
        "--setting",
        f"webhook_url={url}",
        "--setting",
        "channel=#soc",
    )


# -- --help -------------------------------------------------------------------------------

HELP = [
    ([], ["worker", "keys", "tokens", "integrations", "alerts"]),
    (["worker"], ["KAFKA_BOOTSTRAP_SERVERS"]),
    (["keys", "generate"], ["--id"]),
    (["tokens"], ["create", "list"]),
    (["tokens", "create"], ["--role", "--tenant", "--name", "--file", "cannot be shown again"]),
    (["tokens", "list"], ["--file"]),
    (["integrations"], ["add", "list", "show", "test", "delete", "update"]),
    (
        ["integrations", "add"],
        [
            "--file",
            "--type",
            "--name",
            "--setting",
            "--setting-file",
            "--event-type",
            "--min-risk",
            "--disabled",
            "--id",
            "--test-first",
            "--api-url",
            "--token",
            "--tenant",
            "Exit codes",
        ],
    ),
    (["integrations", "update"], ["--file", "--setting", "--disabled", "Exit codes"]),
    (["integrations", "list"], ["--json", "--tenant", "Exit codes"]),
    (["integrations", "show"], ["ID", "--tenant"]),
    (["integrations", "test"], ["[ID]", "--file", "--tenant", "Exit codes"]),
    (["integrations", "delete"], ["--yes", "--tenant"]),
    (["alerts"], ["send"]),
    (
        ["alerts", "send"],
        [
            "--file",
            "--sample",
            "--tenant",
            "--avro",
            "--bootstrap",
            "KAFKA_BOOTSTRAP_SERVERS",
            "--topic",
            "ALERTRELAY_TOPIC_ALERTS",
            "--dry-run",
            "Exit codes",
        ],
    ),
]


@pytest.mark.parametrize(
    ("command", "mentions"), HELP, ids=[" ".join(c) or "main" for c, _ in HELP]
)
def test_help(command: list[str], mentions: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # undo the wrapping
    for mention in mentions:
        assert mention in text, f"{mention!r} not in --help of {command}"


# -- tokens -------------------------------------------------------------------------------


def test_tokens_create_prints_the_token_once_and_list_never_shows_hashes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.jsonl"
    created = run(
        "tokens",
        "create",
        "--role",
        "editor",
        "--tenant",
        "acme",
        "--name",
        "console",
        "--file",
        str(path),
    )
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert re.fullmatch(r"ar_[A-Za-z0-9_-]{43}", token)
    assert "cannot be shown again" in created.stderr
    assert token not in created.stderr
    assert TokenStore(path).authenticate(f"Bearer {token}") is not None

    run("tokens", "create", "--role", "viewer", "--tenant", "globex", "--file", str(path))
    listed = run("tokens", "list", "--file", str(path))
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "ROLE", "TENANT", "NAME", "CREATED"]
    assert "editor" in lines[2] and "acme" in lines[2] and "console" in lines[2]
    assert "viewer" in lines[3] and "globex" in lines[3]
    stored = [json.loads(line) for line in path.read_text().splitlines()]
    for record in stored:
        assert record["hash"] not in listed.output
        assert record["id"] in listed.output
    assert token not in listed.output


def test_tokens_file_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "env-tokens.jsonl"
    monkeypatch.setenv("ALERTRELAY_API_TOKENS_FILE", str(path))
    assert run("tokens", "create", "--role", "admin", "--tenant", "acme").exit_code == 0
    assert path.exists()
    assert "admin" in run("tokens", "list").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "root", "--tenant", "acme"], "root"),
        (["--role", "admin", "--tenant", "a/b"], "'/'"),
        (["--role", "admin", "--tenant", ""], "tenant_id"),
        (["--role", "admin"], "--tenant"),
    ],
)
def test_tokens_create_refuses_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "tokens.jsonl"
    result = run("tokens", "create", *args, "--file", str(path))
    assert result.exit_code == 2
    assert message in result.output
    assert not path.exists()


def test_tokens_list_without_a_file(tmp_path: Path) -> None:
    result = run("tokens", "list", "--file", str(tmp_path / "none.jsonl"))
    assert result.exit_code == 0
    assert "does not exist" in result.stderr


# -- integrations ---------------------------------------------------------------------------


def test_add_with_options_saves_and_prints_the_masked_integration(api: FakeApi) -> None:
    result = cli(
        api,
        "integrations",
        "add",
        "--type",
        "slack",
        "--name",
        "SOC channel",
        "--setting",
        f"webhook_url={SECRET_URL}",
        "--setting",
        "channel=#soc",
        "--setting",
        'headers=[{"name": "X-Team", "value": "soc"}]',
        "--setting",
        "verbose=true",
        "--setting",
        "project_id=10001",
        "--event-type",
        "pci_scope_change",
        "--min-risk",
        "high",
        "--disabled",
        "--id",
        "soc-slack",
    )
    assert result.exit_code == 0, result.output
    body = api.posted("/integrations")[0]["body"]
    assert body == {
        "integration_id": "soc-slack",
        "type": "slack",
        "name": "SOC channel",
        "enabled": False,
        "event_types": ["pci_scope_change"],
        "min_risk_level": "high",
        "settings": {
            "webhook_url": SECRET_URL,
            "channel": "#soc",
            "headers": [{"name": "X-Team", "value": "soc"}],
            "verbose": True,
            "project_id": "10001",  # numbers stay text
        },
    }
    printed = json.loads(result.stdout)
    assert printed["version"] == 1
    assert printed["integration"]["integration_id"] == "soc-slack"
    assert printed["integration"]["settings"]["webhook_url"] == "****1234"
    assert SECRET_URL not in result.output
    assert "Saved integration 'soc-slack' (slack, version 1)" in result.stderr
    assert api.requests[0]["headers"]["authorization"] == f"Bearer {GOOD_TOKEN}"
    assert api.requests[0]["path"] == "/api/v1/tenants/acme/integrations"


def test_add_422_prints_every_field_and_exits_2(api: FakeApi) -> None:
    result = cli(
        api,
        "integrations",
        "add",
        "--type",
        "carrier-pigeon",
        "--name",
        "x",
        "--setting",
        "webhook_url=http://insecure.example.com",
    )
    assert result.exit_code == 2, result.output
    assert "type: unknown integration type" in result.stderr
    assert "settings.webhook_url: must be an https URL" in result.stderr
    assert api.stored == {}


def test_add_needs_a_file_or_type_and_name(api: FakeApi) -> None:
    result = cli(api, "integrations", "add", "--setting", "channel=#x")
    assert result.exit_code == 2
    assert "--type and --name" in result.output
    assert api.requests == []


def test_add_from_a_file_with_options_on_top(api: FakeApi, tmp_path: Path) -> None:
    config = {
        "integration_id": "from-file",
        "tenant_id": "acme",
        "type": "webhook",
        "name": "SIEM",
        "settings": {"webhook_url": "https://siem.example.com/in", "method": "POST"},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    pem = tmp_path / "client.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    result = cli(
        api,
        "integrations",
        "add",
        "--file",
        str(path),
        "--min-risk",
        "critical",
        "--setting-file",
        f"client_certificate={pem}",
    )
    assert result.exit_code == 0, result.output
    body = api.posted("/integrations")[0]["body"]
    assert body["integration_id"] == "from-file" and body["type"] == "webhook"
    assert body["min_risk_level"] == "critical"
    assert body["settings"]["method"] == "POST"
    assert body["settings"]["client_certificate"].startswith("-----BEGIN CERTIFICATE-----")
    assert "tenant_id" not in body  # the path names the tenant


def test_add_refuses_a_file_of_another_tenant(api: FakeApi, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"tenant_id": "globex", "type": "slack", "name": "x"}))
    result = cli(api, "integrations", "add", "--file", str(path))
    assert result.exit_code == 2
    assert "globex" in result.output
    assert api.requests == []


def test_add_refuses_a_file_that_is_not_json(api: FakeApi, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    result = cli(api, "integrations", "add", "--file", str(path))
    assert result.exit_code == 2
    assert "not valid JSON" in result.output


def test_add_test_first_aborts_when_the_test_fails(api: FakeApi) -> None:
    result = cli(
        api,
        "integrations",
        "add",
        "--type",
        "slack",
        "--name",
        "bad",
        "--setting",
        "webhook_url=https://hooks.slack.com/services/wrong",
        "--test-first",
    )
    assert result.exit_code == 1, result.output
    assert "FAILED: HTTP 404 from hooks.slack.com" in result.stdout
    assert "NOT saved" in result.stderr
    assert len(api.posted("/integrations/test")) == 1
    assert api.posted("/integrations") == []
    assert api.stored == {}


def test_add_test_first_saves_when_the_test_passes(api: FakeApi) -> None:
    result = cli(
        api,
        "integrations",
        "add",
        "--type",
        "slack",
        "--name",
        "good",
        "--setting",
        "webhook_url=https://hooks.slack.com/services/good",
        "--test-first",
    )
    assert result.exit_code == 0, result.output
    assert "ok: HTTP 200 from hooks.slack.com (42 ms)" in result.stdout
    assert [r["path"].rsplit("/", 1)[-1] for r in api.requests] == ["test", "integrations"]
    assert len(api.stored) == 1


def test_list_shows_a_table(api: FakeApi) -> None:
    add_slack(api, "alpha")
    cli(
        api,
        "integrations",
        "add",
        "--id",
        "beta",
        "--type",
        "webhook",
        "--name",
        "SIEM",
        "--setting",
        "webhook_url=https://siem.example.com/x",
        "--event-type",
        "pci_scope_change",
        "--min-risk",
        "high",
        "--disabled",
    )
    result = cli(api, "integrations", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "TYPE", "NAME", "ENABLED", "FILTERS", "VERSION"]
    assert re.match(r"alpha\s+slack\s+SOC alpha\s+yes\s+all events; risk>=low\s+1$", lines[2])
    assert re.match(r"beta\s+webhook\s+SIEM\s+no\s+pci_scope_change; risk>=high\s+2$", lines[3])
    assert SECRET_URL not in result.output

    as_json = cli(api, "integrations", "list", "--json")
    assert [i["integration_id"] for i in json.loads(as_json.stdout)["integrations"]] == [
        "alpha",
        "beta",
    ]


def test_list_empty(api: FakeApi) -> None:
    result = cli(api, "integrations", "list")
    assert result.exit_code == 0
    assert "no integrations for tenant 'acme'" in result.stderr


def test_show_prints_json_and_404_exits_1(api: FakeApi) -> None:
    add_slack(api)
    shown = cli(api, "integrations", "show", "soc")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["version"] == 1
    assert data["integration"]["settings"] == {"webhook_url": "****1234", "channel": "#soc"}

    missing = cli(api, "integrations", "show", "nope")
    assert missing.exit_code == 1
    assert "not found: no integration 'nope'" in missing.stderr


def test_test_saved_ok_and_not_ok(api: FakeApi) -> None:
    add_slack(api, "good-one")
    add_slack(api, "bad-one", url="https://hooks.slack.com/services/wrong")
    ok = cli(api, "integrations", "test", "good-one")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip() == "ok: HTTP 200 from hooks.slack.com (42 ms)"
    bad = cli(api, "integrations", "test", "bad-one")
    assert bad.exit_code == 1
    assert bad.stdout.strip() == "FAILED: HTTP 404 from hooks.slack.com (12 ms)"
    assert api.posted("/good-one/test") and api.posted("/bad-one/test")


def test_test_an_unsaved_config_from_a_file(api: FakeApi, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"type": "slack", "name": "x", "settings": {"webhook_url": SECRET_URL}})
    )
    result = cli(api, "integrations", "test", "--file", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok:")
    assert api.posted("/integrations/test")[0]["body"]["settings"]["webhook_url"] == SECRET_URL
    assert api.stored == {}


def test_test_refuses_both_an_id_and_a_config(api: FakeApi, tmp_path: Path) -> None:
    result = cli(api, "integrations", "test", "soc", "--type", "slack")
    assert result.exit_code == 2
    assert api.requests == []


def test_update_applies_options_to_the_stored_config(api: FakeApi) -> None:
    add_slack(api)
    result = cli(api, "integrations", "update", "soc", "--disabled", "--setting", "channel=#x")
    assert result.exit_code == 0, result.output
    put = next(r for r in api.requests if r["method"] == "PUT")
    assert put["path"] == "/api/v1/tenants/acme/integrations/soc"
    # The masked secret goes back as it was shown, and the server keeps the stored one.
    assert put["body"]["settings"] == {"webhook_url": "****1234", "channel": "#x"}
    assert put["body"]["enabled"] is False
    assert "version" not in put["body"] and "tenant_id" not in put["body"]
    assert api.stored[("acme", "soc")]["settings"]["webhook_url"] == SECRET_URL
    assert json.loads(result.stdout)["version"] == 2


def test_update_from_show_output(api: FakeApi, tmp_path: Path) -> None:
    add_slack(api)
    path = tmp_path / "soc.json"
    path.write_text(cli(api, "integrations", "show", "soc").stdout)
    result = cli(api, "integrations", "update", "soc", "--file", str(path), "--name", "Renamed")
    assert result.exit_code == 0, result.output
    assert api.stored[("acme", "soc")]["name"] == "Renamed"
    assert api.stored[("acme", "soc")]["settings"]["webhook_url"] == SECRET_URL


def test_delete_with_yes(api: FakeApi) -> None:
    add_slack(api)
    result = cli(api, "integrations", "delete", "soc", "--yes")
    assert result.exit_code == 0, result.output
    assert "Deleted integration 'soc'" in result.stderr
    assert api.stored == {}
    again = cli(api, "integrations", "delete", "soc", "--yes")
    assert again.exit_code == 1
    assert "not found" in again.stderr


def test_delete_asks_first(api: FakeApi) -> None:
    add_slack(api)
    declined = cli(api, "integrations", "delete", "soc", input="n\n")
    assert declined.exit_code == 1
    assert "Delete integration 'soc' of tenant 'acme'?" in declined.output
    assert ("acme", "soc") in api.stored
    assert not [r for r in api.requests if r["method"] == "DELETE"]
    confirmed = cli(api, "integrations", "delete", "soc", input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert api.stored == {}


def test_connection_refused_names_the_url_and_make_run() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run("integrations", "list", "--api-url", url, "--tenant", "acme")
    assert result.exit_code == 3
    assert url in result.stderr
    assert "make run" in result.stderr


def test_refused_token_exits_4_and_says_how_to_get_one(api: FakeApi) -> None:
    result = cli(api, "integrations", "list", token="ar_wrong")
    assert result.exit_code == 4
    assert "the token was refused: create one with `alertrelay tokens create`" in result.stderr


def test_missing_token_sends_no_header_and_is_refused(api: FakeApi) -> None:
    result = run("integrations", "list", "--api-url", api.url, "--tenant", "acme")
    assert result.exit_code == 4
    assert "authorization" not in api.requests[0]["headers"]


def test_forbidden_role_exits_4(api: FakeApi) -> None:
    result = add_slack_as_viewer(api)
    assert result.exit_code == 4
    assert "forbidden: viewer tokens may only read" in result.stderr


def add_slack_as_viewer(api: FakeApi) -> Result:
    return cli(
        api,
        "integrations",
        "add",
        "--type",
        "slack",
        "--name",
        "x",
        "--setting",
        f"webhook_url={SECRET_URL}",
        token=VIEWER_TOKEN,
    )


def test_options_from_the_environment(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTRELAY_API_URL", api.url + "/")
    monkeypatch.setenv("ALERTRELAY_API_TOKEN", GOOD_TOKEN)
    monkeypatch.setenv("ALERTRELAY_TENANT", "acme")
    result = run("integrations", "list")
    assert result.exit_code == 0, result.output
    assert api.requests[0]["path"] == "/api/v1/tenants/acme/integrations"


def test_tenant_and_id_are_url_quoted(api: FakeApi) -> None:
    result = run(
        "integrations",
        "show",
        "a b",
        "--api-url",
        api.url,
        "--token",
        GOOD_TOKEN,
        "--tenant",
        "acme corp",
    )
    assert result.exit_code == 1  # not found, but the path was well formed
    assert api.requests[0]["path"] == "/api/v1/tenants/acme%20corp/integrations/a%20b"


# -- alerts send (no broker needed) ---------------------------------------------------------


def test_sample_alerts_are_valid_unique_and_mixed() -> None:
    alerts = sample_alerts(200, "acme", random.Random(7))
    models = [Alert.model_validate(a) for a in alerts]
    assert len({a.alert_id for a in models}) == 200
    assert {a.event_type.value for a in models} == {"client_side_risk", "pci_scope_change"}
    assert {a.risk_level.value for a in models} == {"low", "medium", "high", "critical"}
    assert all(a.tenant_id == "acme" for a in models)
    # Real traffic has more low than critical alerts.
    levels = [a.risk_level.value for a in models]
    assert levels.count("low") > levels.count("critical")
    # Avro round trip of every sample.
    for model in models:
        assert decode_alert(encode_alert_avro(model, confluent_schema_id=1)) == model


def test_small_samples_still_mix_types_and_levels() -> None:
    for seed in range(20):
        alerts = sample_alerts(4, "acme", random.Random(seed))
        assert {a["risk_level"] for a in alerts} == {"low", "medium", "high", "critical"}
        assert {a["event_type"] for a in alerts} == {"client_side_risk", "pci_scope_change"}


def test_samples_are_reproducible_with_a_seed_and_unique_without() -> None:
    fixed = "2026-11-24T10:00:00+00:00"
    from datetime import datetime

    now = datetime.fromisoformat(fixed)
    assert sample_alerts(5, "acme", random.Random(1), now) == sample_alerts(
        5, "acme", random.Random(1), now
    )
    first = {a["alert_id"] for a in sample_alerts(5, "acme", random.Random())}
    second = {a["alert_id"] for a in sample_alerts(5, "acme", random.Random())}
    assert not first & second


def test_send_dry_run_prints_valid_sample_alerts() -> None:
    result = run("alerts", "send", "--sample", "5", "--tenant", "acme", "--dry-run")
    assert result.exit_code == 0, result.output
    alerts = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(alerts) == 5
    for alert in alerts:
        Alert.model_validate(alert)
    assert "5 valid alerts, nothing sent" in result.stderr


def test_send_refuses_invalid_alerts_naming_the_fields(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    good = make_alert(1)
    bad_level = make_alert(2, risk_level="severe")
    no_tenant = make_alert(3)
    del no_tenant["tenant_id"]
    path.write_text(
        "\n".join(json.dumps(a) for a in (good, bad_level, no_tenant)) + "\n[1]\n{oops\n"
    )
    result = run("alerts", "send", "--file", str(path), "--bootstrap", "127.0.0.1:1")
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert "4 of 5 alerts are invalid; nothing was sent" in err
    assert "line 5: invalid JSON" in err
    assert "line 2 (acme-alert-2): risk_level:" in err
    assert "line 3 (acme-alert-3): tenant_id: Field required" in err
    assert "line 4: an alert must be a JSON object, not list" in err
    assert "severe" not in err  # values are not echoed (they could be secrets)


def test_send_file_forms(tmp_path: Path) -> None:
    one = tmp_path / "one.json"
    one.write_text(json.dumps(make_alert(1), indent=2))
    many = tmp_path / "many.json"
    many.write_text(json.dumps([make_alert(1), make_alert(2)]))
    for path, count in ((one, 1), (many, 2)):
        result = run("alerts", "send", "--file", str(path), "--dry-run")
        assert result.exit_code == 0, result.output
        assert len(result.stdout.splitlines()) == count


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--sample", "3"],
        ["--sample", "3", "--tenant", "acme", "--file", "x.json"],
        ["--file", "x.json", "--tenant", "acme"],
        ["--sample", "0", "--tenant", "acme"],
    ],
)
def test_send_usage_errors(args: list[str]) -> None:
    assert run("alerts", "send", *args).exit_code == 2


def test_send_to_an_unreachable_broker_exits_3() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    result = run(
        "alerts",
        "send",
        "--sample",
        "1",
        "--tenant",
        "acme",
        "--bootstrap",
        bootstrap,
        "--timeout",
        "1",
    )
    assert result.exit_code == 3, result.output
    assert bootstrap in result.stderr and "make run" in result.stderr
