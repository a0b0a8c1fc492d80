"""End-to-end worker throughput on the dev broker, next to its peers in the same run.

Measures parcels/s of the parcel-stream worker for NDJSON batch records and for one parcel
per record (taken a fetch at a time, the default, and through Faust's events,
``PARCEL_CONSUME=events``), and the events/s of (a) a bare Faust agent that does nothing and (b) a plain
aiokafka getmany loop, all on the same broker and machine. Records are produced before
each consumer starts; rates count from the first to the last record processed, so group
join and start-up are excluded (they are printed separately).

    python benchmarks/e2e_throughput.py [--single N] [--batch N] [--batch-size N]

With ``--risk-model`` it measures instead the cost of the learned risk model in the
worker: batch-record runs with ``PARCEL_RISK_MODEL=off`` and ``shadow`` alternating
(``--repeats`` pairs, each run from an empty Redis, off first in one pair and shadow first
in the next), the same feed and broker, and their ratio.

With ``--before CHECKOUT`` alone it measures batch records only, this checkout's worker
against that checkout's (``git worktree add /tmp/before REV``), ``--repeats`` alternating
pairs: the figures of a change, each pair printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import redis
from aiokafka import AIOKafkaConsumer
from kafka import KafkaConsumer, TopicPartition

from parcel_stream.adapters import devstack
from parcel_stream.adapters.kafka_io import make_producer, produce_parcels
from parcel_stream.adapters.metrics import worker_breakdown
from parcel_stream.decide import decision_count, is_decision_batch
from parcel_stream.demo import isolated_settings, running_worker
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def feed(n: int, seed: int) -> list[tuple[bytes | None, bytes]]:
    return [
        (d["shipper"]["id"].encode(), orjson.dumps(d))
        for d, _ in generate(FeedConfig(parcels=n, seed=seed))
    ]


def fresh(info: devstack.StackInfo, tmp: Path) -> Settings:
    tag = uuid.uuid4().hex[:6]
    return isolated_settings(info, tag, tmp / tag).replace(log_level="warning")


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The process's peak RSS (``VmRSS``: its RSS now), MB."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1]) / 1024
    return float("nan")


def wait_decisions(
    s: Settings, parcels: int, worker: subprocess.Popen[bytes], timeout_s: float,
    cpu: list[tuple[int, float, float]] | None = None, redis_pid: int = 0,
    rss: list[float] | None = None,
) -> tuple[float, float]:  # fmt: skip
    """Read the decisions topic until every parcel is there; return first/last decision times.
    ``cpu``: gets (decisions read, the worker's and Redis's CPU seconds) when the first
    decisions are read and at the end, so start-up is left out of the CPU per parcel.
    ``rss``: gets the worker's RSS (MB) at every poll once decisions come (while it
    scores)."""
    c = KafkaConsumer(
        bootstrap_servers=s.kafka_bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    parts = [TopicPartition(s.topic_decisions, p) for p in range(s.partitions)]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    n, first, last = 0, float("inf"), 0.0
    deadline = time.monotonic() + timeout_s
    while n < parcels and time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit("worker exited during the benchmark")
        got = c.poll(timeout_ms=200, max_records=100_000)
        if rss is not None and n:
            rss.append(peak_rss_mb(worker.pid, "VmRSS"))
        if got and cpu is not None and not cpu:
            cpu.append((n, devstack.cpu_seconds(worker.pid), devstack.cpu_seconds(redis_pid)))
        for msgs in got.values():
            for m in msgs:
                n += decision_count(m.value)  # lines or columns
                # decision_ts_ms = when scoring started; record timestamp = when it was sent
                head = m.value if is_decision_batch(m.value) else m.value.split(b"\n", 1)[0]
                first = min(first, orjson.loads(head)["decision_ts_ms"] / 1000)
                last = max(last, m.timestamp / 1000)
    c.close()
    if n < parcels:
        raise SystemExit(f"only {n}/{parcels} decisions within {timeout_s}s")
    if cpu is not None:
        cpu.append((n, devstack.cpu_seconds(worker.pid), devstack.cpu_seconds(redis_pid)))
    return first, last


def warm_start(s: Settings, history: tuple[Path, Path]) -> None:
    """``parcel-stream learn`` from a labelled history into these settings' state."""
    cmd = [sys.executable, "-m", "parcel_stream.cli", "learn", str(history[0]),
           "--labels", str(history[1])]  # fmt: skip
    done = subprocess.run(cmd, env={**os.environ, **s.as_env()}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"warm start failed: {done.stderr.strip()}")


