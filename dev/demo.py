#!/usr/bin/env python3
"""`make demo`: alertrelay end to end against local stand-ins, then a summary.

What it does, on a fresh clone, with nothing running before it:

1. a real Kafka broker (dev/kafka_local.py) unless KAFKA_BOOTSTRAP_SERVERS is set;
2. a local webhook receiver (tests/fakes/webhook_receiver.py) and moto's S3 server
   with a bucket `alertrelay-demo`;
3. the worker (`python -m streams.cli worker`) as a child process, with its own app id
   and topic names (repeated demos on one broker never mix);
4. two integrations for tenant "acme" on the integrations topic: an HTTP webhook
   (client_side_risk only, risk >= medium, a custom header) and an S3 archive (gzip);
5. ~100 sample alerts, a few of them for tenant "globex" which has no integrations;
6. waits until every alert the filters let through is at the receiver and in S3, and
   prints what arrived, what the filters held back, and the worker's metrics.

Exit status 0 when everything expected arrived; 1 (naming what is missing) otherwise;
130 when interrupted. Whatever happens, everything it started is stopped again.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import importlib.util
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
import traceback
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_DIR = REPO_ROOT / "dev"
RUNS_DIR = DEV_DIR / ".run"  # git-ignored; worker logs of recent demos are kept here
KEEP_RUNS = 5

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TENANT = "acme"
OTHER_TENANT = "globex"  # has no integrations: its alerts are counted, never delivered
WEBHOOK_ID = "soc-webhook"
S3_ID = "s3-archive"
# The configured URL is a real-looking public one; ALERTRELAY_HOST_OVERRIDES sends its
# requests to the local receiver (validation of the configured URL stays strict).
WEBHOOK_HOST = "hooks.acme-soc.example"
WEBHOOK_PATH = "/alertrelay/ingest"
WEBHOOK_HEADER = ("X-Acme-Token", "demo-shared-secret-7f3a")
BUCKET = "alertrelay-demo"
S3_PREFIX = "alertrelay"
AWS_KEY_ID = "AKIADEMO00000000"
AWS_SECRET = "demoSecretKey0000000000000000000000000000"
AWS_REGION = "us-east-1"

RISKS = ["low", "medium", "high", "critical"]
RISK_ORDER = {name: i for i, name in enumerate(RISKS)}
WEBHOOK_EVENT_TYPES = ["client_side_risk"]
WEBHOOK_MIN_RISK = "medium"

DELIVERY_DEADLINE = 90.0

PRODUCE_SNIPPET = """\
cd {repo} && .venv/bin/python - <<'EOF'
import datetime, json, uuid
from confluent_kafka import Producer
alert = {{
    "alert_id": f"manual-{{uuid.uuid4().hex[:12]}}",
    "tenant_id": "{tenant}",
    "event_type": "client_side_risk",
    "risk_level": "high",
    "title": "Hand-made alert: new script on the checkout page",
    "detected_at": datetime.datetime.now(datetime.UTC).isoformat(),
    "script_url": "https://cdn.example-new-domain.xyz/a.js",
}}
producer = Producer({{"bootstrap.servers": "{bootstrap}"}})
producer.produce("{topic}", key=alert["tenant_id"], value=json.dumps(alert))
producer.flush()
print("sent", alert["alert_id"])
EOF"""
WORKER_START_TIMEOUT = 120.0


class DemoFailure(Exception):
    """Something the demo needs did not happen; the message says what."""


# -- output ----------------------------------------------------------------------------

_T0 = time.monotonic()


def say(text: str = "", *, end: str = "\n") -> None:
    print(text, end=end, flush=True)


@contextlib.contextmanager
def step(what: str, done: str = "ready") -> Any:
    """`starting X… ready in 1.2 s` on one line (or `failed after …`)."""
    say(f"{what}… ", end="")
    started = time.monotonic()
    try:
        yield
    except BaseException:
        say(f"failed after {time.monotonic() - started:.1f} s")
        raise
    say(f"{done} in {time.monotonic() - started:.1f} s")


# -- importing helpers that live in script folders ----------------------------------------


def _load(name: str, path: Path) -> ModuleType:
    """Import a module by file path: tests/ and dev/ are folders, not installed packages,
    and a `tests` package from site-packages must not shadow ours."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DemoFailure(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def _harness() -> ModuleType:
    return _load("alertrelay_demo_harness", REPO_ROOT / "tests" / "harness.py")


