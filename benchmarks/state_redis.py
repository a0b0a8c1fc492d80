"""The batch step's state calls on one redis-server, next to the in-memory twin in the same run.

Runs the worker's batch step in this process (no broker) over 1,000-parcel NDJSON batch
records of a generated feed, first against the in-memory store (the peer: the same step
without Redis), then against a redis-server started for the run. Prints, per parcel, this
process's CPU, Redis's CPU (``INFO cpu``), the wall time, and the Redis commands the
scripts ran (``INFO commandstats``: calls and microseconds a parcel). The first
``--warm`` batches of each run are left out (compilation, first keys).

    python benchmarks/state_redis.py [--batches N] [--warm N] [--risk-model off|shadow]
"""

from __future__ import annotations

import argparse
import gc
import platform
import tempfile
import time
from typing import Any

import orjson
import redis

from parcel_stream.adapters.devstack import private_redis
from parcel_stream.adapters.redis_store import BlockingRedisStore, RedisReputationStore
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.parse import InRecord, Limits
from parcel_stream.reputation import InMemoryStore
from parcel_stream.risk import RiskState
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings
from parcel_stream.state import StateStore
from parcel_stream.step import batch_step, run_step, warm_up_scoring

BATCH = 1000


def records(batches: int) -> tuple[list[InRecord], int]:
    docs = [orjson.dumps(d) for d, _ in generate(FeedConfig(parcels=batches * BATCH, seed=22))]
    recs = [InRecord(b"\n".join(docs[i * BATCH : (i + 1) * BATCH]), "m", i % 2, i // 2, None, 0,
                     b"application/x-ndjson") for i in range(batches)]  # fmt: skip
    return recs, max(orjson.loads(d)["manifest_ts_ms"] for d in docs) + 1


def run(store: StateStore, recs: list[InRecord], now: int, s: Settings, warm: int,
        client: Any = None) -> dict[str, Any]:  # fmt: skip
    rs, cfg = default_ruleset(s), s.risk_config()
    risk = (cfg, RiskState()) if cfg.scores else None
    warm_up_scoring(rs, cfg)

    def step(rec: InRecord) -> None:
        run_step(batch_step([rec], rs, Limits(), now, True, None, 0, s.state_config(), None,
                            risk), store)  # fmt: skip

    def redis_cpu() -> float:
        if client is None:
            return 0.0
        info = client.info("cpu")
        return float(info["used_cpu_sys"] + info["used_cpu_user"])

    for rec in recs[:warm]:
        step(rec)
    if client is not None:
        client.config_resetstat()
    c0, r0, w0 = time.process_time(), redis_cpu(), time.perf_counter()
    for rec in recs[warm:]:
        step(rec)
    c1, r1, w1 = time.process_time(), redis_cpu(), time.perf_counter()
    n = (len(recs) - warm) * BATCH
    out: dict[str, Any] = {"cpu_us": (c1 - c0) / n * 1e6, "redis_us": (r1 - r0) / n * 1e6,
                           "wall_us": (w1 - w0) / n * 1e6, "commands": []}  # fmt: skip
    if client is not None:
        stats = client.info("commandstats")
        rows = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])
        out["commands"] = [(k.removeprefix("cmdstat_"), v["calls"] / n, v["usec"] / n,
                            v["usec_per_call"]) for k, v in rows[:10]]  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=60, help="1,000-parcel batch records")
    ap.add_argument("--warm", type=int, default=10, help="first batches left out")
    ap.add_argument("--risk-model", choices=["off", "shadow"], default="off")
    args = ap.parse_args()
    gc.set_threshold(50_000, 20, 100)  # as the worker does
    recs, now = records(args.batches)
    with private_redis(tempfile.mkdtemp(prefix="parcel-stream-state-")) as port:
        client = redis.Redis(port=port)
        s = Settings().replace(redis_url=f"redis://127.0.0.1:{port}/0",
                               risk_model=args.risk_model)  # fmt: skip
        peer = run(InMemoryStore(), recs, now, s, args.warm)
        store = BlockingRedisStore(s.redis_url, store=RedisReputationStore.from_settings(s))
        got = run(store, recs, now, s, args.warm, client)
        store.close()
    n = (args.batches - args.warm) * BATCH
    print(f"{platform.machine()}, {platform.python_version()}, {n:,} parcels in "
          f"{BATCH:,}-parcel batches, PARCEL_RISK_MODEL={args.risk_model}")  # fmt: skip
    print(f"in-memory store (peer): this process {peer['cpu_us']:.1f} µs a parcel, "
          f"wall {peer['wall_us']:.1f} µs")  # fmt: skip
    print(f"redis-server: this process {got['cpu_us']:.1f} µs a parcel, Redis "
          f"{got['redis_us']:.1f} µs, wall {got['wall_us']:.1f} µs "
          f"({got['wall_us'] / peer['wall_us']:.2f} × the peer's wall time)")  # fmt: skip
    print("Redis commands, a parcel (the scripts' own time is in evalsha):")
    for name, calls, usec, per_call in got["commands"]:
        print(f"  {name:<12} {calls:7.3f} calls {usec:7.2f} µs   ({per_call:.2f} µs a call)")


if __name__ == "__main__":
    main()
