#!/usr/bin/env python3
"""`make bench`: alertrelay's throughput, latency and memory, measured end to end.

Starts what it needs (a real Kafka broker via dev/kafka_local.py unless
KAFKA_BOOTSTRAP_SERVERS is set, moto's S3 server, bench/receiver.py as the webhook
destination), runs each scenario against `alertrelay worker` child processes
(tests.harness.WorkerProcess), writes the raw figures to bench/results/*.json, the plot
to bench/results/bench.png and the report to BENCHMARKS.md. Everything it started is
stopped again, whatever happens.

    .venv/bin/python bench/run.py                       # everything, full size
    .venv/bin/python bench/run.py --scale 0.05          # quick smoke run (own results dir)
    .venv/bin/python bench/run.py --scenario latency    # one scenario; the report is redone

Scenarios (see BENCHMARKS.md for the method of each): receiver, batching (with the
baseline), fanout, latency, memory, scaling, profile.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for p in (str(REPO_ROOT / "dev"), str(BENCH_DIR), str(REPO_ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

import profiling  # noqa: E402
from common import (  # noqa: E402
    CpuWindow,
    RssSampler,
    alert_stream,
    balanced_tenants,
    fast_producer,
    first_timestamp,
    group_offsets,
    http_json,
    make_alert,
    percentile,
    preload,
    read_topic,
    topic_timestamps,
)

from tests.harness import TopicSet, WorkerProcess, free_port, produce  # noqa: E402

SCENARIOS = ["receiver", "batching", "fanout", "latency", "memory", "scaling", "profile"]
BATCHING_RUNS = 3  # paired runs of the batching scenario; the median one is reported
PARTITIONS = 4
BUCKET = "alertrelay-bench"
AWS_KEY_ID = "AKIABENCH0000000000"
AWS_SECRET = "benchSecretKey00000000000000000000000000"
HOOK_DOMAIN = "bench.example"  # *.bench.example -> the local receiver (host overrides)
DOWN_DOMAIN = "down.example"  # *.down.example -> a closed local port
WEBHOOK_DELAY = 0.02
WORKER_EXTRA_ENV: dict[str, str] = {}  # --worker-env
HARNESS_TUNINGS = (
    "ALERTRELAY_RETRY_BASE_DELAY",
    "ALERTRELAY_RETRY_MAX_DELAY",
    "ALERTRELAY_COMMIT_INTERVAL",
)

# Full-size figures of the issue; --scale multiplies the counts (not the targets).
BATCH_TENANTS = 8
# Alerts per S3 object; 200 000 = 8 tenants x 10 objects x 2 500. The 8 open buffers
# (~2 KB each per alert as the memory cap counts them) must fit under the default cap
# (64 MiB): past it the largest buffers are cut early, and the objects after that end
# in a partial one that waits for the age limit (120 s here), not for a count.
BATCH_EVENTS = 2500
FANOUT_INTEGRATIONS = 100
FANOUT_ALERTS = 50_000
LATENCY_RATE = 100.0
LATENCY_SECONDS = 30.0
LATENCY_WARMUP = 5.0
BACKLOG_ALERTS = 100_000
BACKLOG_WINDOW = 75.0
STALL_SECONDS = 30.0
IDLE_SECONDS = 10.0
SCALING_FRACTION = 0.5  # the 2-worker run is this share of the fan-out
PROFILE_FRACTION = 0.25  # the profiled runs are this share of the measured ones
# The GIL-holder profile of batching runs at full size: at a quarter the run is ~3 s
# and a few hundred samples, too few to rank functions of ~1 % (bench/analysis.md).
GIL_PROFILE_FRACTION = 1.0

TARGETS = {
    "batching_alerts_per_second": 20_000,
    "batching_vs_baseline": 0.5,
    "fanout_deliveries_per_second": 3_000,
    "latency_p99_ms": 50.0,
    "peak_rss_mb": 300.0,
}


def say(text: str = "", *, end: str = "\n") -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {text}" if text else "", end=end, flush=True)


# -- infrastructure ----------------------------------------------------------------------


class Bench:
    """Broker, S3, receiver and the workers of one run; `close()` stops all of them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scale: float = args.scale
        self.run_id = f"{dt.datetime.now():%m%d%H%M%S}"
        self.work = BENCH_DIR / ".work" / self.run_id
        self.work.mkdir(parents=True, exist_ok=True)
        self.results = args.results
        self.results.mkdir(parents=True, exist_ok=True)
        self.kafka: Any = None
        self.bootstrap = ""
        self.moto: Any = None
        self.s3_url = ""
        self.s3: Any = None
        self.receiver: subprocess.Popen[bytes] | None = None
        self.receiver_url = ""
        self.down_port = free_port()  # nothing listens here: a down destination
        self.workers: list[WorkerProcess] = []
        self.spies: list[subprocess.Popen[bytes]] = []

    # setup ---------------------------------------------------------------------------

    def start(self) -> None:
        configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if configured:
            self.bootstrap = configured
            say(f"using the Kafka broker at {configured}")
        else:
            import kafka_local

            self.kafka = kafka_local.LocalKafka(partitions_default=PARTITIONS)
            say(f"starting a local Kafka broker (Kafka {kafka_local.kafka_version()})…")
            self.bootstrap = self.kafka.start(timeout=120)
            say(f"  broker {self.bootstrap} (pid {self.kafka.pid})")
        self._start_moto()
        self._start_receiver()

    def _start_moto(self) -> None:
        import boto3
        from botocore.config import Config
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.s3_url = f"http://{host}:{port}"
        self.s3 = boto3.session.Session(
            aws_access_key_id=AWS_KEY_ID, aws_secret_access_key=AWS_SECRET, region_name="us-east-1"
        ).client("s3", endpoint_url=self.s3_url, config=Config(retries={"total_max_attempts": 3}))
        self.s3.create_bucket(Bucket=BUCKET)
        say(f"  moto S3 {self.s3_url} (in this process), bucket {BUCKET}")

    def _start_receiver(self) -> None:
        port = free_port()
        log = (self.work / "receiver.log").open("ab")
        self.receiver = subprocess.Popen(
            [
                sys.executable,
                str(BENCH_DIR / "receiver.py"),
                "serve",
                "--port",
                str(port),
                "--delay",
                str(WEBHOOK_DELAY),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.receiver_url = f"http://127.0.0.1:{port}"
        wait_for("the webhook receiver", lambda: self.recv_stats() is not None, 15)
        say(
            f"  webhook receiver {self.receiver_url} (pid {self.receiver.pid}), answers after "
            f"{WEBHOOK_DELAY * 1000:.0f} ms"
        )

    def close(self) -> None:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for spy in self.spies:
                _quietly(lambda spy=spy: profiling.stop(spy, 10))
            for worker in self.workers:
                _quietly(lambda worker=worker: worker.stop(timeout=20))
            if self.receiver is not None and self.receiver.poll() is None:
                self.receiver.terminate()
                _quietly(lambda: self.receiver.wait(10))  # type: ignore[union-attr]
            if self.moto is not None:
                _quietly(self.moto.stop)
            if self.kafka is not None:
                say("stopping the Kafka broker…")
                _quietly(self.kafka.stop)
        finally:
            signal.signal(signal.SIGINT, previous)

    # helpers -------------------------------------------------------------------------

    def n(self, full: float, minimum: int = 1) -> int:
        return max(minimum, round(full * self.scale))

    def recv_stats(self) -> dict[str, Any] | None:
        try:
            return dict(http_json(f"{self.receiver_url}/_bench/stats", timeout=5))
        except OSError:
            return None

    def recv_reset(self) -> None:
        http_json(f"{self.receiver_url}/_bench/reset", data=b"")

    def recv_dump(self, name: str) -> dict[str, Any]:
        path = self.work / f"receiver-{name}.json"
        http_json(f"{self.receiver_url}/_bench/dump", data=str(path).encode(), timeout=60)
        return dict(json.loads(path.read_text()))

    def pids(self, workers: list[WorkerProcess]) -> dict[str, int]:
        out: dict[str, int] = {}
        for i, w in enumerate(workers):
            if w.proc is not None:
                out[f"worker{i + 1 if len(workers) > 1 else ''}"] = w.proc.pid
        if self.kafka is not None and self.kafka.pid:
            out["kafka broker (JVM)"] = self.kafka.pid
        if self.receiver is not None:
            out["webhook receiver"] = self.receiver.pid
        out["bench + moto S3"] = os.getpid()
        return out

    def worker_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            "ALERTRELAY_LOG_LEVEL": "warning",
            "ALERTRELAY_EGRESS_ALLOW": "127.0.0.1/32",
            "ALERTRELAY_HOST_OVERRIDES": f"*.{HOOK_DOMAIN}={self.receiver_url},"
            f"*.{DOWN_DOMAIN}=http://127.0.0.1:{self.down_port}",
            "AWS_ENDPOINT_URL": self.s3_url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        env.update(extra or {})
        env.update(WORKER_EXTRA_ENV)
        return env

    def new_worker(self, topics: TopicSet, name: str, env: dict[str, str]) -> WorkerProcess:
        workdir = self.work / name
        workdir.mkdir(parents=True, exist_ok=True)
        worker = WorkerProcess(self.bootstrap, topics, workdir, env=self.worker_env(env))
        # tests.harness tunes these for fast tests; the bench runs the worker's defaults.
        for key in HARNESS_TUNINGS:
            if key not in env and key not in WORKER_EXTRA_ENV:
                worker.env.pop(key, None)
        for key in [k for k in worker.env if k.startswith("AWS_")]:
            if key not in (
                "AWS_ENDPOINT_URL",
                "AWS_CONFIG_FILE",
                "AWS_SHARED_CREDENTIALS_FILE",
                "AWS_EC2_METADATA_DISABLED",
            ):
                del worker.env[key]
        self.workers.append(worker)
        return worker

    def stop_worker(self, worker: WorkerProcess) -> None:
        worker.stop(timeout=30)
        with contextlib.suppress(ValueError):
            self.workers.remove(worker)

    def load_configs(
        self, topics: TopicSet, configs: list[dict[str, Any]], env: dict[str, str], name: str
    ) -> None:
        """Phase A: a worker creates the topics and takes in the configs, then stops, so
        the measured worker starts with its config table recovered and a backlog."""
        worker = self.new_worker(topics, f"{name}-setup", env)
        started = time.monotonic()
        worker.start(timeout=180)
        produce(
            self.bootstrap,
            topics.integrations,
            [(f"{c['tenant_id']}/{c['integration_id']}", c) for c in configs],
        )
        wait_for(
            f"{len(configs)} integrations in the config table",
            lambda: (worker.health() or {}).get("integrations", 0) >= len(configs),
            120,
            check=lambda: _check_alive(worker),
        )
        self.stop_worker(worker)
        say(
            f"  {len(configs)} integration configs loaded ({time.monotonic() - started:.1f} s "
            "incl. worker start/stop)"
        )

    def start_measured(
        self, topics: TopicSet, env: dict[str, str], name: str, count: int = 1
    ) -> list[WorkerProcess]:
        workers = [self.new_worker(topics, f"{name}-w{i + 1}", env) for i in range(count)]
        errors: list[BaseException] = []

        def go(w: WorkerProcess) -> None:
            try:
                w.start(timeout=180)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=go, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return workers

    def save(self, name: str, data: dict[str, Any]) -> None:
        data = {
            "scenario": name,
            "scale": self.scale,
            "run_id": self.run_id,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            # Others edit the repo while benchmarks run: name the code each figure is for.
            **source_identity(),
            "worker_extra_env": dict(WORKER_EXTRA_ENV),
            **data,
        }
        (self.results / f"{name}.json").write_text(json.dumps(data, indent=1, default=str))


def _quietly(action: Callable[[], Any]) -> None:
    try:
        action()
    except Exception as exc:
        say(f"  (cleanup: {type(exc).__name__}: {exc})")


def _check_alive(worker: WorkerProcess) -> None:
    if worker.proc is not None and worker.proc.poll() is not None:
        raise RuntimeError(f"worker exited with {worker.proc.returncode}:\n{worker.log_tail(30)}")


def wait_for(
    what: str,
    done: Callable[[], bool],
    timeout: float,
    every: float = 0.25,
    check: Callable[[], None] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        try:
            if done():
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("alertrelay_") and not line.split("{")[0].endswith(
            ("_bucket", "_created")
        ):
            sample, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[sample] = float(value)
    return out


def worker_metrics(worker: WorkerProcess) -> dict[str, float]:
    try:
        return parse_metrics(worker.metrics())
    except OSError:
        return {}


def kafka_diagnostics(b: Bench, topics: TopicSet) -> dict[str, Any]:
    """Committed offsets of the worker's lanes against the ends of the alerts topic and
    of the detour topic: an alert a lane never counted shows up here."""
    out: dict[str, Any] = {}
    for lane in ("routing", "batching"):
        for topic in (topics.alerts, f"{topics.app_id}-alerts-by-tenant"):
            with contextlib.suppress(Exception):
                out[f"{topic} ({lane} lane)"] = group_offsets(
                    b.bootstrap, f"{topics.app_id}-{lane}", topic
                )
    return out


def timeline(times: list[float], t0: float, step: float = 1.0) -> list[tuple[float, int]]:
    """(seconds since t0, events in that step) for a rate plot."""
    if not times:
        return []
    buckets: dict[int, int] = {}
    for t in times:
        k = int((t - t0) // step)
        buckets[k] = buckets.get(k, 0) + 1
    last = max(buckets)
    return [(round(k * step, 2), buckets.get(k, 0)) for k in range(min(0, min(buckets)), last + 1)]


def steady_rate(times: list[float], lo: float = 0.1, hi: float = 0.9) -> float | None:
    """Events/s between the lo and hi quantiles of the arrivals (ramp-up and tail cut)."""
    if len(times) < 20:
        return None
    ordered = sorted(times)
    a, b = int(lo * len(ordered)), int(hi * len(ordered)) - 1
    span = ordered[b] - ordered[a]
    return (b - a) / span if span > 0 else None


# -- scenario: receiver capacity -----------------------------------------------------------


def scenario_receiver(b: Bench) -> dict[str, Any]:
    """How fast each webhook stand-in answers with a 20 ms delay (100 keep-alive clients)."""
    seconds = max(2.0, 5.0 * min(1.0, b.scale * 4))
    conns = 100
    out: dict[str, Any] = {
        "connections": conns,
        "delay_ms": WEBHOOK_DELAY * 1000,
        "ceiling_per_second": conns / WEBHOOK_DELAY,
    }

    def load(url: str) -> dict[str, Any]:
        proc = subprocess.run(
            [
                sys.executable,
                str(BENCH_DIR / "receiver.py"),
                "load",
                "--url",
                url,
                "--connections",
                str(conns),
                "--seconds",
                str(seconds),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))

    b.recv_reset()
    out["bench_receiver"] = load(f"{b.receiver_url}/load")
    b.recv_reset()
    say(f"  bench/receiver.py: {out['bench_receiver']['requests_per_second']:.0f} req/s")

    port = free_port()
    script = (
        "import sys,time; sys.path.insert(0, sys.argv[1]);"
        "from tests.fakes.webhook_receiver import WebhookReceiver, Answer;"
        "r = WebhookReceiver(port=int(sys.argv[2])).start();"
        "r.script('/load', default=Answer(delay=float(sys.argv[3])));"
        "print('ready', flush=True); time.sleep(3600)"
    )
    fake = subprocess.Popen(
        [sys.executable, "-c", script, str(REPO_ROOT), str(port), str(WEBHOOK_DELAY)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert fake.stdout is not None
        fake.stdout.readline()
        out["tests_fakes_receiver"] = load(f"http://127.0.0.1:{port}/load")
    finally:
        fake.terminate()
        fake.wait(10)
    say(
        f"  tests/fakes/webhook_receiver.py: "
        f"{out['tests_fakes_receiver']['requests_per_second']:.0f} req/s"
    )
    return out


# -- scenario: batching to S3 (+ baseline) -------------------------------------------------


def s3_config(tenant: str, prefix: str) -> dict[str, Any]:
    return {
        "integration_id": "s3-archive",
        "tenant_id": tenant,
        "type": "s3",
        "name": "Alert archive (S3, zstd)",
        "settings": {
            "access_key_id": AWS_KEY_ID,
            "secret_access_key": AWS_SECRET,
            "region": "us-east-1",
            "bucket": BUCKET,
            "compression": "zstd",
            "prefix": prefix,
        },
    }


def webhook_config(tenant: str, iid: str, host: str, path: str) -> dict[str, Any]:
    return {
        "integration_id": iid,
        "tenant_id": tenant,
        "type": "webhook",
        "name": f"SOC webhook {iid}",
        "settings": {
            "webhook_url": f"https://{host}{path}",
            "method": "POST",
            "protocol": "tcp",
            "headers": [{"name": "X-Bench-Token", "value": "bench-shared-secret"}],
        },
    }


class S3Counter:
    """Alerts stored under a prefix, from the objects' `alertrelay-count` metadata."""

    def __init__(self, b: Bench, prefix: str) -> None:
        self.b = b
        self.prefix = prefix
        self.counts: dict[str, int] = {}
        self.sizes: dict[str, int] = {}
        self.seen_at: dict[str, float] = {}

    def poll(self) -> int:
        paginator = self.b.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET, Prefix=self.prefix + "/"):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key in self.counts:
                    continue
                head = self.b.s3.head_object(Bucket=BUCKET, Key=key)
                self.counts[key] = int(head.get("Metadata", {}).get("alertrelay-count", 0))
                self.sizes[key] = int(item["Size"])
                self.seen_at[key] = time.time()
        return sum(self.counts.values())


def verify_objects(b: Bench, keys: list[str]) -> dict[str, Any]:
    """Download, decompress and count every alert: all there, none twice."""
    import zstandard

    ids: set[str] = set()
    lines = raw = 0
    dctx = zstandard.ZstdDecompressor()
    import orjson

    for key in keys:
        body = b.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        data = dctx.stream_reader(body, read_across_frames=True).read()
        raw += len(data)
        for line in data.splitlines():
            if line:
                lines += 1
                ids.add(orjson.loads(line)["alert_id"])
    return {"lines": lines, "unique_alerts": len(ids), "raw_bytes": raw}


def run_batching(
    b: Bench,
    scale_factor: float = 1.0,
    profile_to: Path | None = None,
    name: str = "batching",
    gil: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    batch_events = max(50, round(BATCH_EVENTS * b.scale * scale_factor))
    per_tenant = 10 * batch_events
    total = per_tenant * BATCH_TENANTS
    topics = TopicSet(prefix=f"b{b.run_id[-6:]}{uuid.uuid4().hex[:4]}")
    tenants = balanced_tenants(BATCH_TENANTS, PARTITIONS, f"bt{uuid.uuid4().hex[:4]}-")
    prefix = f"bench-{topics.prefix}"
    env = {
        "ALERTRELAY_BATCH_MAX_EVENTS": str(batch_events),
        "ALERTRELAY_BATCH_MAX_BYTES": str(256 * 1024 * 1024),
        "ALERTRELAY_BATCH_MAX_AGE": "120",
    }
    say(
        f"[{name}] {total} alerts, {BATCH_TENANTS} tenants x 1 S3 integration (zstd), "
        f"{batch_events} alerts per object, {workers} worker(s)"
    )
    b.load_configs(topics, [s3_config(t, prefix) for t in tenants], env, name)
    loaded = preload(b.bootstrap, topics.alerts, alert_stream(tenants, per_tenant, topics.prefix))
    say(
        f"  preloaded {loaded['count']} alerts ({loaded['bytes'] / 1e6:.0f} MB) in "
        f"{loaded['seconds']:.1f} s"
    )

    started = b.start_measured(topics, env, name, count=workers)
    worker = started[0]  # RSS and profiles: the first worker
    assert worker.proc is not None
    ready_at = time.time()
    sampler = RssSampler(worker.proc.pid).start()
    cpu = CpuWindow(b.pids(started)).start()
    spy = profiling.start(worker.proc.pid, profile_to, gil=gil) if profile_to else None
    if spy is not None:
        b.spies.append(spy)
    counter = S3Counter(b, prefix)
    timeout = 60 + total / 300
    deadline = time.monotonic() + timeout
    stored = 0
    last_report = time.monotonic()
    last_change = time.monotonic()
    while stored < total and time.monotonic() < deadline:
        for w in started:
            _check_alive(w)
        with contextlib.suppress(Exception):
            now_stored = counter.poll()
            if now_stored != stored:
                stored, last_change = now_stored, time.monotonic()
        if time.monotonic() - last_change > STALL_SECONDS + 10:
            say(f"  nothing new in S3 for {STALL_SECONDS + 10:.0f} s: giving up at {stored}")
            break
        if time.monotonic() - last_report > 15:
            say(f"  … {stored} / {total} alerts in S3")
            last_report = time.monotonic()
        time.sleep(0.5)
    done_at = time.time()
    cpu_result = cpu.stop()
    profile_seconds = None
    if spy is not None:
        profile_seconds = time.time() - ready_at
        profiling.stop(spy)
        b.spies.remove(spy)
    each = [worker_metrics(w) for w in started]
    metrics = each[0]
    time.sleep(1.5)  # one more commit interval
    offsets = kafka_diagnostics(b, topics)
    for w in started:
        b.stop_worker(w)
    mem = sampler.stop()

    # Alerts for S3 take the batch lane (streams/lane.py): it stamps its first read.
    firsts = [m.get("alertrelay_batch_lane_first_read_timestamp_seconds") for m in each]
    t_first = min((t for t in firsts if t), default=None)
    delivered = topic_timestamps(b.bootstrap, topics.status, want=lambda v: b'"delivered"' in v)
    t_last = max(delivered) if delivered else None
    keys = sorted(counter.counts)
    seconds = (t_last - t_first) if (t_first and t_last) else None
    compressed = sum(counter.sizes.values())
    check = verify_objects(b, keys) if not profile_to else {}
    result: dict[str, Any] = {
        "alerts": total,
        "workers": workers,
        "tenants": BATCH_TENANTS,
        "batch_events": batch_events,
        "preload": loaded,
        "complete": stored >= total,
        "stored_alerts": stored,
        "objects": len(keys),
        "compressed_bytes": compressed,
        "raw_jsonl_bytes": check.get("raw_bytes"),
        "verify": check,
        "delivered_status_records": len(delivered),
        "worker_ready_at": ready_at,
        "first_consumed_at": t_first,
        "last_object_at": t_last,
        "seconds": round(seconds, 3) if seconds else None,
        "alerts_per_second": round(total / seconds, 1) if seconds else None,
        "mb_per_second_uploaded": round(compressed / 1e6 / seconds, 3) if seconds else None,
        "mb_per_second_raw": round(check["raw_bytes"] / 1e6 / seconds, 3)
        if seconds and check.get("raw_bytes")
        else None,
        "stored_timeline": timeline(delivered, t_first) if t_first else [],
        "cpu": cpu_result,
        "memory": mem,
        "worker_metrics": metrics,
        "offsets": offsets,
        "env": env,
        "topics": topics.prefix,
        "wall_seconds_to_detect": round(done_at - ready_at, 2),
    }
    if profile_seconds:
        result["profile_seconds"] = round(profile_seconds, 1)
    if result["alerts_per_second"]:
        say(
            f"  alertrelay: {total} alerts in {seconds:.1f} s = {result['alerts_per_second']:.0f} "
            f"alerts/s, {result['mb_per_second_uploaded']:.2f} MB/s uploaded (zstd), peak RSS "
            f"{mem['peak_rss_mb']:.0f} MB"
        )
    else:
        say(f"  alertrelay: incomplete ({stored} / {total} stored)")
    if profile_to is None and workers == 1:
        result["baseline"] = run_baseline(b, topics.alerts, total, batch_events, topics.prefix)
        base = result["baseline"]
        if base.get("alerts_per_second") and result["alerts_per_second"]:
            result["ratio_to_baseline"] = round(
                result["alerts_per_second"] / base["alerts_per_second"], 3
            )
            say(
                f"  baseline: {base['alerts_per_second']:.0f} alerts/s, "
                f"{base['mb_per_second_uploaded']:.2f} MB/s; ratio "
                f"{result['ratio_to_baseline']:.3f}"
            )
    return result


def run_baseline(b: Bench, topic: str, total: int, batch_events: int, tag: str) -> dict[str, Any]:
    out_path = b.work / f"baseline-{tag}.json"
    cmd = [
        sys.executable,
        str(BENCH_DIR / "baseline.py"),
        "--bootstrap",
        b.bootstrap,
        "--topic",
        topic,
        "--endpoint",
        b.s3_url,
        "--bucket",
        BUCKET,
        "--prefix",
        f"baseline-{tag}",
        "--expect",
        str(total),
        "--batch-events",
        str(batch_events),
        "--access-key",
        AWS_KEY_ID,
        "--secret-key",
        AWS_SECRET,
        "--out",
        str(out_path),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        {
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pids = {"baseline": proc.pid}
    if b.kafka is not None and b.kafka.pid:
        pids["kafka broker (JVM)"] = b.kafka.pid
    pids["bench + moto S3"] = os.getpid()
    cpu = CpuWindow(pids).start()
    try:
        _, err = proc.communicate(timeout=60 + total / 1000)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": "baseline timed out"}
    cpu_result = cpu.stop()
    if not out_path.exists():
        return {"error": f"baseline failed: {err.decode(errors='replace')[-800:]}"}
    result = dict(json.loads(out_path.read_text()))
    result["cpu"] = cpu_result
    return result


def scenario_batching(b: Bench) -> dict[str, Any]:
    """`BATCHING_RUNS` paired runs (the worker, then the baseline on the same topic); the
    one with the median ratio is the headline, every run is listed (`runs`). One run
    alone moved ±20 % on this machine, the baseline's as much as ours."""
    runs = [
        run_batching(b, name="batching" if n == 1 else f"batching {n}/{BATCHING_RUNS}")
        for n in range(1, BATCHING_RUNS + 1)
    ]
    paired = sorted((r for r in runs if r.get("ratio_to_baseline")), key=_ratio)
    result = dict(paired[len(paired) // 2] if paired else runs[0])
    result["runs"] = [
        {
            "alerts_per_second": r.get("alerts_per_second"),
            "baseline_alerts_per_second": (r.get("baseline") or {}).get("alerts_per_second"),
            "ratio_to_baseline": r.get("ratio_to_baseline"),
            "peak_rss_mb": (r.get("memory") or {}).get("peak_rss_mb"),
        }
        for r in runs
    ]
    if len(paired) > 1:
        ratios = ", ".join(f"{_ratio(r):.3f}" for r in paired)
        say(f"  median of {len(runs)} paired runs: ratios {ratios}")
    return result


def _ratio(result: dict[str, Any]) -> float:
    return float(result.get("ratio_to_baseline") or 0.0)


# -- scenario: per-alert fan-out -------------------------------------------------------------


def run_fanout(
    b: Bench,
    workers: int = 1,
    scale_factor: float = 1.0,
    profile_to: Path | None = None,
    name: str = "fanout",
) -> dict[str, Any]:
    per_tenant = max(5, round(FANOUT_ALERTS / FANOUT_INTEGRATIONS * b.scale * scale_factor))
    total = per_tenant * FANOUT_INTEGRATIONS
    topics = TopicSet(prefix=f"f{b.run_id[-6:]}{uuid.uuid4().hex[:4]}")
    tenants = balanced_tenants(FANOUT_INTEGRATIONS, PARTITIONS, f"ft{uuid.uuid4().hex[:4]}-")
    configs = [webhook_config(t, "soc-hook", f"{t}.{HOOK_DOMAIN}", f"/hook/{t}") for t in tenants]
    say(
        f"[{name}] {total} alerts, {FANOUT_INTEGRATIONS} tenants x 1 webhook (answers after "
        f"{WEBHOOK_DELAY * 1000:.0f} ms), {workers} worker(s)"
    )
    b.load_configs(topics, configs, {}, name)
    loaded = preload(b.bootstrap, topics.alerts, alert_stream(tenants, per_tenant, topics.prefix))
    say(f"  preloaded {loaded['count']} alerts in {loaded['seconds']:.1f} s")
    b.recv_reset()
    started = b.start_measured(topics, {}, name, count=workers)
    ready_at = time.time()
    samplers = [RssSampler(w.proc.pid).start() for w in started if w.proc is not None]
    cpu = CpuWindow(b.pids(started)).start()
    spy = None
    if profile_to is not None and started[0].proc is not None:
        spy = profiling.start(started[0].proc.pid, profile_to)
        if spy is not None:
            b.spies.append(spy)
    deadline = time.monotonic() + 60 + total / 100
    count = 0
    last_report = last_change = time.monotonic()
    while count < total and time.monotonic() < deadline:
        for w in started:
            _check_alive(w)
        # Distinct alerts: with several workers a rebalance re-delivers some (at least once).
        now_count = int((b.recv_stats() or {}).get("unique", 0))
        if now_count != count:
            count, last_change = now_count, time.monotonic()
        elif time.monotonic() - last_change > STALL_SECONDS:
            say(f"  no new delivery for {STALL_SECONDS:.0f} s: giving up at {count} / {total}")
            break
        if time.monotonic() - last_report > 15:
            say(f"  … {count} / {total} deliveries received")
            last_report = time.monotonic()
        time.sleep(0.25)
    cpu_result = cpu.stop()
    profile_seconds = time.time() - ready_at
    if spy is not None:
        profiling.stop(spy)
        b.spies.remove(spy)
    # Let late duplicates (if any) arrive before the dump.
    time.sleep(0.5)
    metrics = [worker_metrics(w) for w in started]
    health = [w.health() for w in started]
    time.sleep(1.5)  # one more commit interval
    offsets = kafka_diagnostics(b, topics)
    for w in started:
        b.stop_worker(w)
    mems = [s.stop() for s in samplers]
    dump = b.recv_dump(name)
    records = dump["records"]
    times = sorted(r[0] for r in records)
    ids = [r[2] for r in records]
    unique = len(set(ids))
    t_first = first_timestamp(b.bootstrap, f"{topics.app_id}-deliver-webhook")
    t_last = times[-1] if times else None
    seconds = (t_last - t_first) if (t_first and t_last) else None
    steady = steady_rate(times)
    result: dict[str, Any] = {
        "alerts": total,
        "integrations": FANOUT_INTEGRATIONS,
        "workers": workers,
        "preload": loaded,
        "complete": unique >= total,
        "received": len(records),
        "unique_received": unique,
        "duplicates": len(records) - unique,
        "receiver_connections": dump.get("connections"),
        "worker_ready_at": ready_at,
        "first_consumed_at": t_first,
        "last_received_at": t_last,
        "seconds": round(seconds, 3) if seconds else None,
        "deliveries_per_second": round(unique / seconds, 1) if seconds else None,
        "steady_deliveries_per_second": round(steady, 1) if steady else None,
        "received_timeline": timeline(times, t_first) if t_first else [],
        "cpu": cpu_result,
        "memory": mems,
        "worker_metrics": metrics,
        "worker_health": health,
        "offsets": offsets,
        "topics": topics.prefix,
    }
    if profile_to is not None:
        result["profile_seconds"] = round(profile_seconds, 1)
    say(
        f"  {unique} / {total} delivered in {seconds or float('nan'):.1f} s = "
        f"{result['deliveries_per_second'] or 0:.0f} deliveries/s (steady "
        f"{result['steady_deliveries_per_second'] or 0:.0f}/s), {result['duplicates']} "
        f"duplicates, {dump.get('connections')} TCP connections opened"
    )
    return result


def scenario_fanout(b: Bench) -> dict[str, Any]:
    return run_fanout(b)


def scenario_scaling(b: Bench) -> dict[str, Any]:
    # Half the fan-out's size keeps a full run near 15 minutes; steady rates compare.
    two = run_fanout(b, workers=2, scale_factor=SCALING_FRACTION, name="scaling-2w")
    out: dict[str, Any] = {"two_workers": two}
    # Batching at full size: one worker is bound by its one interpreter (bench/analysis.md).
    out["batching_two_workers"] = run_batching(b, workers=2, name="scaling-batching-2w")
    one = b.results / "fanout.json"
    if one.exists():
        data = json.loads(one.read_text())
        if data.get("run_id") == b.run_id or "error" not in data:
            out["one_worker_from"] = "fanout.json"
            out["one_worker"] = {
                k: data.get(k)
                for k in (
                    "deliveries_per_second",
                    "steady_deliveries_per_second",
                    "seconds",
                    "alerts",
                    "cpu",
                )
            }
    return out


# -- scenario: latency ----------------------------------------------------------------------


def scenario_latency(
    b: Bench, profile_to: Path | None = None, seconds: float | None = None
) -> dict[str, Any]:
    if seconds is None:
        seconds = max(5.0, LATENCY_SECONDS * min(1.0, b.scale * 4))
    warmup = LATENCY_WARMUP
    topics = TopicSet(prefix=f"l{b.run_id[-6:]}{uuid.uuid4().hex[:4]}")
    tenants = balanced_tenants(PARTITIONS, PARTITIONS, f"lt{uuid.uuid4().hex[:4]}-")
    configs = [webhook_config(t, "soc-hook", f"{t}.{HOOK_DOMAIN}", f"/hook/{t}") for t in tenants]
    say(
        f"[latency] {LATENCY_RATE:.0f} alerts/s for {seconds:.0f} s (after {warmup:.0f} s warm-up) "
        f"to {len(tenants)} webhooks"
    )
    worker = b.new_worker(topics, "latency", {})
    worker.start(timeout=180)
    assert worker.proc is not None
    produce(
        b.bootstrap,
        topics.integrations,
        [(f"{c['tenant_id']}/{c['integration_id']}", c) for c in configs],
    )
    wait_for(
        "integrations loaded",
        lambda: (worker.health() or {}).get("integrations", 0) >= len(configs),
        120,
        check=lambda: _check_alive(worker),
    )
    sampler = RssSampler(worker.proc.pid).start()
    # What the worker costs with nothing to do (timers, take loops, fetch loop).
    idle = CpuWindow({"worker": worker.proc.pid}).start()
    time.sleep(IDLE_SECONDS)
    idle_cpu = idle.stop()
    say(f"  idle worker: {idle_cpu['cores_used'].get('worker', 0):.2f} cores")
    b.recv_reset()
    spy = profiling.start(worker.proc.pid, profile_to) if profile_to else None
    spy_started = time.time()
    if spy is not None:
        b.spies.append(spy)
    # librdkafka's linger would add up to 5 ms before the alert even leaves: send at once.
    producer = fast_producer(b.bootstrap, **{"linger.ms": 0, "batch.size": 16384})
    import random

    import orjson

    rng = random.Random(3)
    total = int((warmup + seconds) * LATENCY_RATE)
    measured_from = int(warmup * LATENCY_RATE)
    t0 = time.monotonic() + 0.1
    cpu = None
    for i in range(total):
        target = t0 + i / LATENCY_RATE
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if i == measured_from:
            cpu = CpuWindow(b.pids([worker])).start()
        tenant = tenants[i % len(tenants)]
        alert = make_alert(i, tenant, topics.prefix, rng)
        alert["details"]["bench_produced_at"] = repr(time.time())
        producer.produce(topics.alerts, key=tenant.encode(), value=orjson.dumps(alert))
        producer.poll(0)
    producer.flush(30)
    wait_for(
        "every latency alert at the receiver",
        lambda: int((b.recv_stats() or {}).get("unique", 0)) >= total,
        60,
    )
    cpu_result = cpu.stop() if cpu else {}
    profile_seconds = time.time() - spy_started
    if spy is not None:
        profiling.stop(spy)
        b.spies.remove(spy)
    metrics = worker_metrics(worker)
    b.stop_worker(worker)
    mem = sampler.stop()
    dump = b.recv_dump("latency")
    # Where the time goes: the router stamps `routed_at` on the delivery record, and the
    # record's own Kafka timestamp is when the worker produced it.
    routed: dict[str, tuple[float, float]] = {}

    def keep(value: bytes, ts: float) -> None:
        with contextlib.suppress(Exception):
            doc = orjson.loads(value)
            routed[doc["alert"]["alert_id"]] = (float(doc["routed_at"]), ts)

    read_topic(b.bootstrap, f"{topics.app_id}-deliver-webhook", keep)
    lat_ms: list[float] = []
    to_router: list[float] = []
    router_to_recv: list[float] = []
    for recv, _path, aid, produced in dump["records"]:
        if aid is None or produced is None:
            continue
        n = int(aid.rsplit("-", 1)[1])
        if n >= measured_from:
            lat_ms.append((recv - float(produced)) * 1000.0)
            if aid in routed:
                to_router.append((routed[aid][0] - float(produced)) * 1000.0)
                router_to_recv.append((recv - routed[aid][0]) * 1000.0)
    lat_ms.sort()

    def pcts(values: list[float]) -> dict[str, float]:
        return {f"p{q}": round(percentile(values, q), 2) for q in (50, 95, 99)}

    result = {
        "rate_per_second": LATENCY_RATE,
        "seconds": seconds,
        "warmup_seconds": warmup,
        "alerts_measured": len(lat_ms),
        "alerts_expected": total - measured_from,
        "p50_ms": round(percentile(lat_ms, 50), 2),
        "p90_ms": round(percentile(lat_ms, 90), 2),
        "p95_ms": round(percentile(lat_ms, 95), 2),
        "p99_ms": round(percentile(lat_ms, 99), 2),
        "max_ms": round(lat_ms[-1], 2) if lat_ms else None,
        "min_ms": round(lat_ms[0], 2) if lat_ms else None,
        "mean_ms": round(sum(lat_ms) / len(lat_ms), 2) if lat_ms else None,
        "idle_cpu": idle_cpu,
        "profile_seconds": round(profile_seconds, 1) if profile_to else None,
        "produce_to_routed_ms": pcts(to_router),
        "routed_to_received_ms": pcts(router_to_recv),
        "latencies_ms": [round(x, 2) for x in lat_ms],
        "cpu": cpu_result,
        "memory": mem,
        "worker_metrics": metrics,
        "topics": topics.prefix,
    }
    say(
        f"  p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, p99 "
        f"{result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms ({len(lat_ms)} alerts)"
    )
    return result


# -- scenario: memory with a backlog to a down destination --------------------------------


def scenario_memory(b: Bench) -> dict[str, Any]:
    total = b.n(BACKLOG_ALERTS, 1000)
    window = max(15.0, BACKLOG_WINDOW * min(1.0, b.scale * 4))
    topics = TopicSet(prefix=f"m{b.run_id[-6:]}{uuid.uuid4().hex[:4]}")
    tenants = balanced_tenants(8, PARTITIONS, f"mt{uuid.uuid4().hex[:4]}-")
    configs = [webhook_config(t, "soc-hook", f"{t}.{DOWN_DOMAIN}", "/hook") for t in tenants]
    configs += [s3_config(t, f"down-{topics.prefix}") for t in tenants]
    # S3 is down too: the worker's endpoint is a closed port.
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{b.down_port}"}
    say(
        f"[memory] backlog of {total} alerts for 8 tenants x (webhook + S3), both down "
        f"(connection refused); watching the worker for {window:.0f} s"
    )
    b.load_configs(topics, configs, env, "memory")
    loaded = preload(
        b.bootstrap, topics.alerts, alert_stream(tenants, total // len(tenants), topics.prefix)
    )
    say(f"  preloaded {loaded['count']} alerts in {loaded['seconds']:.1f} s")
    [worker] = b.start_measured(topics, env, "memory")
    assert worker.proc is not None
    sampler = RssSampler(worker.proc.pid).start()
    cpu = CpuWindow(b.pids([worker])).start()
    progress: list[tuple[float, float, float, float]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < window:
        _check_alive(worker)
        m = worker_metrics(worker)
        consumed = sum(v for k, v in m.items() if k.startswith("alertrelay_alerts_consumed_total"))
        dead = sum(v for k, v in m.items() if k.startswith("alertrelay_dead_letters_total"))
        attempts = sum(
            v for k, v in m.items() if k.startswith("alertrelay_delivery_attempts_total")
        )
        progress.append((round(time.monotonic() - t0, 1), consumed, attempts, dead))
        time.sleep(2.0)
    cpu_result = cpu.stop()
    metrics = worker_metrics(worker)
    b.stop_worker(worker)
    mem = sampler.stop()
    result = {
        "backlog_alerts": total,
        "window_seconds": window,
        "preload": loaded,
        "memory": mem,
        "progress": progress,  # (s, alerts consumed, delivery attempts, dead letters)
        "cpu": cpu_result,
        "worker_metrics": metrics,
        "topics": topics.prefix,
    }
    last = progress[-1] if progress else (0, 0, 0, 0)
    say(
        f"  peak RSS {mem['peak_rss_mb']:.0f} MB (last {mem['last_rss_mb']} MB); the router "
        f"consumed {last[1]:.0f} alerts, {last[2]:.0f} attempts, {last[3]:.0f} dead letters"
    )
    return result


# -- scenario: profiles -------------------------------------------------------------------------


def scenario_profile(b: Bench) -> dict[str, Any]:
    if profiling.pyspy_path() is None:
        say("[profile] py-spy is not installed (pip install py-spy): skipped")
        return {"error": "py-spy not installed"}
    out: dict[str, Any] = {"fraction_of_measured_size": PROFILE_FRACTION}
    prof_dir = b.results / "profiles"
    prof_dir.mkdir(exist_ok=True)
    raw = prof_dir / "batching.txt"
    res = run_batching(b, PROFILE_FRACTION, profile_to=raw, name="profile-batching")
    out["batching_run"] = {k: res.get(k) for k in ("alerts", "seconds", "alerts_per_second", "cpu")}
    if raw.exists():
        out["batching"] = profiling.summarise(raw, res.get("profile_seconds"))
    raw = prof_dir / "batching-gil.txt"
    res = run_batching(
        b, GIL_PROFILE_FRACTION, profile_to=raw, name="profile-batching-gil", gil=True
    )
    out["batching_gil_run"] = {
        k: res.get(k) for k in ("alerts", "seconds", "alerts_per_second", "cpu")
    }
    if raw.exists():
        out["batching_gil"] = profiling.summarise(raw, res.get("profile_seconds"))
    raw = prof_dir / "fanout.txt"
    res = run_fanout(b, scale_factor=PROFILE_FRACTION, profile_to=raw, name="profile-fanout")
    out["fanout_run"] = {
        k: res.get(k) for k in ("alerts", "seconds", "deliveries_per_second", "cpu")
    }
    if raw.exists():
        out["fanout"] = profiling.summarise(raw, res.get("profile_seconds"))
    raw = prof_dir / "latency.txt"
    res = scenario_latency(b, profile_to=raw, seconds=LATENCY_SECONDS / 2)
    out["latency_run"] = {
        k: res.get(k) for k in ("alerts_measured", "p50_ms", "p99_ms", "cpu", "idle_cpu")
    }
    if raw.exists():
        out["latency"] = profiling.summarise(raw, res.get("profile_seconds"))
    return out


# -- machine and the report ---------------------------------------------------------------------


def source_identity() -> dict[str, Any]:
    """The commit, whether streams/ sinks/ schemas/ differ from it, and a hash of them."""
    tree = hashlib.sha256()
    for folder in ("streams", "sinks", "schemas"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            tree.update(str(path.relative_to(REPO_ROOT)).encode())
            tree.update(path.read_bytes())
    commit = dirty = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "streams", "sinks", "schemas"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    return {
        "commit": commit,
        "source_dirty": bool(dirty),
        "source_tree_sha256": tree.hexdigest()[:12],
    }


def machine_info(b: Bench) -> dict[str, Any]:
    import platform
    from importlib import metadata

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_total = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_total = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    free = ""
    with contextlib.suppress(Exception):
        free = subprocess.run(["free", "-m"], capture_output=True, text=True).stdout
    versions = {}
    for pkg in (
        "faust-streaming",
        "aiokafka",
        "confluent-kafka",
        "httpx",
        "pydantic",
        "orjson",
        "zstandard",
        "boto3",
        "moto",
        "py-spy",
    ):
        with contextlib.suppress(Exception):
            versions[pkg] = metadata.version(pkg)
    commit = dirty = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "streams", "sinks", "schemas"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    kafka = ""
    with contextlib.suppress(Exception):
        import kafka_local

        kafka = kafka_local.kafka_version()
    java = ""
    with contextlib.suppress(Exception):
        java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
        java = java.splitlines()[0]
    tree = hashlib.sha256()
    for folder in ("streams", "sinks", "schemas"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            tree.update(str(path.relative_to(REPO_ROOT)).encode())
            tree.update(path.read_bytes())
    defaults = ""
    with contextlib.suppress(Exception):
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ALERTRELAY_")}
        defaults = subprocess.run(
            [
                sys.executable,
                "-c",
                "from streams.settings import Settings; print(repr(Settings.from_env()))",
            ],
            cwd=REPO_ROOT,
            env=clean,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    return {
        "source_tree_sha256": tree.hexdigest()[:12],
        "worker_defaults": defaults,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "worker_extra_env": dict(WORKER_EXTRA_ENV),
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "memory": mem_total,
        "free_m": free,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "java": java,
        "kafka": kafka if b.kafka is not None else f"external ({b.bootstrap})",
        "versions": versions,
        "commit": commit,
        "source_dirty": bool(dirty),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario", default="all", choices=["all", *SCENARIOS], help="what to run (default all)"
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply alert counts (0.05 = quick smoke run); results of a "
        "scaled run go to bench/results/scale-<s>/",
    )
    parser.add_argument("--no-report", action="store_true", help="do not write BENCHMARKS.md")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for every worker (what-if runs, e.g. "
        "ALERTRELAY_TAKE_MAX=2000); results then go to bench/results/what-if/ unless --out",
    )
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1:
        parser.error("--scale must be in (0, 1]")
    extra: dict[str, str] = {}
    for item in args.worker_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--worker-env wants NAME=VALUE, got {item!r}")
        extra[name] = value
    WORKER_EXTRA_ENV.update(extra)
    if args.out is not None:
        args.results = args.out.resolve()
    elif extra:
        args.results = BENCH_DIR / "results" / "what-if"
    else:
        args.results = (
            BENCH_DIR / "results"
            if args.scale == 1
            else BENCH_DIR / "results" / f"scale-{args.scale:g}"
        )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    chosen = SCENARIOS if args.scenario == "all" else [args.scenario]
    bench = Bench(args)
    failures: list[str] = []
    started = time.monotonic()
    say(
        f"alertrelay bench run {bench.run_id}: {', '.join(chosen)} at scale {args.scale:g}; "
        f"logs in {bench.work}"
    )
    try:
        bench.start()
        (bench.results / "machine.json").write_text(json.dumps(machine_info(bench), indent=1))
        funcs: dict[str, Callable[[Bench], dict[str, Any]]] = {
            "receiver": scenario_receiver,
            "batching": scenario_batching,
            "fanout": scenario_fanout,
            "latency": scenario_latency,
            "memory": scenario_memory,
            "scaling": scenario_scaling,
            "profile": scenario_profile,
        }
        for name in chosen:
            t = time.monotonic()
            try:
                data = funcs[name](bench)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                traceback.print_exc()
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                data = {"error": f"{type(exc).__name__}: {exc}"}
                for w in list(bench.workers):
                    _quietly(lambda w=w: bench.stop_worker(w))
            data["scenario_wall_seconds"] = round(time.monotonic() - t, 1)
            bench.save(name, data)
            say(f"  ({name} took {time.monotonic() - t:.0f} s)")
    except KeyboardInterrupt:
        say("interrupted; cleaning up…")
        bench.close()
        return 130
    finally:
        bench.close()
    total = time.monotonic() - started
    say(f"bench finished in {total / 60:.1f} min")
    if not args.no_report:
        import report

        if args.scenario == "all":
            (bench.results / "full_run.json").write_text(
                json.dumps(
                    {
                        "run_id": bench.run_id,
                        "minutes": round(total / 60, 1),
                        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        "command": " ".join(sys.argv),
                    },
                    indent=1,
                )
            )
        path = report.write(
            bench.results, total_minutes=total / 60 if args.scenario == "all" else None
        )
        say(f"wrote {path} and {bench.results / 'bench.png'}")
    if failures:
        say("FAILED scenarios:\n  " + "\n  ".join(failures))
        return 1
    shutil.rmtree(bench.work / "data", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
