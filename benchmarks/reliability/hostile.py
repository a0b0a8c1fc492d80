"""Hostile-input suite: hostile manifests mixed into valid traffic through the worker.

    python benchmarks/reliability/hostile.py [--hostile 100000] [--valid 100000]

The cases (``hostile_cases.py``) are truncated JSON, wrong types, huge strings and
arrays, deep nesting, NaN/Infinity, invalid UTF-8, raw and escaped control characters,
duplicate keys, prototype-pollution-style keys, values at numeric limits, garbage and
records over the size limit. An independent oracle (strict JSON + the published schema)
says which the contract accepts. Mixed into batch records with valid parcels (and sent
alone, for a share of them), they go through one worker. Checks: the worker never
crashes; every parcel the oracle accepts is decided, every one it refuses is rejected
with a reason and a path; the worker's rejection metrics equal the number sent.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import msgspec
import orjson

from benchmarks.reliability.harness import Worker, dev_stack, from_start, suite_settings
from benchmarks.reliability.hostile_cases import cases
from parcel_stream.adapters.kafka_io import make_producer
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.model import Rejection
from parcel_stream.settings import Settings


def rejection_metrics(port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("parcel_stream_rejections_total{")))  # fmt: skip


def send_mixed(
    s: Settings, hostile: int, valid: int, seed: int
) -> tuple[set[str], set[str], int, Counter[str]]:
    """Produce the mix; returns (ids that must be decided, hostile ids the oracle
    refuses, number of rejections due, cases per mutation)."""
    rng = random.Random(seed)
    good_docs = [d for d, _ in generate(FeedConfig(parcels=valid, seed=seed, shippers=3000))]
    must_decide = {d["parcel_id"] for d in good_docs}
    refused_ids: set[str] = set()
    due = 0
    kinds: Counter[str] = Counter()
    producer = make_producer(s.kafka_bootstrap, linger_ms=20)
    good = iter(orjson.dumps(d) for d in good_docs)
    batch: list[bytes] = []
    t0 = time.monotonic()
    for n, (name, raw, ok) in enumerate(cases(good_docs[:2000], hostile, seed)):
        kinds[name] += 1
        if ok:  # the id as the contract reads it (a case may have altered it)
            must_decide.add(orjson.loads(raw)["parcel_id"])
        else:
            refused_ids.add(f"H{seed:02d}{n:08d}")
            due += 1
        if name == "oversize_record" or rng.random() < 0.1:
            producer.send(s.topic_manifests, value=raw)  # alone in its record
        else:
            batch.append(raw)
            batch.append(next(good, b""))
            if len(batch) >= 200:
                producer.send(s.topic_manifests, value=b"\n".join(x for x in batch if x))
                batch = []
        if n % 20_000 == 0 and n:
            print(f"  sent {n:,} hostile cases ({time.monotonic() - t0:.0f}s)", flush=True)
    rest = [x for x in batch if x] + list(good)
    for i in range(0, len(rest), 200):
        producer.send(s.topic_manifests, value=b"\n".join(rest[i : i + 200]))
    producer.flush()
    producer.close()
    return must_decide, refused_ids, due, kinds


def read_outputs(
    s: Settings, want_decided: int, want_rejected: int, timeout_s: float
) -> tuple[set[str], list[Rejection]]:
    consumer = from_start(s.kafka_bootstrap, [s.topic_decisions, s.topic_rejects])
    decided: set[str] = set()
    rejections: list[Rejection] = []
    dec = msgspec.json.Decoder(Rejection)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for tp, msgs in consumer.poll(timeout_ms=300, max_records=100_000).items():
                for m in msgs:
                    if tp.topic == s.topic_decisions:
                        decided.update(orjson.loads(x)["parcel_id"] for x in m.value.split(b"\n"))
                    else:
                        rejections.append(dec.decode(m.value))
            if len(decided) >= want_decided and len(rejections) >= want_rejected:
                break
    finally:
        consumer.close()
    return decided, rejections


def run(hostile: int, valid: int, seed: int, work: Path) -> dict[str, object]:
    with dev_stack(work / "stack") as info:
        s = suite_settings(info, work)
        worker = Worker(s, work / "worker.log")
        worker.start()
        t0 = time.monotonic()
        must, refused, due, kinds = send_mixed(s, hostile, valid, seed)
        print(f"  sent: {len(must):,} to decide, {due:,} to reject ({time.monotonic() - t0:.0f}s)")
        decided, rejections = read_outputs(s, len(must), due, timeout_s=900)
        time.sleep(1.0)  # the last batch's metrics
        metric = rejection_metrics(s.metrics_port)
        alive = worker.alive()
        rss = worker.rss_mb() if alive else 0.0
        worker.stop()
    reasons = Counter(r.reason for r in rejections)
    rejected_ids = {r.parcel_id for r in rejections if r.parcel_id}
    return {
        "hostile_cases": hostile,
        "valid_parcels": valid,
        "mutations": len(kinds),
        "must_decide": len(must),
        "decided_of_those": len(must & decided),
        "missing_decisions": len(must - decided),
        "refused_by_oracle": due,
        "rejections": len(rejections),
        "rejections_without_reason_or_path": sum(
            1 for r in rejections if not (r.reason and r.path)
        ),
        "refused_but_decided": len(refused & decided),
        "accepted_but_rejected": len(must & rejected_ids),
        "rejections_metric": metric,
        "worker_alive": alive,
        "worker_rss_mb": round(rss),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "by_reason": dict(reasons.most_common()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hostile", type=int, default=100_000)
    ap.add_argument("--valid", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ps-hostile-") as tmp:
        res = run(args.hostile, args.valid, args.seed, Path(tmp))
    for k, v in res.items():
        print(f"{k:36} {v}")
    ok = (res["missing_decisions"] == 0 and res["rejections"] == res["refused_by_oracle"]
          == res["rejections_metric"] and res["refused_but_decided"] == 0
          and res["accepted_but_rejected"] == 0 and res["worker_alive"]
          and res["rejections_without_reason_or_path"] == 0)  # fmt: skip
    print("RESULT", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
