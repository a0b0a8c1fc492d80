"""Decision digests: what makes a redelivered record's outputs identical to the first ones.

The worker applies a batch's reputation update *before* it produces the batch's outputs,
and the same atomic store call keeps, per input record, a compact digest of its
decisions: scores, lanes, selections, fired-rule masks and the reasons each mask stood for,
the rule-set and learner versions and the decision time. So after a crash, Kafka
redelivers records in one of two states:

- above the partition's watermark: nothing of theirs was applied, so nothing was produced
  either; they are scored as new;
- at or below it: applied, and maybe produced. Their outputs are rebuilt from the digest
  (byte for byte the decisions, holds and rejections sent the first time, or that would
  have been) and produced again; their reputation is not touched a second time.

A digest is deleted once its outputs are acknowledged (with the next update of that
partition), so the store holds about one batch per partition. A redelivered record whose
digest is gone was fully produced before: it is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt

from parcel_stream.decide import LegendLike, Mark, Outputs, StoredLegend, build_outputs
from parcel_stream.model import LearnedReason, Reason
from parcel_stream.parse import InRecord, Limits, ParsedBatch, parse_batch

if TYPE_CHECKING:
    from parcel_stream.pipeline import Scored

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
Partition = tuple[str, int]
_V = TypeVar("_V")


class Digest(msgspec.Struct, array_like=True):
    """The decisions of one input record (msgpack in the store)."""

    offset: int
    ts: int  # decision time; also the rejections' time
    version: str  # rule set
    learner_version: int
    scores: list[float]
    lanes: bytes
    selection: bytes
    masks: list[int]
    legend: dict[int, list[Reason]]
    marks: dict[int, Mark] = {}  # by parcel position in the record: repeats, amendments
    # the learned model's, by parcel position (empty when it is off)
    probability: list[float] = []
    propensity: list[float] = []
    learned: dict[int, list[LearnedReason]] = {}


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(Digest)


def record_digests(
    records: Sequence[InRecord],
    parsed: ParsedBatch,
    scores: F64,
    masks: I64,
    lanes: I8,
    selection: I8,
    legend: LegendLike,
    learner_version: int,
    now_ms: int,
    watermarks: dict[Partition, int],
    marks: dict[int, Mark] | None = None,
    scored: Scored | None = None,
) -> list[tuple[Partition, int, bytes]]:
    """(partition, offset, digest) of every record above its partition's watermark."""
    # a record's parcels are consecutive (parsed in order): each record is a slice
    bounds = np.searchsorted(np.asarray(parsed.record_index, dtype=np.int64),
                             np.arange(len(records) + 1)).tolist()  # fmt: skip
    out = []
    scores_l, masks_l = scores.tolist(), masks.tolist()
    prob_l = scored.probability.tolist() if scored is not None else []
    prop_l = scored.propensity.tolist() if scored is not None else []
    lanes_b, sel_b = lanes.astype(np.int8), selection.astype(np.int8)
    for k, rec in enumerate(records):
        part = (rec.topic, rec.partition)
        if rec.offset <= watermarks.get(part, -1):
            continue
        lo, hi = bounds[k], bounds[k + 1]
        rec_masks = masks_l[lo:hi]
        digest = Digest(
            offset=rec.offset,
            ts=now_ms,
            version=legend.version,
            learner_version=learner_version,
            scores=scores_l[lo:hi],
            lanes=lanes_b[lo:hi].tobytes(),
            selection=sel_b[lo:hi].tobytes(),
            masks=rec_masks,
            legend={m: legend.reasons(m) for m in set(rec_masks)},
            marks=_within(marks, lo, hi) if marks else {},
        )
        if scored is not None:
            digest.probability = prob_l[lo:hi]
            digest.propensity = prop_l[lo:hi]
            digest.learned = _within(scored.learned, lo, hi)
        out.append((part, rec.offset, _ENC.encode(digest)))
    return out


def _within(by_parcel: dict[int, _V], lo: int, hi: int) -> dict[int, _V]:
    """The entries of the parcels ``lo:hi`` by their position among them, in order."""
    if len(by_parcel) < hi - lo:
        return {i - lo: by_parcel[i] for i in sorted(by_parcel) if lo <= i < hi}
    return {i - lo: by_parcel[i] for i in range(lo, hi) if i in by_parcel}


def decode_digest(raw: bytes) -> Digest:
    return _DEC.decode(raw)


def rebuild(
    records: Sequence[InRecord],
    digests: dict[tuple[Partition, int], bytes],
    limits: Limits,
    decisions: str = "lines",
) -> tuple[Outputs, int, int]:
    """Outputs of already-applied records from their digests: (outputs, records resent,
    records skipped because their digest is gone: their outputs were acknowledged).
    ``decisions``: the decisions records' form."""
    out = Outputs()
    resent = skipped = 0
    for rec in records:
        raw = digests.get(((rec.topic, rec.partition), rec.offset))
        if raw is None:
            skipped += 1
            continue
        d = decode_digest(raw)
        parsed = parse_batch([rec], limits, d.ts)
        if len(parsed.manifests) != len(d.scores):  # the input limits changed meanwhile
            skipped += 1
            continue
        part = build_outputs(
            [rec], parsed, np.array(d.scores, dtype=np.float64),
            np.array(d.masks, dtype=np.int64), np.frombuffer(d.lanes, dtype=np.int8),
            StoredLegend(d.version, d.legend), d.ts,
            np.frombuffer(d.selection, dtype=np.int8), d.learner_version, d.marks,
            np.array(d.probability) if d.probability else None,
            np.array(d.propensity) if d.propensity else None, d.learned, decisions,
        )  # fmt: skip
        out.holds += part.holds
        out.decisions += part.decisions
        out.rejections += part.rejections
        resent += 1
    return out, resent, skipped
