"""scores + policy -> lanes, and the decision, hold and rejection records.

Lane codes: 0 release, 1 review, 2 hold. Output values are JSON; a decisions record is
NDJSON with one line per parcel of the input record it answers.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt
import orjson

from parcel_stream.model import (
    Decision,
    DecisionBatch,
    Hold,
    Lane,
    LearnedReason,
    Reason,
    Rejection,
    Selection,
)
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
_SALT_CRC = zlib.crc32(_SALT)


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
    # the CRC-32 of salt + id, continued from the salt's (no concatenation)
    u = np.fromiter(map(zlib.crc32, map(str.encode, parcel_ids), repeat(_SALT_CRC)),
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


DECISIONS_FORMATS = ("lines", "columns")


@dataclass(frozen=True, slots=True)
class ParcelFields:
    """Per parcel of a batch, in input order: what its decision says of it besides the
    scoring."""

    parcel_ids: Sequence[str]
    shipper_ids: Sequence[str]
    ts_ms: I64


_DECISIONS_COLUMNS = orjson.OPT_SERIALIZE_NUMPY
_parcel_fields = attrgetter("parcel_id", "shipper.id", "manifest_ts_ms")


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
    decisions: str = "lines",
    fields: ParcelFields | None = None,
) -> Outputs:
    """Encode every decision (grouped per input partition), the holds and the rejections.
    ``marks``: per parcel index, a repeat (no hold again) or an amendment. With the
    learned model: per parcel its probability (< 0: none) and selection probability, per
    held parcel its learned reasons. ``decisions``: ``lines`` (NDJSON, a
    :class:`~parcel_stream.model.Decision` a line) or ``columns`` (a
    :class:`~parcel_stream.model.DecisionBatch` a record). ``fields``: the parcels' ids,
    shippers' ids and manifest times, when the caller has them in columns."""
    out = Outputs()
    manifests, n = parsed.manifests, len(parsed.manifests)
    marks = marks or {}
    masks_l = masks.tolist()
    sel = selection if selection is not None else np.zeros(n, dtype=np.int8)
    if fields is None:
        got = tuple(zip(*map(_parcel_fields, manifests), strict=True)) or ((), (), ())
        fields = ParcelFields(got[0], got[1], np.fromiter(got[2], np.int64, n))
    rounded = np.round(scores, 2)
    model: tuple[F64, F64] | None = None
    if probability is not None and propensity is not None:  # < 0 (or NaN): none
        model = (np.where(probability >= 0, probability, np.nan), propensity)
    if decisions not in DECISIONS_FORMATS:
        raise ValueError(f"decisions as {decisions!r}: one of {', '.join(DECISIONS_FORMATS)}")
    encode = _decision_batches if decisions == "columns" else _decision_lines
    out.decisions = encode(records, parsed, fields, rounded, lanes, sel, masks_l, legend, marks,
                           now_ms, learner_version, model)  # fmt: skip
    for i in np.flatnonzero(lanes == LANE_HOLD).tolist():
        m, mark = manifests[i], marks.get(i)
        if mark is not None and mark.kind == REPEAT_MARK:
            continue  # its hold went out with the original
        reasons = list(legend.reasons(masks_l[i]))
        how = SELECTIONS[int(sel[i])]
        if how != "risk":
            reasons.append(_SAMPLE_REASONS[how])
        p = q = None
        if model is not None and model[0][i] == model[0][i]:  # not NaN
            p, q = float(model[0][i]), float(model[1][i])
        hold = Hold(
            parcel_id=m.parcel_id,
            shipper_id=m.shipper.id,
            hub=m.hub,
            score=float(rounded[i]),
            lane="hold",
            reasons=reasons,
            selection=how,
            learner_version=learner_version,
            ruleset_version=legend.version,
            event_ts_ms=m.manifest_ts_ms,
            decision_ts_ms=now_ms,
            source=parsed.sources[i],
            amends=mark.ref if mark is not None else None,
            probability=p,
            selection_probability=q,
            learned_reasons=learned.get(i, []) if learned else [],
            manifest=m,
        )
        out.holds.append((m.parcel_id.encode(), _ENC.encode(hold)))
    for rej in parsed.rejections:
        rkey = rej.parcel_id.encode() if rej.parcel_id else None
        out.rejections.append((rkey, encode_rejection(rej)))
    return out


