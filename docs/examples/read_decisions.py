"""Read what parcel-stream sends back: decisions, holds and rejections.

Prints one line per parcel decision, hold and rejection, from the start of the topics.
With ``--group`` it reads as a consumer group and commits its offsets (what a hub's
service does); without, it reads every partition from the start and commits nothing.

    python read_decisions.py BOOTSTRAP [--prefix KP] [--expect N] [--timeout 60]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition


def show_decisions(value: bytes) -> list[dict[str, object]]:
    # --8<-- [start:decisions]
    # A decisions record is NDJSON: one line per parcel of one input partition's batch,
    # in input order. Its key is the input's "topic/partition". With the worker's
    # PARCEL_DECISIONS_FORMAT=columns it is one object in columns instead (below).
    try:  # one JSON object: a record in columns, or a single line
        doc = json.loads(value)
    except json.JSONDecodeError:  # several lines
        doc = None
    if isinstance(doc, dict) and doc.get("kind") == "decision-batch":
        decisions = from_columns(doc)
    else:
        decisions = [json.loads(line) for line in value.splitlines()]
    for d in decisions:
        note = ""
        if d.get("repeat_of"):  # a parcel id sent again with identical content
            note = f" (repeat of {d['repeat_of']})"
        elif d.get("amends"):  # a parcel id sent again with other content: scored again
            note = f" (amends {d['amends']})"
        print(f"decision {d['parcel_id']} {d['lane']} score {d['score']:g} "
              f"rules {','.join(d['reason_codes']) or '-'}{note}")  # fmt: skip
    # --8<-- [end:decisions]
    return decisions


# --8<-- [start:columns]
def from_columns(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-parcel decisions of a record in columns (schemas/decision-batch.v1.json):
    each per-parcel field is a list, parcel i its i-th entry; what all share is said once."""
    lanes, selections = ("release", "review", "hold"), ("risk", "random", "exploration")
    n = len(batch["parcel_id"])
    none = [None] * n
    out = [
        {"parcel_id": batch["parcel_id"][i], "shipper_id": batch["shipper_id"][i],
         "score": batch["score"][i], "lane": lanes[batch["lane"][i]],
         "reason_codes": batch["reason_sets"][batch["reasons"][i]],
         "ruleset_version": batch["ruleset_version"], "event_ts_ms": batch["event_ts_ms"][i],
         "decision_ts_ms": batch["decision_ts_ms"], "source": batch["source"][i],
         "selection": selections[batch["selection"][i]],
         "learner_version": batch["learner_version"], "repeat_of": None, "amends": None,
         "probability": (batch["probability"] or none)[i],
         "selection_probability": (batch["selection_probability"] or none)[i],
         "schema_version": 1}
        for i in range(n)
    ]  # fmt: skip
    for r in batch["repeats"]:  # emitted again as first decided: their versions and time
        out[r["index"]].update(repeat_of=r["repeat_of"], ruleset_version=r["ruleset_version"],
                               learner_version=r["learner_version"],
                               decision_ts_ms=r["decision_ts_ms"])  # fmt: skip
    for a in batch["amended"]:
        out[a["index"]]["amends"] = a["amends"]
    return out
# --8<-- [end:columns]


def show_hold(value: bytes) -> None:
    # --8<-- [start:holds]
    h = json.loads(value)  # key: the parcel id
    reasons = "; ".join(f"{r['code']}: {r['text']}" for r in h["reasons"])
    print(f"hold {h['parcel_id']} score {h['score']:g} ({h['ruleset_version']}): {reasons}")
    # --8<-- [end:holds]


def show_rejection(value: bytes) -> None:
    # --8<-- [start:rejects]
    r = json.loads(value)  # key: the parcel id when it could be read
    print(f"reject {r['reason']} at {r['path']} parcel {r.get('parcel_id') or '?'} "
          f"source {r['source']}: {r['detail']}")  # fmt: skip
    if r.get("parcel_ids"):  # an oversize record: the parcels in it, to resend smaller
        print(f"  resend: {' '.join(r['parcel_ids'])}")
    # --8<-- [end:rejects]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bootstrap", help="Kafka bootstrap address, e.g. 127.0.0.1:9092")
    ap.add_argument("--decisions", default="parcel-decisions", help="decisions topic")
    ap.add_argument("--holds", default="parcel-holds", help="holds topic")
    ap.add_argument("--rejects", default="parcel-rejects", help="rejects topic")
    ap.add_argument("--group", help="consumer group id (commit offsets, resume later)")
    ap.add_argument("--prefix", default="", help="count only parcel ids with this prefix")
    ap.add_argument("--expect", type=int, default=0, help="stop after N parcels decided")
    ap.add_argument("--timeout", type=float, default=60.0, help="stop after this many seconds")
    args = ap.parse_args()
    topics = [args.decisions, args.holds, args.rejects]

    # --8<-- [start:consumer]
    common: dict[str, object] = {
        "bootstrap_servers": args.bootstrap,
        "auto_offset_reset": "earliest",
    }
    if args.group:
        consumer = KafkaConsumer(*topics, group_id=args.group, **common)
    else:
        consumer = KafkaConsumer(enable_auto_commit=False, **common)
        parts = [TopicPartition(t, p) for t in topics
                 for p in sorted(consumer.partitions_for_topic(t) or ())]  # fmt: skip
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
    # --8<-- [end:consumer]

    decided: set[str] = set()
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for rec in records:
                    if tp.topic == args.decisions:
                        for d in show_decisions(rec.value):
                            if str(d["parcel_id"]).startswith(args.prefix):
                                decided.add(str(d["parcel_id"]))
                    elif tp.topic == args.holds:
                        show_hold(rec.value)
                    else:
                        show_rejection(rec.value)
            if args.expect and len(decided) >= args.expect:
                break
    finally:
        consumer.close()
    if args.expect and len(decided) < args.expect:
        raise SystemExit(f"{len(decided)} of {args.expect} parcels decided in {args.timeout:g} s")


if __name__ == "__main__":
    main()
