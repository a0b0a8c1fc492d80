"""Backtest: a feed through the worker's own parse/features/kernels/decide code, no Kafka.

Reputation comes from an in-memory store (or any store with the same contract), updated
batch by batch exactly as the worker does. The result keeps each parcel's score, fired
rules and lane; :func:`evaluate` turns that and ground-truth labels into the figures
analysts ask for: lanes, precision and recall of holds and at examination capacity k%,
per-rule hits and precision, per-scenario recall, and throughput.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext

import numpy as np
import numpy.typing as npt

from parcel_stream.decide import LANES, Outputs
from parcel_stream.exams import apply_exam_batch, trace
from parcel_stream.feed import RawRecord
from parcel_stream.feedcache import CacheEntry, CacheWriter, decode_chunk, encode_chunk
from parcel_stream.learner import LearnerConfig, LearnerState
from parcel_stream.model import ExamResult
from parcel_stream.parse import InRecord, Limits
from parcel_stream.pipeline import DEFAULT_STATE, Prepared, StateConfig, prepare
from parcel_stream.reputation import (
    InMemoryStore,
)
from parcel_stream.risk import RiskConfig, RiskState
from parcel_stream.rules import RuleSet
from parcel_stream.state import StateStore
from parcel_stream.step import run_sync

F64 = npt.NDArray[np.float64]
# the batch step's chunks: larger than the worker's default (``DEFAULT_CHUNK_BYTES``), which
# keeps a worker under its memory target; a backtest is not held to it, and fewer chunks cost
# less (decisions do not depend on the chunks)
CHUNK_BYTES = 4 << 20
CAPACITIES_PCT = (1.0, 2.0, 5.0, 10.0)


@dataclass
class BacktestRun:
    ruleset_version: str
    parcel_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    masks: list[int] = field(default_factory=list)
    lanes: list[int] = field(default_factory=list)
    rejections: Counter[str] = field(default_factory=Counter)
    records: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    learner: LearnerState | None = None
    outputs: list[Outputs] = field(default_factory=list)  # with encode=True only

    @property
    def parcels(self) -> int:
        return len(self.parcel_ids)


def _chunks(records: Iterable[RawRecord], max_bytes: int) -> Iterable[list[InRecord]]:
    chunk: list[InRecord] = []
    size = 0
    for n, raw in enumerate(records):
        # Offsets must grow per partition for the reputation watermarks: number the
        # records in feed order (a plain manifests file has no offsets of its own).
        rec = raw.to_in_record()
        rec.partition, rec.offset = 0, n
        chunk.append(rec)
        size += len(rec.value)
        if size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def run_backtest(
    records: Iterable[RawRecord],
    ruleset: RuleSet,
    store: StateStore | None = None,
    limits: Limits | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    exam_outcomes: dict[str, str | None] | None = None,
    label: str | None = None,
    learner: LearnerConfig | None = None,
    state_config: StateConfig = DEFAULT_STATE,
    encode: bool = False,
    risk: RiskConfig | None = None,
    cache: CacheEntry | None = None,
    workers: int = 1,
) -> BacktestRun:
    """Score a feed in order; decision time is each record's own timestamp.

    ``workers`` > 1: the chunks are parsed ahead in that many processes (forked), while
    this one scores them in order; the decisions are those of one process (the parse is a
    pure function of the records, handed over as the cache stores it). ``cpu_s`` counts
    the parse processes' time too.

    ``cache``: the feed's entry in the columnar cache (``feedcache.py``). If it exists,
    the parsed chunks are read from it and ``records`` is not read; otherwise the feed is
    parsed and the entry written as it goes (made visible only when the run completes).

    With ``exam_outcomes`` (parcel id -> violation label or None), every held parcel is
    "examined" after its chunk: the outcome (violation when labelled, else clean) is fed
    back into reputation before the next chunk, as the exam-results agent does live, and
    trains the ``learner`` (when given and not off; with mode "on" its adjustments score
    the following chunks). The run's final learner state is ``run.learner``. With ``risk``
    (the learned model, not off) every chunk is scored with it as the worker scores, and
    the examined parcels' outcomes train it."""
    store = store if store is not None else InMemoryStore()
    limits = limits or Limits()
    run = BacktestRun(label or ruleset.version)
    cfg = learner if learner is not None else LearnerConfig(mode="off")
    t_wall, t_cpu, t_children = time.perf_counter(), time.process_time(), _children_cpu()
    split = ruleset.split_min_usd
    batches: Iterable[_Batch]
    with ExitStack() as stack:
        writer = (stack.enter_context(cache.writer())
                  if cache is not None and not cache.exists else None)  # fmt: skip
        if cache is not None and writer is None:  # records' bytes: only where a path needs them
            full = encode or not isinstance(store, InMemoryStore)
            batches = ((p.records, p, None) for p in cache.read(limits, split, with_values=full))
        elif workers > 1:
            batches = stack.enter_context(_parsed_ahead(_chunks(records, chunk_bytes), limits,
                                                        split, workers))  # fmt: skip
        else:
            batches = ((chunk, None, None) for chunk in _chunks(records, chunk_bytes))
        run = _run(batches, writer, store, ruleset, limits, run, encode, exam_outcomes, cfg, risk,
                   state_config)  # fmt: skip
        if writer is not None:
            writer.commit()
    run.wall_s = time.perf_counter() - t_wall
    run.cpu_s = time.process_time() - t_cpu + _children_cpu() - t_children
    return run


