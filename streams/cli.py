"""The `alertrelay` command."""

from __future__ import annotations

import functools
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import click

from schemas.models import Alert, EventType, RiskLevel
from streams.api.tokens import (
    DEFAULT_TOKENS_FILE,
    ROLES,
    TOKENS_FILE_ENV,
    create_token,
    read_records,
)
from streams.settings import Settings

if TYPE_CHECKING:
    import httpx

__all__ = ["ApiClient", "main", "sample_alerts"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """alertrelay: deliver security alerts from Kafka to the tools your team uses."""


@main.command()
def worker() -> None:
    """Run a worker: consume alerts and configs, deliver to every integration.

    Configured by environment variables (README: Configuration); the broker is
    KAFKA_BOOTSTRAP_SERVERS.
    """
    from streams.malloc import tune_malloc

    tune_malloc()  # before any thread starts (streams/malloc.py)

    import faust

    from sinks.registry import available_types
    from sinks.secretbox import SecretBox, SecretBoxError
    from streams.gc_tuning import tune_gc
    from streams.pipeline import build_pipeline
    from streams.topics import prepare_topics

    settings = Settings.from_env()
    try:
        box = SecretBox.from_env()
    except SecretBoxError as exc:
        raise SystemExit(f"alertrelay worker: {exc}") from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request line with its full URL, and a webhook URL is a secret.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    partitions = prepare_topics(settings, available_types())
    pipeline = build_pipeline(settings, partitions, box)
    tune_gc()  # what is built now lives as long as the process (streams/gc_tuning.py)
    click.echo(
        f"alertrelay worker: broker {settings.bootstrap_servers}, {partitions} partitions, "
        f"sinks {', '.join(sorted(pipeline.sinks))}, http://{settings.web_host}:"
        f"{settings.web_port}/health",
        err=True,
    )
    faust.Worker(pipeline.app, loglevel=settings.log_level, quiet=True).execute_from_commandline()


@main.group()
def keys() -> None:
    """Secret keys that seal integration secrets at rest."""


@keys.command("generate")
@click.option("--id", "kid", default="k1", show_default=True, help="key id (for rotation)")
def keys_generate(kid: str) -> None:
    """Print a new key entry for ALERTRELAY_SECRET_KEYS.

    To rotate, put the new entry first and keep the old ones after it, comma-separated:
    the first key seals, every key opens.
    """
    from sinks.secretbox import generate_key_spec

    click.echo(generate_key_spec(kid))


# -- shared helpers ---------------------------------------------------------------------

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4

_API_EXIT_CODES = """\b
Exit codes:
  0  done
  1  failed: the test did not pass, not found, or another API error
  2  invalid input (bad options or files, a config refused with 422)
  3  cannot reach the API
  4  the API refused the token (401) or its role (403)"""


class CliError(click.ClickException):
    """A failure with a message for the user and the exit code documented in --help."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False)


def _read_input(path: str) -> str:
    """Text of a file, or of stdin for '-'."""
    if path == "-":
        return click.get_text_stream("stdin").read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {exc}", EXIT_INVALID) from None


# -- tokens -----------------------------------------------------------------------------

_TOKENS_FILE_OPTION = click.option(
    "--file",
    "tokens_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=str(DEFAULT_TOKENS_FILE),
    envvar=TOKENS_FILE_ENV,
    show_default=True,
    show_envvar=True,
    help="the tokens file the worker reads",
)


@main.group()
def tokens() -> None:
    """Bearer tokens of the HTTP API (stored as SHA-256 hashes, never in clear).

    The worker re-reads the tokens file within a second of a change: no restart needed.
    Send a token as `Authorization: Bearer <token>`, or give it to the `integrations`
    commands with --token / ALERTRELAY_API_TOKEN.
    """


@tokens.command("create")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    required=True,
    help="admin: everything, including HTTP webhooks; editor: create and change other "
    "integrations; viewer: read only",
)
@click.option("--tenant", required=True, help="the tenant the token acts for (no '/')")
@click.option("--name", default="", help="a label: who or what uses the token")
@_TOKENS_FILE_OPTION
def tokens_create(role: str, tenant: str, name: str, tokens_file: Path) -> None:
    """Create a token and print it once.

    The token goes to stdout alone on its line (for scripts); the rest goes to stderr.
    Only its hash is stored, so it cannot be shown again: keep it in a secret store.

    \b
    Example:
      export ALERTRELAY_API_TOKEN=$(alertrelay tokens create --role editor --tenant acme)
    """
    try:
        token, record = create_token(tokens_file, role=role, tenant_id=tenant, name=name)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {tokens_file}: {exc.strerror or exc}") from None
    click.echo(
        f"Created {record.role} token {record.id} for tenant {record.tenant_id!r} "
        f"in {tokens_file}.",
        err=True,
    )
    click.echo(
        "Copy it now: it cannot be shown again (only its hash is stored).",
        err=True,
    )
    click.echo(token)


@tokens.command("list")
@_TOKENS_FILE_OPTION
def tokens_list(tokens_file: Path) -> None:
    """List the tokens of a file: id, role, tenant, name, created (never hashes)."""
    if not tokens_file.exists():
        click.echo(f"no tokens: {tokens_file} does not exist", err=True)
        return
    records = read_records(tokens_file)
    if not records:
        click.echo(f"no tokens in {tokens_file}", err=True)
        return
    rows = [[r.id, r.role, r.tenant_id, r.name, r.created] for r in records]
    click.echo(_table(["ID", "ROLE", "TENANT", "NAME", "CREATED"], rows))


# -- integrations (HTTP API client) -----------------------------------------------------

MASKED_HINT = "secrets are masked; sending a masked value back keeps the stored one"


class ApiClient:
    """The worker's integrations API for one tenant, with errors turned into CliError."""

    def __init__(
        self,
        api_url: str,
        token: str | None,
        tenant: str,
        timeout: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        import httpx

        self.api_url = api_url.rstrip("/")
        self.tenant = tenant
        headers = {"Accept": "application/json", "User-Agent": "alertrelay-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=self.api_url, headers=headers, timeout=timeout, transport=transport
        )
        self._timeout = timeout

    def path(self, *parts: str) -> str:
        tail = "".join("/" + quote(p, safe="") for p in parts)
        return f"/api/v1/tenants/{quote(self.tenant, safe='')}/integrations{tail}"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        expect: tuple[int, ...] = (200,),
        what: str = "",
    ) -> Any:
        """Send one request; return the decoded JSON of an expected answer (None for
        204), else raise CliError with a message and the documented exit code."""
        import httpx

        try:
            response = self._client.request(method, path, json=body)
        except httpx.ConnectError:
            raise CliError(
                f"cannot reach the alertrelay API at {self.api_url} (connection refused or "
                "no such host). Is the worker running? Start it with `make run`, or point "
                "--api-url / ALERTRELAY_API_URL at it.",
                EXIT_UNREACHABLE,
            ) from None
        except httpx.TimeoutException:
            raise CliError(
                f"the alertrelay API at {self.api_url} did not answer within "
                f"{self._timeout:g} s (raise --timeout?)",
                EXIT_UNREACHABLE,
            ) from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise CliError(f"invalid --api-url {self.api_url!r}: {exc}", EXIT_INVALID) from None
        except httpx.HTTPError as exc:
            raise CliError(
                f"request to {self.api_url} failed: {type(exc).__name__}: {exc}",
                EXIT_UNREACHABLE,
            ) from None
        return self._answer(response, expect, what)

    def _answer(self, response: httpx.Response, expect: tuple[int, ...], what: str) -> Any:
        status = response.status_code
        data: Any = None
        if response.content:
            try:
                data = response.json()
            except ValueError:
                data = None
        if status in expect:
            if status == 204 or not response.content:
                return None
            if data is None:
                raise CliError(f"the API answered {status} with a body that is not JSON")
            return data
        detail = ""
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            detail = data["error"]
        elif data is None and response.text:
            detail = response.text.strip()[:300]
        if status == 401:
            raise CliError(
                "the token was refused: create one with `alertrelay tokens create` and "
                "pass it with --token or ALERTRELAY_API_TOKEN" + (f" ({detail})" if detail else ""),
                EXIT_REFUSED,
            )
        if status == 403:
            raise CliError(f"forbidden: {detail or 'this token may not do that'}", EXIT_REFUSED)
        if status == 404:
            raise CliError(f"not found: {detail or what or response.request.url.path}")
        if status == 422 and isinstance(data, dict) and isinstance(data.get("errors"), list):
            click.echo("The configuration was refused:", err=True)
            for error in data["errors"]:
                if isinstance(error, dict):
                    field = error.get("field") or "(config)"
                    click.echo(f"  {field}: {error.get('message', '')}", err=True)
                else:
                    click.echo(f"  {error}", err=True)
            raise SystemExit(EXIT_INVALID)
        if status == 422:
            raise CliError(f"the API refused the request: {detail}", EXIT_INVALID)
        raise CliError(f"the API answered {status}" + (f": {detail}" if detail else ""))


def _bundled(
    param: str, into: type[Any], options: Sequence[Callable[[Any], Any]]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator that adds `options` to a command and hands their values to it as one
    `into` object (a dataclass whose fields are the options' parameter names), in the
    parameter `param`. The options, their order and --help stay those of `options`."""
    names = [f.name for f in fields(into)]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            kwargs[param] = into(**{name: kwargs.pop(name) for name in names})
            return func(*args, **kwargs)

        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@dataclass(frozen=True)
class _Server:
    """Where and as whom an integrations command talks to the API."""

    api_url: str
    token: str | None
    tenant: str
    timeout: float

    def client(self) -> ApiClient:
        return ApiClient(self.api_url, self.token, self.tenant, self.timeout)


_api_options = _bundled(
    "server",
    _Server,
    [
        click.option(
            "--api-url",
            default="http://127.0.0.1:6066",
            envvar="ALERTRELAY_API_URL",
            show_default=True,
            show_envvar=True,
            help="the worker's HTTP API",
        ),
        click.option(
            "--token",
            envvar="ALERTRELAY_API_TOKEN",
            show_envvar=True,
            help="bearer token (from `alertrelay tokens create`)",
        ),
        click.option(
            "--tenant",
            required=True,
            envvar="ALERTRELAY_TENANT",
            show_envvar=True,
            help="the tenant whose integrations to manage",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            default=30.0,
            show_default=True,
            help="seconds to wait for an answer",
        ),
    ],
)
"""--api-url, --token, --tenant and --timeout, shared by every integrations command:
the command gets them as `server: _Server`."""


@dataclass(frozen=True)
class _ConfigInput:
    """A config as given on the command line: a JSON file, and options over its fields."""

    config_file: str | None
    integration_id: str | None
    type_: str | None
    name: str | None
    settings: tuple[str, ...]
    setting_files: tuple[str, ...]
    event_types: tuple[str, ...]
    min_risk: str | None
    enabled: bool | None

    def anything(self) -> bool:
        """Whether any of --file and the config options was given."""
        return bool(
            self.config_file
            or self.type_
            or self.name
            or self.settings
            or self.setting_files
            or self.event_types
            or self.min_risk
            or self.integration_id
            or self.enabled is not None
        )

    def file(self) -> dict[str, Any] | None:
        """The config of --file (a file, or stdin for '-'), None without --file."""
        return _load_config_file(self.config_file) if self.config_file else None

    def build(self, tenant: str, base: dict[str, Any] | None) -> dict[str, Any]:
        """The request body: the base (file or stored config) with the options on top."""
        config = dict(base or {})
        file_tenant = config.pop("tenant_id", None)
        if file_tenant not in (None, tenant):
            raise CliError(
                f"the config is for tenant {file_tenant!r}, not --tenant {tenant!r}", EXIT_INVALID
            )
        config.pop("version", None)  # the server assigns versions
        if self.integration_id is not None:
            config["integration_id"] = self.integration_id
        if self.type_ is not None:
            config["type"] = self.type_
        if self.name is not None:
            config["name"] = self.name
        if self.event_types:
            config["event_types"] = list(dict.fromkeys(self.event_types))
        if self.min_risk is not None:
            config["min_risk_level"] = self.min_risk
        if self.enabled is not None:
            config["enabled"] = self.enabled
        if self.settings or self.setting_files:
            merged = dict(config.get("settings") or {})
            merged.update(_parse_setting(item) for item in self.settings)
            for item in self.setting_files:
                key, sep, path = item.partition("=")
                if not sep or not key.strip() or not path:
                    raise click.BadParameter(
                        f"expected KEY=PATH, got {item!r}", param_hint="--setting-file"
                    )
                merged[key.strip()] = _read_input(path)
            config["settings"] = merged
        missing = [f"--{f}" for f in ("type", "name") if not config.get(f)]
        if missing:
            raise click.UsageError(
                f"give --file with a config, or {' and '.join(missing)} (with --setting ...)"
            )
        config.setdefault("settings", {})
        return config


_config_options = _bundled(
    "given",
    _ConfigInput,
    [
        click.option(
            "--file",
            "config_file",
            type=click.Path(dir_okay=False, allow_dash=True),
            help="integration config as JSON ('-' for stdin); `show` output works too",
        ),
        click.option("--id", "integration_id", help="integration id (default: one is made up)"),
        click.option(
            "--type",
            "type_",
            help="integration type: webhook, s3, slack, email, jira, datadog, pagerduty, "
            "opsgenie, splunk, gcs",
        ),
        click.option("--name", help="display name (unique within the tenant)"),
        click.option(
            "--setting",
            "settings",
            multiple=True,
            metavar="KEY=VALUE",
            help="one setting, repeatable. A VALUE that is a JSON list, object or boolean is "
            'sent as such (headers=\'[{"name":"X","value":"y"}]\'); anything else as text',
        ),
        click.option(
            "--setting-file",
            "setting_files",
            multiple=True,
            metavar="KEY=PATH",
            help="one setting read from a file, repeatable: a PEM client certificate, a "
            "service account JSON (kept off the command line and shell history)",
        ),
        click.option(
            "--event-type",
            "event_types",
            multiple=True,
            type=click.Choice([e.value for e in EventType]),
            help="deliver only these event types (repeatable; default both)",
        ),
        click.option(
            "--min-risk",
            type=click.Choice([r.value for r in RiskLevel]),
            help="deliver only alerts at or above this risk level (default low)",
        ),
        click.option(
            "--enabled/--disabled",
            "enabled",
            default=None,
            help="save it switched on (default) or off",
        ),
    ],
)
"""How to give a config: a JSON file, or options (which override the file's fields);
the command gets them as `given: _ConfigInput`."""


def _parse_setting(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--setting")
    try:
        parsed = json.loads(raw)
    except ValueError:
        return key, raw
    # Numbers and strings stay text: "10001" is a Jira project id, not a number.
    return key, parsed if isinstance(parsed, list | dict | bool) else raw


def _load_config_file(path: str) -> dict[str, Any]:
    text = _read_input(path)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{path} is not valid JSON: {exc}", EXIT_INVALID) from None
    # Accept `show` output ({"integration": {...}, "version": N}) as well as a bare config.
    if isinstance(data, dict) and isinstance(data.get("integration"), dict):
        data = data["integration"]
    if not isinstance(data, dict):
        raise CliError(f"{path} must hold one JSON object (an integration config)", EXIT_INVALID)
    return dict(data)


def _save(
    api: ApiClient, config: dict[str, Any], *, test_first: bool, integration_id: str | None = None
) -> Any:
    """Save a new config (POST), or integration `integration_id`'s new config (PUT); with
    --test-first only once the API's test of it passed."""
    if test_first:
        click.echo("Testing the config before saving ...", err=True)
        result = api.call("POST", api.path("test"), body=config, what="test")
        if not _print_test(result):
            undone = "saved" if integration_id is None else "changed"
            raise CliError(f"the test failed: the integration was NOT {undone}")
    if integration_id is None:
        return api.call("POST", api.path(), body=config, expect=(201, 200), what="save")
    return api.call("PUT", api.path(integration_id), body=config, what=integration_id)


def _print_saved(data: Any, verb: str) -> None:
    integration = data.get("integration", {}) if isinstance(data, dict) else {}
    version = data.get("version") if isinstance(data, dict) else None
    click.echo(
        f"{verb} integration {integration.get('integration_id', '?')!r} "
        f"({integration.get('type', '?')}, version {version}); {MASKED_HINT}:",
        err=True,
    )
    click.echo(_dumps(data))


def _print_test(data: Any) -> bool:
    if not isinstance(data, dict) or "ok" not in data:
        raise CliError("the test answer is not {ok, detail, latency_ms}")
    ok = bool(data["ok"])
    latency = data.get("latency_ms")
    timing = f" ({float(latency):.0f} ms)" if isinstance(latency, int | float) else ""
    click.echo(f"{'ok' if ok else 'FAILED'}: {data.get('detail', '')}{timing}")
    return ok


def _filters(config: dict[str, Any]) -> str:
    types = config.get("event_types") or [e.value for e in EventType]
    events = "all events" if set(types) >= {e.value for e in EventType} else ",".join(types)
    return f"{events}; risk>={config.get('min_risk_level', 'low')}"


@main.group()
def integrations() -> None:
    """Manage a tenant's integrations through the worker's HTTP API.

    Every command takes --tenant, --token (or ALERTRELAY_API_TOKEN) and --api-url (or
    ALERTRELAY_API_URL, default http://127.0.0.1:6066: start the worker with `make run`).
    Secrets are never shown: the API masks them. Exit codes: see each command's --help.
    """


@integrations.command("add", epilog=_API_EXIT_CODES)
@_config_options
@click.option(
    "--test-first",
    is_flag=True,
    help="send a test alert with the config first and save only if it arrived",
)
@_api_options
def integrations_add(given: _ConfigInput, test_first: bool, server: _Server) -> None:
    """Validate and save a new integration; print it (secrets masked) and its version.

    Give the config as a JSON file (--file) or with options; options override the
    file's fields. On a refused config (422) every field and reason is printed and the
    exit code is 2.

    \b
    Examples:
      alertrelay integrations add --tenant acme --type slack --name "SOC channel" \\
        --setting webhook_url=https://hooks.slack.com/services/T0/B0/XXX \\
        --setting channel=#soc --min-risk high --test-first
      alertrelay integrations add --tenant acme --type webhook --name SIEM \\
        --setting webhook_url=https://siem.example.com/in --setting method=POST \\
        --setting protocol=tcp --setting headers='[{"name":"X-Team","value":"soc"}]'
      alertrelay integrations add --tenant acme --file jira.json
    """
    config = given.build(server.tenant, given.file())
    with server.client() as api:
        saved = _save(api, config, test_first=test_first)
    _print_saved(saved, "Saved")


@integrations.command("update", epilog=_API_EXIT_CODES)
@click.argument("integration_id_arg", metavar="ID")
@_config_options
@click.option("--test-first", is_flag=True, help="test the new config first; save only if ok")
@_api_options
def integrations_update(
    integration_id_arg: str, given: _ConfigInput, test_first: bool, server: _Server
) -> None:
    """Replace integration ID's config, or change some fields of it.

    Without --file, the stored config is fetched and the options are applied to it, so
    `update ID --disabled` switches it off and `--setting channel=#other` changes one
    setting. Masked secrets sent back keep their stored values.
    """
    if given.integration_id not in (None, integration_id_arg):
        raise click.UsageError("--id cannot differ from ID: an integration keeps its id")
    with server.client() as api:
        base = given.file()
        if base is None:
            current = api.call("GET", api.path(integration_id_arg), what=integration_id_arg)
            base = dict(current.get("integration") or {}) if isinstance(current, dict) else {}
        if base.get("integration_id") not in (None, integration_id_arg):
            raise CliError(
                f"the file is for integration {base['integration_id']!r}, "
                f"not {integration_id_arg!r}",
                EXIT_INVALID,
            )
        config = replace(given, integration_id=integration_id_arg).build(server.tenant, base)
        saved = _save(api, config, test_first=test_first, integration_id=integration_id_arg)
    _print_saved(saved, "Updated")


@integrations.command("list", epilog=_API_EXIT_CODES)
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON instead of a table")
@_api_options
def integrations_list(as_json: bool, server: _Server) -> None:
    """List the tenant's integrations: id, type, name, enabled, filters, version."""
    with server.client() as api:
        data = api.call("GET", api.path(), what="integrations")
    if as_json:
        click.echo(_dumps(data))
        return
    items = data.get("integrations", []) if isinstance(data, dict) else []
    if not items:
        click.echo(f"no integrations for tenant {server.tenant!r}", err=True)
        return
    rows = []
    for item in items:
        config = item.get("integration", item) if isinstance(item, dict) else {}
        version = item.get("version", config.get("version", ""))
        rows.append(
            [
                str(config.get("integration_id", "")),
                str(config.get("type", "")),
                str(config.get("name", "")),
                "yes" if config.get("enabled", True) else "no",
                _filters(config),
                str(version if version is not None else ""),
            ]
        )
    click.echo(_table(["ID", "TYPE", "NAME", "ENABLED", "FILTERS", "VERSION"], rows))


@integrations.command("show", epilog=_API_EXIT_CODES)
@click.argument("integration_id", metavar="ID")
@_api_options
def integrations_show(integration_id: str, server: _Server) -> None:
    """Print integration ID as JSON (secrets masked) with its version.

    The output can be edited and given back with `update ID --file`.
    """
    with server.client() as api:
        data = api.call("GET", api.path(integration_id), what=integration_id)
    click.echo(_dumps(data))


@integrations.command("test", epilog=_API_EXIT_CODES)
@click.argument("integration_id_arg", metavar="[ID]", required=False)
@_config_options
@_api_options
def integrations_test(integration_id_arg: str | None, given: _ConfigInput, server: _Server) -> None:
    """Send a test alert through saved integration ID, or through an unsaved config
    (--file, or the options of `add`). Prints ok/FAILED, the detail and the latency;
    exits 1 when the destination did not accept it."""
    if integration_id_arg and given.anything():
        raise click.UsageError("give either a saved integration ID or a config, not both")
    with server.client() as api:
        if integration_id_arg:
            path, body = api.path(integration_id_arg, "test"), None
        else:
            path, body = api.path("test"), given.build(server.tenant, given.file())
        result = api.call("POST", path, body=body, what=integration_id_arg or "test")
    if not _print_test(result):
        sys.exit(EXIT_FAILED)


@integrations.command("delete", epilog=_API_EXIT_CODES)
@click.argument("integration_id", metavar="ID")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
@_api_options
def integrations_delete(integration_id: str, yes: bool, server: _Server) -> None:
    """Delete integration ID (a tombstone on the integrations topic): no more alerts go
    to it. Asks for confirmation unless --yes."""
    if not yes:
        click.confirm(
            f"Delete integration {integration_id!r} of tenant {server.tenant!r}?",
            abort=True,
            err=True,
        )
    with server.client() as api:
        api.call("DELETE", api.path(integration_id), expect=(204, 200), what=integration_id)
    click.echo(f"Deleted integration {integration_id!r} of tenant {server.tenant!r}.", err=True)


# -- alerts -----------------------------------------------------------------------------

_SAMPLE_DOMAINS = ("shop.example.com", "checkout.example.net", "www.example.org", "store.example")
_SAMPLE_PAGES = ("/checkout", "/checkout/payment", "/cart", "/account/billing", "/login")
_SAMPLE_SCRIPTS = (
    "https://cdn.tracker.example/t.js",
    "https://static.analytics-cdn.example/a.min.js",
    "https://cdn.example-chat.example/widget.js",
    "https://js.newly-registered.example/lib.js",
    "https://tags.example-ads.example/gtm.js",
)
_SAMPLE_TITLES: dict[EventType, tuple[tuple[str, str], ...]] = {
    EventType.CLIENT_SIDE_RISK: (
        (
            "New third-party script reads payment form fields",
            "A script not seen before reads the card number and CVV inputs.",
        ),
        (
            "Script sends form data to a new domain",
            "Form values are posted to a domain this site never contacted before.",
        ),
        ("Known script changed its content", "The script's hash changed since the last scan."),
        (
            "Script loaded from a newly registered domain",
            "The script's domain was registered less than 30 days ago.",
        ),
        (
            "Inline script injects an iframe on the checkout page",
            "A new iframe appears over the payment form.",
        ),
    ),
    EventType.PCI_SCOPE_CHANGE: (
        ("Page added to PCI DSS scope", "The page now renders a payment form."),
        (
            "New script on a PCI-scoped payment page",
            "PCI DSS 6.4.3: the script is not in the authorized inventory.",
        ),
        (
            "Payment page security headers changed",
            "PCI DSS 11.6.1: the Content-Security-Policy header changed.",
        ),
        ("Page removed from PCI DSS scope", "The payment form is gone from the page."),
    ),
}


def sample_alerts(
    count: int, tenant: str, rng: random.Random, now: datetime | None = None
) -> list[dict[str, Any]]:
    """`count` realistic alerts with unique ids; both event types and all risk levels
    appear once `count` allows (low risk the most common, as in real traffic)."""
    now = now or datetime.now(UTC)
    levels = [r.value for r in RiskLevel]
    types = [e for e in EventType]
    risks = levels[:count] + rng.choices(levels, weights=[4, 3, 2, 1], k=max(0, count - 4))
    events = types[:count] + [rng.choice(types) for _ in range(max(0, count - 2))]
    rng.shuffle(risks)
    rng.shuffle(events)
    run = f"{rng.getrandbits(32):08x}"
    alerts = []
    for i in range(count):
        event = events[i]
        title, description = rng.choice(_SAMPLE_TITLES[event])
        domain = rng.choice(_SAMPLE_DOMAINS)
        script = rng.choice(_SAMPLE_SCRIPTS)
        alert_id = f"{tenant}-sample-{run}-{i + 1:05d}"
        detected = now - timedelta(seconds=rng.uniform(0, 3600))
        details = {
            "script_hash": "sha256-" + f"{rng.getrandbits(256):064x}",
            "pci_scope": "in"
            if event is EventType.PCI_SCOPE_CHANGE or rng.random() < 0.5
            else "out",
            "source": "alertrelay alerts send --sample",
        }
        if event is EventType.PCI_SCOPE_CHANGE:
            details["previous_scope"] = "out" if details["pci_scope"] == "in" else "in"
        alerts.append(
            {
                "alert_id": alert_id,
                "tenant_id": tenant,
                "event_type": event.value,
                "risk_level": risks[i],
                "title": title,
                "detected_at": detected.isoformat(timespec="seconds").replace("+00:00", "Z"),
                "description": description,
                "page_url": f"https://{domain}{rng.choice(_SAMPLE_PAGES)}",
                "script_url": script,
                "domain": domain,
                "console_url": (
                    f"https://console.example.com/tenants/{quote(tenant, safe='')}"
                    f"/alerts/{quote(alert_id, safe='')}"
                ),
                "details": details,
            }
        )
    return alerts


class _BadJson:
    """A line that is not JSON, kept so that every problem is reported in one go."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _parse_alert_file(path: str) -> list[tuple[str, Any]]:
    """(where, object) pairs from one JSON object, a JSON array, or JSON lines."""
    text = _read_input(path)
    if not text.strip():
        raise CliError(f"{path} holds no alerts", EXIT_INVALID)
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    else:
        if isinstance(whole, list):
            return [(f"item {i}", obj) for i, obj in enumerate(whole, start=1)]
        return [("the file", whole)]
    items: list[tuple[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            items.append((f"line {number}", _BadJson(exc.msg)))
    return items


def _report_invalid(problems: list[str], total: int) -> None:
    click.echo(f"{len(problems)} of {total} alerts are invalid; nothing was sent:", err=True)
    for problem in problems[:20]:
        click.echo(f"  {problem}", err=True)
    if len(problems) > 20:
        click.echo(f"  ... and {len(problems) - 20} more", err=True)
    raise SystemExit(EXIT_INVALID)


def _validate_alerts(items: list[tuple[str, Any]]) -> list[tuple[Any, Alert]]:
    from pydantic import ValidationError

    from schemas.codec import format_errors

    valid: list[tuple[Any, Alert]] = []
    problems: list[str] = []
    for where, obj in items:
        if isinstance(obj, _BadJson):
            problems.append(f"{where}: invalid JSON ({obj.reason})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{where}: an alert must be a JSON object, not {type(obj).__name__}")
            continue
        try:
            valid.append((obj, Alert.model_validate(obj)))
        except ValidationError as exc:
            label = (
                f"{where} ({obj['alert_id']})" if isinstance(obj.get("alert_id"), str) else where
            )
            problems.append(f"{label}: {format_errors(exc)}")
    if problems:
        _report_invalid(problems, len(items))
    return valid


@main.group()
def alerts() -> None:
    """Alerts on the alerts topic (for trying out and testing integrations)."""


@alerts.command("send")
@click.option(
    "--file",
    "alert_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="alerts to send: one JSON object, a JSON array, or JSON lines ('-' for stdin)",
)
@click.option(
    "--sample", type=click.IntRange(min=1), help="generate N realistic alerts (needs --tenant)"
)
@click.option("--tenant", help="tenant of the --sample alerts")
@click.option("--seed", type=int, help="make --sample reproducible (same alerts, same ids)")
@click.option(
    "--avro",
    is_flag=True,
    help="send Avro (schemas/alert.avsc) in the Confluent wire format instead of JSON",
)
@click.option(
    "--schema-id",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="schema registry id written in the Confluent header with --avro",
)
@click.option(
    "--bootstrap",
    default=Settings.bootstrap_servers,
    envvar="KAFKA_BOOTSTRAP_SERVERS",
    show_default=True,
    show_envvar=True,
    help="Kafka bootstrap servers",
)
@click.option(
    "--topic",
    default=Settings.topic_alerts,
    envvar="ALERTRELAY_TOPIC_ALERTS",
    show_default=True,
    show_envvar=True,
    help="the alerts topic",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="seconds to wait for the broker to confirm each alert",
)
@click.option(
    "--dry-run", is_flag=True, help="validate and print the alerts as JSON lines; send nothing"
)
@click.option("--verbose", "-v", is_flag=True, help="show the Kafka client's log")
def alerts_send(
    alert_file: str | None,
    sample: int | None,
    tenant: str | None,
    seed: int | None,
    avro: bool,
    schema_id: int,
    bootstrap: str,
    topic: str,
    timeout: float,
    dry_run: bool,
    verbose: bool,
) -> None:
    """Validate alerts and produce them to the alerts topic, keyed by tenant_id.

    Every alert is checked against the Alert contract first; if any is invalid, each
    bad field is named and nothing is sent (exit 2). Records are partitioned like
    Kafka's Java clients (murmur2 of the key), so each lands where its tenant's configs
    live. A summary (and a progress bar above 100 alerts) goes to stderr.

    \b
    Examples:
      alertrelay alerts send --sample 20 --tenant acme
      alertrelay alerts send --file alerts.jsonl --avro
      alertrelay alerts send --sample 5 --tenant acme --dry-run > alerts.jsonl

    \b
    Exit codes:
      0  every alert was confirmed by the broker
      1  some alerts were not confirmed
      2  invalid input (options, files, alerts)
      3  cannot reach the Kafka broker
    """
    if (alert_file is None) == (sample is None):
        raise click.UsageError("give exactly one of --file and --sample")
    if sample is not None and not tenant:
        raise click.UsageError("--sample needs --tenant")
    if alert_file is not None and (tenant or seed is not None):
        raise click.UsageError("--tenant and --seed go with --sample (a file names its tenants)")
    if sample is not None:
        items = [
            (f"sample {i}", a)
            for i, a in enumerate(sample_alerts(sample, str(tenant), random.Random(seed)), start=1)
        ]
    else:
        items = _parse_alert_file(str(alert_file))
    valid = _validate_alerts(items)
    if not valid:
        raise CliError("no alerts to send", EXIT_INVALID)

    from schemas.codec import encode_alert_avro

    records: list[tuple[bytes, bytes]] = []
    for obj, alert in valid:
        if avro:
            value = encode_alert_avro(alert, confluent_schema_id=schema_id)
        else:
            value = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        records.append((alert.tenant_id.encode("utf-8"), value))
    if dry_run:
        for obj, alert in valid:
            click.echo(json.dumps(alert.wire() if avro else obj, ensure_ascii=False))
        click.echo(f"dry run: {len(valid)} valid alerts, nothing sent", err=True)
        return
    _produce_alerts(
        records,
        bootstrap=bootstrap,
        topic=topic,
        timeout=timeout,
        verbose=verbose,
        fmt="Avro" if avro else "JSON",
    )


def _produce_alerts(
    records: list[tuple[bytes, bytes]],
    *,
    bootstrap: str,
    topic: str,
    timeout: float,
    verbose: bool,
    fmt: str,
) -> None:
    from confluent_kafka import KafkaException, Message, Producer
    from tqdm import tqdm

    kafka_log = logging.Logger("alertrelay.cli.kafka")
    kafka_log.addHandler(logging.StreamHandler(sys.stderr) if verbose else logging.NullHandler())
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            # Kafka's Java default: alerts land where the worker expects their tenant.
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "linger.ms": 10,
            "message.timeout.ms": int(timeout * 1000),
            "client.id": "alertrelay-cli",
            "logger": kafka_log,
        }
    )
    try:
        metadata = producer.list_topics(timeout=min(timeout, 10.0))
    except KafkaException as exc:
        raise CliError(
            f"cannot reach Kafka at {bootstrap}: {exc.args[0].str() if exc.args else exc}. "
            "Start a broker with `make run`, or set --bootstrap / KAFKA_BOOTSTRAP_SERVERS.",
            EXIT_UNREACHABLE,
        ) from None
    if topic not in metadata.topics:
        click.echo(
            f"warning: topic {topic!r} does not exist yet; the broker may create it with its "
            "default partition count. Start the worker first (`make run`) to create it.",
            err=True,
        )

    partitions: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    started = time.monotonic()
    bar = tqdm(total=len(records), unit="alert", disable=len(records) <= 100, file=sys.stderr)

    def on_delivery(err: Any, msg: Message) -> None:
        if err is not None:
            errors[str(err.str() if hasattr(err, "str") else err)] += 1
        else:
            partitions[int(msg.partition() or 0)] += 1
        bar.update(1)

    try:
        for key, value in records:
            while True:
                try:
                    producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: let deliveries drain
                    producer.poll(0.5)
                except KafkaException as exc:
                    errors[str(exc.args[0].str() if exc.args else exc)] += 1
                    bar.update(1)
                    break
            producer.poll(0)
        unconfirmed = producer.flush(timeout + 5)
    finally:
        bar.close()
    if unconfirmed:
        errors["not confirmed before the timeout"] += unconfirmed
    elapsed = time.monotonic() - started
    delivered = sum(partitions.values())
    spread = ", ".join(f"{p}: {n}" for p, n in sorted(partitions.items())) or "none"
    click.echo(
        f"Sent {delivered} of {len(records)} alerts ({fmt}) to {topic!r} at {bootstrap} in "
        f"{elapsed:.2f} s; per partition {{{spread}}}.",
        err=True,
    )
    if errors:
        for reason, count in errors.most_common():
            click.echo(f"  {count} failed: {reason}", err=True)
        raise SystemExit(EXIT_FAILED)


from streams.dlq import dlq_group  # noqa: E402
from streams.replay import replay_command  # noqa: E402

main.add_command(replay_command)
main.add_command(dlq_group)

if __name__ == "__main__":
    sys.exit(main())
