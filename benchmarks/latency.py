"""Produce-to-decision latency at a fixed offered load of single-parcel records.

Starts the dev stack and a worker, waits until the worker answers, then offers
``--rate`` parcels/s as single records for ``--seconds``. Latency of a parcel = timestamp
of its decision record (set by the worker's producer when it sent it) minus timestamp of
its manifest record (set by the load generator when it sent it); both clocks are this
machine's. Prints p50/p95/p99 for all decisions and for holds.

    python benchmarks/latency.py [--rate 1000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
from kafka import KafkaConsumer, TopicPartition

from parcel_stream.adapters import devstack
from parcel_stream.adapters.kafka_io import make_producer
from parcel_stream.demo import isolated_settings, running_worker
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.settings import Settings


def read_topic(bootstrap: str, topic: str, partitions: int, want: int, timeout_s: float):  # type: ignore[no-untyped-def]
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    out = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for msgs in c.poll(timeout_ms=200, max_records=50_000).values():
            out.extend(msgs)
        if sum(m.value.count(b"\n") + 1 for m in out) >= want:
            break
    c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=1000, help="offered parcels/s")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument(
        "--set", action="append", help="worker setting override, e.g. batch_within_s=0.02"
    )
    args = ap.parse_args()
    n = int(args.rate * args.seconds)
    docs = [d for d, _ in generate(FeedConfig(parcels=n + 200, seed=31))]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; offering {args.rate} parcels/s "
        f"as single records for {args.seconds:.0f}s ({n} parcels)"
    )
    tmp = Path(tempfile.mkdtemp(prefix="parcel-stream-lat-"))
    info = devstack.up(Settings(), tmp / "stack")
    try:
        s = isolated_settings(info, uuid.uuid4().hex[:6], tmp / "data").replace(log_level="warning")
        for kv in args.set or []:
            k, v = kv.split("=", 1)
            s = s.replace(**{k: type(getattr(s, k))(v)})
        producer = make_producer(info.bootstrap, linger_ms=0)
        with running_worker(s, tmp) as worker:
            # warm-up: the worker has joined and scored something before we measure
            for d in docs[:200]:
                producer.send(
                    s.topic_manifests, key=d["shipper"]["id"].encode(), value=orjson.dumps(d)
                )
            producer.flush()
            read_topic(info.bootstrap, s.topic_decisions, s.partitions, 200, 120)
            sent_ts: dict[str, int] = {}
            t0 = time.monotonic()
            for i, d in enumerate(docs[200:]):
                due = t0 + i / args.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                fut = producer.send(
                    s.topic_manifests, key=d["shipper"]["id"].encode(), value=orjson.dumps(d)
                )
                sent_ts[d["parcel_id"]] = fut
            producer.flush()
            offered_s = time.monotonic() - t0
            decisions = read_topic(info.bootstrap, s.topic_decisions, s.partitions, n + 200, 120)
            holds = read_topic(info.bootstrap, s.topic_holds, s.partitions, 1, 10)
            assert worker.poll() is None
        produced = {pid: fut.get().timestamp for pid, fut in sent_ts.items()}
    finally:
        devstack.down(tmp / "stack")
    lat_all, lat_hold = [], []
    for m in decisions:
        for line in m.value.split(b"\n"):
            pid = orjson.loads(line)["parcel_id"]
            if pid in produced:
                lat_all.append(m.timestamp - produced[pid])
    for m in holds:
        pid = orjson.loads(m.value)["parcel_id"]
        if pid in produced:
            lat_hold.append(m.timestamp - produced[pid])
    print(
        f"offered {n} parcels in {offered_s:.1f}s ({n / offered_s:,.0f}/s); "
        f"decisions measured {len(lat_all)}, holds {len(lat_hold)}"
    )
    for name, lat in (("all decisions", lat_all), ("holds", lat_hold)):
        if lat:
            p50, p95, p99 = np.percentile(lat, [50, 95, 99])
            print(
                f"{name:<14} produce-to-output latency  p50 {p50:.0f} ms  p95 {p95:.0f} ms  "
                f"p99 {p99:.0f} ms  max {max(lat):.0f} ms"
            )


if __name__ == "__main__":
    main()