def run_worker(info: devstack.StackInfo, tmp: Path, pairs, batch_size: int,  # type: ignore[no-untyped-def]
               history: tuple[Path, Path] | None = None, **settings: object) -> dict[str, Any]:  # fmt: skip
    s = fresh(info, tmp).replace(**settings)
    if history is not None:
        warm_start(s, history)
    p = make_producer(info.bootstrap, linger_ms=20, batch_size=1 << 20)
    produce_parcels(p, s.topic_manifests, pairs, batch_size=batch_size)
    p.close()
    t0 = time.time()
    cpu: list[tuple[int, float, float]] = []
    samples: list[float] = []
    with running_worker(s, tmp) as w:
        first, last = wait_decisions(s, len(pairs), w, timeout_s=600, cpu=cpu,
                                     redis_pid=info.redis_pid, rss=samples)  # fmt: skip
        rss = peak_rss_mb(w.pid)
        breakdown = worker_breakdown(s.metrics_port)
    (n0, c0, r0), (n1, c1, r1) = cpu
    per = 1e6 / max(n1 - n0, 1)
    return {"rate": len(pairs) / (last - first), "startup_s": first - t0, "peak_rss_mb": rss,
            "steady_rss_mb": statistics.median(samples) if samples else float("nan"),
            "cpu_us": (c1 - c0) * per, "redis_cpu_us": (r1 - r0) * per,
            "breakdown": breakdown}  # fmt: skip


def run_bare(info: devstack.StackInfo, tmp: Path, pairs) -> dict[str, float]:  # type: ignore[no-untyped-def]
    s = fresh(info, tmp)
    p = make_producer(info.bootstrap, linger_ms=20, batch_size=1 << 20)
    produce_parcels(p, s.topic_manifests, pairs, batch_size=1)
    p.close()
    out = tmp / f"bare-{uuid.uuid4().hex[:6]}.json"
    env = {**os.environ, **s.as_env(), "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bare_agent.py"),
            s.topic_manifests,
            str(len(pairs)),
            str(out),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not out.exists() and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit("bare agent exited")
            time.sleep(0.1)
        time.sleep(0.2)
        r = json.loads(out.read_text())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"rate": r["n"] / (r["last"] - r["first"]), "startup_s": r["first"] - t0}


