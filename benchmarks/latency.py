"""Produce-to-decision latency at a fixed offered load of single-parcel records.

Starts the dev stack and a worker, waits until the worker answers, then offers
``--rate`` parcels/s as single records for ``--seconds``. Latency of a parcel = timestamp
of its decision record (set by the worker's producer when it sent it) minus timestamp of
its manifest record (set by the load generator when it sent it); both clocks are this
machine's. Prints p50/p95/p99 for all decisions and for holds, and the worker's own
breakdown of a batch (its metrics).

The peer, measured first in the same run on the same broker: a bare consumer (aiokafka,
the worker's fetch wait, its own process) that does nothing with the records, offered the
same load the same way; its latency is when it received a record minus when the record was
sent. It is the floor that the broker, the clients and this machine set.

    python benchmarks/latency.py [--rate 1000] [--seconds 30] [--no-peer]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer
from kafka import KafkaConsumer, TopicPartition

from parcel_stream.adapters import devstack
from parcel_stream.adapters.kafka_io import make_producer
from parcel_stream.adapters.metrics import worker_breakdown
from parcel_stream.decide import decision_count, read_decisions
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
        if sum(decision_count(m.value) for m in out) >= want:
            break
    c.close()
    return out


def offer(producer, topic: str, docs: list[dict], rate: int) -> tuple[dict[str, object], float]:  # type: ignore[no-untyped-def]
    """Send each manifest as a single record at ``rate`` a second; the send futures by
    parcel id, and the seconds it took."""
    sent: dict[str, object] = {}
    t0 = time.monotonic()
    for i, d in enumerate(docs):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        key, value = d["shipper"]["id"].encode(), orjson.dumps(d)
        sent[d["parcel_id"]] = producer.send(topic, key=key, value=value)
    producer.flush()
    return sent, time.monotonic() - t0


def _bare_consumer(bootstrap: str, topic: str, want: int, wait_ms: int, conn) -> None:  # type: ignore[no-untyped-def]
    """The peer (in its own process): receive ``want`` records, send back each one's
    send time and latency (received minus sent, ms)."""

    async def consume() -> list[tuple[float, float]]:
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, fetch_max_wait_ms=wait_ms,
                             auto_offset_reset="earliest", enable_auto_commit=False)  # fmt: skip
        await c.start()
        conn.send("ready")
        lat: list[tuple[float, float]] = []
        try:
            while len(lat) < want:
                got = await c.getmany(timeout_ms=1000)
                now = time.time() * 1000
                for msgs in got.values():
                    lat.extend((m.timestamp, now - m.timestamp) for m in msgs)
        finally:
            await c.stop()
        return lat

    conn.send(asyncio.run(consume()))


def bare_consumer_latency(info: devstack.StackInfo, s: Settings, docs: list[dict], rate: int,
                          linger_ms: int = 0) -> list[tuple[float, float]]:  # fmt: skip
    mp = multiprocessing.get_context("spawn")
    here, there = mp.Pipe()
    proc = mp.Process(target=_bare_consumer, args=(info.bootstrap, s.topic_manifests, len(docs),
                                                   s.fetch_max_wait_ms, there))  # fmt: skip
    proc.start()
    try:
        if not here.poll(60):
            raise SystemExit("the bare consumer did not start")
        here.recv()
        producer = make_producer(info.bootstrap, linger_ms=linger_ms)
        offer(producer, s.topic_manifests, docs, rate)
        producer.close()
        deadline = time.monotonic() + 120
        while not here.poll(0.5):
            if not proc.is_alive() or time.monotonic() > deadline:
                raise SystemExit("the bare consumer died or did not receive every record")
        lat: list[tuple[float, float]] = here.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return lat


def report(name: str, timed: list[tuple[float, float]]) -> None:
    lat = [x for _, x in timed]
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    print(f"{name:<22} produce-to-output latency  p50 {p50:.0f} ms  p95 {p95:.0f} ms  "
          f"p99 {p99:.0f} ms  max {max(lat):.0f} ms")  # fmt: skip


def by_window(runs: dict[str, list[tuple[float, float]]], window_s: float) -> None:
    """p50 / p99 per ``window_s`` of each run (by the time its records were sent, from the
    run's first): the dev broker's fetches slow down as a topic grows, so the floor moves
    during a run, and the worker is compared with the peer at the same age of its topic."""
    print(f"\nby {window_s:g}-second window of the offered load (p50 / p99, ms):")
    print(f"{'window':>10} " + " ".join(f"{name:>22}" for name in runs))
    cols = {}
    for name, timed in runs.items():
        t = np.array([a for a, _ in timed])
        lat = np.array([b for _, b in timed])
        cols[name] = ((t - t.min()) // (window_s * 1000)).astype(int), lat
    for w in range(max(int(c[0].max()) for c in cols.values()) + 1):
        cells = []
        for win, lat in cols.values():
            got = lat[win == w]
            cells.append(f"{np.percentile(got, 50):8.0f} / {np.percentile(got, 99):6.0f}"
                         if len(got) else "-")  # fmt: skip
        lo = w * window_s
        print(f"{f'{lo:g}-{lo + window_s:g} s':>10} " + " ".join(f"{c:>22}" for c in cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=1000, help="offered parcels/s")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument(
        "--set", action="append", help="worker setting override, e.g. batch_within_s=0.02"
    )
    ap.add_argument("--no-peer", action="store_true", help="skip the bare consumer")
    ap.add_argument("--partitions", type=int, default=Settings().partitions,
                    help="partitions of the manifests topic (and the others)")  # fmt: skip
    ap.add_argument("--linger-ms", type=int, default=0,
                    help="the hub's producer's linger.ms (Kafka's Java client: 5 since 4.0)")  # fmt: skip
    ap.add_argument("--window", type=float, default=5.0,
                    help="seconds a window of the per-window table")  # fmt: skip
    args = ap.parse_args()
    n = int(args.rate * args.seconds)
    docs = [d for d, _ in generate(FeedConfig(parcels=n + 200, seed=31))]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; offering {args.rate} parcels/s "
        f"as single records for {args.seconds:.0f}s ({n} parcels), {args.partitions} partitions, "
        f"producer linger {args.linger_ms} ms"
    )
    tmp = Path(tempfile.mkdtemp(prefix="parcel-stream-lat-"))
    info = devstack.up(Settings(), tmp / "stack")
    base = Settings(partitions=args.partitions)
    try:
        peer: list[tuple[float, float]] = []
        if not args.no_peer:
            bare = isolated_settings(info, uuid.uuid4().hex[:6], tmp / "bare", base)
            peer = bare_consumer_latency(info, bare, docs[200:], args.rate, args.linger_ms)
        s = isolated_settings(info, uuid.uuid4().hex[:6], tmp / "data", base).replace(
            log_level="warning"
        )
        for kv in args.set or []:
            k, v = kv.split("=", 1)
            s = s.replace(**{k: type(getattr(s, k))(v)})
        producer = make_producer(info.bootstrap, linger_ms=args.linger_ms)
        with running_worker(s, tmp) as worker:
            # warm-up: the worker has joined and scored something before we measure
            offer(producer, s.topic_manifests, docs[:200], args.rate)
            read_topic(info.bootstrap, s.topic_decisions, s.partitions, 200, 120)
            sent_ts, offered_s = offer(producer, s.topic_manifests, docs[200:], args.rate)
            decisions = read_topic(info.bootstrap, s.topic_decisions, s.partitions, n + 200, 120)
            holds = read_topic(info.bootstrap, s.topic_holds, s.partitions, 1, 10)
            if worker.poll() is not None:
                raise SystemExit("the worker exited during the run")
            breakdown = worker_breakdown(s.metrics_port)
        produced = {pid: fut.get().timestamp for pid, fut in sent_ts.items()}  # type: ignore[attr-defined]
    finally:
        devstack.down(tmp / "stack")
    lat_all, lat_hold = [], []  # (sent, latency) each
    for m in decisions:  # lines or columns (``--set decisions_format=columns``)
        for d in read_decisions(m.value):
            if d.parcel_id in produced:
                sent = produced[d.parcel_id]
                lat_all.append((sent, m.timestamp - sent))
    for m in holds:
        pid = orjson.loads(m.value)["parcel_id"]
        if pid in produced:
            lat_hold.append((produced[pid], m.timestamp - produced[pid]))
    print(
        f"offered {n} parcels in {offered_s:.1f}s ({n / offered_s:,.0f}/s); "
        f"decisions measured {len(lat_all)}, holds {len(lat_hold)}"
    )
    if peer:
        report("bare consumer (peer)", peer)
    for name, lat in (("worker, all decisions", lat_all), ("worker, holds", lat_hold)):
        if lat:
            report(name, lat)
    if peer and lat_all:
        ratio = np.percentile([x for _, x in lat_all], 99) / np.percentile([x for _, x in peer], 99)
        print(f"worker p99 / bare consumer p99 = {ratio:.2f}")
    print("\n".join(breakdown))
    runs = {"bare consumer (peer)": peer, "worker, all decisions": lat_all}
    by_window({k: v for k, v in runs.items() if v}, args.window)


if __name__ == "__main__":
    main()
