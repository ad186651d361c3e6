"""Shared pieces of the benchmark: sample alerts, fast producing, tenants spread over
partitions, process sampling (RSS, CPU) and a few Kafka/S3 helpers.

Imported by bench/run.py and bench/baseline.py (both put the repo root and bench/ on
sys.path); stdlib plus what the project already depends on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

CLK_TCK = os.sysconf("SC_CLK_TCK")

# -- tenants and partitions ------------------------------------------------------------


def murmur2_partition(key: str, partitions: int) -> int:
    """Kafka's default partitioner (what confluent-kafka's murmur2_random does for a key)."""
    from aiokafka.partitioner import murmur2

    return int(murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


def balanced_tenants(count: int, partitions: int, prefix: str) -> list[str]:
    """`count` tenant ids whose murmur2 partitions are spread evenly over `partitions`.

    With keyed alerts a tenant lives on one partition; an even spread lets every
    partition (and so every worker of a group) carry the same share of the load.
    """
    per = -(-count // partitions)
    buckets: dict[int, list[str]] = {p: [] for p in range(partitions)}
    n = 0
    while sum(len(b) for b in buckets.values()) < count:
        tenant = f"{prefix}{n:04d}"
        n += 1
        p = murmur2_partition(tenant, partitions)
        if len(buckets[p]) < per:
            buckets[p].append(tenant)
    out: list[str] = []
    # Interleave partitions so a prefix of the list is balanced too.
    for i in range(per):
        for p in range(partitions):
            if i < len(buckets[p]) and len(out) < count:
                out.append(buckets[p][i])
    return out


# -- sample alerts ---------------------------------------------------------------------

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
_PATHS = ["/checkout", "/checkout/payment", "/cart", "/account/login", "/invoices/pay", "/"]
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
_RISKS = ["low", "medium", "high", "critical"]
_BROWSERS = [
    "Chrome 131 / Windows 11",
    "Safari 18.1 / macOS 15",
    "Firefox 133 / Ubuntu 24.04",
    "Chrome 131 / Android 15",
    "Mobile Safari 18 / iOS 18.1",
]


def make_alert(n: int, tenant: str, run: str, rng: random.Random) -> dict[str, Any]:
    """A realistic ~1 KB alert (the fields of tests.harness.make_alert, filled in like a
    real detection platform would: long URLs, hashes, a few details)."""
    alert_id = f"{run}-{tenant}-{n:07d}"
    host = f"shop.{tenant}.example.com"
    page = f"https://{host}{rng.choice(_PATHS)}?session={rng.getrandbits(40):010x}"
    script = rng.choice(_SCRIPTS)
    if rng.random() < 0.6:
        event_type = "client_side_risk"
        title, signal = rng.choice(_RISK_TITLES)
        details = {
            "signal": signal,
            "script_hash": f"sha256-{rng.getrandbits(256):064x}",
            "previous_hash": f"sha256-{rng.getrandbits(256):064x}",
            "first_seen_sessions": str(rng.randint(1, 5000)),
            "browser": rng.choice(_BROWSERS),
            "network_destination": f"https://collect-{rng.getrandbits(24):06x}.metrics.example/",
        }
        description = (
            f"{script.split('/')[2]} on {page.split('?')[0]}: {title.lower()}. The script was "
            "first observed in the last 24 hours and behaves differently from its previous "
            "version. Review it in the console and block it if it is not expected."
        )
    else:
        event_type = "pci_scope_change"
        title, scope = rng.choice(_PCI_TITLES)
        details = {
            "pci_scope": scope,
            "requirement": "PCI DSS 4.0 6.4.3 / 11.6.1",
            "page_hash": f"sha256-{rng.getrandbits(256):064x}",
            "scripts_on_page": str(rng.randint(3, 60)),
            "browser": rng.choice(_BROWSERS),
        }
        description = (
            f"{page.split('?')[0]} changed PCI scope ({scope}). Scripts on pages in scope must "
            "be inventoried, authorised and monitored for changes (PCI DSS 4.0 requirements "
            "6.4.3 and 11.6.1); this page's inventory needs a review."
        )
    return {
        "alert_id": alert_id,
        "tenant_id": tenant,
        "event_type": event_type,
        "risk_level": rng.choices(_RISKS, weights=[35, 30, 25, 10])[0],
        "title": title,
        "detected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "description": description,
        "page_url": page,
        "script_url": script,
        "domain": host,
        "console_url": f"https://console.codedefender.example/{tenant}/alerts/{alert_id}",
        "details": details,
    }


def alert_stream(
    tenants: list[str], per_tenant: int, run: str, seed: int = 7
) -> Iterator[tuple[bytes, bytes]]:
    """(key, JSON value) of `per_tenant` alerts for each tenant, tenants interleaved."""
    rng = random.Random(seed)
    for n in range(per_tenant):
        for tenant in tenants:
            yield tenant.encode(), orjson.dumps(make_alert(n, tenant, run, rng))


def fast_producer(bootstrap: str, **extra: Any) -> Any:
    from confluent_kafka import Producer

    conf = {
        "bootstrap.servers": bootstrap,
        "partitioner": "murmur2_random",  # Kafka's default for keyed records (README)
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.max.bytes": 4 * 1024 * 1024,
        "compression.type": "none",
    }
    conf.update(extra)
    return Producer(conf)


def preload(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> dict[str, Any]:
    """Produce as fast as the client goes; returns count, bytes and seconds."""
    producer = fast_producer(bootstrap)
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    count = size = 0
    started = time.monotonic()
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        size += len(value)
        if count % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    took = time.monotonic() - started
    if left or errors:
        raise RuntimeError(f"preload of {topic}: {left} not flushed, errors {errors[:3]}")
    return {"count": count, "bytes": size, "seconds": round(took, 3)}


# -- Kafka read helpers ----------------------------------------------------------------


def topic_timestamps(
    bootstrap: str,
    topic: str,
    *,
    want: Callable[[bytes], bool] | None = None,
    timeout: float = 120.0,
) -> list[float]:
    """Kafka timestamps (seconds) of a topic's records, all partitions, from the start
    to the end at call time; `want` filters on the value."""
    out: list[float] = []

    def keep(value: bytes, ts: float) -> None:
        if want is None or want(value):
            out.append(ts)

    read_topic(bootstrap, topic, keep, timeout=timeout)
    return out


def read_topic(
    bootstrap: str, topic: str, fn: Callable[[bytes, float], None], timeout: float = 120.0
) -> None:
    """Call fn(value, kafka timestamp in s) for every record from the start to the end."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-read-{os.getpid()}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 52_428_800,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        ends = {}
        for p in parts:
            _lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ends[p] = hi
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        remaining = {p for p in parts if ends[p] > 0}
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error() is not None:
                    continue
                p = msg.partition()
                if msg.offset() >= ends[p] - 1:
                    remaining.discard(p)
                fn(msg.value() or b"", msg.timestamp()[1] / 1000.0)
    finally:
        consumer.close()