def run_getmany(info: devstack.StackInfo, tmp: Path, pairs) -> dict[str, float]:  # type: ignore[no-untyped-def]
    s = fresh(info, tmp)
    p = make_producer(info.bootstrap, linger_ms=20, batch_size=1 << 20)
    produce_parcels(p, s.topic_manifests, pairs, batch_size=1)
    p.close()

    async def consume() -> tuple[float, float]:
        c = AIOKafkaConsumer(
            s.topic_manifests,
            bootstrap_servers=info.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await c.start()
        n, first = 0, 0.0
        try:
            while n < len(pairs):
                batch = await c.getmany(timeout_ms=500, max_records=10_000)
                for msgs in batch.values():
                    if msgs and not first:
                        first = time.time()
                    n += len(msgs)
        finally:
            await c.stop()
        return first, time.time()

    first, last = asyncio.run(consume())
    return {"rate": len(pairs) / (last - first)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--single", type=int, default=20_000, help="parcels sent one per record")
    ap.add_argument("--batch", type=int, default=200_000, help="parcels sent in batch records")
    ap.add_argument("--batch-size", type=int, default=1000, help="parcels per batch record")
    ap.add_argument("--risk-model", action="store_true",
                    help="measure the learned risk model's cost: off against shadow")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3,
                    help="--risk-model or --before: pairs of runs")  # fmt: skip
    ap.add_argument("--history", type=int, default=30_000,
                    help="--risk-model: labelled parcels learned before each run")  # fmt: skip
    ap.add_argument("--before", type=Path, metavar="CHECKOUT",
                    help="with --risk-model: also run the worker of this checkout (the project "
                    "before the learned model, e.g. `git worktree add /tmp/before 850090c`) "
                    "in the same run, a third peer; alone: batch records only, this "
                    "checkout's worker against that one's, --repeats alternating pairs")  # fmt: skip
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    if args.before and not (args.before / "parcel_stream" / "cli").exists():
        raise SystemExit(f"--before {args.before}: not a checkout of parcel-stream (no "
                         "parcel_stream/cli); make one with `git worktree add PATH REV`")  # fmt: skip
    if args.risk_model:
        risk_model(args)
        return
    if args.before:
        against(args)
        return
    singles = feed(args.single, seed=21)
    batched = feed(min(args.batch, 100_000), seed=22)
    while len(batched) < args.batch:  # repeat the feed with new parcel ids
        k = len(batched)
        batched += [
            (key, v.replace(b'"PS022', b'"R%05d' % (k // 100_000), 1))
            for key, v in batched[: args.batch - k]
        ]
    tmp = Path(tempfile.mkdtemp(prefix="parcel-stream-bench-"))
    info = devstack.up(Settings(), tmp / "stack")
    client = redis.Redis.from_url(info.redis_url)
    try:
        bare = run_bare(info, tmp, singles)
        getmany = run_getmany(info, tmp, singles)
        runs = [("single", singles, 1, {}), ("events", singles, 1, {"consume": "events"}),
                ("batch", batched, args.batch_size, {}),
                ("columns", batched, args.batch_size, {"decisions_format": "columns"})]  # fmt: skip
        got = {}
        for name, pairs, size, change in runs:
            client.flushall()  # each from an empty Redis: a run leaves work for the next
            got[name] = run_worker(info, tmp, pairs, batch_size=size, **change)
        single, events, batch, columns = (got[n] for n in ("single", "events", "batch", "columns"))
    finally:
        client.close()
        devstack.down(tmp / "stack")
    rows = [
        ("bare Faust agent (no work), single records", bare["rate"], "events/s"),
        ("plain aiokafka getmany loop, single records", getmany["rate"], "records/s"),
        ("parcel-stream worker, one parcel per record", single["rate"], "parcels/s"),
        ("  the same through Faust's events (PARCEL_CONSUME=events)", events["rate"], "parcels/s"),
        (
            f"parcel-stream worker, {args.batch_size}-parcel batch records",
            batch["rate"],
            "parcels/s",
        ),
        ("  the same, decisions in columns (PARCEL_DECISIONS_FORMAT)", columns["rate"],
         "parcels/s"),
    ]  # fmt: skip
    print()
    for name, rate, unit in rows:
        print(f"{name:<52} {rate:>12,.0f} {unit}")
    print()
    print(f"single records: worker / bare Faust agent = {single['rate'] / bare['rate']:.2f} "
          f"(through Faust's events {events['rate'] / bare['rate']:.2f})")  # fmt: skip
    print(f"batch records:  worker / bare Faust agent = {batch['rate'] / bare['rate']:.2f}; "
          f"decisions in columns / in lines = {columns['rate'] / batch['rate']:.2f}")  # fmt: skip
    print(
        f"worker start-up to first decision: {single['startup_s']:.1f}s (single run), "
        f"{batch['startup_s']:.1f}s (batch run); bare agent {bare['startup_s']:.1f}s"
    )
    print(
        f"worker peak RSS: {single['peak_rss_mb']:.0f} MB (single), {batch['peak_rss_mb']:.0f} MB "
        f"(batch), {columns['peak_rss_mb']:.0f} MB (batch, decisions in columns); steady "
        f"(median while scoring) {single['steady_rss_mb']:.0f}, {batch['steady_rss_mb']:.0f}, "
        f"{columns['steady_rss_mb']:.0f} MB"
    )
    for name, run in (("single records", single), ("batch records", batch),
                      ("batch records, decisions in columns", columns)):  # fmt: skip
        print(f"\n{name}: CPU a parcel, worker {run['cpu_us']:.1f} µs, Redis "
              f"{run['redis_cpu_us']:.1f} µs")  # fmt: skip
        print("\n".join(run["breakdown"]))


@contextlib.contextmanager
def code_of(checkout: Path | None) -> Iterator[None]:
    """Workers started inside run this checkout's code (None: this one's)."""
    if checkout is None:
        yield
        return
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(checkout.resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def against(args: argparse.Namespace) -> None:
    """Batch records, this checkout's worker against ``--before``'s: ``--repeats`` pairs,
    alternating which runs first, each run from an empty Redis, the same feed and broker.
    On a machine whose speed drifts between runs, a ratio needs its pairs (printed)."""
    batched = feed(args.batch, seed=22)
    tmp = Path(tempfile.mkdtemp(prefix="parcel-stream-bench-"))
    info = devstack.up(Settings(), tmp / "stack")
    client = redis.Redis.from_url(info.redis_url)
    got: dict[str, list[dict[str, Any]]] = {"before": [], "this": []}
    try:
        for k in range(args.repeats):
            for peer in ("before", "this") if k % 2 == 0 else ("this", "before"):
                client.flushall()
                with code_of(args.before if peer == "before" else None):
                    r = run_worker(info, tmp, batched, args.batch_size)
                got[peer].append(r)
                print(f"{peer:<6} {r['rate']:>10,.0f} parcels/s, worker CPU {r['cpu_us']:.1f} "
                      f"µs a parcel, Redis {r['redis_cpu_us']:.1f} µs, steady RSS "
                      f"{r['steady_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    finally:
        client.close()
        devstack.down(tmp / "stack")
    before, this = ([r["rate"] for r in got[p]] for p in ("before", "this"))
    pairs = [t / b for b, t in zip(before, this, strict=True)]
    print(f"\n{args.batch:,} parcels in {args.batch_size}-parcel batch records, {args.repeats} "
          f"pairs; before = {args.before}")  # fmt: skip
    print(f"mean: before {statistics.mean(before):,.0f}, this {statistics.mean(this):,.0f} "
          f"parcels/s; this / before = {statistics.mean(this) / statistics.mean(before):.2f}; "
          "per pair " + ", ".join(f"{r:.2f}" for r in pairs)
          + f" (median {statistics.median(pairs):.2f})")  # fmt: skip
    for label, key in (("worker", "cpu_us"), ("Redis", "redis_cpu_us")):
        print(f"{label} CPU a parcel, median: before "
              f"{statistics.median(r[key] for r in got['before']):.1f} µs, this "
              f"{statistics.median(r[key] for r in got['this']):.1f} µs")  # fmt: skip


def risk_model(args: argparse.Namespace) -> None:
    batched = feed(args.batch, seed=22)
    tmp = Path(tempfile.mkdtemp(prefix="parcel-stream-bench-"))
    # the learned state of a deployment that has been running: a warm start from a
    # labelled history of the same kind of traffic (another seed), before every run
    history = (tmp / "history.ndjson", tmp / "history-labels.ndjson")
    with history[0].open("wb") as out, history[1].open("wb") as labels:
        for doc, label in generate(FeedConfig(parcels=args.history, seed=23)):
            out.write(orjson.dumps(doc) + b"\n")
            labels.write(orjson.dumps({"parcel_id": doc["parcel_id"], "label": label}) + b"\n")
    modes = ["off", "shadow", *(["before"] if args.before else [])]
    info = devstack.up(Settings(), tmp / "stack")
    rates: dict[str, list[float]] = {m: [] for m in modes}
    rss: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    redis_cpu: dict[str, list[float]] = {m: [] for m in modes}
    client = redis.Redis.from_url(info.redis_url)
    try:
        for k in range(args.repeats):
            # The order alternates (off first, then shadow first; with a third peer, each
            # first in turn) and every run starts from an empty Redis: a run leaves work
            # behind (the keys it added, expiring and rehashed, and the broker's new
            # topics), which would fall on the run after it
            order = modes[k % len(modes):] + modes[: k % len(modes)] if args.before else (
                ("off", "shadow") if k % 2 == 0 else ("shadow", "off"))  # fmt: skip
            for mode in order:
                client.flushall()
                with code_of(args.before if mode == "before" else None):
                    r = (run_worker(info, tmp, batched, args.batch_size) if mode == "before"
                         else run_worker(info, tmp, batched, args.batch_size, history,
                                         risk_model=mode))  # fmt: skip
                rates[mode].append(r["rate"])
                rss[mode].append(r["peak_rss_mb"])
                cpu[mode].append(r["cpu_us"])
                redis_cpu[mode].append(r["redis_cpu_us"])
                name = f"PARCEL_RISK_MODEL={mode:<7}" if mode != "before" else "before the model "
                print(f"{name} {r['rate']:>10,.0f} parcels/s, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB (steady {r['steady_rss_mb']:.0f}), worker CPU {r['cpu_us']:.1f} µs a "
                      "parcel", flush=True)  # fmt: skip
    finally:
        client.close()
        devstack.down(tmp / "stack")
    mean = {m: sum(rates[m]) / args.repeats for m in modes}
    off, shadow = mean["off"], mean["shadow"]
    print(f"\n{args.batch:,} parcels in {args.batch_size}-parcel batch records, "
          f"{args.repeats} runs each, alternating (off first, then shadow first"
          f"{'; the checkout before the model as a third peer' if args.before else ''})")  # fmt: skip
    print(f"mean: off {off:,.0f} parcels/s, shadow {shadow:,.0f} parcels/s; "
          f"shadow / off = {shadow / off:.2f}")  # fmt: skip
    pairs = [s / o for o, s in zip(rates["off"], rates["shadow"], strict=True)]
    print("per pair, shadow / off: " + ", ".join(f"{r:.2f}" for r in pairs)
          + f"; median {statistics.median(pairs):.2f}")  # fmt: skip
    if args.before:
        before = mean["before"]
        rounds = [s / b for b, s in zip(rates["before"], rates["shadow"], strict=True)]
        print(f"before the model ({args.before}): {before:,.0f} parcels/s; shadow / before = "
              f"{shadow / before:.2f}, off / before = {off / before:.2f}; per round, shadow / "
              "before: " + ", ".join(f"{r:.2f}" for r in rounds)
              + f"; median {statistics.median(rounds):.2f}")  # fmt: skip
    for label, per in (("Redis", redis_cpu), ("worker", cpu)):
        print(f"{label} CPU a parcel, median: "
              + ", ".join(f"{m} {statistics.median(per[m]):.1f} µs" for m in modes))  # fmt: skip
    c_off, c_sh = statistics.median(cpu["off"]), statistics.median(cpu["shadow"])
    if c_sh > 0:  # (a run too short to read the CPU twice has none)
        print(f"worker CPU: off / shadow = {c_off / c_sh:.2f} (the throughput ratio of a "
              "worker that has a core to itself)")  # fmt: skip


if __name__ == "__main__":
    main()
