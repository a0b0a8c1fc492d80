"""Load suite: capacity, overload (3x capacity for minutes) and soak (70 % for 20 min).

    python benchmarks/reliability/load.py overload [--factor 3] [--seconds 120]
    python benchmarks/reliability/load.py soak [--share 0.7] [--seconds 1200]

Both first measure the worker's capacity on this machine with the suite's traffic mix
(half the parcels in 100-parcel batch records, half one per record): a backlog is
produced, then one worker drains it. Then the load is offered at a fixed rate while,
every 5 s, the worker's RSS, its lag (parcels offered but not yet decided or rejected,
from its metrics) and its error counters are sampled. At the end every parcel's decision
is read back from the decisions topic: none may be missing.

overload: memory must stay bounded (the consumer stops fetching when busy: backpressure,
not buffering), lag grows while overloaded and drains afterwards, the worker survives.
soak: RSS growth after warm-up < 10 %, lag bounded, no errors.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.reliability.harness import (
    CpuLimit,
    Worker,
    dev_stack,
    from_start,
    metrics,
    suite_settings,
)
from parcel_stream.adapters.kafka_io import make_producer
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.settings import Settings

POOL = 100_000
PREFIX = b'"parcel_id":"PS007'


class Traffic:
    """Unique parcels without end: a pool of generated manifests whose ids are rewritten
    per cycle ("L{cycle:04d}{n:09d}"), ``batch_share`` of them in 100-parcel batch records,
    the rest alone. Several producer processes share it: lane ``i`` of ``k`` takes cycles
    i, i+k, ... The parcels produced are counted in shared memory."""

    def __init__(self, batch_share: float = 0.5) -> None:
        self.batch_share = batch_share
        self.pool = [
            orjson.dumps(d) for d, _ in generate(FeedConfig(parcels=POOL, seed=7, shippers=5000))
        ]
        assert all(PREFIX in x for x in self.pool[:10])
        self._sent = mp.Value("q", 0)
        self._next_cycle = mp.Value("q", 0)

    @property
    def sent(self) -> int:
        return int(self._sent.value)

    def records(self, lane: int, lanes: int) -> Iterator[tuple[int, bytes]]:
        cycle = lane
        while True:
            tag = b'"parcel_id":"L%04d' % cycle
            docs = [x.replace(PREFIX, tag, 1) for x in self.pool]
            cut = int(POOL * self.batch_share) // 100 * 100
            singles_per_batch = (POOL - cut) // max(1, cut // 100)
            si = cut
            for i in range(0, cut, 100):
                yield 100, b"\n".join(docs[i : i + 100])
                for d in docs[si : si + singles_per_batch]:
                    yield 1, d
                si += singles_per_batch
            for d in docs[si:]:
                yield 1, d
            cycle += lanes


class Producers:
    """``n`` producer processes offering ``rate`` parcels/s together for ``seconds``
    (rate 0: as fast as they can)."""

    def __init__(self, s: Settings, traffic: Traffic, rate: float, seconds: float, n: int) -> None:
        self.stop = mp.Event()
        base = traffic._next_cycle.value
        traffic._next_cycle.value = base + 100  # cycles never reused across phases
        self.procs = [
            mp.Process(target=_produce, args=(s.kafka_bootstrap, s.topic_manifests, traffic,
                       rate / n, seconds, self.stop, i, n, base), daemon=True)
            for i in range(n)
        ]  # fmt: skip
        for p in self.procs:
            p.start()

    def is_alive(self) -> bool:
        return any(p.is_alive() for p in self.procs)

    def join(self) -> None:
        for p in self.procs:
            p.join()


class KcatProducer:
    """One ``kcat`` process (librdkafka, C) fed from a pacing thread: offers single-record
    traffic at rates a Python producer cannot reach on a machine the worker shares."""

    def __init__(self, s: Settings, traffic: Traffic, rate: float, seconds: float) -> None:
        import shutil
        import subprocess

        if shutil.which("kcat") is None:
            raise SystemExit("kcat not found: apt-get install -y kcat")
        self.proc = subprocess.Popen(
            ["kcat", "-P", "-b", s.kafka_bootstrap, "-t", s.topic_manifests, "-X", "acks=all",
             "-X", "linger.ms=5", "-X", "queue.buffering.max.kbytes=2097151"],
            stdin=subprocess.PIPE,
        )  # fmt: skip
        base = traffic._next_cycle.value
        traffic._next_cycle.value = base + 100
        self.thread = threading.Thread(
            target=self._feed, args=(traffic, rate, seconds, base), daemon=True
        )
        self.thread.start()

    def _feed(self, traffic: Traffic, rate: float, seconds: float, base: int) -> None:
        assert self.proc.stdin is not None
        t0 = time.monotonic()
        mine = 0
        for n, value in traffic.records(base, 1):
            if time.monotonic() - t0 >= seconds:
                break
            assert n == 1, "kcat sends one parcel per line: use --batch-share 0"
            self.proc.stdin.write(value + b"\n")
            mine += 1
            traffic._sent.value += 1
            ahead = mine / rate - (time.monotonic() - t0)
            if ahead > 0.02:
                self.proc.stdin.flush()
                time.sleep(ahead)
        self.proc.stdin.close()
        self.proc.wait()

    def is_alive(self) -> bool:
        return self.thread.is_alive()


def _produce(bootstrap: str, topic: str, traffic: Traffic, rate: float, seconds: float,
             stop: Any, lane: int, lanes: int, base: int) -> None:  # fmt: skip
    # A long linger packs more records per produce request: the dev broker keeps every
    # request's batch in memory and slows down as their number grows.
    producer = make_producer(bootstrap, linger_ms=100, batch_size=1024 * 1024)
    t0 = time.monotonic()
    mine = 0
    for n, value in traffic.records(base + lane, lanes):
        if stop.is_set() or time.monotonic() - t0 >= seconds:
            break
        producer.send(topic, value=value)
        mine += n
        with traffic._sent.get_lock():
            traffic._sent.value += n
        if rate > 0:
            ahead = mine / rate - (time.monotonic() - t0)
            if ahead > 0.02:
                time.sleep(ahead)
    producer.flush()
    producer.close()


def done_count(port: int) -> tuple[float, float, float]:
    """(parcels decided + rejected, errors, RSS MB) from the worker's metrics."""
    m = metrics(port)
    done = sum(v for k, v in m.items() if k.startswith(("parcel_stream_parcels_total{",
                                                         "parcel_stream_rejections_total{")))  # fmt: skip
    errors = sum(v for k, v in m.items() if k.startswith("parcel_stream_errors_total{"))
    return done, errors, m.get("process_resident_memory_bytes", 0.0) / 1e6