def _partition_groups(records: list[InRecord], parsed: ParsedBatch) -> list[tuple[bytes, I64]]:
    """Per input partition of the batch's parcels (in order of its first parcel): the
    decisions records' key, ``topic/partition`` of the input, and its parcels' indices in
    input order, at most DECISIONS_PER_RECORD a record. So the decisions of one input
    partition stay in order on one output partition."""
    parts: dict[tuple[str, int], int] = {}
    per_record = np.fromiter((parts.setdefault((r.topic, r.partition), len(parts))
                              for r in records), np.int64, len(records))  # fmt: skip
    names = list(parts)
    group = per_record[np.asarray(parsed.record_index, dtype=np.int64)]
    order = np.argsort(group, kind="stable")
    present, first = np.unique(group, return_index=True)
    cuts = np.searchsorted(group[order], np.append(present, len(parts)))
    out = []
    for k in np.argsort(first, kind="stable").tolist():
        topic, partition = names[int(present[k])]
        key = f"{topic}/{partition}".encode()
        at = order[cuts[k] : cuts[k + 1]]
        out += [(key, at[lo : lo + DECISIONS_PER_RECORD])
                for lo in range(0, len(at), DECISIONS_PER_RECORD)]  # fmt: skip
    return out


def _codes(legend: LegendLike, masks_l: list[int]) -> dict[int, list[str]]:
    return {mask: [r.code for r in legend.reasons(mask)] for mask in set(masks_l)}


def _decision_lines(
    records: list[InRecord], parsed: ParsedBatch, fields: ParcelFields, score: F64, lanes: I8,
    sel: I8, masks_l: list[int], legend: LegendLike, marks: dict[int, Mark], now_ms: int,
    learner_version: int, model: tuple[F64, F64] | None,
) -> list[Out]:  # fmt: skip
    """Decisions records as NDJSON, one :class:`Decision` a line."""
    n = len(masks_l)
    codes_of = _codes(legend, masks_l)
    prob_l: list[float | None] = [None] * n
    prop_l: list[float | None] = [None] * n
    if model is not None:
        prob_l, prop_l = model[0].tolist(), model[1].tolist()
        if np.isnan(model[0]).any():  # NaN: none
            prop_l = [q if p == p else None for p, q in zip(prob_l, prop_l, strict=True)]
            prob_l = [p if p == p else None for p in prob_l]
    version = legend.version
    decisions = [
        Decision(
            parcel_id=pid,
            shipper_id=sid,
            score=score_v,
            lane=LANES[lane],
            reason_codes=codes_of[mask],
            ruleset_version=version,
            event_ts_ms=ts,
            decision_ts_ms=now_ms,
            source=src,
            selection=SELECTIONS[how],
            learner_version=learner_version,
            probability=p,
            selection_probability=q,
        )
        for pid, sid, ts, score_v, lane, mask, src, how, p, q in zip(
            fields.parcel_ids,
            fields.shipper_ids,
            fields.ts_ms.tolist(),
            score.tolist(),
            lanes.tolist(),
            masks_l,
            parsed.sources,
            sel.tolist(),
            prob_l,
            prop_l,
            strict=True,
        )  # fmt: skip
    ]
    for i, mark in marks.items():
        d = decisions[i]
        if mark.kind == REPEAT_MARK:
            d.reason_codes, d.ruleset_version = mark.codes, mark.version
            d.learner_version, d.decision_ts_ms = mark.learner_version, mark.decision_ts_ms
            d.repeat_of = mark.ref
        else:
            d.amends = mark.ref
    return [(key, _ENC.encode_lines([decisions[i] for i in at.tolist()])[:-1])
            for key, at in _partition_groups(records, parsed)]  # fmt: skip


