"""What the decisions records cost the worker to build, a line a parcel against columns.

Scores the same batches (a generated feed in 1,000-parcel NDJSON records over four
partitions, read against an empty in-memory state, the learned model off) with ``PARCEL_DECISIONS_FORMAT=lines`` and ``columns`` in turn
(``pipeline.score_prepared``, which builds every output: the rest of it is the same in
both), and prints the CPU time a parcel of each, their difference, and the bytes a
parcel of the decisions records. Checks on the way that both forms say the same.

    python benchmarks/decisions_cost.py [--parcels N] [--rounds N]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time

import orjson

from parcel_stream.decide import read_decisions
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.parse import InRecord, Limits
from parcel_stream.pipeline import prepare, read_batch, score_prepared
from parcel_stream.reputation import InMemoryStore
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings
from parcel_stream.step import warm_up_scoring

NOW = 1_800_000_000_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parcels", type=int, default=24_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")  # fmt: skip
    settings = Settings()
    rs = default_ruleset(settings)
    docs = [orjson.dumps(d) for d, _ in generate(FeedConfig(parcels=args.parcels, seed=22))]
    recs = [InRecord(b"\n".join(docs[i : i + 1000]), "m", (i // 1000) % 4, i // 4000, None, 0,
                     b"application/x-ndjson") for i in range(0, len(docs), 1000)]  # fmt: skip
    batches = [read_batch(prepare(recs[i : i + 6], Limits(), NOW, rs.split_min_usd),
                          InMemoryStore()) for i in range(0, len(recs), 6)]  # fmt: skip
    warm_up_scoring(rs, settings.risk_config())
    cost: dict[str, list[float]] = {"lines": [], "columns": []}
    size: dict[str, int] = {}
    for k in range(args.rounds):
        for form in ("lines", "columns") if k % 2 == 0 else ("columns", "lines"):
            gc.collect()
            t = time.process_time()
            outs = [score_prepared(b, rs, NOW, decisions=form).outputs for b in batches]
            cost[form].append((time.process_time() - t) / len(docs) * 1e6)
            size[form] = sum(len(v) for o in outs for _k, v in o.decisions)
            if k == 0:
                said = [d for o in outs for _k, v in o.decisions for d in read_decisions(v)]
                size[form + " said"] = hash(tuple(said_key(d) for d in said))
    if size["lines said"] != size["columns said"]:
        raise SystemExit("the two forms said different things")
    med = {f: statistics.median(v) for f, v in cost.items()}
    print(f"\n{len(docs):,} parcels, {args.rounds} rounds; scoring with "
          "every output built, CPU µs a parcel (median of rounds):")  # fmt: skip
    for form in ("lines", "columns"):
        print(f"  decisions as {form:<8} {med[form]:7.2f} µs   "
              f"(rounds {', '.join(f'{x:.2f}' for x in cost[form])}); "
              f"decisions records {size[form] / len(docs):6.1f} bytes a parcel")  # fmt: skip
    print(
        f"  columns save {med['lines'] - med['columns']:.2f} µs a parcel "
        f"({med['columns'] / med['lines']:.2f} x); bytes {size['columns'] / size['lines']:.2f} x"
    )


def said_key(d: object) -> bytes:
    return orjson.dumps(d, default=lambda x: {f: getattr(x, f) for f in x.__struct_fields__})


if __name__ == "__main__":
    main()
