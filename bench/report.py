#!/usr/bin/env python3
# ruff: noqa: RUF001
"""Writes BENCHMARKS.md and bench/results/bench.png from bench/results/*.json.

Run by bench/run.py at the end; can be re-run alone (`python bench/report.py [DIR]`) to
redo the report from the saved figures. The hand-written analysis (where the time goes,
what to change) lives in bench/analysis.md and is included as is.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"

TARGETS = {
    "batching": 20_000,
    "ratio": 0.5,
    "fanout": 3_000,
    "p99": 50.0,
    "rss": 300.0,
}


def _load(results: Path, name: str) -> dict[str, Any]:
    path = results / f"{name}.json"
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except ValueError:
        return {}


def _paired_run(run: dict[str, Any]) -> str:
    """One paired batching run: ours ÷ the baseline's rate = ratio, peak RSS."""
    return (
        f"{_fmt(run.get('alerts_per_second'))}/s ÷ {_fmt(run.get('baseline_alerts_per_second'))}/s"
        f" = {_fmt(run.get('ratio_to_baseline'), 3)}, {_fmt(run.get('peak_rss_mb'), 0)} MB"
    )


def _fmt(value: Any, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "n/a"
    text = f"{value:,.{digits}f}" if isinstance(value, float | int) else str(value)
    return f"{text}{unit}"


def _met(ok: bool | None) -> str:
    if ok is None:
        return "n/a"
    return "**yes**" if ok else "**no**"


def _attempt_ms(data: dict[str, Any]) -> str:
    metrics = (data.get("worker_metrics") or [{}])[0] or {}
    total = metrics.get('alertrelay_delivery_attempt_seconds_sum{type="webhook"}')
    count = metrics.get('alertrelay_delivery_attempt_seconds_count{type="webhook"}')
    if not total or not count:
        return "n/a"
    return f"{1000 * total / count:.0f}"


def _gc_line(data: dict[str, Any]) -> str:
    """The worker's garbage collections in the run (streams/gc_tuning.py)."""
    metrics = data.get("worker_metrics") or {}
    if isinstance(metrics, list):
        metrics = metrics[0] if metrics else {}
    name = "alertrelay_gc_pause_seconds"
    count = sum(v for k, v in metrics.items() if k.startswith(f"{name}_count"))
    total = sum(v for k, v in metrics.items() if k.startswith(f"{name}_sum"))
    if not count:
        return "n/a"
    return (
        f"{_fmt(count)} collections, {_fmt(total, 2)} s in all "
        f"(mean pause {_fmt(1000 * total / count, 1)} ms)"
    )


def _pcts(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    return ", ".join(f"{k} {v:.1f} ms" for k, v in d.items())


def _cpu_line(cpu: dict[str, Any] | None) -> str:
    if not cpu:
        return "n/a"
    parts = [f"{name} {cores:.2f}" for name, cores in cpu.get("cores_used", {}).items()]
    busy = cpu.get("machine_busy_fraction")
    total = cpu.get("machine_cores")
    tail = f"; whole machine {busy * 100:.0f} % busy of {total} cores" if busy is not None else ""
    others = cpu.get("other_processes_cores")
    if others is not None:
        tail += f", of which {others:.2f} cores by processes outside the benchmark"
    return ", ".join(parts) + " (cores)" + tail


# -- the plot ------------------------------------------------------------------------------


def plot(results: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return None
    batching = _load(results, "batching")
    fanout = _load(results, "fanout")
    scaling = _load(results, "scaling")
    latency = _load(results, "latency")
    memory = _load(results, "memory")

    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    fig.suptitle("alertrelay benchmarks (bench/run.py)", fontsize=14)

    # 1. batching throughput
    ax = axes[0][0]
    base = batching.get("baseline", {}) or {}
    labels, values, colors = [], [], []
    if batching.get("alerts_per_second"):
        labels.append("alertrelay\n(S3, zstd)")
        values.append(batching["alerts_per_second"])
        colors.append("#d62728")
    if base.get("alerts_per_second"):
        labels.append("baseline\nconsumer loop")
        values.append(base["alerts_per_second"])
        colors.append("#7f7f7f")
    if values:
        bars = ax.bar(labels, values, color=colors)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
        ax.axhline(TARGETS["batching"], ls="--", color="green", label="target 20 000/s")
        ax.set_yscale("log")
        ax.legend(loc="upper left")
    ax.set_title("Batching to S3: alerts/s (log scale)")
    ax.set_ylabel("alerts / s")

    # 2. fan-out throughput
    ax = axes[0][1]
    labels, values = [], []
    if fanout.get("deliveries_per_second"):
        labels.append("1 worker")
        values.append(fanout.get("steady_deliveries_per_second") or fanout["deliveries_per_second"])
    two = (scaling or {}).get("two_workers") or {}
    if two.get("deliveries_per_second"):
        labels.append("2 workers")
        values.append(two.get("steady_deliveries_per_second") or two["deliveries_per_second"])
    if values:
        bars = ax.bar(labels, values, color=["#1f77b4", "#9467bd"][: len(values)])
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values])
    ax.axhline(TARGETS["fanout"], ls="--", color="green", label="target 3 000/s")
    ax.set_title("Webhook fan-out (20 ms answers): deliveries/s, steady state")
    ax.set_ylabel("deliveries / s")
    ax.legend(loc="upper left")

    # 3. latency CDF
    ax = axes[0][2]
    lat = latency.get("latencies_ms") or []
    if lat:
        n = len(lat)
        ax.plot(lat, [(i + 1) / n for i in range(n)], color="#ff7f0e")
        ax.axvline(TARGETS["p99"], ls="--", color="green", label="target p99 50 ms")
        for q in ("p50", "p95", "p99"):
            v = latency.get(f"{q}_ms")
            if v is not None:
                ax.axvline(v, ls=":", color="#555555")
                ax.text(v, 0.02 + 0.1 * ("p50", "p95", "p99").index(q), f" {q} {v:.0f}", fontsize=8)
        ax.set_xscale("log")
        ax.legend(loc="lower right")
    ax.set_title("Latency produce -> webhook at 100 alerts/s (CDF)")
    ax.set_xlabel("ms (log scale)")
    ax.set_ylabel("fraction of alerts")

    # 4. RSS over time
    ax = axes[1][0]
    for data, label, color in (
        (batching.get("memory", {}), "batching run", "#d62728"),
        (
            memory.get("memory", {}),
            f"{memory.get('backlog_alerts', 0):,} backlog, destinations down",
            "#2ca02c",
        ),
    ):
        tl = (data or {}).get("timeline") or []
        if tl:
            ax.plot([t for t, _ in tl], [m for _, m in tl], label=label, color=color)
    ax.axhline(TARGETS["rss"], ls="--", color="green", label="target 300 MB")
    ax.set_title("Worker RSS over time")
    ax.set_xlabel("s since the worker was ready")
    ax.set_ylabel("MB")
    ax.legend(loc="lower right")

    # 5. batching progress
    ax = axes[1][1]
    tl = batching.get("stored_timeline") or []
    if tl:
        total = 0
        xs, ys = [], []
        for t, c in tl:
            total += c
            xs.append(t)
            ys.append(total)
        ax.step(xs, ys, where="post", color="#d62728", label="alertrelay")
        ax.plot([0, xs[-1]], [0, 20_000 * xs[-1]], ls="--", color="green", label="20 000/s")
        ax.set_ylim(0, max(ys) * 1.1)
        ax.legend(loc="upper left")
    ax.set_title("Batching: alerts in S3 over time (objects land in steps)")
    ax.set_xlabel("s since the first alert was consumed")
    ax.set_ylabel("alerts stored")

    # 6. fan-out progress
    ax = axes[1][2]
    for data, label, color in (
        (fanout, "1 worker", "#1f77b4"),
        (two, "2 workers", "#9467bd"),
    ):
        tl = (data or {}).get("received_timeline") or []
        if tl:
            ax.plot([t for t, _ in tl], [c for _, c in tl], label=label, color=color)
    ax.axhline(TARGETS["fanout"], ls="--", color="green", label="target 3 000/s")
    ax.set_title("Fan-out: deliveries received per second")
    ax.set_xlabel("s since the first alert was consumed")
    ax.set_ylabel("deliveries / s")
    ax.legend(loc="upper right")

    fig.tight_layout()
    out = results / "bench.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


# -- the markdown ---------------------------------------------------------------------------


def _run_line(run: dict[str, Any]) -> str:
    if "p99_ms" in run:
        return (
            f"{_fmt(run.get('alerts_measured'))} alerts at 100/s, p50 "
            f"{_fmt(run.get('p50_ms'), 1)} ms, p99 {_fmt(run.get('p99_ms'), 1)} ms"
        )
    if "alerts_per_second" in run:
        return f"{_fmt(run.get('alerts'))} alerts, {_fmt(run.get('alerts_per_second'))} alerts/s"
    return (
        f"{_fmt(run.get('alerts'))} alerts, {_fmt(run.get('deliveries_per_second'))} deliveries/s"
    )


def _profile_section(
    name: str, prof: dict[str, Any], run: dict[str, Any], gil: bool = False
) -> list[str]:
    if not prof:
        return []
    busy = (
        f"the GIL held {_fmt(100 * (prof.get('cpu_cores_sampled') or 0), 0)} % of the time"
        if gil
        else f"≈ {_fmt(prof.get('cpu_cores_sampled'), 2)} cores busy in the worker"
    )
    lines = [
        f"#### {name}",
        "",
        f"{prof.get('samples', 0):,} samples at 100 Hz over {_fmt(prof.get('seconds'), 1)} s "
        f"({busy}); run: "
        + _run_line(run)
        + f". Raw stacks: `bench/results/profiles/{prof.get('file')}`.",
        "",
        f"| {'GIL time' if gil else 'CPU'} share by leaf frame | % |",
        "|---|---:|",
    ]
    lines += [f"| {c} | {p} |" for c, p in prof.get("by_category", [])]
    lines += ["", "| thread | % of samples |", "|---|---:|"]
    lines += [f"| {t} | {p} |" for t, p in prof.get("by_thread", [])]
    lines += [
        "",
        f"Top functions by self time (where the {'GIL' if gil else 'CPU'} is, C extensions "
        "included in their caller):",
        "",
        "| % | function (file) |",
        "|---:|---|",
    ]
    lines += [f"| {p} | `{f}` |" for f, p in prof.get("top_self", [])[:18]]
    lines += [
        "",
        "Top alertrelay functions by inclusive time (everything below them):",
        "",
        "| % | function (file) |",
        "|---:|---|",
    ]
    lines += [f"| {p} | `{f}` |" for f, p in prof.get("top_inclusive_ours", [])[:18]]
    lines.append("")
    return lines


def markdown(results: Path, total_minutes: float | None, png: Path | None) -> str:
    machine = _load(results, "machine")
    receiver = _load(results, "receiver")
    batching = _load(results, "batching")
    fanout = _load(results, "fanout")
    latency = _load(results, "latency")
    memory = _load(results, "memory")
    scaling = _load(results, "scaling")
    profile = _load(results, "profile")
    base = batching.get("baseline", {}) or {}
    two = scaling.get("two_workers", {}) or {}
    two_b = scaling.get("batching_two_workers", {}) or {}
    scale = machine and batching.get("scale", 1.0)
    rel = "bench/results" if results == RESULTS else str(results.relative_to(REPO_ROOT))

    out: list[str] = ["# Benchmarks", ""]
    out += [
        "Measured by `make bench` (`.venv/bin/python bench/run.py`): a real Kafka broker, "
        "moto's S3 server and a local webhook receiver, with `alertrelay worker` as a child "
        "process. Figures are for the code as it is at the commit below; nothing was tuned "
        "for the run. Raw figures: `" + rel + "/*.json`.",
        "",
    ]
    if machine.get("worker_extra_env"):
        extra = ", ".join(f"`{k}={v}`" for k, v in machine["worker_extra_env"].items())
        out += [f"> **What-if run: every worker had {extra}.**", ""]
    if scale and scale != 1.0:
        out += [
            f"> **Scaled run (`--scale {scale:g}`): counts are {scale:g} × the issue's; "
            "not comparable with the targets.**",
            "",
        ]
    stamps = sorted(
        str(d.get("finished_at"))
        for d in (receiver, batching, fanout, latency, memory, scaling, profile)
        if d.get("finished_at")
    )
    full = _load(results, "full_run")
    if total_minutes:
        full = {"minutes": total_minutes}
    out += [
        "| | |",
        "|---|---|",
        f"| runs (UTC) | {stamps[0] if stamps else '?'} … {stamps[-1] if stamps else '?'} |",
        "| command | `make bench` = `.venv/bin/python bench/run.py`"
        + (f" (a full run took {full['minutes']:.1f} min)" if full.get("minutes") else "")
        + "; scenarios re-run alone are listed under 'Which run each figure comes from' |",
        f"| code of the last run | `{machine.get('commit', '?')}`, source tree "
        f"(streams/, sinks/, schemas/) sha256 `{machine.get('source_tree_sha256', '?')}`"
        + (
            " (streams/, sinks/ or schemas/ had uncommitted changes)"
            if machine.get("source_dirty")
            else ""
        )
        + " |",
        f"| machine | {machine.get('cpu_model', '?')}, {machine.get('nproc', '?')} cores "
        f"(`nproc`), {machine.get('memory', '?')} RAM, Linux {machine.get('kernel', '?')} |",
        f"| software | Python {machine.get('python', '?')}, Kafka {machine.get('kafka', '?')} "
        f"({machine.get('java', '')}), "
        + ", ".join(f"{k} {v}" for k, v in (machine.get("versions") or {}).items())
        + " |",
        "",
        "Everything shares the one 2-core machine: the broker JVM, the worker, moto (in the "
        "bench process), the webhook receiver and, during these runs, other engineers' test "
        "suites. Each scenario section lists how many cores each process used and how much "
        "went to processes outside the benchmark.",
        "",
        "## Results against the targets",
        "",
        "| metric | target | measured | met? |",
        "|---|---|---|---|",
    ]
    bps = batching.get("alerts_per_second")
    out.append(
        f"| batching to S3 (zstd), {_fmt(batching.get('alerts'))} alerts: first consumed → "
        f"last object written | ≥ 20 000 alerts/s | {_fmt(bps)} alerts/s "
        f"({_fmt(batching.get('mb_per_second_uploaded'), 2)} MB/s uploaded, "
        f"{_fmt(batching.get('mb_per_second_raw'), 1)} MB/s of JSON) | "
        f"{_met(bps >= TARGETS['batching'] if bps else None)} |"
    )
    ratio = batching.get("ratio_to_baseline")
    out.append(
        f"| batching ÷ baseline (plain confluent-kafka loop + zstd + put_object) | ≥ 0.5 | "
        f"{_fmt(ratio, 3)} (baseline {_fmt(base.get('alerts_per_second'))} alerts/s, "
        f"{_fmt(base.get('mb_per_second_uploaded'), 2)} MB/s) | "
        f"{_met(ratio >= TARGETS['ratio'] if ratio else None)} |"
    )
    runs = batching.get("runs") or []
    if len(runs) > 1:
        out.append(
            f"| batching: the {len(runs)} paired runs (the median ratio's above) | – | "
            + "; ".join(_paired_run(r) for r in runs)
            + " | – |"
        )
    fps = fanout.get("steady_deliveries_per_second") or fanout.get("deliveries_per_second")
    out.append(
        f"| webhook fan-out, {_fmt(fanout.get('alerts'))} alerts over "
        f"{_fmt(fanout.get('integrations'))} integrations, 20 ms answers | ≥ 3 000 "
        f"deliveries/s | {_fmt(fanout.get('steady_deliveries_per_second'))}/s steady "
        f"({_fmt(fanout.get('deliveries_per_second'))}/s first consumed → last received) | "
        f"{_met(fps >= TARGETS['fanout'] if fps else None)} |"
    )
    p99 = latency.get("p99_ms")
    out.append(
        f"| latency produce → webhook received at 100 alerts/s | p99 ≤ 50 ms | p50 "
        f"{_fmt(latency.get('p50_ms'), 1)} ms, p95 {_fmt(latency.get('p95_ms'), 1)} ms, "
        f"**p99 {_fmt(p99, 1)} ms** (max {_fmt(latency.get('max_ms'), 1)} ms) | "
        f"{_met(p99 <= TARGETS['p99'] if p99 is not None else None)} |"
    )
    rss_b = (batching.get("memory") or {}).get("peak_rss_mb")
    out.append(
        f"| peak RSS of the worker, batching run | ≤ 300 MB | {_fmt(rss_b, 0)} MB | "
        f"{_met(rss_b <= TARGETS['rss'] if rss_b else None)} |"
    )
    rss_m = (memory.get("memory") or {}).get("peak_rss_mb")
    out.append(
        f"| peak RSS, {_fmt(memory.get('backlog_alerts'))}-alert backlog to down "
        f"destinations ({_fmt(memory.get('window_seconds'))} s) | ≤ 300 MB | {_fmt(rss_m, 0)} MB | "
        f"{_met(rss_m <= TARGETS['rss'] if rss_m else None)} |"
    )
    two_rate = two.get("steady_deliveries_per_second") or two.get("deliveries_per_second")
    if two_rate and fps:
        out.append(
            f"| scaling: fan-out with 2 workers vs 1 (same machine) | (note) | "
            f"{_fmt(two_rate)}/s vs {_fmt(fps)}/s = {two_rate / fps:.2f}× | – |"
        )
    two_b_rate, one_b_rate = two_b.get("alerts_per_second"), batching.get("alerts_per_second")
    if two_b_rate and one_b_rate:
        ratio_b = two_b_rate / base["alerts_per_second"] if base.get("alerts_per_second") else None
        out.append(
            f"| scaling: batching with 2 workers vs 1 (same machine) | (note) | "
            f"{_fmt(two_b_rate)}/s vs {_fmt(one_b_rate)}/s = {two_b_rate / one_b_rate:.2f}×"
            + (f" ({ratio_b:.2f} × the one-process baseline)" if ratio_b else "")
            + " | – |"
        )
    out.append("")
    for name, data in (
        ("batching", batching),
        ("fanout", fanout),
        ("latency", latency),
        ("memory", memory),
        ("scaling", scaling),
    ):
        if data.get("error"):
            out.append(f"> **{name} failed**: `{data['error']}`")
            out.append("")
    if png is not None:
        out += [f"![throughput, latency and memory]({png.relative_to(REPO_ROOT)})", ""]

    # -- analysis (hand-written) ------------------------------------------------------------
    analysis = BENCH_DIR / "analysis.md"
    if analysis.exists() and results == RESULTS:
        out += [analysis.read_text().strip(), ""]

    # -- details ----------------------------------------------------------------------------
    out += ["## Scenario details and method", ""]
    runs = [
        (name, data)
        for name, data in (
            ("receiver", receiver),
            ("batching", batching),
            ("fanout", fanout),
            ("latency", latency),
            ("memory", memory),
            ("scaling", scaling),
            ("profile", profile),
        )
        if data
    ]
    if runs:
        out += [
            "Which run each figure comes from (other engineers commit to the repo while the "
            "bench runs, so each scenario names the code it measured):",
            "",
            "| scenario | run | finished (UTC) | commit | uncommitted changes in streams/ sinks/ "
            "schemas/ | minutes |",
            "|---|---|---|---|---|---:|",
        ]
        for name, data in runs:
            out.append(
                f"| {name} | {data.get('run_id', '?')} | {data.get('finished_at', '?')} | "
                f"`{data.get('commit', '?')}` | {'yes' if data.get('source_dirty') else 'no'} | "
                f"{_fmt((data.get('scenario_wall_seconds') or 0) / 60, 1)} |"
            )
        out.append("")
    out += [
        "Common to all: topics have 4 partitions; alerts are ~1 KB JSON "
        "(`bench/common.py:make_alert`: the contract's fields filled like a detection "
        "platform would, `details` with hashes), keyed by tenant and produced with "
        "confluent-kafka's `murmur2_random` partitioner (Kafka's default), tenants chosen so "
        "that each partition carries the same share. Before a measured run a first worker "
        "creates the topics and takes in the integration configs, then stops; the alerts are "
        "then pre-loaded and the measured worker starts with its config table recovered and "
        "the backlog waiting (except the latency run, which produces live). The worker runs "
        "with its own defaults (below; the bench removes the speed-ups tests.harness sets "
        "for tests) plus `ALERTRELAY_LOG_LEVEL=warning`, host overrides and the egress "
        "allow-list for 127.0.0.1. RSS is read from `/proc/<pid>/status` (VmHWM for the "
        "peak, VmRSS every 0.5 s); CPU from `/proc/<pid>/stat` over the measured window. "
        "The machine was shared with other work while the bench ran (test suites of other "
        "engineers): each CPU line says how much of the machine went to processes outside "
        "the benchmark in that window.",
        "",
    ]
    if machine.get("worker_defaults"):
        out += [
            "<details><summary>worker settings (defaults at the time of the run)</summary>",
            "",
            "```",
            str(machine["worker_defaults"]),
            "```",
            "",
            "</details>",
            "",
        ]
    if batching and not batching.get("error"):
        env = batching.get("env", {})
        v = batching.get("verify") or {}
        out += [
            "### Batching to S3",
            "",
            f"- {_fmt(batching.get('alerts'))} alerts for {batching.get('tenants')} tenants, each "
            f"with one S3 integration (`compression: zstd`) into one moto bucket; "
            f"`ALERTRELAY_BATCH_MAX_EVENTS={env.get('ALERTRELAY_BATCH_MAX_EVENTS')}`, "
            f"`_MAX_BYTES={env.get('ALERTRELAY_BATCH_MAX_BYTES')}`, "
            f"`_MAX_AGE={env.get('ALERTRELAY_BATCH_MAX_AGE')}` so that every object holds "
            f"exactly {_fmt(batching.get('batch_events'))} alerts (per tenant the count is a "
            "multiple of it) and no run ends waiting for a time limit: the default 30 s "
            "`MAX_AGE` would add up to 30 s of tail, and the default 8 MiB `MAX_BYTES` counts "
            "delivery records (~2 KB each with the config snapshot), not object bytes.",
            "- Start = Kafka timestamp of the first record the router wrote to "
            "`<app>-deliver-s3` (≈ the first alert consumed); end = timestamp of the last "
            "`delivered` record on the delivery-status topic (written right after the object's "
            "PUT returned). Completion is watched by listing the bucket (`alertrelay-count` "
            "metadata); afterwards every object is downloaded and decompressed: "
            f"{_fmt(v.get('lines'))} lines, {_fmt(v.get('unique_alerts'))} distinct alerts, "
            f"{_fmt(batching.get('objects'))} objects, "
            f"{_fmt((batching.get('compressed_bytes') or 0) / 1e6, 1)} MB zstd "
            f"({_fmt((batching.get('raw_jsonl_bytes') or 0) / 1e6, 1)} MB JSON lines).",
            f"- Result: {_fmt(batching.get('seconds'), 1)} s → **{_fmt(bps)} alerts/s**, "
            f"{_fmt(batching.get('mb_per_second_uploaded'), 2)} MB/s uploaded. CPU: "
            f"{_cpu_line(batching.get('cpu'))}. Python's garbage collector "
            f"(`alertrelay_gc_pause_seconds`, the worker stopped meanwhile): "
            f"{_gc_line(batching)}.",
            f"- Baseline (`bench/baseline.py`, same topic, same {_fmt(base.get('batch_events'))} "
            "alerts per object, zstd level 3, `put_object` with `IfNoneMatch`, "
            f"{base.get('threads', '?')} upload threads): {_fmt(base.get('seconds'), 2)} s → "
            f"**{_fmt(base.get('alerts_per_second'))} alerts/s**, "
            f"{_fmt(base.get('mb_per_second_uploaded'), 2)} MB/s; the baseline process used "
            f"{_fmt(base.get('cpu_seconds'), 1)} CPU-s in all (start-up included), peak RSS "
            f"{_fmt(base.get('peak_rss_mb'), 0)} MB; other CPU in its window: "
            f"{_cpu_line(base.get('cpu'))}.",
            "",
        ]
    if receiver:
        br = receiver.get("bench_receiver", {})
        fr = receiver.get("tests_fakes_receiver", {})
        out += [
            "### The webhook stand-in",
            "",
            f"100 keep-alive clients (`bench/receiver.py load`), every answer after 20 ms "
            f"(ceiling {_fmt(receiver.get('ceiling_per_second'))} req/s): "
            f"`bench/receiver.py` (one asyncio loop, timers for the delay) "
            f"**{_fmt(br.get('requests_per_second'))} req/s**; "
            f"`tests/fakes/webhook_receiver.py` (ThreadingHTTPServer, a thread per connection, "
            f"listen backlog 5) **{_fmt(fr.get('requests_per_second'))} req/s**. The fake is "
            "far below the 3 000/s target, so the fan-out and latency runs use bench/receiver.py.",
            "",
        ]
    if fanout and not fanout.get("error"):
        out += [
            "### Per-alert fan-out",
            "",
            f"- {_fmt(fanout.get('alerts'))} alerts for {_fmt(fanout.get('integrations'))} "
            "tenants, each with one webhook integration (so 100 integrations and one delivery "
            "per alert), to `https://<tenant>.bench.example/hook/<tenant>`, sent to the "
            "receiver by `ALERTRELAY_HOST_OVERRIDES`; the receiver answers 200 after 20 ms.",
            "- Start = first record on `<app>-deliver-webhook`; end = the receiver's time of the "
            "last delivery. 'Steady' = deliveries between the 10 % and 90 % arrivals divided by "
            "the time between them (no ramp-up, no tail).",
            f"- Result: {_fmt(fanout.get('unique_received'))} distinct alerts received "
            f"({_fmt(fanout.get('duplicates'))} duplicates) in {_fmt(fanout.get('seconds'), 1)} s "
            f"→ **{_fmt(fanout.get('deliveries_per_second'))}/s**, steady "
            f"**{_fmt(fanout.get('steady_deliveries_per_second'))}/s**; the receiver saw "
            f"{_fmt(fanout.get('receiver_connections'))} TCP connections opened. CPU: "
            f"{_cpu_line(fanout.get('cpu'))}.",
            f"- Mean delivery attempt as the worker times it "
            f"(`alertrelay_delivery_attempt_seconds`, gate and connection-pool waits "
            f"included): {_attempt_ms(fanout)} ms, against the receiver's 20 ms. Python's "
            f"garbage collector: {_gc_line(fanout)}.",
            "",
        ]
    if latency and not latency.get("error"):
        out += [
            "### Latency",
            "",
            f"- {latency.get('rate_per_second'):.0f} alerts/s, paced, for "
            f"{latency.get('seconds'):.0f} s after a {latency.get('warmup_seconds'):.0f} s "
            "warm-up, round-robin over 4 tenants (one per partition), each with one webhook; "
            "the worker is already running. Each alert carries `details.bench_produced_at` = "
            "`time.time()` just before `produce()` (librdkafka `linger.ms=0`); the receiver "
            "takes `time.time()` when the request is complete. Same clock, same machine.",
            f"- {_fmt(latency.get('alerts_measured'))} alerts: min "
            f"{_fmt(latency.get('min_ms'), 1)}, "
            f"p50 {_fmt(latency.get('p50_ms'), 1)}, p90 {_fmt(latency.get('p90_ms'), 1)}, p95 "
            f"{_fmt(latency.get('p95_ms'), 1)}, **p99 {_fmt(latency.get('p99_ms'), 1)}**, max "
            f"{_fmt(latency.get('max_ms'), 1)} ms (mean {_fmt(latency.get('mean_ms'), 1)}). CPU: "
            f"{_cpu_line(latency.get('cpu'))}.",
            f"- Split by the router's `routed_at` stamp on the delivery record: produce → routed "
            f"{_pcts(latency.get('produce_to_routed_ms'))}; routed → received "
            f"{_pcts(latency.get('routed_to_received_ms'))} (the second Kafka hop through the "
            "webhook delivery topic, the sink's take window and the HTTP request).",
            f"- The same worker with nothing to do used "
            f"{_fmt(((latency.get('idle_cpu') or {}).get('cores_used') or {}).get('worker'), 2)} "
            "cores (10 s before the run).",
            "",
        ]
    runs_dir = results / "latency-runs"
    if runs_dir.is_dir():
        rows = []
        for path in sorted(runs_dir.glob("*/latency.json")):
            with contextlib.suppress(ValueError):
                rows.append((path.parent.name, json.loads(path.read_text())))
        if latency:
            rows.append(("(the run in the table above)", latency))
        rows.sort(key=lambda r: str(r[1].get("finished_at", "")))
        out += [
            "#### Every latency run of this session",
            "",
            "Same scenario, same code unless the extra worker environment says otherwise; "
            "'others' is the CPU that processes outside the benchmark (other engineers' test "
            "suites) took on the 2-core machine during the run. Raw: "
            "`bench/results/latency-runs/*/latency.json`.",
            "",
            "| run | finished (UTC) | extra worker env | others (cores) | worker (cores) | "
            "p50 ms | p99 ms | produce→routed p50 ms | routed→received p50 ms |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, d in rows:
            cpu = d.get("cpu") or {}
            extra = ", ".join(
                f"{k}={v}"
                for k, v in (d.get("worker_extra_env") or {}).items()
                if k != "PYTHONPATH"
            )
            out.append(
                f"| {name} | {str(d.get('finished_at', '?'))[11:19]} | {extra or '–'} | "
                f"{_fmt(cpu.get('other_processes_cores'), 2)} | "
                f"{_fmt((cpu.get('cores_used') or {}).get('worker'), 2)} | "
                f"{_fmt(d.get('p50_ms'), 1)} | {_fmt(d.get('p99_ms'), 1)} | "
                f"{_fmt((d.get('produce_to_routed_ms') or {}).get('p50'), 1)} | "
                f"{_fmt((d.get('routed_to_received_ms') or {}).get('p50'), 1)} |"
            )
        out.append("")
    if memory and not memory.get("error"):
        prog = memory.get("progress") or []
        last = prog[-1] if prog else [0, 0, 0, 0]
        mm = memory.get("memory") or {}
        out += [
            "### Memory",
            "",
            f"- Batching run: peak RSS (VmHWM) **{_fmt(rss_b, 0)} MB**.",
            f"- Backlog: {_fmt(memory.get('backlog_alerts'))} alerts pre-loaded for 8 tenants, "
            "each with a webhook and an S3 integration, both down (the webhook host and "
            "`AWS_ENDPOINT_URL` point at a closed local port: connection refused); default "
            "batch limits and retry policy; the worker watched for "
            f"{_fmt(memory.get('window_seconds'))} s. Peak RSS **{_fmt(rss_m, 0)} MB**, "
            f"{_fmt(mm.get('last_rss_mb'), 0)} MB at the end; in that time the router took "
            f"{_fmt(last[1])} alerts off the backlog, the sinks made {_fmt(last[2])} delivery "
            f"attempts and dead-lettered {_fmt(last[3])}. CPU: {_cpu_line(memory.get('cpu'))}.",
            "",
        ]
    if two and not two.get("error"):
        out += [
            "### Two workers",
            "",
            f"- The fan-out scenario again ({_fmt(two.get('alerts'))} alerts, 100 webhook "
            "integrations), with two worker processes of the same app id started together "
            "(4 partitions: 2 + 2 once the group settles). "
            f"Result: **{_fmt(two.get('steady_deliveries_per_second'))}/s steady**, "
            f"{_fmt(two.get('deliveries_per_second'))}/s overall "
            f"({_fmt(two.get('unique_received'))} received, {_fmt(two.get('duplicates'))} "
            f"duplicates) against {_fmt(fps)}/s with one. CPU: {_cpu_line(two.get('cpu'))}.",
            "",
        ]
    if two_b and not two_b.get("error") and two_b.get("alerts_per_second"):
        out += [
            f"- The batching scenario again ({_fmt(two_b.get('alerts'))} alerts, 8 tenants, "
            "S3 with zstd) with two worker processes started together: "
            f"**{_fmt(two_b.get('alerts_per_second'))} alerts/s** against "
            f"{_fmt(batching.get('alerts_per_second'))}/s with one "
            f"({_fmt(two_b.get('stored_alerts'))} stored). "
            f"CPU: {_cpu_line(two_b.get('cpu'))}.",
            "",
        ]
    clients_path = results / "http_clients.json"
    if clients_path.exists():
        with contextlib.suppress(ValueError):
            runs = json.loads(clients_path.read_text())
            out += [
                "### HTTP client cost (`bench/http_clients.py`)",
                "",
                "The same 1 KB POST to bench/receiver.py (answering after "
                "`receiver_delay_s`) from one asyncio loop, CPU of the client process per "
                "request: the clients the HTTP sinks used in earlier sessions, the one they "
                "use now (`sinks.http.build_client`: sinks/http_client.py on "
                "sinks/http_connection.py), and a plain aiohttp `ClientSession`.",
                "",
                "| client | in flight | answer delay | req/s | CPU µs/req |",
                "|---|---:|---:|---:|---:|",
            ]
            for r in runs:
                for name, figures in r.items():
                    if not isinstance(figures, dict) or "cpu_us_per_request" not in figures:
                        continue
                    delay = r.get("receiver_delay_s")
                    out.append(
                        f"| {name} | {r.get('concurrency')} | "
                        f"{'–' if delay is None else f'{delay * 1000:g} ms'} | "
                        f"{_fmt(figures.get('requests_per_second'))} | "
                        f"{_fmt(figures.get('cpu_us_per_request'))} |"
                    )
            out.append("")
    if profile:
        out += [
            "### Profiles (py-spy)",
            "",
            f"Separate, smaller runs ({profile.get('fraction_of_measured_size', 0.25):g} × the "
            "measured size) with `py-spy record --nonblocking --threads --function --rate 100` "
            "attached to the worker, so the measured figures above carry no profiler. Only "
            "on-CPU samples are kept: the shares are of the CPU the worker used, not of wall "
            "time.",
            "",
        ]
        out += _profile_section(
            "Batching to S3", profile.get("batching", {}), profile.get("batching_run", {})
        )
        out += _profile_section(
            "Batching to S3, GIL holder only (full size, `py-spy --gil`)",
            profile.get("batching_gil", {}),
            profile.get("batching_gil_run", {}),
            gil=True,
        )
        out += _profile_section(
            "Webhook fan-out", profile.get("fanout", {}), profile.get("fanout_run", {})
        )
        out += _profile_section(
            "Latency run (100 alerts/s, warm-up included)",
            profile.get("latency", {}),
            profile.get("latency_run", {}),
        )
    out += [
        "## Reproducing",
        "",
        "```",
        "make bench                               # everything, ~15 min on 2 cores",
        ".venv/bin/python bench/run.py --scale 0.05   # smoke run: bench/results/scale-0.05/",
        ".venv/bin/python bench/run.py --scenario fanout   # one scenario; report redone",
        ".venv/bin/python bench/report.py         # BENCHMARKS.md and plot from the JSON",
        "```",
        "",
        "`KAFKA_BOOTSTRAP_SERVERS` points the bench at an existing broker instead of starting "
        "one. Worker logs of the last runs are under `bench/.work/` (git-ignored).",
        "",
    ]
    return "\n".join(out)


def write(results: Path = RESULTS, total_minutes: float | None = None) -> Path:
    png = plot(results)
    text = markdown(results, total_minutes, png)
    target = REPO_ROOT / "BENCHMARKS.md" if results == RESULTS else results / "BENCHMARKS.md"
    target.write_text(text)
    return target


if __name__ == "__main__":
    folder = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else RESULTS
    print(write(folder))