# a chunk's records, its parse when made elsewhere (read from the cache or a parse
# process), and that parse as the cache stores it (from a parse process)
_Batch = tuple[list[InRecord], Prepared | None, bytes | None]


def mp_context() -> BaseContext:
    """Fork: the processes start with the compiled kernels and the parsed rule sets, and
    run only the parse and the scoring, which take no lock another thread could hold."""
    import multiprocessing

    return multiprocessing.get_context("fork")


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def _parse_encoded(chunk: list[InRecord], limits: Limits) -> bytes:
    """In a parse process: the chunk parsed, as the cache stores it (pairs aside)."""
    now_ms = max(r.timestamp_ms for r in chunk)
    return encode_chunk(prepare(chunk, limits, now_ms, None))


@contextmanager
def _parsed_ahead(chunks: Iterable[list[InRecord]], limits: Limits, split: float | None,
                  workers: int) -> Iterator[Iterator[_Batch]]:  # fmt: skip
    """The chunks, in order, each parsed in one of ``workers`` processes; at most two per
    process in flight (memory stays bounded whatever the feed's length)."""
    # an executor, not a Pool: a parse process that dies (killed, out of memory) fails
    # the backtest (BrokenProcessPool) instead of leaving it waiting for its chunk
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp_context())

    def ordered() -> Iterator[_Batch]:
        pending: deque[tuple[list[InRecord], Future[bytes]]] = deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(_parse_encoded, chunk, limits)))
            if len(pending) >= 2 * workers:
                yield _received(*pending.popleft(), limits, split)
        while pending:
            yield _received(*pending.popleft(), limits, split)

    try:
        yield ordered()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _received(chunk: list[InRecord], result: Future[bytes], limits: Limits,
              split: float | None) -> _Batch:  # fmt: skip
    encoded = result.result()
    return chunk, decode_chunk(encoded, chunk, limits, split), encoded


