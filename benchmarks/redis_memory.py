"""Redis memory per entity: a generated feed through the backtest with the Redis store
(exam feedback on, learner in shadow mode), then ``MEMORY USAGE`` of every key by kind.

    python benchmarks/redis_memory.py [--parcels 60000] [--days 7]

Starts its own redis-server on a free loopback port and stops it afterwards.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import orjson
import redis

from parcel_stream.adapters import devstack
from parcel_stream.adapters.redis_store import BlockingRedisStore
from parcel_stream.backtest import run_backtest
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
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parcels", type=int, default=60_000)
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--shippers", type=int, default=1000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ps-mem-"))
    port = devstack.free_port()
    proc = subprocess.Popen(
        [devstack.redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while not devstack._redis_ping(port):
            time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
        cfg = FeedConfig(parcels=args.parcels, seed=7, shippers=args.shippers,
                         duration_s=args.days * 86_400.0)  # fmt: skip
        recs, labels = [], {}
        for n, (doc, label) in enumerate(generate(cfg)):
            recs.append(RawRecord(doc["manifest_ts_ms"], "m", 0, n, None, orjson.dumps(doc)))
            labels[doc["parcel_id"]] = label
        rs = default_ruleset(Settings())
        store = BlockingRedisStore(url)
        run = run_backtest(recs, rs, store=store, exam_outcomes=labels,
                           learner=LearnerConfig(mode="shadow"))  # fmt: skip
        store.close()
        client = redis.Redis.from_url(url)
        sizes: dict[str, list[int]] = defaultdict(list)
        for key in client.scan_iter(count=1000):
            name = key.decode()
            kind = next((k for k, rx in KINDS if rx.search(name)), "other")
            sizes[kind].append(int(client.memory_usage(key) or 0))
        used = int(client.info("memory")["used_memory"])
        print(f"feed: {run.parcels:,} parcels, {args.days:g} days, {args.shippers} shippers; "
              f"redis {client.info('server')['redis_version']}")  # fmt: skip
        print("| key | mean bytes | max bytes | keys |")
        print("| --- | ---: | ---: | ---: |")
        for kind, _rx in [*KINDS, ("other", None)]:
            v = sizes.get(kind)
            if v:
                print(f"| {kind} | {sum(v) / len(v):,.0f} | {max(v):,} | {len(v):,} |")
        print(f"\nused_memory: {used / 1e6:.1f} MB")
        return 0
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