@dataclass
class Samples:
    t: list[float] = field(default_factory=list)
    offered: list[int] = field(default_factory=list)
    done: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)

    @property
    def lag(self) -> list[float]:
        return [o - d for o, d in zip(self.offered, self.done, strict=True)]


def sample_until(s: Settings, worker: Worker, traffic: Traffic, base: float, cond: object,
                 every_s: float = 5.0, out: Samples | None = None, t0: float | None = None) -> Samples:  # fmt: skip
    out = out or Samples()
    t0 = t0 if t0 is not None else time.monotonic()
    while True:
        done, errors, _rss = done_count(s.metrics_port)
        out.t.append(round(time.monotonic() - t0, 1))
        out.offered.append(traffic.sent)
        out.done.append(done - base)
        out.rss_mb.append(worker.rss_mb())
        out.errors.append(errors)
        if cond(out):  # type: ignore[operator]
            return out
        time.sleep(every_s)


def measure_capacity(
    s: Settings, worker: Worker, traffic: Traffic, parcels: int = 120_000
) -> float:
    """Produce a backlog, then start the worker and time its drain (start-up excluded)."""
    prod = Producers(s, traffic, 0, 1e9, 1)
    while traffic.sent < parcels:
        time.sleep(0.2)
    prod.stop.set()
    prod.join()
    total = traffic.sent
    worker.start()
    while done_count_safe(s.metrics_port) < 1000:
        time.sleep(0.2)
    d0, t0 = done_count_safe(s.metrics_port), time.monotonic()
    while done_count_safe(s.metrics_port) < total:
        time.sleep(0.5)
    return (total - d0) / (time.monotonic() - t0)


