"""Redis memory and work per 1,000 parcels, and a capacity plan built from them.

A generated feed goes through the backtest with the Redis store (exam feedback on,
learner in shadow mode); then ``MEMORY USAGE`` of every key by kind, the ``INFO
commandstats`` and ``INFO cpu`` deltas of the run (statistics reset with ``CONFIG
RESETSTAT`` before it) and, with ``--plan``, the plan.

    python benchmarks/redis_memory.py [--parcels 60000] [--days 7] [--chunk-parcels 200]
    python benchmarks/redis_memory.py --plan [--save measured.json]
    python benchmarks/redis_memory.py --plan --load measured.json   # plan only, no run

Starts its own redis-server on a free loopback port and stops it afterwards.

The plan multiplies the measured bytes and operations per entity by the steady-state
population of each key kind at a daily volume V (parcels a day), using the lifetimes of
docs/state.md:

- remembered parcel ids: V x repeat window (14 days)
- review/hold parcels: held share x V x 180 days; exam markers: exams per parcel x V x 180
- address violation hashes: (measured keys per parcel) x V x 180 days (upper bound: each
  violation at a new address)
- split-window pairs: (measured pair keys per parcel) x V x 2 windows (6 days)
- shippers and sellers: the number active in the last 400 days, an input
  (``--shippers-per-mpd``, ``--sellers-per-mpd``: per million parcels a day)
- consignee addresses: the number of distinct addresses in the last 30 days, an input
  (``--addresses-per-parcel`` x V x 30)

The generator's ratios of distinct shippers, sellers and addresses to parcels are
properties of the fixture (its pool sizes), not of real traffic: the inputs must be
re-measured on real traffic (distinct ids over the lifetime windows).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import redis

from parcel_stream.adapters import devstack
from parcel_stream.adapters.redis_store import BlockingRedisStore
from parcel_stream.backtest import run_backtest
from parcel_stream.decide import LANES
from parcel_stream.feed import RawRecord
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.learner import LearnerConfig
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings

KINDS = [
    ("shipper hash", re.compile(r"^ps:shipper:")),
    ("seller hash", re.compile(r"^ps:seller:")),
    ("address violations", re.compile(r"^ps:addr:[^:]+:violations$")),
    ("address shipper set", re.compile(r"^ps:addr:[^:]+:shippers$")),
    ("remembered parcel id (repeats)", re.compile(r"^ps:pid:")),
    ("split window (pair)", re.compile(r"^ps:pair:")),
    ("remembered review/hold parcel", re.compile(r"^ps:parcel:")),
    ("exam id marker", re.compile(r"^ps:exam:")),
    ("learner state", re.compile(r"^ps:learner$")),
    ("learner history (list)", re.compile(r"^ps:learner:history$")),
    ("watermark", re.compile(r"^ps:wm:")),
    ("outbox", re.compile(r"^ps:ob:")),
]
# Commands the benchmark itself sends (not the store's work).
ADMIN = {
    "info",
    "config|resetstat",
    "config",
    "memory|usage",
    "scan",
    "ping",
    "script|load",
    "hello",
    "client|setinfo",
}
SCRIPT_CALLS = {"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall"}
CMDSTAT = re.compile(r"^cmdstat_(.+)$")


def _commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """command -> (calls, usec)."""
    out = {}
    for name, row in client.info("commandstats").items():
        m = CMDSTAT.match(name)
        if m:
            out[m.group(1)] = (int(row["calls"]), int(row["usec"]))
    return out


def _cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def measure(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ps-mem-"))
    with devstack.private_redis(tmp) as port:
        url = f"redis://127.0.0.1:{port}/0"
        cfg = FeedConfig(parcels=args.parcels, seed=7, shippers=args.shippers,
                         duration_s=args.days * 86_400.0)  # fmt: skip
        recs, labels = [], {}
        for n, (doc, label) in enumerate(generate(cfg)):
            recs.append(RawRecord(doc["manifest_ts_ms"], "m", 0, n, None, orjson.dumps(doc)))
            labels[doc["parcel_id"]] = label
        # The backtest cuts chunks by input bytes: this many bytes make about
        # --chunk-parcels parcels (the worker's batch of single-parcel records).
        mean_bytes = sum(len(r.value) for r in recs) / len(recs)
        chunk_bytes = max(1, int(args.chunk_parcels * mean_bytes))
        chunks, acc = 0, 0
        for r in recs:  # as backtest._chunks cuts them
            acc += len(r.value)
            if acc >= chunk_bytes:
                chunks, acc = chunks + 1, 0
        chunks += acc > 0
        rs = default_ruleset(Settings())
        client = redis.Redis.from_url(url)
        store = BlockingRedisStore(url)
        used0 = int(client.info("memory")["used_memory"])
        client.config_resetstat()
        cpu0 = _cpu(client)
        run = run_backtest(recs, rs, store=store, exam_outcomes=labels,
                           learner=LearnerConfig(mode="shadow"),
                           chunk_bytes=chunk_bytes)  # fmt: skip
        cpu1 = _cpu(client)
        stats = _commandstats(client)
        store.close()
        sizes: dict[str, list[int]] = defaultdict(list)
        for key in client.scan_iter(count=1000):
            name = key.decode()
            kind = next((k for k, rx in KINDS if rx.search(name)), "other")
            sizes[kind].append(int(client.memory_usage(key) or 0))
        used = int(client.info("memory")["used_memory"])
        version = str(client.info("server")["redis_version"])
    shutil.rmtree(tmp, ignore_errors=True)
    work = {c: v for c, v in stats.items() if c not in ADMIN}
    scripts = {c: v for c, v in work.items() if c in SCRIPT_CALLS}
    inner = {c: v for c, v in work.items() if c not in SCRIPT_CALLS}
    total_usage = sum(sum(v) for v in sizes.values())
    return {
        "redis_version": version,
        "parcels": run.parcels,
        "records": run.records,
        "days": args.days,
        "shippers_cfg": args.shippers,
        "chunk_parcels": args.chunk_parcels,
        "chunks": chunks,
        "lanes": {str(k): run.lanes.count(k) for k in sorted(set(run.lanes))},
        "keys": {
            k: {"n": len(v), "mean": sum(v) / len(v), "max": max(v)} for k, v in sizes.items() if v
        },  # fmt: skip
        "used_memory_delta": used - used0,
        # used_memory over the sum of MEMORY USAGE: the main and expires hash tables,
        # their buckets and allocator rounding that MEMORY USAGE does not count.
        "overhead": (used - used0) / total_usage if total_usage else 1.0,
        "script_calls": sum(c for c, _ in scripts.values()),
        "script_usec": sum(u for _, u in scripts.values()),
        "commands": sum(c for c, _ in inner.values()),
        "by_command": {c: v[0] for c, v in sorted(work.items(), key=lambda kv: -kv[1][0])},
        "redis_cpu_s": cpu1 - cpu0,
    }


def per_k(m: dict[str, Any], x: float) -> float:
    return 1000.0 * x / m["parcels"]


def report(m: dict[str, Any]) -> None:
    print(f"feed: {m['parcels']:,} parcels, {m['days']:g} days, {m['shippers_cfg']} shippers, "
          f"{m['chunks']:,} chunks of ~{m['chunk_parcels']} parcels; redis {m['redis_version']}")  # fmt: skip
    lanes = {LANES[int(k)]: n for k, n in m["lanes"].items()}
    print("lanes: " + ", ".join(f"{k} {n:,} ({n / m['parcels']:.1%})" for k, n in lanes.items()))
    print("\n| key | mean bytes | max bytes | keys | keys per 1,000 parcels |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, _rx in [*KINDS, ("other", None)]:
        v = m["keys"].get(kind)
        if v:
            print(f"| {kind} | {v['mean']:,.0f} | {v['max']:,} | {v['n']:,} "
                  f"| {per_k(m, v['n']):,.1f} |")  # fmt: skip
    print(f"\nused_memory grew by {m['used_memory_delta'] / 1e6:.1f} MB: "
          f"{m['overhead']:.2f} x the sum of MEMORY USAGE")  # fmt: skip
    print("\nper 1,000 parcels:")
    print(
        "| script calls (EVALSHA) | Redis commands (inside scripts and direct) "
        "| EVALSHA usec | Redis CPU ms (user+sys) |"
    )
    print("| ---: | ---: | ---: | ---: |")
    print(
        f"| {per_k(m, m['script_calls']):,.1f} | {per_k(m, m['commands']):,.0f} "
        f"| {per_k(m, m['script_usec']):,.0f} | {per_k(m, m['redis_cpu_s']) * 1e3:,.1f} |"
    )
    top = ", ".join(f"{c} {per_k(m, n):,.0f}" for c, n in m["by_command"].items())
    print(f"\ncommands per 1,000 parcels: {top}")


def plan(m: dict[str, Any], args: argparse.Namespace) -> None:
    s = Settings()
    k = m["keys"]

    def rate(kind: str) -> float:  # keys per parcel in the measured feed
        return float(k[kind]["n"]) / m["parcels"] if kind in k else 0.0

    def size(kind: str) -> float:
        return float(k[kind]["mean"]) * m["overhead"] if kind in k else 0.0

    held = args.held_share if args.held_share is not None else rate("remembered review/hold parcel")
    window_days = 2 * s.split_window_hours / 24
    print(f"Inputs: held share {held:.3f}; exams {rate('exam id marker'):.4f} per parcel; "
          f"per million parcels a day {args.shippers_per_mpd:,} shippers and "
          f"{args.sellers_per_mpd:,} sellers active in {s.entity_ttl_days:g} days; "
          f"{args.addresses_per_parcel} distinct addresses per parcel over "
          f"{s.address_ttl_days:g} days; peak/mean {args.peak_factor}; per node "
          f"{args.node_gb:g} GB, {args.node_ops:,.0f} commands/s, "
          f"{args.node_cpu:g} core of script work. Bytes x {m['overhead']:.2f} "
          f"(used_memory / MEMORY USAGE).\n")  # fmt: skip
    cols = [f"{v / 1e6:g} M/day" for v in args.volumes]
    print("| | " + " | ".join(cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    rows: list[tuple[str, list[float], list[float]]] = []  # name, keys, bytes
    for name, kind, pop in [
        (f"remembered parcel ids ({s.repeat_window_days:g} d)", "remembered parcel id (repeats)",
         lambda v: v * s.repeat_window_days),
        (f"review/hold parcels ({s.exam_ttl_days:g} d)", "remembered review/hold parcel",
         lambda v: held * v * s.exam_ttl_days),
        (f"exam markers ({s.exam_ttl_days:g} d)", "exam id marker",
         lambda v: rate("exam id marker") * v * s.exam_ttl_days),
        (f"address shipper sets ({s.address_ttl_days:g} d)", "address shipper set",
         lambda v: args.addresses_per_parcel * v * s.address_ttl_days),
        (f"address violations ({s.exam_ttl_days:g} d)", "address violations",
         lambda v: rate("address violations") * v * s.exam_ttl_days),
        (f"split-window pairs ({window_days:g} d)", "split window (pair)",
         lambda v: rate("split window (pair)") * v * window_days),
        (f"shippers ({s.entity_ttl_days:g} d)", "shipper hash",
         lambda v: args.shippers_per_mpd * v / 1e6),
        (f"sellers ({s.entity_ttl_days:g} d)", "seller hash",
         lambda v: args.sellers_per_mpd * v / 1e6),
    ]:  # fmt: skip
        n = [pop(v) for v in args.volumes]
        rows.append((name, n, [x * size(kind) for x in n]))
    for name, n, b in rows:
        cells = " | ".join(
            f"{x / 1e6:,.1f} M keys, {y / 1e9:,.2f} GB" for x, y in zip(n, b, strict=True)
        )
        print(f"| {name} | {cells} |")
    mem = [sum(r[2][i] for r in rows) for i in range(len(args.volumes))]
    mean_rate = [v / 86_400 for v in args.volumes]
    cmds = [per_k(m, m["commands"]) / 1000 * r * args.peak_factor for r in mean_rate]
    calls = [per_k(m, m["script_calls"]) / 1000 * r * args.peak_factor for r in mean_rate]
    cpu = [per_k(m, m["redis_cpu_s"]) / 1000 * r * args.peak_factor for r in mean_rate]
    by_mem = [math.ceil(x / (args.node_gb * 1e9)) for x in mem]
    by_ops = [math.ceil(x / args.node_ops) for x in cmds]
    by_cpu = [math.ceil(x / args.node_cpu) for x in cpu]

    def line(name: str, vals: list[Any]) -> None:
        print(f"| {name} | " + " | ".join(str(x) for x in vals) + " |")

    line("**memory (used_memory)**", [f"**{x / 1e9:,.1f} GB**" for x in mem])
    line("parcels/s (mean; peak)", [f"{r:,.0f}; {r * args.peak_factor:,.0f}" for r in mean_rate])
    line("script calls/s at peak", [f"{x:,.0f}" for x in calls])
    line("**Redis commands/s at peak**", [f"**{x:,.0f}**" for x in cmds])
    line("Redis CPU at peak (cores, this machine)", [f"{x:.2f}" for x in cpu])
    line("masters by memory / commands / CPU", [f"{a} / {b} / {c}" for a, b, c in
                                                  zip(by_mem, by_ops, by_cpu, strict=True)])  # fmt: skip
    need = [max(t) for t in zip(by_mem, by_ops, by_cpu, strict=True)]
    line("**masters needed**", [f"**{x}**" for x in need])
    line("nodes with one replica per master", [f"{2 * x}" for x in need])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parcels", type=int, default=60_000)
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--shippers", type=int, default=1000)
    ap.add_argument("--chunk-parcels", type=int, default=200,
                    help="parcels per scored chunk (the worker's default batch of single-parcel "
                         "records is 200; batch records make larger chunks)")  # fmt: skip
    ap.add_argument("--save", type=Path, help="write the measured figures to this JSON file")
    ap.add_argument("--load", type=Path, help="plan from figures saved with --save (no run)")
    pl = ap.add_argument_group("plan (--plan)")
    pl.add_argument("--plan", action="store_true", help="print the capacity plan table")
    pl.add_argument("--volumes", type=lambda x: [float(v) for v in x.split(",")],
                    default=[1e6, 4e6, 12e6], help="parcels a day, comma-separated")  # fmt: skip
    pl.add_argument(
        "--held-share",
        type=float,
        default=None,
        help="share of parcels sent to review or hold (default: as measured)",
    )
    pl.add_argument(
        "--shippers-per-mpd",
        type=int,
        default=50_000,
        help="shippers active in 400 days per million parcels a day",
    )
    pl.add_argument(
        "--sellers-per-mpd",
        type=int,
        default=100_000,
        help="marketplace sellers active in 400 days per million parcels a day",
    )
    pl.add_argument(
        "--addresses-per-parcel",
        type=float,
        default=0.5,
        help="distinct consignee addresses in 30 days per parcel of those 30 days",
    )
    pl.add_argument(
        "--peak-factor",
        type=float,
        default=2.0,
        help="busiest hour's parcel rate over the daily mean",
    )
    pl.add_argument("--node-gb", type=float, default=25.0, help="used_memory per master, GB")
    pl.add_argument(
        "--node-ops",
        type=float,
        default=100_000,
        help="Redis commands/s (inside scripts) per master",
    )
    pl.add_argument(
        "--node-cpu",
        type=float,
        default=0.5,
        help="cores of script work per master (Redis runs commands on one core)",
    )
    args = ap.parse_args()
    if args.load:
        m = json.loads(args.load.read_text())
    else:
        m = measure(args)
        report(m)
    if args.save:
        args.save.write_text(json.dumps(m, indent=1) + "\n")
    if args.plan:
        print()
        plan(m, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
