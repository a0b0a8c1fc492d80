"""One batch through the core: parse -> features -> kernels -> decide -> outputs + update.

The I/O around it (reading reputation, producing, applying the update, committing) is the
caller's: the Faust agent in ``agents/`` and, without Kafka, the in-memory runner below.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from time import perf_counter

import numpy as np
import numpy.typing as npt

from parcel_stream.decide import (
    LANES,
    SELECTIONS,
    Legend,
    Outputs,
    build_outputs,
    decide,
    sample,
)
from parcel_stream.features import ReputationView, ShipperIndex, build_features, index_shippers
from parcel_stream.kernels import score_batch
from parcel_stream.learner import apply_adjustments
from parcel_stream.outbox import record_digests
from parcel_stream.parse import InRecord, Limits, ParsedBatch, parse_batch
from parcel_stream.reputation import (
    InMemoryStore,
    Partition,
    ReputationUpdate,
    batch_partitions,
    compute_update,
)
from parcel_stream.rules import RuleSet

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A parsed batch and what must be read from the reputation store to score it."""

    records: list[InRecord]
    parsed: ParsedBatch
    shippers: ShipperIndex
    partitions: list[Partition]
    parse_s: float = 0.0


@dataclass(frozen=True, slots=True)
class BatchResult:
    outputs: Outputs
    update: ReputationUpdate
    scores: F64
    masks: I64
    lanes: I8
    lane_counts: dict[str, int]
    selection_counts: dict[str, int]
    rejection_counts: dict[str, int]
    parcels: int
    # seconds spent per core stage, for the stage-duration metrics
    stage_s: dict[str, float]


def prepare(
    records: list[InRecord], limits: Limits, now_ms: int, split_min_usd: float | None = None
) -> Prepared:
    t0 = perf_counter()
    parsed = parse_batch(records, limits, now_ms)
    return Prepared(
        records=records,
        parsed=parsed,
        shippers=index_shippers(parsed.manifests, split_min_usd),
        partitions=batch_partitions(records),
        parse_s=perf_counter() - t0,
    )


def score_prepared(
    prep: Prepared,
    view: ReputationView,
    watermarks: dict[Partition, int],
    ruleset: RuleSet,
    now_ms: int,
    encode: bool = True,
    adjust: F64 | None = None,
    learner_version: int = 0,
) -> BatchResult:
    """Score a prepared batch; ``encode=False`` skips building output records (backtests).
    ``adjust``: learned points per rule (index as in the rule set) to add to the scores,
    with the learner state's version for the records."""
    parsed = prep.parsed
    t0 = perf_counter()
    feats = build_features(parsed.manifests, prep.shippers, view, ruleset, now_ms)
    t1 = perf_counter()
    static, masks = score_batch(feats, ruleset, now_ms)
    if adjust is not None and adjust.any():
        scores = apply_adjustments(static, masks, adjust)
    else:
        adjust, learner_version, scores = None, 0, static
    risk_lanes = decide(scores, ruleset.review_score, ruleset.hold_score)
    lanes, selection = sample(
        [m.parcel_id for m in parsed.manifests],
        risk_lanes,
        ruleset.random_rate,
        ruleset.exploration_rate,
    )
    t2 = perf_counter()
    legend = Legend(ruleset, adjust)
    outputs = (
        build_outputs(
            prep.records, parsed, scores, masks, lanes, legend, now_ms, selection, learner_version
        )  # fmt: skip
        if encode
        else Outputs()
    )
    event_ts = np.fromiter(
        (m.manifest_ts_ms for m in parsed.manifests), dtype=np.int64, count=len(parsed)
    )
    update = compute_update(
        prep.records,
        parsed,
        prep.shippers,
        feats.value_usd,
        risk_lanes,
        event_ts,
        watermarks,
        examined=lanes,
        masks=masks,
        rule_codes=[r.code for r in ruleset.rules],
        static_scores=static,
    )
    if encode:  # the decision digests the worker stores with the update (outbox.py)
        update = replace(update, outbox=record_digests(
            prep.records, parsed, scores, masks, lanes, selection, legend, learner_version,
            now_ms, watermarks))  # fmt: skip
    counts = np.bincount(lanes, minlength=3)
    t3 = perf_counter()
    stages = {"parse": prep.parse_s, "features": t1 - t0, "kernel": t2 - t1, "encode": t3 - t2}
    return BatchResult(
        outputs=outputs,
        update=update,
        scores=scores,
        masks=masks,
        lanes=lanes,
        selection_counts={
            name: int(np.count_nonzero(selection == k)) for k, name in enumerate(SELECTIONS)
        },
        lane_counts={LANES[i]: int(counts[i]) for i in range(3)},
        rejection_counts=dict(Counter(r.reason for r in parsed.rejections)),
        parcels=len(parsed),
        stage_s=stages,
    )


def run_in_memory(
    records: list[InRecord], store: InMemoryStore, ruleset: RuleSet, limits: Limits, now_ms: int
) -> BatchResult:
    """The whole batch step against an in-memory store (tests, backtests)."""
    prep = prepare(records, limits, now_ms, ruleset.split_min_usd)
    view, marks = store.read(prep.shippers, prep.partitions)
    result = score_prepared(prep, view, marks, ruleset, now_ms)
    if not store.apply(result.update):
        raise RuntimeError("reputation watermark conflict in a single-writer store")
    return result
