"""scores + policy -> lanes, and the decision, hold and rejection records.

Lane codes: 0 release, 1 review, 2 hold. Output values are JSON; a decisions record is
NDJSON with one line per parcel of the input record it answers.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from parcel_stream.model import Decision, Hold, Lane, LearnedReason, Reason, Rejection, Selection
from parcel_stream.parse import InRecord, ParsedBatch
from parcel_stream.rules import RuleSet

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
LANES: tuple[Lane, Lane, Lane] = ("release", "review", "hold")
LANE_HOLD = 2
DECISIONS_PER_RECORD = 2000  # ~500 KB per decisions record

_ENC = msgspec.json.Encoder()


def decide(scores: F64, review_score: float, hold_score: float) -> I8:
    """Lane per parcel from its score and the two thresholds."""
    lanes = np.zeros(scores.shape[0], dtype=np.int8)
    lanes[scores >= review_score] = 1
    lanes[scores >= hold_score] = 2
    return lanes


SELECTIONS: tuple[Selection, Selection, Selection] = ("risk", "random", "exploration")
_SALT = b"parcel-stream-sample-1:"


def sample(
    parcel_ids: list[str], lanes: I8, random_rate: float, exploration_rate: float
) -> tuple[I8, I8]:
    """Random compliance sampling and exploration on top of the risk lanes.

    A fraction ``random_rate`` of release-lane parcels and ``exploration_rate`` of
    review-lane parcels go to hold, marked as such (selection 1 = random, 2 = exploration).
    The draw is a hash of the parcel id, so a redelivered parcel gets the same decision."""
    selection = np.zeros(lanes.shape[0], dtype=np.int8)
    if not (random_rate > 0 or exploration_rate > 0) or not len(parcel_ids):
        return lanes, selection
    u = np.fromiter(map(zlib.crc32, map(_SALT.__add__, map(str.encode, parcel_ids))),
                    np.float64, len(parcel_ids)) / 4294967296.0  # fmt: skip
    out = lanes.copy()
    rand = (lanes == 0) & (u < random_rate)
    explore = (lanes == 1) & (u < exploration_rate)
    out[rand | explore] = LANE_HOLD
    selection[rand] = 1
    selection[explore] = 2
    return out, selection


# One key/value pair to produce.
Out = tuple[bytes | None, bytes]


def hold_reason_counts(masks: I64, lanes: I8, n_rules: int) -> list[int]:
    """How many held parcels each rule fired for (by rule index)."""
    held = masks[lanes == LANE_HOLD].view(np.uint64)
    bits = (held[:, None] >> np.arange(n_rules, dtype=np.uint64)) & np.uint64(1)
    return [int(c) for c in bits.sum(axis=0)]


@dataclass(slots=True)
class Outputs:
    holds: list[Out] = field(default_factory=list)
    decisions: list[Out] = field(default_factory=list)
    rejections: list[Out] = field(default_factory=list)


_SAMPLE_REASONS = {
    "random": Reason("RANDOM_COMPLIANCE_SAMPLE", "selected at random to measure compliance", 0.0),
    "exploration": Reason(
        "EXPLORATION", "selected at random from the review lane (exploration)", 0.0
    ),
}


class Legend:
    """The reasons a fired-rule mask stands for: rule code, text, weight and learned
    points, under one rule set (and learner state). Built lazily per distinct mask."""

    def __init__(self, ruleset: RuleSet, adjust: F64 | None = None) -> None:
        self.ruleset = ruleset
        self.adjust = adjust
        self.version = ruleset.version
        self._cache: dict[int, list[Reason]] = {}

    def reasons(self, mask: int) -> list[Reason]:
        hit = self._cache.get(mask)
        if hit is None:
            rs, adj = self.ruleset, self.adjust
            hit = [
                Reason(code=r.code, text=r.text, rule_weight=float(rs.weights[i]),
                       learned_points=round(float(adj[i]), 2) if adj is not None else 0.0)
                for i, r in enumerate(rs.rules)
                if mask >> i & 1
            ]  # fmt: skip
            self._cache[mask] = hit
        return hit


class StoredLegend:
    """A legend read back from a stored decision digest (see ``outbox.py``)."""

    def __init__(self, version: str, reasons: dict[int, list[Reason]]) -> None:
        self.version = version
        self._reasons = reasons

    def reasons(self, mask: int) -> list[Reason]:
        return self._reasons[mask]


class LegendLike(Protocol):
    version: str

    def reasons(self, mask: int) -> list[Reason]: ...


REPEAT_MARK, AMEND_MARK = 1, 2


class Mark(msgspec.Struct, array_like=True):
    """A parcel id seen before: a repeat (its original decision's reasons, versions and
    time, emitted again) or an amendment (scored again; ``ref`` is what it replaces)."""

    kind: int  # REPEAT_MARK or AMEND_MARK
    ref: str  # source of the original decision
    codes: list[str] = []
    version: str = ""
    learner_version: int = 0
    decision_ts_ms: int = 0


def build_outputs(
    records: list[InRecord],
    parsed: ParsedBatch,
    scores: F64,
    masks: I64,
    lanes: I8,
    legend: LegendLike,
    now_ms: int,
    selection: I8 | None = None,
    learner_version: int = 0,
    marks: dict[int, Mark] | None = None,
    probability: F64 | None = None,
    propensity: F64 | None = None,
    learned: dict[int, list[LearnedReason]] | None = None,
) -> Outputs:
    """Encode every decision (grouped per input record), the holds and the rejections.
    ``marks``: per parcel index, a repeat (no hold again) or an amendment. With the
    learned model: per parcel its probability (< 0: none) and selection probability, per
    held parcel its learned reasons."""
    out = Outputs()
    version = legend.version
    manifests, sources = parsed.manifests, parsed.sources
    masks_l = masks.tolist()
    codes_of = {mask: [r.code for r in legend.reasons(mask)] for mask in set(masks_l)}
    lane_names = [LANES[x] for x in lanes.tolist()]
    score_l = np.round(scores, 2).tolist()
    sel = selection if selection is not None else np.zeros(len(manifests), dtype=np.int8)
    sel_names = [SELECTIONS[x] for x in sel.tolist()]
    n = len(manifests)
    prob_l: list[float | None] = [None] * n
    prop_l: list[float | None] = [None] * n
    if probability is not None and propensity is not None:
        probs: list[float] = probability.tolist()
        prob_l, prop_l = list(probs), propensity.tolist()
        if not (probability >= 0).all():  # < 0 (or NaN): none
            prob_l = [p if p >= 0 else None for p in probs]
            prop_l = [q if p >= 0 else None for p, q in zip(probs, prop_l, strict=True)]
    decisions = [
        Decision(
            parcel_id=m.parcel_id,
            shipper_id=m.shipper.id,
            score=score,
            lane=lane,
            reason_codes=codes_of[mask],
            ruleset_version=version,
            event_ts_ms=m.manifest_ts_ms,
            decision_ts_ms=now_ms,
            source=src,
            selection=how,
            learner_version=learner_version,
            probability=p,
            selection_probability=q,
        )
        for m, score, lane, mask, src, how, p, q in zip(
            manifests,
            score_l,
            lane_names,
            masks_l,
            sources,
            sel_names,
            prob_l,
            prop_l,
            strict=True,
        )  # fmt: skip
    ]
    for i, mark in (marks or {}).items():
        d = decisions[i]
        if mark.kind == REPEAT_MARK:
            d.reason_codes, d.ruleset_version = mark.codes, mark.version
            d.learner_version, d.decision_ts_ms = mark.learner_version, mark.decision_ts_ms
            d.repeat_of = mark.ref
        else:
            d.amends = mark.ref
    # Decisions records: NDJSON, one per input partition of the batch (in input order),
    # at most DECISIONS_PER_RECORD lines each; key = "topic/partition" of the input, so
    # the decisions of one input partition stay in order on one output partition.
    by_part: dict[tuple[str, int], list[Decision]] = {}
    for d, rec in zip(decisions, parsed.record_index, strict=True):
        r = records[rec]
        by_part.setdefault((r.topic, r.partition), []).append(d)
    for (topic, partition), group in by_part.items():
        key = f"{topic}/{partition}".encode()
        for lo in range(0, len(group), DECISIONS_PER_RECORD):
            value = _ENC.encode_lines(group[lo : lo + DECISIONS_PER_RECORD])[:-1]
            out.decisions.append((key, value))
    for i in np.flatnonzero(lanes == LANE_HOLD).tolist():
        m, d = manifests[i], decisions[i]
        if d.repeat_of is not None:
            continue  # its hold went out with the original
        reasons = list(legend.reasons(masks_l[i]))
        if d.selection != "risk":
            reasons.append(_SAMPLE_REASONS[d.selection])
        hold = Hold(
            parcel_id=m.parcel_id,
            shipper_id=m.shipper.id,
            hub=m.hub,
            score=d.score,
            lane="hold",
            reasons=reasons,
            selection=d.selection,
            learner_version=learner_version,
            ruleset_version=version,
            event_ts_ms=m.manifest_ts_ms,
            decision_ts_ms=now_ms,
            source=d.source,
            amends=d.amends,
            probability=d.probability,
            selection_probability=d.selection_probability,
            learned_reasons=learned.get(i, []) if learned else [],
            manifest=m,
        )
        out.holds.append((m.parcel_id.encode(), _ENC.encode(hold)))
    for rej in parsed.rejections:
        rkey = rej.parcel_id.encode() if rej.parcel_id else None
        out.rejections.append((rkey, encode_rejection(rej)))
    return out


def encode_rejection(rejection: Rejection) -> bytes:
    return _ENC.encode(rejection)