def done_count_safe(port: int) -> float:
    try:
        return done_count(port)[0]
    except OSError:
        return 0.0


class Tail:
    """Counts distinct parcels on the decisions topic while they are produced. (Reading
    a topic of many hundred MB back from the start stalls on the dev broker, so the
    count is kept live, near the head, as the worker itself reads.)"""

    def __init__(self, s: Settings) -> None:
        self.seen = np.zeros(400 * POOL, dtype=np.bool_)  # cycles < 400: phases use 100 each
        self.count = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, args=(s,), daemon=True)
        self.thread.start()

    def run(self, s: Settings) -> None:
        consumer = from_start(s.kafka_bootstrap, [s.topic_decisions], 16 << 20, 4 << 20)
        try:
            while not self.stop.is_set():
                for msgs in consumer.poll(timeout_ms=300, max_records=50_000).values():
                    for m in msgs:
                        for line in m.value.split(b"\n"):
                            i = line.index(b'"parcel_id":"') + 13
                            k = int(line[i + 1 : i + 5]) * POOL + int(line[i + 5 : i + 14])
                            if not self.seen[k]:
                                self.seen[k] = True
                                self.count += 1
        finally:
            consumer.close()


def redis_seen(s: Settings) -> int:
    """Parcels applied to reputation: the sum of every shipper's ``seen`` in Redis."""
    import redis

    from parcel_stream.adapters.redis_lua import PACKED_PARTS
    from parcel_stream.adapters.redis_store import joined_parts, unpack_entities
    from parcel_stream.sequence import SEEN

    client = redis.Redis.from_url(s.redis_url)
    total = 0
    for key in client.scan_iter(f"{s.redis_key_prefix}:shipper:*", count=1000):
        packed = joined_parts(client.hmget(key, PACKED_PARTS))
        total += int(unpack_entities([packed], 1)[0, SEEN])
    return total