def _run(
    batches: Iterable[_Batch],
    writer: CacheWriter | None,
    store: StateStore,
    ruleset: RuleSet,
    limits: Limits,
    run: BacktestRun,
    encode: bool,
    exam_outcomes: dict[str, str | None] | None,
    cfg: LearnerConfig,
    risk: RiskConfig | None,
    state_config: StateConfig,
) -> BacktestRun:
    codes = [r.code for r in ruleset.rules]
    adjust: F64 | None = None
    learner_version = 0
    scores_model = risk is not None and risk.scores
    for chunk, parsed, encoded in batches:
        now_ms = max(r.timestamp_ms for r in chunk)
        prep = parsed
        if prep is None:
            prep = prepare(chunk, limits, now_ms, ruleset.split_min_usd)
        if writer is not None:
            writer.add(prep, encoded)
        model: tuple[RiskConfig, RiskState] | None = None
        if risk is not None and scores_model:
            state = store.read_learner()
            model, learner_version = (risk, state.risk or RiskState()), state.version
        result = run_sync(chunk, store, ruleset, limits, now_ms, encode, adjust,
                          learner_version, state_config, model, prep)  # fmt: skip
        parcel_ids = result.parcel_ids
        if exam_outcomes is not None:
            held = [
                pid
                for pid, lane in zip(parcel_ids, result.lanes.tolist(), strict=True)
                if lane == 2
            ]
            known = store.lookup_parcels(held)
            results = [
                ExamResult(f"bt:{pid}", pid,
                           "violation" if exam_outcomes.get(pid) is not None else "clean", now_ms)
                for pid in held
            ]  # fmt: skip
            deltas, _unknown = trace(results, known)
            apply_exam_batch(store, deltas, cfg, ruleset.hold_score, now_ms, risk)
            if cfg.adjusts:
                state = store.read_learner()
                adjust = state.adjustments(cfg, codes)
                learner_version = state.version
        run.records += len(chunk)
        run.parcel_ids.extend(parcel_ids)
        if encode:
            run.outputs.append(result.outputs)
        run.scores.extend(result.scores.tolist())
        run.masks.extend(result.masks.tolist())
        run.lanes.extend(result.lanes.tolist())
        run.rejections.update(result.rejection_counts)
    if cfg.trains or scores_model:
        run.learner = store.read_learner()
    return run


@dataclass
class Report:
    ruleset_version: str
    parcels: int
    rejections: dict[str, int]
    lanes: dict[str, int]
    hold_rate: float
    labelled_bad: int
    hold_precision: float
    hold_recall: float
    at_capacity: dict[float, tuple[int, float, float]]  # k% -> (examined, precision, recall)
    rules: list[tuple[str, int, float, float]]  # code, hits, precision, share of bad hit
    scenarios: list[tuple[str, int, float, float]]  # label, parcels, held %, recall@capacity
    capacity_pct: float
    parcels_per_s: float
    cpu_parcels_per_s: float
    pr_curve: list[tuple[float, float, float]]  # k%, precision, recall


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def rank(scores: F64, seed: int = 0) -> npt.NDArray[np.int64]:
    """Parcels by descending score; ties broken at random (seeded), as an officer picking
    among equal scores would."""
    tiebreak = np.random.default_rng(seed).random(size=int(scores.shape[0]))
    return np.lexsort(np.stack([tiebreak, -scores])).astype(np.int64)


