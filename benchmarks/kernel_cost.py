"""Rule-kernel cost per parcel for the full default rule set, next to the reference
evaluator (plain Python, parcel by parcel) in the same run.

Feature matrices come from generated parcels; each size is timed over repeats and the
median is reported (the kernel is compiled and warm before timing).

    python benchmarks/kernel_cost.py
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np

from parcel_stream.explain import reference_score
from parcel_stream.features import Features, ReputationView, build_features, index_shippers
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.kernels import score_batch, warm_up
from parcel_stream.parse import InRecord, Limits, parse_batch
from parcel_stream.rules import default_ruleset

NOW = 1_790_100_000_000


def features_for(n: int, rs) -> Features:  # type: ignore[no-untyped-def]
    import orjson

    lines = [orjson.dumps(d) for d, _ in generate(FeedConfig(parcels=n, seed=51))]
    parsed = parse_batch([InRecord(b"\n".join(lines), "t", 0, 0)], Limits(64 << 20, 10**6), NOW)
    shippers = index_shippers(parsed.manifests)
    rng = np.random.default_rng(1)
    k = len(shippers.ids)
    seen = rng.integers(0, 400, k).astype(np.float64)
    view = ReputationView(seen, np.floor(seen * rng.random(k) * 0.1), seen * 20.0,
                          np.full(k, NOW - 40 * 86_400_000.0))  # fmt: skip
    return build_features(parsed.manifests, shippers, view, rs, NOW)


def timed(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeats):
        t = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t)
    return statistics.median(samples) / 1e3  # µs


def main() -> None:
    rs = default_ruleset()
    warm_up(rs)
    full = features_for(16384, rs)
    n_conds = int(rs.rule_count.sum())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"rule set {rs.version}: {len(rs.rules)} rules, {n_conds} conditions; one thread"
    )
    print()
    print(f"{'batch':>6} {'kernel µs/parcel':>17} {'reference µs/parcel':>20} {'speedup':>8}")
    for n in (1, 64, 1024, 16384):
        f = Features(matrix=np.ascontiguousarray(full.matrix[:, :n]))
        kern = timed(lambda f=f: score_batch(f, rs, NOW), repeats=max(20, 20000 // n)) / n
        ref_n = min(n, 1024)
        fr = Features(matrix=np.ascontiguousarray(full.matrix[:, :ref_n]))
        ref = (
            timed(lambda fr=fr: reference_score(fr, rs, NOW), repeats=3 if ref_n > 64 else 10)
            / ref_n
        )
        print(f"{n:>6} {kern:>17.3f} {ref:>20.2f} {ref / kern:>7.0f}x")


if __name__ == "__main__":
    main()