def run(
    mode: str,
    factor: float,
    seconds: float,
    batch_share: float,
    producers: int,
    work: Path,
    cpu: CpuLimit | None = None,
    capacity_parcels: int = 120_000,
) -> dict[str, object]:
    traffic = Traffic(batch_share)
    with dev_stack(work / "stack") as info:
        s = suite_settings(info, work)
        tail = Tail(s)
        worker = Worker(s, work / "worker.log", cpu)
        capacity = measure_capacity(s, worker, traffic, capacity_parcels)
        print(f"  capacity: {capacity:,.0f} parcels/s", flush=True)
        base = done_count(s.metrics_port)[0] - traffic.sent  # 0: everything so far is done
        rate = capacity * factor
        t0 = time.monotonic()
        cpu0 = worker.cpu_seconds()
        start_offered = traffic.sent
        sender: Producers | KcatProducer
        if producers == 0:
            sender = KcatProducer(s, traffic, rate, seconds)
        else:
            sender = Producers(s, traffic, rate, seconds, producers)
        samples = sample_until(s, worker, traffic, base, lambda _o: not sender.is_alive(), t0=t0)
        offered_rate = (traffic.sent - start_offered) / seconds
        cpu_share = (worker.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        load_end = len(samples.t)
        t_drain = time.monotonic()
        samples = sample_until(s, worker, traffic, base,
                               lambda o: o.done[-1] >= traffic.sent, out=samples, t0=t0)  # fmt: skip
        drain_s = time.monotonic() - t_drain
        alive = worker.alive()
        worker.stop()
        deadline = time.monotonic() + 300
        while tail.count < traffic.sent and time.monotonic() < deadline:
            time.sleep(1.0)
        tail.stop.set()
        decided = tail.count
        applied = redis_seen(s)
    rss = samples.rss_mb
    warm = max(1, len(rss) // 4)  # after the first quarter of the load phase
    result: dict[str, object] = {
        "mode": mode,
        "load_generator": "kcat" if producers == 0 else f"{producers} Python producer processes",
        "worker_cpu_limit": f"{cpu.cpus} core" if cpu else "none",
        "worker_cpu_used_in_load": f"{cpu_share:.2f} core",
        "parcels_in_batch_records": f"{batch_share:.0%}",
        "capacity_parcels_per_s": round(capacity),
        "offered_parcels_per_s": round(offered_rate),
        "offered_over_capacity": round(offered_rate / capacity, 2),
        "load_s": round(seconds),
        "parcels_offered": traffic.sent,
        "parcels_decided_on_topic": decided,
        "parcels_applied_in_redis": applied,
        "parcels_lost": traffic.sent - max(decided, applied)
        if applied == traffic.sent
        else traffic.sent - decided,
        "max_lag_parcels": round(max(samples.lag)),
        "lag_at_end_of_load": round(samples.lag[load_end - 1]),
        "drain_s": round(drain_s, 1),
        "rss_mb_min_max": (round(min(rss)), round(max(rss))),
        "rss_growth_after_warmup_pct": round(100 * (max(rss[warm:load_end]) / rss[warm] - 1), 1),
        "errors_counted": samples.errors[-1],
        "worker_alive": alive,
    }
    step = max(1, len(samples.t) // 12)
    result["timeline (t s, lag, rss MB)"] = [
        (samples.t[i], round(samples.lag[i]), round(rss[i])) for i in range(0, len(samples.t), step)
    ]
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["overload", "soak"])
    ap.add_argument("--factor", type=float, help="offered load / capacity (overload 3, soak 0.7)")
    ap.add_argument("--seconds", type=float, help="load duration (overload 120, soak 1200)")
    ap.add_argument("--batch-share", type=float,
                    help="share of parcels in 100-parcel records (overload 0, soak 0.5)")  # fmt: skip
    ap.add_argument("--producers", type=int, default=2,
                    help="Python producer processes (overload 3, soak 2); 0: one kcat process, "
                    "for brokers librdkafka can talk to (not the dev broker)")  # fmt: skip
    ap.add_argument("--worker-cpus", type=float,
                    help="run the worker under a CPU limit of this many cores (a cgroup CFS "
                    "quota, as a container limit), so that the load generators and the dev "
                    "broker, which share this machine, can offer more than it takes")  # fmt: skip
    ap.add_argument("--capacity-parcels", type=int, default=120_000,
                    help="backlog drained to measure the capacity (default 120,000)")  # fmt: skip
    args = ap.parse_args()
    if args.mode == "overload" and "--producers" not in sys.argv:
        args.producers = 3
    batch_share = args.batch_share if args.batch_share is not None else (
        0.0 if args.mode == "overload" else 0.5)  # fmt: skip
    factor = args.factor or (3.0 if args.mode == "overload" else 0.7)
    seconds = args.seconds or (120.0 if args.mode == "overload" else 1200.0)
    cpu = CpuLimit(args.worker_cpus) if args.worker_cpus else None
    try:
        with tempfile.TemporaryDirectory(prefix=f"ps-{args.mode}-") as tmp:
            r = run(args.mode, factor, seconds, batch_share, args.producers, Path(tmp), cpu,
                    args.capacity_parcels)  # fmt: skip
    finally:
        if cpu:
            cpu.close()
    for k, v in r.items():
        print(f"{k:34} {v}")
    ok = r["parcels_lost"] == 0 and r["worker_alive"]
    if args.mode == "soak":
        ok = ok and float(r["rss_growth_after_warmup_pct"]) < 10 and r["errors_counted"] == 0  # type: ignore[arg-type]
    print("RESULT", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