def evaluate(
    run: BacktestRun,
    labels: dict[str, str | None],
    ruleset: RuleSet,
    capacity_pct: float = 2.0,
) -> Report:
    n = run.parcels
    scores = np.asarray(run.scores, dtype=np.float64)
    lanes = np.asarray(run.lanes, dtype=np.int64)
    masks = np.asarray(run.masks, dtype=np.int64)
    label_of = [labels.get(pid) for pid in run.parcel_ids]
    bad = np.fromiter((lab is not None for lab in label_of), dtype=np.bool_, count=n)
    n_bad = int(bad.sum())
    held = lanes == 2
    order = rank(scores)

    def at(k_pct: float) -> tuple[int, float, float, npt.NDArray[np.bool_]]:
        k = int(round(n * k_pct / 100.0))
        chosen = np.zeros(n, dtype=np.bool_)
        chosen[order[:k]] = True
        hits = int((chosen & bad).sum())
        return k, _ratio(hits, k), _ratio(hits, n_bad), chosen

    at_capacity = {}
    for k in sorted({*CAPACITIES_PCT, capacity_pct}):
        examined, prec, rec, _ = at(k)
        at_capacity[k] = (examined, prec, rec)
    _, _, _, examined_mask = at(capacity_pct)
    rules = []
    for i, rule in enumerate(ruleset.rules):
        fired = (masks >> i & 1).astype(np.bool_)
        hits = int(fired.sum())
        rules.append((rule.code, hits, _ratio(int((fired & bad).sum()), hits),
                      _ratio(int((fired & bad).sum()), n_bad)))  # fmt: skip
    scenarios = []
    for label in sorted({lab for lab in label_of if lab is not None}):
        sel = np.fromiter((lab == label for lab in label_of), dtype=np.bool_, count=n)
        count = int(sel.sum())
        scenarios.append((label, count, _ratio(int((sel & held).sum()), count),
                          _ratio(int((sel & examined_mask).sum()), count)))  # fmt: skip
    curve = []
    for k in (0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 50):
        _, p, r, _ = at(k)
        curve.append((float(k), p, r))
    counts = np.bincount(lanes, minlength=3)
    return Report(
        ruleset_version=run.ruleset_version,
        parcels=n,
        rejections=dict(run.rejections),
        lanes={LANES[i]: int(counts[i]) for i in range(3)},
        hold_rate=_ratio(int(held.sum()), n),
        labelled_bad=n_bad,
        hold_precision=_ratio(int((held & bad).sum()), int(held.sum())),
        hold_recall=_ratio(int((held & bad).sum()), n_bad),
        at_capacity=at_capacity,
        rules=rules,
        scenarios=scenarios,
        capacity_pct=capacity_pct,
        parcels_per_s=_ratio(n, run.wall_s),
        cpu_parcels_per_s=_ratio(n, run.cpu_s),
        pr_curve=curve,
    )


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render_markdown(reports: list[Report]) -> str:
    """Side-by-side tables (one column per rule set) in Markdown; also readable as text."""
    cols = [r.ruleset_version for r in reports]
    head = "| | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"

    def row(name: str, values: list[str]) -> str:
        return f"| {name} | " + " | ".join(values) + " |\n"

    out = ["## Summary\n\n", head]
    out.append(row("parcels scored", [f"{r.parcels:,}" for r in reports]))
    out.append(row("rejected", [f"{sum(r.rejections.values()):,}" for r in reports]))
    for lane in LANES:
        out.append(
            row(
                f"lane {lane}",
                [f"{r.lanes[lane]:,} ({_pct(_ratio(r.lanes[lane], r.parcels))})" for r in reports],
            )
        )  # noqa: E501
    out.append(row("labelled violations", [f"{r.labelled_bad:,}" for r in reports]))
    out.append(row("hold precision", [_pct(r.hold_precision) for r in reports]))
    out.append(row("hold recall", [_pct(r.hold_recall) for r in reports]))
    for k in sorted(reports[0].at_capacity):
        cells = [f"{_pct(r.at_capacity[k][1])} / {_pct(r.at_capacity[k][2])}" for r in reports]
        out.append(row(f"precision / recall @ {k:g}%", cells))
    out.append(row("throughput (wall)", [f"{r.parcels_per_s:,.0f} parcels/s" for r in reports]))
    out.append(
        row(
            "throughput (CPU, one core)", [f"{r.cpu_parcels_per_s:,.0f} parcels/s" for r in reports]
        )
    )  # noqa: E501
    out.append("\n## Rules (hits, precision, share of violations hit)\n\n")
    out.append(head)
    for i, (code, *_rest) in enumerate(reports[0].rules):
        out.append(
            row(
                code,
                [
                    f"{r.rules[i][1]:,} / {_pct(r.rules[i][2])} / {_pct(r.rules[i][3])}"
                    for r in reports
                ],
            )
        )  # noqa: E501
    cap = reports[0].capacity_pct
    out.append(f"\n## Scenarios (parcels, held, recall @ {cap:g}% capacity)\n\n")
    out.append(head)
    names = sorted({s[0] for r in reports for s in r.scenarios})
    for name in names:
        cells = []
        for r in reports:
            s = next((x for x in r.scenarios if x[0] == name), (name, 0, 0.0, 0.0))
            cells.append(f"{s[1]:,} / {_pct(s[2])} / {_pct(s[3])}")
        out.append(row(name, cells))
    return "".join(out)
