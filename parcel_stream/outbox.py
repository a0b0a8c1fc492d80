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
from typing import TYPE_CHECKING

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
    by_record: list[list[int]] = [[] for _ in records]
    for i, r in enumerate(parsed.record_index):
        by_record[r].append(i)
    out = []
    scores_l, masks_l = scores.tolist(), masks.tolist()
    prob_l = scored.probability.tolist() if scored is not None else []
    prop_l = scored.propensity.tolist() if scored is not None else []
    lanes_b, sel_b = lanes.astype(np.int8), selection.astype(np.int8)
    for rec, idx in zip(records, by_record, strict=True):
        part = (rec.topic, rec.partition)
        if rec.offset <= watermarks.get(part, -1):
            continue
        rec_masks = [masks_l[i] for i in idx]
        digest = Digest(
            offset=rec.offset,
            ts=now_ms,
            version=legend.version,
            learner_version=learner_version,
            scores=[scores_l[i] for i in idx],
            lanes=lanes_b[idx].tobytes(),
            selection=sel_b[idx].tobytes(),
            masks=rec_masks,
            legend={m: legend.reasons(m) for m in set(rec_masks)},
            marks={k: marks[i] for k, i in enumerate(idx) if i in marks} if marks else {},
        )
        if scored is not None:
            digest.probability = [prob_l[i] for i in idx]
            digest.propensity = [prop_l[i] for i in idx]
            digest.learned = {k: scored.learned[i] for k, i in enumerate(idx)
                              if i in scored.learned}  # fmt: skip
        out.append((part, rec.offset, _ENC.encode(digest)))
    return out


def decode_digest(raw: bytes) -> Digest:
    return _DEC.decode(raw)


def rebuild(
    records: Sequence[InRecord], digests: dict[tuple[Partition, int], bytes], limits: Limits
) -> tuple[Outputs, int, int]:
    """Outputs of already-applied records from their digests: (outputs, records resent,
    records skipped because their digest is gone: their outputs were acknowledged)."""
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
            np.array(d.propensity) if d.propensity else None, d.learned,
        )  # fmt: skip
        out.holds += part.holds
        out.decisions += part.decisions
        out.rejections += part.rejections
        resent += 1
    return out, resent, skipped
