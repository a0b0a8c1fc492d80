"""The state store on Redis Cluster against single-node Redis, in one run.

One generated feed goes through the backtest path (batches of about ``--batch`` parcels,
exam feedback on, learner in shadow mode) against:

- a single redis-server (the peer: today's default);
- a Redis Cluster of 3 masters and 3 replicas (``PARCEL_REDIS_CLUSTER=true``);
- the same cluster with ``PARCEL_REDIS_WAIT_REPLICAS=1`` (each write acknowledged by a
  replica before the batch goes on);
- a cluster whose nodes write AOF with ``appendfsync always``.

It prints parcels/s and the ratio to single-node, checks that every run made the same
decisions, and shows how the keys and the commands spread over the masters.

    python benchmarks/cluster_store.py [--parcels 30000] [--batch 1000]

Starts its own redis-servers on free loopback ports and stops them afterwards.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import redis

from parcel_stream.adapters import devcluster, devstack
from parcel_stream.adapters.redis_cluster import RedisClusterStore
from parcel_stream.adapters.redis_store import BlockingRedisStore
from parcel_stream.backtest import BacktestRun, run_backtest
from parcel_stream.feed import RawRecord
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.learner import LearnerConfig
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings


def _calls(port: int) -> tuple[int, int]:
    """(script calls, all commands, those run by scripts included) served so far."""
    stats = redis.Redis(port=port).info("commandstats")
    scripts = sum(int(v["calls"]) for k, v in stats.items() if k == "cmdstat_evalsha")
    return scripts, sum(int(v["calls"]) for v in stats.values())


def run(
    name: str, store: BlockingRedisStore, feed: list[RawRecord], labels: dict[str, str | None],
    chunk_bytes: int,
) -> BacktestRun:  # fmt: skip
    rs = default_ruleset(Settings())
    try:
        got = run_backtest(feed, rs, store=store, exam_outcomes=labels,
                           learner=LearnerConfig(mode="shadow"), chunk_bytes=chunk_bytes)  # fmt: skip
    finally:
        store.close()
    print(f"  {name}: {got.parcels / got.wall_s:,.0f} parcels/s ({got.wall_s:.1f} s)", flush=True)
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parcels", type=int, default=30_000)
    ap.add_argument("--batch", type=int, default=1000, help="parcels per batch (about)")
    ap.add_argument("--shards", type=int, default=16)
    args = ap.parse_args()
    cfg = FeedConfig(parcels=args.parcels, seed=9, duration_s=3 * 86_400.0)
    feed, labels = [], {}
    for n, (doc, label) in enumerate(generate(cfg)):
        feed.append(RawRecord(doc["manifest_ts_ms"], "m", 0, n, None, orjson.dumps(doc)))
        labels[doc["parcel_id"]] = label
    chunk_bytes = int(args.batch * sum(len(r.value) for r in feed) / len(feed))
    print(f"{platform.machine()}, {platform.python_version()}, "
          f"{subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}; "  # noqa: E501
          f"{args.parcels:,} parcels in batches of ~{args.batch}, {args.shards} shards")  # fmt: skip
    # warm up (compiles the kernels) on the in-memory store, not timed
    run_backtest(feed[:2000], default_ruleset(Settings()), chunk_bytes=chunk_bytes)
    tmp = Path(tempfile.mkdtemp(prefix="ps-cluster-bench-"))
    results: dict[str, BacktestRun] = {}
    work: dict[str, tuple[int, int]] = {}  # (script calls, commands) over all masters
    try:
        port = devstack.free_port()
        single = subprocess.Popen(
            [devstack.redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            while not devstack._redis_ping(port):
                time.sleep(0.05)
            results["single node"] = run(
                "single node", BlockingRedisStore(f"redis://127.0.0.1:{port}/0"), feed, labels,
                chunk_bytes,
            )  # fmt: skip
            work["single node"] = _calls(port)
        finally:
            single.terminate()
            single.wait()

        def cluster_run(name: str, info: devcluster.ClusterInfo, wait: int, prefix: str) -> None:
            store = RedisClusterStore(info.url, prefix=prefix, shards=args.shards,
                                      wait_replicas=wait, wait_timeout_ms=1000)  # fmt: skip
            results[name] = run(name, BlockingRedisStore("", store=store), feed, labels,
                                chunk_bytes)  # fmt: skip
            if wait:
                print(f"    WAITs short of a replica: {store.wait_timeouts}")

        info = devcluster.up(tmp / "cluster")
        try:
            masters = devcluster.masters_of(info)
            before = {p: _calls(p) for p in masters}
            cluster_run("cluster 3+3", info, 0, "a")
            work["cluster 3+3"] = spread(info, masters, "{a.", before)
            cluster_run("cluster 3+3, WAIT 1 replica", info, 1, "b")
        finally:
            devcluster.down(tmp / "cluster")
        info = devcluster.up(tmp / "aof", appendfsync="always")
        try:
            cluster_run("cluster 3+3, AOF appendfsync always", info, 0, "c")
            cluster_run("cluster 3+3, AOF always + WAIT 1", info, 1, "d")
        finally:
            devcluster.down(tmp / "aof")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = results["single node"]
    print("\n| store | parcels/s | × single node | same decisions | script calls, commands "
          "per 1,000 parcels |")  # fmt: skip
    print("| --- | ---: | ---: | --- | ---: |")
    for name, got in results.items():
        same = (got.parcel_ids, got.scores, got.lanes) == (base.parcel_ids, base.scores,
                                                           base.lanes)  # fmt: skip
        rate = got.parcels / got.wall_s
        per_k = (f"{1000 * work[name][0] / got.parcels:,.1f}, "
                 f"{1000 * work[name][1] / got.parcels:,.0f}" if name in work else "")  # fmt: skip
        print(f"| {name} | {rate:,.0f} | {rate / (base.parcels / base.wall_s):.2f} | "
              f"{'yes' if same else 'NO'} | {per_k} |")  # fmt: skip
    return 0 if all(
        (g.parcel_ids, g.scores, g.lanes) == (base.parcel_ids, base.scores, base.lanes)
        for g in results.values()
    ) else 1  # fmt: skip


def spread(info: devcluster.ClusterInfo, masters: list[int], match: str,
           before: dict[int, tuple[int, int]]) -> tuple[int, int]:  # fmt: skip
    """Keys and script calls per master (printed); the script calls and commands of all."""
    count: Callable[[int], int] = lambda p: sum(  # noqa: E731
        1 for _ in redis.Redis(port=p).scan_iter(match=match + "*", count=1000)
    )
    rows = [(p, count(p), *(a - b for a, b in zip(_calls(p), before[p], strict=True)))
            for p in masters]  # fmt: skip
    print("    per master: " + "; ".join(f":{p} {k:,} keys, {s:,} script calls, {c:,} commands"
                                         for p, k, s, c in rows))  # fmt: skip
    return sum(r[2] for r in rows), sum(r[3] for r in rows)


if __name__ == "__main__":
    raise SystemExit(main())
