"""Examination results: decode them, trace each to its parcel's shipper and address.

Results arrive on the exam-results topic (``schemas/exam-result.v1.json``). A result is
applied once per ``exam_id``; a result for a parcel the system never sent to review or
hold is counted as ``unknown_parcel`` and not applied; a malformed one is a rejection.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import msgspec

from parcel_stream.learner import Example, LearnerConfig, LearnerState, train
from parcel_stream.model import ExamResult, Rejection
from parcel_stream.parse import InRecord, _reject, classify_validation_error
from parcel_stream.reputation import ExamDelta, ParcelRef
from parcel_stream.risk import RiskConfig, RiskState, as_ref, train_state, weight

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
            except RecursionError:
                out.rejections.append(_reject("too_deep", "$", "JSON nested too deeply", src,
                                              line, now_ms))  # fmt: skip
    return out


def trace(
    results: list[ExamResult], known: dict[str, ParcelRef]
) -> tuple[list[ExamDelta], list[ExamResult]]:
    """(deltas for results whose parcel is known, results for unknown parcels)."""
    deltas, unknown = [], []
    for res in results:
        ref = known.get(res.parcel_id)
        if ref is None:
            unknown.append(res)
            continue
        deltas.append(
            ExamDelta(res.exam_id, res.parcel_id, ref.shipper_id, ref.address,
                      res.outcome in ("violation", "seized"), res.examined_ts_ms, ref.seller,
                      ref.rules, ref.static_score, as_ref(ref.risk))
        )  # fmt: skip
    return deltas, unknown


def examples_of(deltas: list[ExamDelta], already: list[bool]) -> list[Example]:
    """The learner's examples: results not applied before (``already``), each exam id
    once, in order."""
    out, taken = [], set()
    for d, old in zip(deltas, already, strict=True):
        if not old and d.exam_id not in taken:
            taken.add(d.exam_id)
            out.append(Example(d.rules, d.static_score, d.violation))
    return out


class ExamStore(Protocol):
    def read_learner(self) -> LearnerState: ...

    def exams_seen(self, exam_ids: list[str]) -> list[bool]: ...

    def apply_exams(
        self, deltas: list[ExamDelta], learner: tuple[int, LearnerState] | None = None
    ) -> list[bool] | None: ...


def unseen(deltas: list[ExamDelta], seen: list[bool]) -> list[ExamDelta]:
    """Results not applied before, each exam id once: what one learner step may claim (a
    batch mixing a redelivered result with new ones must not be refused for ever)."""
    out, taken = [], set()
    for d, old in zip(deltas, seen, strict=True):
        if not old and d.exam_id not in taken:
            taken.add(d.exam_id)
            out.append(d)
    return out


def applied_flags(
    deltas: list[ExamDelta], todo: list[ExamDelta], applied: list[bool]
) -> list[bool]:
    """Per result of the batch: applied now (a repeat of an exam id: False)."""
    done = {d.exam_id for d, ok in zip(todo, applied, strict=True) if ok}
    out = []
    for d in deltas:
        out.append(d.exam_id in done)
        done.discard(d.exam_id)
    return out


def trains(cfg: LearnerConfig, risk: RiskConfig | None) -> bool:
    """Whether exam results train a learner state (the rule weights, the risk model)."""
    return cfg.trains or (risk is not None and risk.scores)


def exam_step(
    deltas: list[ExamDelta],
    seen: list[bool],
    state: LearnerState,
    cfg: LearnerConfig,
    pivot_score: float,
    now_ms: int,
    risk: RiskConfig | None = None,
) -> tuple[list[ExamDelta], tuple[int, LearnerState] | None]:
    """The one decision of applying a batch of exam results with a learner on: which
    results to apply (not applied before, each id once) and the learner state they train,
    to store only if the learner is still at ``state.version``. The worker (async) and the
    backtest (sync) both drive it: read, step, apply, retry when the version moved.

    With the risk model on (or in shadow), each result whose parcel kept its learned
    features trains the model on them, weighted by its inverse selection probability
    (clipped), and carries that weight to its keys' counts."""
    todo = unseen(deltas, seen)
    if not todo:
        return [], None
    new = state
    if cfg.trains:
        new = train(state, examples_of(todo, [False] * len(todo)), cfg, pivot_score, now_ms)
    if risk is not None and risk.scores:
        todo = [replace(d, risk_weight=weight(d.risk.propensity, risk.ipw_clip))
                if d.risk is not None else d for d in todo]  # fmt: skip
        examples = [(d.risk, d.violation, d.examined_ts_ms) for d in todo if d.risk is not None]
        if examples:
            trained = train_state(new.risk or RiskState(), examples, risk, now_ms)
            new = msgspec.structs.replace(new, version=state.version + 1, updated_ms=now_ms,
                                          risk=trained)  # fmt: skip
    if new is state:
        return todo, None
    return todo, (state.version, new)


def apply_exam_batch(
    store: ExamStore,
    deltas: list[ExamDelta],
    cfg: LearnerConfig,
    pivot_score: float,
    now_ms: int,
    risk: RiskConfig | None = None,
) -> list[bool]:
    """Apply results once each and, unless the learners are off, train them on the new
    ones in the same atomic step (retried when another writer got there first)."""
    if not trains(cfg, risk) or not deltas:
        return store.apply_exams(deltas) or []
    while True:
        seen = store.exams_seen([d.exam_id for d in deltas])
        todo, learner = exam_step(deltas, seen, store.read_learner(), cfg, pivot_score, now_ms,
                                  risk)  # fmt: skip
        if not todo:
            return [False] * len(deltas)
        if learner is None:  # nothing to train on: the results alone
            return applied_flags(deltas, todo, store.apply_exams(todo) or [])
        applied = store.apply_exams(todo, learner)
        if applied is not None:
            return applied_flags(deltas, todo, applied)
