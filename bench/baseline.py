#!/usr/bin/env python3
"""The practical ceiling for "Kafka -> zstd JSON-lines objects -> S3" in Python.

A plain confluent-kafka consumer reads the alerts topic in batches
(`consume(num_messages=...)`), gathers `--batch-events` records per source partition
(the same object size as the worker's run), joins the raw JSON values into JSON lines,
compresses them with zstd (level 3, like the worker) and puts each object to S3 with
`IfNoneMatch: *` (like the worker). Compression and uploads run on a small thread pool
(zstd and socket I/O release the GIL) while the main thread keeps consuming.

No validation, no routing, no per-record status, no idempotency bookkeeping: the gap
between this and the worker is what those features and the engine cost.

    python bench/baseline.py --bootstrap B --topic T --endpoint URL --bucket NAME \
        --expect N --batch-events 5000 [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from common import RssSampler, proc_cpu_seconds  # noqa: E402


def run(args: argparse.Namespace) -> dict[str, Any]:
    import boto3
    import zstandard
    from botocore.config import Config
    from confluent_kafka import Consumer

    session = boto3.session.Session(
        aws_access_key_id=args.access_key,
        aws_secret_access_key=args.secret_key,
        region_name="us-east-1",
    )
    client = session.client(
        "s3",
        endpoint_url=args.endpoint,
        config=Config(retries={"total_max_attempts": 1}, max_pool_connections=args.threads),
    )
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"bench-baseline-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 10_485_760,
        }
    )
    consumer.subscribe([args.topic])
    level = 3
    local = threading.local()
    stats = {"objects": 0, "compressed_bytes": 0, "raw_bytes": 0, "records": 0}
    lock = threading.Lock()
    last_put = [0.0]

    def write(partition: int, first_offset: int, values: list[bytes]) -> None:
        raw = b"\n".join(values) + b"\n"
        compressor = getattr(local, "zstd", None)
        if compressor is None:
            compressor = local.zstd = zstandard.ZstdCompressor(level=level, write_content_size=True)
        body = compressor.compress(raw)
        key = f"{args.prefix}/{args.topic}+{partition}+{first_offset:020d}.jsonl.zst"
        client.put_object(
            Bucket=args.bucket,
            Key=key,
            Body=body,
            ContentType="application/x-ndjson",
            ContentEncoding="zstd",
            IfNoneMatch="*",
        )
        now = time.time()
        with lock:
            stats["objects"] += 1
            stats["compressed_bytes"] += len(body)
            stats["raw_bytes"] += len(raw)
            stats["records"] += len(values)
            last_put[0] = max(last_put[0], now)

    pool = ThreadPoolExecutor(max_workers=args.threads)
    inflight: list[Future[None]] = []
    buffers: dict[int, list[bytes]] = {}
    firsts: dict[int, int] = {}
    consumed = 0
    first_consumed: float | None = None
    cpu0 = proc_cpu_seconds(os.getpid()) or 0.0
    sampler = RssSampler(os.getpid()).start()
    deadline = time.monotonic() + args.timeout
    try:
        while consumed < args.expect and time.monotonic() < deadline:
            msgs = consumer.consume(num_messages=args.consume_batch, timeout=0.5)
            for msg in msgs:
                if msg.error() is not None:
                    continue
                if first_consumed is None:
                    first_consumed = time.time()
                p = msg.partition()
                buf = buffers.get(p)
                if buf is None:
                    buf = buffers[p] = []
                    firsts[p] = msg.offset()
                buf.append(msg.value())
                consumed += 1
                if len(buf) >= args.batch_events:
                    inflight.append(pool.submit(write, p, firsts[p], buf))
                    del buffers[p]
            # Backpressure: never more than 2 objects per thread waiting.
            while len([f for f in inflight if not f.done()]) > 2 * args.threads:
                time.sleep(0.002)
        for p, buf in buffers.items():  # the tail (none when counts divide evenly)
            if buf:
                inflight.append(pool.submit(write, p, firsts[p], buf))
        for f in inflight:
            f.result()
    finally:
        pool.shutdown(wait=True)
        consumer.close()
    mem = sampler.stop()
    cpu = (proc_cpu_seconds(os.getpid()) or 0.0) - cpu0
    seconds = last_put[0] - (first_consumed or last_put[0])
    return {
        "records": stats["records"],
        "consumed": consumed,
        "objects": stats["objects"],
        "raw_bytes": stats["raw_bytes"],
        "compressed_bytes": stats["compressed_bytes"],
        "first_consumed": first_consumed,
        "last_put": last_put[0],
        "seconds": round(seconds, 3),
        "alerts_per_second": round(stats["records"] / seconds, 1) if seconds > 0 else None,
        "mb_per_second_uploaded": round(stats["compressed_bytes"] / 1e6 / seconds, 3)
        if seconds > 0
        else None,
        "mb_per_second_raw": round(stats["raw_bytes"] / 1e6 / seconds, 3) if seconds > 0 else None,
        "cpu_seconds": round(cpu, 2),
        "peak_rss_mb": mem["peak_rss_mb"],
        "threads": args.threads,
        "batch_events": args.batch_events,
        "complete": stats["records"] >= args.expect,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/baseline.py", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--endpoint", required=True, help="S3 endpoint URL (moto)")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="baseline")
    parser.add_argument("--access-key", default="AKIABENCH0000000000")
    parser.add_argument("--secret-key", default="benchSecretKey00000000000000000000000000")
    parser.add_argument("--expect", type=int, required=True, help="records to read")
    parser.add_argument("--batch-events", type=int, default=5000)
    parser.add_argument("--consume-batch", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text, flush=True)
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
