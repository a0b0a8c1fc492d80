"""Examination results: decode them, trace each to its parcel's shipper and address.

Results arrive on the exam-results topic (``schemas/exam-result.v1.json``). A result is
applied once per ``exam_id``; a result for a parcel the system never sent to review or
hold is counted as ``unknown_parcel`` and not applied; a malformed one is a rejection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from parcel_stream.model import ExamResult, Rejection
from parcel_stream.parse import InRecord, _reject, classify_validation_error
from parcel_stream.reputation import ExamDelta

_DEC = msgspec.json.Decoder(ExamResult)


@dataclass
class ExamBatch:
    results: list[ExamResult] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


def parse_exam_records(records: list[InRecord], now_ms: int) -> ExamBatch:
    """One result per record, or NDJSON lines; malformed ones become rejections."""
    out = ExamBatch()
    for r in records:
        base = f"{r.topic}/{r.partition}/{r.offset}"
        lines = r.value.strip().split(b"\n")
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            src = base if len(lines) == 1 else f"{base}/{n}"
            try:
                out.results.append(_DEC.decode(line))
            except msgspec.ValidationError as exc:
                reason, path, detail = classify_validation_error(str(exc))
                out.rejections.append(_reject(reason, path, detail, src, line, now_ms))
            except (msgspec.DecodeError, UnicodeDecodeError) as exc:
                reason = "invalid_utf8" if isinstance(exc, UnicodeDecodeError) else "invalid_json"
                out.rejections.append(_reject(reason, "$", str(exc), src, line, now_ms))
    return out


def trace(
    results: list[ExamResult], known: dict[str, tuple[str, str]]
) -> tuple[list[ExamDelta], list[ExamResult]]:
    """(deltas for results whose parcel is known, results for unknown parcels)."""
    deltas, unknown = [], []
    for res in results:
        hit = known.get(res.parcel_id)
        if hit is None:
            unknown.append(res)
            continue
        shipper_id, address = hit
        violation = res.outcome in ("violation", "seized")
        deltas.append(ExamDelta(res.exam_id, res.parcel_id, shipper_id, address, violation))
    return deltas, unknown
