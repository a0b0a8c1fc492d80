"""scores + policy -> lanes, and the decision, hold and rejection records.

Lane codes: 0 release, 1 review, 2 hold. Output values are JSON; a decisions record is
NDJSON with one line per parcel of the input record it answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import numpy as np
import numpy.typing as npt

from parcel_stream.model import Decision, Hold, Lane, Reason, Rejection
from parcel_stream.parse import InRecord, ParsedBatch
from parcel_stream.rules import RuleSet

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
LANES: tuple[Lane, Lane, Lane] = ("release", "review", "hold")

_ENC = msgspec.json.Encoder()


def decide(scores: F64, review_score: float, hold_score: float) -> I8:
    """Lane per parcel from its score and the two thresholds."""
    lanes = np.zeros(scores.shape[0], dtype=np.int8)
    lanes[scores >= review_score] = 1
    lanes[scores >= hold_score] = 2
    return lanes


# One key/value pair to produce.
Out = tuple[bytes | None, bytes]


@dataclass(slots=True)
class Outputs:
    holds: list[Out] = field(default_factory=list)
    decisions: list[Out] = field(default_factory=list)
    rejections: list[Out] = field(default_factory=list)


def _reason_list(ruleset: RuleSet, mask: int) -> list[Reason]:
    return [
        Reason(code=r.code, text=r.text, rule_weight=float(ruleset.weights[i]))
        for i, r in enumerate(ruleset.rules)
        if mask >> i & 1
    ]


def build_outputs(
    records: list[InRecord],
    parsed: ParsedBatch,
    scores: F64,
    masks: I64,
    lanes: I8,
    ruleset: RuleSet,
    now_ms: int,
) -> Outputs:
    """Encode every decision (grouped per input record), the holds and the rejections."""
    out = Outputs()
    codes_cache: dict[int, list[str]] = {}
    lines: list[bytes] = []
    current = -1
    version = ruleset.version
    rounded = np.round(scores, 2)
    for i, m in enumerate(parsed.manifests):
        rec = parsed.record_index[i]
        if rec != current:
            if lines:
                out.decisions.append((records[current].key, b"\n".join(lines)))
                lines = []
            current = rec
        mask = int(masks[i])
        codes = codes_cache.get(mask)
        if codes is None:
            codes = codes_cache[mask] = ruleset.reason_codes(mask)
        lane = LANES[lanes[i]]
        score = float(rounded[i])
        lines.append(
            _ENC.encode(
                Decision(
                    parcel_id=m.parcel_id,
                    shipper_id=m.shipper.id,
                    score=score,
                    lane=lane,
                    reason_codes=codes,
                    ruleset_version=version,
                    event_ts_ms=m.manifest_ts_ms,
                    decision_ts_ms=now_ms,
                    source=parsed.sources[i],
                )
            )
        )
        if lane == "hold":
            hold = Hold(
                parcel_id=m.parcel_id,
                shipper_id=m.shipper.id,
                hub=m.hub,
                score=score,
                lane=lane,
                reasons=_reason_list(ruleset, mask),
                ruleset_version=version,
                event_ts_ms=m.manifest_ts_ms,
                decision_ts_ms=now_ms,
                source=parsed.sources[i],
            )
            out.holds.append((m.parcel_id.encode(), _ENC.encode(hold)))
    if lines:
        out.decisions.append((records[current].key, b"\n".join(lines)))
    for rej in parsed.rejections:
        key = rej.parcel_id.encode() if rej.parcel_id else None
        out.rejections.append((key, encode_rejection(rej)))
    return out


def encode_rejection(rejection: Rejection) -> bytes:
    return _ENC.encode(rejection)
