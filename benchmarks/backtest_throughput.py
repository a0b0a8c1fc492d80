"""Backtest throughput on one core, next to the JSON decode of the same parcels.

Generates a feed, then times (process CPU time, one thread) the backtest over:
  (a) a plain manifests file (lines grouped into NDJSON batch records), and
  (b) a recorded feed of single-parcel records (gzip),
  (c) the manifests file again, writing the columnar cache (``feedcache.py``), and
  (d) the manifests file from that cache (the key, a hash of the whole file, included),
then the wall time of (a) in one process and with the feed parsed in one process per core,
next to peers measured in the same run on the same lines (each result dropped at once):
orjson.loads alone, and the validating msgspec decode into the manifest types alone.

    python benchmarks/backtest_throughput.py [--parcels N]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import msgspec
import orjson

from parcel_stream.backtest import CHUNK_BYTES, run_backtest
from parcel_stream.feed import RawRecord, read_feed, write_feed
from parcel_stream.feedcache import CacheEntry, FeedCache
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.kernels import warm_up
from parcel_stream.model import Manifest
from parcel_stream.parse import Limits
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings


def each(fn, items) -> None:  # type: ignore[no-untyped-def]
    for x in items:
        fn(x)


def cpu(fn) -> float:  # type: ignore[no-untyped-def]
    gc.collect()
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parcels", type=int, default=200_000)
    args = ap.parse_args()
    gc.set_threshold(Settings().young_threshold(), 20, 100)  # as the CLI sets it
    tmp = Path(tempfile.mkdtemp(prefix="parcel-stream-btb-"))
    docs = [d for d, _ in generate(FeedConfig(parcels=args.parcels, seed=41))]
    lines = [orjson.dumps(d) for d in docs]
    manifests = tmp / "manifests.ndjson"
    manifests.write_bytes(b"\n".join(lines) + b"\n")
    feed = tmp / "feed.ndjson.gz"
    write_feed(feed, (RawRecord(d["manifest_ts_ms"], "m", 0, i, d["shipper"]["id"].encode(), ln)
                      for i, (d, ln) in enumerate(zip(docs, lines, strict=True))))  # fmt: skip
    del docs
    rs = default_ruleset(Settings())
    warm_up(rs)

    def entry() -> CacheEntry:  # the key (a hash of the whole file) is timed with the run
        return FeedCache(tmp / "cache", manifests, Limits(), CHUNK_BYTES, 1000).entry()

    n = len(lines)
    dec = msgspec.json.Decoder(Manifest)
    rows = [
        ("orjson.loads of every line (peer)", cpu(lambda: each(orjson.loads, lines))),
        ("msgspec validating decode into Manifest (peer)", cpu(lambda: each(dec.decode, lines))),
        ("backtest, manifests file (1000-line batches)",
         cpu(lambda: run_backtest(read_feed(manifests, group_lines=1000), rs))),
        ("backtest, recorded feed of single records (gzip)",
         cpu(lambda: run_backtest(read_feed(feed), rs))),
        ("backtest, manifests file, writing the columnar cache",
         cpu(lambda: run_backtest(read_feed(manifests, group_lines=1000), rs, cache=entry()))),
        ("backtest, from the columnar cache",
         cpu(lambda: run_backtest(read_feed(manifests, group_lines=1000), rs, cache=entry()))),
    ]  # fmt: skip
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{n:,} parcels, mean line {sum(map(len, lines)) / n:.0f} bytes; CPU time of one thread"
    )
    print()
    for name, seconds in rows:
        print(f"{name:<52} {n / seconds:>10,.0f} parcels/s  ({seconds * 1e6 / n:5.2f} µs/parcel)")
    base = rows[1][1]
    print()
    print(f"backtest (manifests) / validating decode alone = {base / rows[2][1]:.2f}")
    print(f"backtest (columnar cache) / validating decode alone = {base / rows[5][1]:.2f}")
    print(f"backtest (columnar cache) / backtest (manifests) = {rows[2][1] / rows[5][1]:.2f}")
    print(f"first backtest, writing the cache / backtest (manifests) = "
          f"{rows[2][1] / rows[4][1]:.2f}")  # fmt: skip
    size = sum(p.stat().st_size for p in (tmp / "cache").iterdir())
    print(f"cache entry: {size / 2**20:.1f} MiB ({size / n:.0f} bytes a parcel); manifests "
          f"file: {manifests.stat().st_size / 2**20:.1f} MiB")  # fmt: skip
    cores = len(os.sched_getaffinity(0))
    if cores > 1:  # wall time: the feed parsed in one process per core, scored in this one
        walls = []
        for workers in (1, cores):
            gc.collect()
            t = time.perf_counter()
            run_backtest(read_feed(manifests, group_lines=1000), rs, workers=workers)
            walls.append(time.perf_counter() - t)
        print(f"wall time, manifests file: one process {n / walls[0]:,.0f} parcels/s, parsed in "
              f"{cores} processes {n / walls[1]:,.0f} parcels/s ({walls[0] / walls[1]:.2f} ×)")  # fmt: skip
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