def _receiver_module() -> ModuleType:
    return _load("alertrelay_demo_receiver", REPO_ROOT / "tests" / "fakes" / "webhook_receiver.py")


def _kafka_local() -> ModuleType:
    return _load("kafka_local", DEV_DIR / "kafka_local.py")


# -- sample data ----------------------------------------------------------------------------

_SITES = {
    TENANT: [
        ("shop.acme.com", ["/checkout", "/checkout/payment", "/cart", "/account/login"]),
        ("www.acme.com", ["/", "/pricing", "/signup"]),
        ("billing.acme.com", ["/invoices/pay", "/subscription/update-card"]),
    ],
    OTHER_TENANT: [
        ("store.globex.io", ["/checkout", "/basket"]),
        ("portal.globex.io", ["/login", "/payments"]),
    ],
}
_SCRIPTS = [
    "https://www.googletagmanager.com/gtm.js?id=GTM-K7Q2LX",
    "https://static.hotjar.com/c/hotjar-3519842.js?sv=6",
    "https://cdn.jsdelivr.net/npm/jquery-migrate@3.4.1/dist/jquery-migrate.min.js",
    "https://js.stripe.com/v3/",
    "https://connect.facebook.net/en_US/fbevents.js",
    "https://cdn-static.analytics-metrics.xyz/m.js",
    "https://assets.checkout-helper.top/v2/loader.js",
    "https://unpkg.com/lodash@4.17.21/lodash.min.js",
    "https://snap.licdn.com/li.lms-analytics/insight.min.js",
    "https://cdn.segment-tracker.click/a.js",
]
_RISK_TITLES = [
    ("New third-party script reads payment form fields", "form_field_access"),
    ("Script loaded from a newly registered domain", "new_domain"),
    ("Script behaviour changed: new network destination", "new_network_call"),
    ("Inline script modified on a sensitive page", "inline_change"),
    ("Script accesses cookies marked as session cookies", "cookie_access"),
    ("Known skimmer signature matched (Magecart group 12)", "skimmer_signature"),
    ("Script sends keystrokes to an external endpoint", "keylogging"),
]
_PCI_TITLES = [
    ("Page entered PCI DSS scope: payment form detected", "in"),
    ("Page left PCI DSS scope: payment form removed", "out"),
    ("New payment iframe added to a page in scope", "in"),
    ("Script inventory of a PCI page changed (req. 6.4.3)", "in"),
]