def _take(xs: Sequence[Any], at: I64) -> list[Any]:
    """``xs`` at the indices ``at``: a slice when they are a run (the usual case: a
    partition's records are consecutive in a fetch)."""
    lo = int(at[0])
    if int(at[-1]) - lo + 1 == len(at):
        return list(xs[lo : lo + len(at)])
    return list(map(xs.__getitem__, at.tolist()))


def _decision_batches(
    records: list[InRecord], parsed: ParsedBatch, fields: ParcelFields, score: F64, lanes: I8,
    sel: I8, masks_l: list[int], legend: LegendLike, marks: dict[int, Mark], now_ms: int,
    learner_version: int, model: tuple[F64, F64] | None,
) -> list[Out]:  # fmt: skip
    """Decisions records in columns, one :class:`DecisionBatch` a record: numbers as
    arrays, encoded in C."""
    n = len(masks_l)
    if not n:
        return []
    # each parcel's list of reason codes, numbered (a repeat's: its original's)
    sets: dict[tuple[str, ...], int] = {}
    set_of = {m: sets.setdefault(tuple(c), len(sets)) for m, c in _codes(legend, masks_l).items()}
    reasons = np.fromiter(map(set_of.__getitem__, masks_l), np.int64, n)
    for i, mark in marks.items():
        if mark.kind == REPEAT_MARK:
            reasons[i] = sets.setdefault(tuple(mark.codes), len(sets))
    set_list = list(sets)
    groups = _partition_groups(records, parsed)
    # the repeats and amendments (few) of each record, by their place in it
    repeats: list[list[dict[str, Any]]] = [[] for _ in groups]
    amended: list[list[dict[str, Any]]] = [[] for _ in groups]
    if marks:
        chunk_of, place = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        for c, (_key, at) in enumerate(groups):
            chunk_of[at], place[at] = c, np.arange(len(at))
        for i, mark in sorted(marks.items()):
            c, j = int(chunk_of[i]), int(place[i])
            if mark.kind == REPEAT_MARK:
                repeats[c].append({"index": j, "repeat_of": mark.ref,
                                   "ruleset_version": mark.version,
                                   "learner_version": mark.learner_version,
                                   "decision_ts_ms": mark.decision_ts_ms})  # fmt: skip
            else:
                amended[c].append({"index": j, "amends": mark.ref})
    whole = model is not None and not np.isnan(model[0]).any()
    out: list[Out] = []
    for c, (key, at) in enumerate(groups):
        used, local = np.unique(reasons[at], return_inverse=True)
        prob: Any = None
        prop: Any = None
        if model is not None:
            prob, prop = model[0][at], model[1][at]
            if not whole:  # NaN: none
                prop = [q if p == p else None for p, q in zip(prob.tolist(), prop.tolist(),
                                                               strict=True)]  # fmt: skip
                prob = [p if p == p else None for p in prob.tolist()]
        doc = {
            "kind": "decision-batch",
            "ruleset_version": legend.version,
            "learner_version": learner_version,
            "decision_ts_ms": now_ms,
            "reason_sets": [set_list[u] for u in used.tolist()],
            "parcel_id": _take(fields.parcel_ids, at),
            "shipper_id": _take(fields.shipper_ids, at),
            "score": score[at],
            "lane": lanes[at],
            "reasons": local.reshape(-1),
            "event_ts_ms": fields.ts_ms[at],
            "source": _take(parsed.sources, at),
            "selection": sel[at],
            "probability": prob,
            "selection_probability": prop,
            "repeats": repeats[c],
            "amended": amended[c],
            "schema_version": 1,
        }
        out.append((key, orjson.dumps(doc, option=_DECISIONS_COLUMNS)))
    return out


_BATCH_DEC = msgspec.json.Decoder(DecisionBatch)
_LINE_DEC = msgspec.json.Decoder(Decision)
_BATCH_PREFIX = b'{"kind":"decision-batch"'