def first_timestamp(bootstrap: str, topic: str, timeout: float = 30.0) -> float | None:
    """The earliest Kafka timestamp over the first record of each partition."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-first-{os.getpid()}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        nonempty = []
        for p in parts:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                nonempty.append(p)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in nonempty])
        seen: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < len(nonempty) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            seen.setdefault(msg.partition(), msg.timestamp()[1] / 1000.0)
        return min(seen.values()) if seen else None
    finally:
        consumer.close()


# -- process sampling ------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) of a process, {} when it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process (threads included) has used."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return float(total - idle), float(total)


@dataclass
class CpuWindow:
    """CPU used by named processes between start() and stop(), in cores."""

    pids: dict[str, int]
    started: float = 0.0
    before: dict[str, float] = field(default_factory=dict)
    machine_before: tuple[float, float] = (0.0, 0.0)
    result: dict[str, Any] = field(default_factory=dict)

    def start(self) -> CpuWindow:
        self.started = time.monotonic()
        self.before = {n: proc_cpu_seconds(p) or 0.0 for n, p in self.pids.items()}
        self.machine_before = machine_cpu()
        return self

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        busy0, total0 = self.machine_before
        busy1, total1 = machine_cpu()
        cores: dict[str, float] = {}
        for name, pid in self.pids.items():
            now = proc_cpu_seconds(pid)
            if now is not None and wall > 0:
                cores[name] = round((now - self.before.get(name, 0.0)) / wall, 3)
        machine = (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
        ncpu = os.cpu_count() or 1
        # CPU of processes that are not this benchmark's (other users of the machine):
        # their share makes the figures of that window pessimistic.
        others = max(0.0, machine * ncpu - sum(cores.values()))
        self.result = {
            "wall_seconds": round(wall, 3),
            "cores_used": cores,
            "other_processes_cores": round(others, 2),
            "machine_busy_fraction": round(machine, 3),
            "machine_cores": ncpu,
        }
        return self.result


class RssSampler:
    """Samples VmRSS of a process every `interval` seconds in a thread; keeps VmHWM."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (monotonic, kB)
        self.hwm_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            status = proc_status(self.pid)
            if status:
                self.samples.append((time.monotonic(), status.get("VmRSS", 0)))
                self.hwm_kb = max(self.hwm_kb, status.get("VmHWM", 0))
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        status = proc_status(self.pid)
        if status:
            self.hwm_kb = max(self.hwm_kb, status.get("VmHWM", 0))
        self._stop.set()
        self._thread.join(5)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        rss = [kb for _, kb in self.samples]
        return {
            "peak_rss_mb": round(self.hwm_kb / 1024, 1),
            "max_sampled_rss_mb": round(max(rss) / 1024, 1) if rss else None,
            "last_rss_mb": round(rss[-1] / 1024, 1) if rss else None,
            "timeline": [(round(t - self.t0, 2), round(kb / 1024, 1)) for t, kb in self.samples],
        }


# -- misc ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted or unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[k]


def http_json(url: str, data: bytes | None = None, timeout: float = 10.0) -> Any:
    import urllib.request

    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def wait_until(what: str, done: Callable[[], bool], timeout: float, every: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if done():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def group_offsets(bootstrap: str, group: str, topic: str) -> dict[str, Any]:
    """Per partition: committed offset of `group`, low and high watermarks (read only:
    the consumer never joins the group or commits)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return {}
        parts = [TopicPartition(topic, p) for p in sorted(meta.topics[topic].partitions)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
        out = {}
        for tp in parts:
            lo, hi = consumer.get_watermark_offsets(tp, timeout=10)
            out[str(tp.partition)] = {
                "committed": committed.get(tp.partition),
                "low": lo,
                "high": hi,
            }
        return out
    finally:
        consumer.close()