def make_alerts(count: int, run_id: str, seed: int = 7) -> list[dict[str, Any]]:
    """Deterministic, realistic alerts; about one in ten is for OTHER_TENANT."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    alerts = []
    for n in range(count):
        tenant = OTHER_TENANT if n % 10 == 7 else TENANT
        event_type = "client_side_risk" if rng.random() < 0.6 else "pci_scope_change"
        risk = rng.choices(RISKS, weights=[35, 30, 25, 10])[0]
        host, paths = rng.choice(_SITES[tenant])
        page = f"https://{host}{rng.choice(paths)}"
        script = rng.choice(_SCRIPTS)
        alert_id = f"alr-{run_id}-{n:04d}"
        if event_type == "client_side_risk":
            title, signal_name = rng.choice(_RISK_TITLES)
            details = {
                "signal": signal_name,
                "script_hash": f"sha256-{rng.getrandbits(128):032x}",
                "first_seen_sessions": str(rng.randint(1, 5000)),
            }
            description = (
                f"{script.split('/')[2]} on {page}: {title.lower()}. "
                "Review the script in the console and block it if it is not expected."
            )
        else:
            title, scope = rng.choice(_PCI_TITLES)
            details = {"pci_scope": scope, "requirement": "PCI DSS 4.0 6.4.3 / 11.6.1"}
            description = f"{page} changed PCI scope ({scope})."
        alerts.append(
            {
                "alert_id": alert_id,
                "tenant_id": tenant,
                "event_type": event_type,
                "risk_level": risk,
                "title": title,
                "detected_at": (now - dt.timedelta(seconds=rng.randint(5, 3600)))
                .isoformat()
                .replace("+00:00", "Z"),
                "description": description,
                "page_url": page,
                "script_url": script,
                "domain": host,
                "console_url": f"https://console.codedefender.example/{tenant}/alerts/{alert_id}",
                "details": details,
            }
        )
    return alerts


def integration_configs(receiver_path: str) -> list[dict[str, Any]]:
    return [
        {
            "integration_id": WEBHOOK_ID,
            "tenant_id": TENANT,
            "type": "webhook",
            "name": "SOC intake webhook",
            "enabled": True,
            "event_types": WEBHOOK_EVENT_TYPES,
            "min_risk_level": WEBHOOK_MIN_RISK,
            "settings": {
                "webhook_url": f"https://{WEBHOOK_HOST}{receiver_path}",
                "method": "POST",
                "protocol": "tcp",
                "headers": [{"name": WEBHOOK_HEADER[0], "value": WEBHOOK_HEADER[1]}],
            },
        },
        {
            "integration_id": S3_ID,
            "tenant_id": TENANT,
            "type": "s3",
            "name": "Alert archive (S3)",
            "enabled": True,
            "settings": {
                "access_key_id": AWS_KEY_ID,
                "secret_access_key": AWS_SECRET,
                "region": AWS_REGION,
                "bucket": BUCKET,
                "compression": "gzip",
                "prefix": S3_PREFIX,
            },
        },
    ]


@dataclass
class Expectation:
    """What the filters should do with the sample alerts."""

    webhook: set[str] = field(default_factory=set)
    s3: set[str] = field(default_factory=set)
    webhook_filtered_event_type: int = 0
    webhook_filtered_risk: int = 0
    unknown_tenant: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, alerts: list[dict[str, Any]]) -> Expectation:
        exp = cls()
        for alert in alerts:
            aid = alert["alert_id"]
            if alert["tenant_id"] != TENANT:
                exp.unknown_tenant.add(aid)
                continue
            exp.s3.add(aid)  # no filters: every event type, every risk
            if alert["event_type"] not in WEBHOOK_EVENT_TYPES:
                exp.webhook_filtered_event_type += 1
            elif RISK_ORDER[alert["risk_level"]] < RISK_ORDER[WEBHOOK_MIN_RISK]:
                exp.webhook_filtered_risk += 1
            else:
                exp.webhook.add(aid)
        return exp


# -- the stand-ins --------------------------------------------------------------------------


class MotoS3:
    """moto's S3 server on a free local port, and a boto3 client for reading it back."""

    def __init__(self) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise DemoFailure(
                f"moto's server is not installed ({exc}); install the dev extras: "
                ".venv/bin/pip install -e '.[dev]'"
            ) from None
        # werkzeug would print an access-log line per request on stderr.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""
        self.client: Any = None
        self._objects: dict[str, list[dict[str, Any]]] = {}

    def start(self) -> MotoS3:
        import boto3
        from botocore.config import Config

        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.client = boto3.session.Session(
            aws_access_key_id=AWS_KEY_ID,
            aws_secret_access_key=AWS_SECRET,
            region_name=AWS_REGION,
        ).client("s3", endpoint_url=self.url, config=Config(retries={"total_max_attempts": 2}))
        self.client.create_bucket(Bucket=BUCKET)
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._server.stop()

    def objects(self, prefix: str) -> dict[str, list[dict[str, Any]]]:
        """key -> alerts it holds; each object is fetched and decoded once."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key in self._objects:
                    continue
                body = self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                if body[:2] == b"\x1f\x8b":
                    body = gzip.decompress(body)
                elif key.endswith(".gz"):
                    raise DemoFailure(f"s3://{BUCKET}/{key} is named .gz but is not gzip data")
                self._objects[key] = [json.loads(line) for line in body.splitlines() if line]
        return dict(self._objects)


def _isolated_aws_env(env: dict[str, str], endpoint: str) -> None:
    """The worker talks to moto only, whatever AWS setup the developer has."""
    for name in list(env):
        if name.startswith("AWS_"):
            del env[name]
    env["AWS_ENDPOINT_URL"] = endpoint
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["AWS_EC2_METADATA_DISABLED"] = "true"


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def parse_metrics(text: str) -> tuple[dict[str, float], list[str]]:
    """(sample -> value) of every alertrelay_ line, and the lines worth showing:
    counters (`_total`) and gauges, not histogram buckets or `_created` stamps."""
    gauges = set()
    samples: dict[str, float] = {}
    shown = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind.strip() == "gauge":
                gauges.add(name)
            continue
        if not line.startswith("alertrelay_"):
            continue
        sample, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            samples[sample] = float(value)
        name = sample.split("{", 1)[0]
        # prometheus_client types the `_created` timestamps as gauges too: not shown.
        if name.endswith("_total") or (name in gauges and not name.endswith("_created")):
            shown.append(line)
    return samples, shown


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for sample, value in samples.items():
        if sample.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in sample for k, v in labels.items()):
            total += value
    return total


# -- the run --------------------------------------------------------------------------------


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = f"{dt.datetime.now():%H%M%S}{uuid.uuid4().hex[:4]}"
        self.run_dir = RUNS_DIR / f"demo-{self.run_id}"
        self.kafka: Any = None
        self.bootstrap = ""
        self.receiver: Any = None
        self.s3: MotoS3 | None = None
        self.worker: Any = None
        self.topics: Any = None
        self.succeeded = False

    # setup -----------------------------------------------------------------------------

    def start_kafka(self) -> None:
        configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if configured:
            with step(f"using the Kafka broker at {configured}", "answered"):
                _wait_for_broker(configured, timeout=30)
            self.bootstrap = configured
            return
        kafka_local = _kafka_local()
        if not kafka_local._jars_ready(kafka_local.LIBS_DIR):
            with step("fetching the Kafka broker jars from Maven Central (first run only)", "done"):
                kafka_local.ensure_jars()
        self.kafka = kafka_local.LocalKafka(partitions_default=4)
        with step(f"starting Kafka broker (Kafka {kafka_local.kafka_version()})"):
            self.bootstrap = self.kafka.start(timeout=90)
        say(f"  broker {self.bootstrap}, log {self.kafka.log_path}")

    def start_standins(self) -> None:
        with step("starting webhook receiver and moto S3"):
            self.receiver = _receiver_module().WebhookReceiver().start()
            self.s3 = MotoS3().start()
        say(f"  webhook receiver {self.receiver.url}{WEBHOOK_PATH} (as https://{WEBHOOK_HOST})")
        say(f"  moto S3 {self.s3.url}, bucket {BUCKET}")

    def start_worker(self) -> None:
        harness = _harness()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.topics = harness.TopicSet(prefix=f"demo-{self.run_id}")
        assert self.receiver is not None and self.s3 is not None
        self.worker = harness.WorkerProcess(
            self.bootstrap,
            self.topics,
            self.run_dir,
            env={
                "ALERTRELAY_HOST_OVERRIDES": f"{WEBHOOK_HOST}={self.receiver.url}",
                "ALERTRELAY_EGRESS_ALLOW": "127.0.0.1/32",
                "ALERTRELAY_BATCH_MAX_AGE": "2",
                "ALERTRELAY_LOG_LEVEL": "info",
            },
        )
        _isolated_aws_env(self.worker.env, self.s3.url)
        say(f"  worker log: {self.worker.log_path}")
        with step(f"starting worker (app id {self.topics.app_id})"):
            try:
                self.worker.start(timeout=WORKER_START_TIMEOUT)
            except (RuntimeError, TimeoutError) as exc:
                raise DemoFailure(f"the worker did not become ready: {exc}") from None
        say(f"  http://127.0.0.1:{self.worker.port}/health  /metrics")

    # scenario --------------------------------------------------------------------------

    def produce_configs(self) -> None:
        harness = _harness()
        configs = integration_configs(WEBHOOK_PATH)
        with step(
            f"producing {len(configs)} integration configs to {self.topics.integrations}",
            "loaded by the worker",
        ):
            harness.produce(
                self.bootstrap,
                self.topics.integrations,
                [(f"{c['tenant_id']}/{c['integration_id']}", c) for c in configs],
            )

            # Topics are read independently: alerts sent before the table holds the
            # configs would (correctly) count as an unknown tenant. Wait for the table.
            def loaded() -> bool:
                refused = [
                    line
                    for line in self.worker.log_tail(400).splitlines()
                    if "refused integration config" in line
                ]
                if refused:
                    detail = "\n".join(refused)
                    raise DemoFailure(f"the worker refused an integration config:\n{detail}")
                return metric_sum(self.metrics()[0], "alertrelay_integrations") >= len(configs)

            self._wait("the worker to load both integration configs", loaded, timeout=30)
        for c in configs:
            filters = f"event_types={c.get('event_types', 'all')}"
            filters += f", min_risk_level={c.get('min_risk_level', 'low')}"
            say(f"  {c['tenant_id']}/{c['integration_id']} ({c['type']}): {filters}")

    def produce_alerts(self, alerts: list[dict[str, Any]]) -> None:
        harness = _harness()
        with step(f"producing {len(alerts)} alerts to {self.topics.alerts}", "done"):
            # Keyed by tenant, default partitioner: the contract of the alerts topic.
            harness.produce(
                self.bootstrap, self.topics.alerts, [(a["tenant_id"], a) for a in alerts]
            )

    def webhook_ids(self) -> list[str]:
        assert self.receiver is not None
        ids = []
        for request in self.receiver.received(WEBHOOK_PATH):
            try:
                ids.append(str(request.json()["alert_id"]))
            except (ValueError, KeyError, TypeError):
                ids.append("(unreadable body)")
        return ids

    def s3_objects(self) -> dict[str, list[dict[str, Any]]]:
        assert self.s3 is not None
        return self.s3.objects(f"{S3_PREFIX}/{TENANT}/{S3_ID}/")

    def metrics(self) -> tuple[dict[str, float], list[str]]:
        try:
            return parse_metrics(fetch(f"http://127.0.0.1:{self.worker.port}/metrics"))
        except OSError:
            return {}, []

    def _check_worker(self) -> None:
        proc = self.worker.proc if self.worker is not None else None
        if proc is not None and proc.poll() is not None:
            raise DemoFailure(
                f"the worker exited with code {proc.returncode}; tail of "
                f"{self.worker.log_path}:\n{self.worker.log_tail(40)}"
            )

    def _wait(self, what: str, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_worker()
            if done():
                return
            if time.monotonic() > deadline:
                raise DemoFailure(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.25)

    def wait_for_deliveries(self, exp: Expectation, total: int) -> float:
        say(f"waiting for deliveries (deadline {DELIVERY_DEADLINE:.0f} s)… ", end="")
        started = time.monotonic()
        deadline = started + DELIVERY_DEADLINE
        last_error = ""
        while True:
            self._check_worker()
            try:
                webhook = set(self.webhook_ids())
                in_s3 = {a["alert_id"] for objs in self.s3_objects().values() for a in objs}
                last_error = ""
            except DemoFailure:
                raise
            except Exception as exc:  # moto busy, a half-listed bucket: try again
                last_error = f"{type(exc).__name__}: {exc}"
                webhook, in_s3 = set(), set()
            if exp.webhook <= webhook and exp.s3 <= in_s3:
                break
            if time.monotonic() > deadline:
                say(f"gave up after {DELIVERY_DEADLINE:.0f} s")
                problems = []
                if missing := sorted(exp.webhook - webhook):
                    problems.append(
                        f"webhook {TENANT}/{WEBHOOK_ID}: {len(missing)} of {len(exp.webhook)} "
                        f"expected alerts never arrived, e.g. {', '.join(missing[:5])}"
                    )
                if missing := sorted(exp.s3 - in_s3):
                    problems.append(
                        f"s3 {TENANT}/{S3_ID}: {len(missing)} of {len(exp.s3)} expected alerts "
                        f"are in no object under s3://{BUCKET}/{S3_PREFIX}/{TENANT}/{S3_ID}/, "
                        f"e.g. {', '.join(missing[:5])}"
                    )
                if last_error:
                    problems.append(f"last error reading the stand-ins: {last_error}")
                raise DemoFailure("; ".join(problems))
            time.sleep(0.25)
        took = time.monotonic() - started
        say(f"all arrived in {took:.1f} s")
        # The router counts every alert, routed or not; wait briefly for the last of them
        # (other tenants' partitions may be read a moment after acme's deliveries land).
        with contextlib.suppress(DemoFailure):
            self._wait(
                "the router to count every alert",
                lambda: metric_sum(self.metrics()[0], "alertrelay_alerts_consumed_total") >= total,
                timeout=10,
            )
        return took

    # report ----------------------------------------------------------------------------

    def report(self, alerts: list[dict[str, Any]], exp: Expectation) -> list[str]:
        """Print the summary; returns problems that make the run a failure."""
        problems: list[str] = []
        by_id = {a["alert_id"]: a for a in alerts}
        assert self.receiver is not None
        requests = self.receiver.received(WEBHOOK_PATH)
        received = self.webhook_ids()
        counts = Counter(received)
        unique = set(received)
        unexpected = sorted(unique - exp.webhook)
        header_ok = sum(
            1
            for r in requests
            if {k.lower(): v for k, v in r.headers.items()}.get(WEBHOOK_HEADER[0].lower())
            == WEBHOOK_HEADER[1]
        )
        idem_keys = {
            {k.lower(): v for k, v in r.headers.items()}.get("idempotency-key") for r in requests
        }
        stray = [r.path for r in self.receiver.received() if r.path.split("?")[0] != WEBHOOK_PATH]

        n_tenant = sum(1 for a in alerts if a["tenant_id"] == TENANT)
        say()
        say("=" * 72)
        say(
            f"alertrelay demo summary: {len(alerts)} alerts produced "
            f"({n_tenant} for {TENANT}, {len(exp.unknown_tenant)} for {OTHER_TENANT})"
        )
        say("=" * 72)

        say(
            f"\n{TENANT}/{WEBHOOK_ID} (webhook, event_types={WEBHOOK_EVENT_TYPES}, "
            f"min_risk_level={WEBHOOK_MIN_RISK})"
        )
        say(
            f"  delivered           {len(unique & exp.webhook)} / {len(exp.webhook)} expected"
            f"  ({len(requests)} requests, {sum(c - 1 for c in counts.values())} duplicates)"
        )
        say(
            f"  filtered out        {exp.webhook_filtered_event_type} by event type "
            f"(pci_scope_change), {exp.webhook_filtered_risk} by risk (< {WEBHOOK_MIN_RISK})"
        )
        say(f"  custom header       {WEBHOOK_HEADER[0]} on {header_ok} / {len(requests)} requests")
        say(f"  Idempotency-Key     {len(idem_keys - {None})} distinct keys")
        by_risk = Counter(by_id[i]["risk_level"] for i in unique if i in by_id)
        say("  by risk             " + ", ".join(f"{r} {by_risk[r]}" for r in RISKS if by_risk[r]))
        sample: Any = None
        with contextlib.suppress(ValueError):
            sample = requests[0].json() if requests else None
        if isinstance(sample, dict):
            say(
                f"  first body          {sample.get('alert_id')} [{sample.get('risk_level')}] "
                f"{sample.get('title')!r}"
            )
        if unexpected:
            problems.append(
                f"webhook received {len(unexpected)} alerts its filters exclude, e.g. "
                + ", ".join(unexpected[:5])
            )
        if header_ok != len(requests):
            problems.append(
                f"custom header {WEBHOOK_HEADER[0]} missing on "
                f"{len(requests) - header_ok} webhook requests"
            )
        if stray:
            problems.append(f"receiver got requests on unexpected paths: {stray[:3]}")

        objects = self.s3_objects()
        in_s3 = [a["alert_id"] for objs in objects.values() for a in objs]
        s3_counts = Counter(in_s3)
        say(f"\n{TENANT}/{S3_ID} (s3, gzip, all event types and risk levels)")
        say(
            f"  delivered           {len(set(in_s3) & exp.s3)} / {len(exp.s3)} expected"
            f"  ({len(in_s3)} lines, {sum(c - 1 for c in s3_counts.values())} duplicates)"
        )
        say("  filtered out        0 (no filters)")
        say(f"  objects             {len(objects)} in s3://{BUCKET}")
        for key, records in sorted(objects.items()):
            say(f"    {key}  ({len(records)} alerts)")
        if extra := sorted(set(in_s3) - exp.s3):
            problems.append(f"S3 holds {len(extra)} alerts it should not, e.g. {extra[:5]}")
        if not all(k.endswith(".jsonl.gz") for k in objects):
            problems.append("S3 object keys do not end in .jsonl.gz although gzip is configured")

        samples, shown = self.metrics()
        unknown_metric = metric_sum(
            samples, "alertrelay_alerts_consumed_total", result="unknown_tenant"
        )
        say(f"\n{OTHER_TENANT} (no integrations)")
        say(
            f"  unknown tenant      {len(exp.unknown_tenant)} alerts produced, "
            f"worker counted {unknown_metric:.0f}"
        )
        leaked = exp.unknown_tenant & (set(received) | set(in_s3))
        if leaked:
            problems.append(f"{len(leaked)} {OTHER_TENANT} alerts were delivered somewhere")
        if samples and unknown_metric != len(exp.unknown_tenant):
            say("  (note: the metric differs from what was produced; see the worker log)")

        say(f"\nworker metrics (http://127.0.0.1:{self.worker.port}/metrics):")
        for line in shown or ["  (metrics unavailable)"]:
            say(f"  {line}")
        say(f"\nworker log: {self.worker.log_path}")
        return problems

    def keep_running(self) -> None:
        assert self.receiver is not None and self.s3 is not None
        say("\neverything keeps running until Ctrl-C:")
        say(f"  Kafka            {self.bootstrap}")
        say(f"  alerts topic     {self.topics.alerts}   (key = tenant id)")
        say(f"  integrations     {self.topics.integrations}   (key = <tenant>/<integration_id>)")
        say(f"  worker           http://127.0.0.1:{self.worker.port}/health  /metrics")
        say(f"  worker log       {self.worker.log_path}")
        say(f"  webhook receiver {self.receiver.url}{WEBHOOK_PATH}")
        say(f"  moto S3          {self.s3.url} (bucket {BUCKET}, key {AWS_KEY_ID})")
        say("\nto send an alert, paste this into another shell (a high client_side_risk alert")
        say(f"for {TENANT} goes to the webhook and to S3; tenant {OTHER_TENANT} goes nowhere):\n")
        say(
            PRODUCE_SNIPPET.format(
                repo=REPO_ROOT, bootstrap=self.bootstrap, topic=self.topics.alerts, tenant=TENANT
            )
        )
        say("\nnew webhook deliveries and S3 objects are printed below.\n")
        seen_requests = len(self.receiver.received())
        seen_objects = set(self.s3_objects())
        while True:
            self._check_worker()
            requests = self.receiver.received()
            for r in requests[seen_requests:]:
                try:
                    body = r.json()
                    what = f"{body.get('alert_id')} [{body.get('risk_level')}] {body.get('title')}"
                except ValueError:
                    what = f"{len(r.body)} bytes"
                say(f"  webhook  {r.method} {r.path}: {what}")
            seen_requests = len(requests)
            with contextlib.suppress(Exception):
                objects = self.s3_objects()
                for key in sorted(set(objects) - seen_objects):
                    say(f"  s3       {key} ({len(objects[key])} alerts)")
                seen_objects |= set(objects)
            time.sleep(0.5)

    def run(self) -> int:
        started = time.monotonic()
        self.start_kafka()
        self.start_standins()
        self.start_worker()
        self.produce_configs()
        alerts = make_alerts(self.args.alerts, self.run_id)
        exp = Expectation.of(alerts)
        say(
            f"  expecting {len(exp.webhook)} webhook deliveries, {len(exp.s3)} alerts in S3, "
            f"{len(exp.unknown_tenant)} for unknown tenant {OTHER_TENANT}"
        )
        self.produce_alerts(alerts)
        self.wait_for_deliveries(exp, len(alerts))
        problems = self.report(alerts, exp)
        if problems:
            say("\nDEMO FAILED:")
            for problem in problems:
                say(f"  - {problem}")
            return 1
        say(f"\ndemo OK in {time.monotonic() - started:.1f} s")
        self.succeeded = True
        if self.args.keep_running:
            self.keep_running()
        return 0

    # teardown --------------------------------------------------------------------------

    def cleanup(self) -> None:
        # A second Ctrl-C must not leave a broker or worker behind: ignore it meanwhile.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if self.worker is not None and self.worker.proc is not None:
                _quietly("stopping worker", lambda: self.worker.stop(timeout=20))
            if self.kafka is not None:
                _quietly("stopping Kafka broker", self.kafka.stop)
            if self.receiver is not None:
                _quietly("stopping webhook receiver", self.receiver.stop)
            if self.s3 is not None:
                _quietly("stopping moto S3", self.s3.stop)
            shutil.rmtree(self.run_dir / "data", ignore_errors=True)
            _prune_runs()
        finally:
            signal.signal(signal.SIGINT, previous)


def _quietly(what: str, action: Callable[[], Any]) -> None:
    started = time.monotonic()
    try:
        action()
    except Exception as exc:
        say(f"{what}… failed: {type(exc).__name__}: {exc}")
        return
    took = time.monotonic() - started
    if took > 1:
        say(f"{what}… done in {took:.1f} s")


def _prune_runs() -> None:
    """Keep the logs of the last few demos only."""
    with contextlib.suppress(OSError):
        runs = sorted(RUNS_DIR.glob("demo-*"), key=lambda p: p.stat().st_mtime)
        for old in runs[:-KEEP_RUNS]:
            shutil.rmtree(old, ignore_errors=True)


def _wait_for_broker(bootstrap: str, timeout: float) -> None:
    from confluent_kafka.admin import AdminClient

    # log_level 0: librdkafka would print a line per refused connection every 50 ms.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if admin.list_topics(timeout=5).brokers:
                return
        except Exception as exc:
            last = exc
        time.sleep(0.5)
    raise DemoFailure(f"no Kafka broker answered at {bootstrap} within {timeout:.0f} s: {last}")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dev/demo.py",
        description=(
            "Run alertrelay end to end against local stand-ins: a Kafka broker (unless "
            "KAFKA_BOOTSTRAP_SERVERS is set), a webhook receiver and moto S3. Produces two "
            "integration configs and sample alerts, waits for every expected delivery and "
            "prints a summary. Exit 0 when everything arrived."
        ),
    )
    parser.add_argument(
        "--alerts",
        type=int,
        default=100,
        metavar="N",
        help="sample alerts to produce (default 100)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the scenario, leave broker, worker and stand-ins up until Ctrl-C",
    )
    args = parser.parse_args(argv)
    if args.alerts < 1:
        parser.error("--alerts must be at least 1")
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
    signal.signal(signal.SIGTERM, _raise_interrupt)

    demo = Demo(args)
    code = 1
    try:
        code = demo.run()
    except KeyboardInterrupt:
        if demo.succeeded:
            say("\nstopping…")
            code = 0
        else:
            say("\ninterrupted; cleaning up…")
            code = 130
    except (DemoFailure, RuntimeError, TimeoutError, OSError) as exc:
        # LocalKafka and the stand-ins raise these with messages written for people.
        say(f"\nDEMO FAILED: {exc}")
        if demo.worker is not None:
            say(f"worker log: {demo.worker.log_path}")
        code = 1
    except Exception:
        traceback.print_exc()
        say("\nDEMO FAILED: unexpected error (traceback above)")
        code = 1
    finally:
        demo.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