def decisions_of(batch: DecisionBatch) -> list[Decision]:
    """The per-parcel decisions a decision batch holds, as its per-parcel form says them.
    Raises ``ValueError`` when its columns disagree in length or point outside them."""
    n = len(batch.parcel_id)
    cols: list[Sequence[object]] = [batch.shipper_id, batch.score, batch.lane, batch.reasons,
                                    batch.event_ts_ms, batch.source, batch.selection]  # fmt: skip
    cols += [c for c in (batch.probability, batch.selection_probability) if c is not None]
    if any(len(c) != n for c in cols):
        raise ValueError(f"a decision batch's columns differ in length (parcel_id has {n})")
    if (batch.probability is None) != (batch.selection_probability is None):
        raise ValueError("a decision batch has one of probability, selection_probability")
    sets = batch.reason_sets
    if any(r >= len(sets) for r in batch.reasons):
        raise ValueError(f"a decision batch's reasons point past its {len(sets)} reason_sets")
    none: list[float | None] = [None] * n
    out = [
        Decision(parcel_id=pid, shipper_id=sid, score=score, lane=LANES[lane],
                 reason_codes=list(sets[r]), ruleset_version=batch.ruleset_version,
                 event_ts_ms=ts, decision_ts_ms=batch.decision_ts_ms, source=src,
                 selection=SELECTIONS[how], learner_version=batch.learner_version,
                 probability=p, selection_probability=q)
        for pid, sid, score, lane, r, ts, src, how, p, q in zip(
            batch.parcel_id, batch.shipper_id, batch.score, batch.lane, batch.reasons,
            batch.event_ts_ms, batch.source, batch.selection, batch.probability or none,
            batch.selection_probability or none, strict=True)
    ]  # fmt: skip
    for rep in batch.repeats:
        if rep.index >= n:
            raise ValueError(f"a decision batch's repeat {rep.index} is past its {n} parcels")
        d = out[rep.index]
        d.repeat_of, d.ruleset_version = rep.repeat_of, rep.ruleset_version
        d.learner_version, d.decision_ts_ms = rep.learner_version, rep.decision_ts_ms
    for am in batch.amended:
        if am.index >= n:
            raise ValueError(f"a decision batch's amendment {am.index} is past its {n} parcels")
        out[am.index].amends = am.amends
    return out


class _Ids(msgspec.Struct):
    parcel_id: list[str]


class _Kind(msgspec.Struct):
    kind: str | None = None


_IDS_DEC = msgspec.json.Decoder(_Ids)
_KIND_DEC = msgspec.json.Decoder(_Kind)


def is_decision_batch(value: bytes) -> bool:
    """Whether a record of the decisions topic is a decision batch (one JSON object whose
    ``kind`` is ``decision-batch``, however it is laid out) rather than NDJSON lines."""
    if value.startswith(_BATCH_PREFIX):  # as the worker writes it
        return True
    try:  # NDJSON of several lines is no single JSON value; a line has no "kind"
        return _KIND_DEC.decode(value).kind == "decision-batch"
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False


def decision_count(value: bytes) -> int:
    """How many decisions one record of the decisions topic holds, in either form."""
    if is_decision_batch(value):
        return len(_IDS_DEC.decode(value).parcel_id)
    return value.count(b"\n") + 1


def read_decisions(value: bytes) -> list[Decision]:
    """The decisions of one record of the decisions topic, in either form: NDJSON lines
    or a decision batch. Raises ``msgspec.DecodeError`` or ``msgspec.ValidationError``
    (or ``ValueError``, a batch whose columns disagree) on a record that is neither."""
    if is_decision_batch(value):
        return decisions_of(_BATCH_DEC.decode(value))
    return [_LINE_DEC.decode(line) for line in value.split(b"\n")]


def encode_rejection(rejection: Rejection) -> bytes:
    return _ENC.encode(rejection)
