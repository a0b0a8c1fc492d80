"""One batch through the core: parse -> repeats -> features -> sequence -> decide -> outputs.

The I/O around it (reading the state, applying the update, producing, committing) is the
batch step's (``step.py``), driven by the worker and by the backtest.
The stateful features, scores and risk lanes come from :mod:`parcel_stream.sequence`,
parcel by parcel in input order, so batching changes nothing.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import repeat
from operator import attrgetter
from time import perf_counter
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from parcel_stream.columns import Columns
from parcel_stream.decide import (
    AMEND_MARK,
    LANE_HOLD,
    LANES,
    REPEAT_MARK,
    SELECTIONS,
    Legend,
    Mark,
    Outputs,
    ParcelFields,
    build_outputs,
    sample,
)
from parcel_stream.features import (
    Combos,
    Features,
    ShipperIndex,
    build_features,
    extend_index,
    index_shippers,
    with_pairs,
)
from parcel_stream.model import LearnedReason, Manifest
from parcel_stream.outbox import record_digests
from parcel_stream.parse import InRecord, Limits, ParsedBatch, parse_batch
from parcel_stream.repeats import (
    REMEMBERED_ENCODE,
    Classified,
    Remembered,
    classify,
    content_hashes,
    decode_remembered,
)
from parcel_stream.reputation import (
    DEFAULT_HALF_LIFE_MS,
    Partition,
    ReputationUpdate,
    batch_partitions,
    examinable_refs,
    new_watermarks,
    state_writes,
)
from parcel_stream.risk import (
    GROUPS,
    KeyParts,
    RiskConfig,
    RiskRef,
    RiskState,
    encode_refs,
    explain_strongest,
    features_batch,
    key_parts,
    norms_batch,
    reason_candidates,
    strongest_entries,
    track_capacity,
)
from parcel_stream.risk_keys import (
    ATTRIBUTE,
    Entities,
    KeyBatch,
    distinct_spans,
    key_batch,
    with_rules,
)
from parcel_stream.rules import RuleSet
from parcel_stream.sequence import AMEND, REPEAT, Keys, StoredState, run_sequence
from parcel_stream.state import StateStore

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
U64 = npt.NDArray[np.uint64]
WINDOW_MS = 72 * 3_600_000.0


@dataclass(frozen=True, slots=True)
class StateConfig:
    """The windows the state is kept over (from the settings)."""

    split_window_ms: float = WINDOW_MS
    half_life_ms: float = DEFAULT_HALF_LIFE_MS


@dataclass(frozen=True, slots=True)
class RiskInput:
    """The learned model for one batch: its config and state (from the learner state), each
    parsed parcel's keys and the stored counts of those keys (``risk.py``)."""

    cfg: RiskConfig
    state: RiskState
    keys: KeyBatch
    uniq: U64  # the batch's distinct key ids, and per entry its position among them
    pos: I64
    rows: F64  # [n, v, t] per distinct key id (NaN: no counts)
    value_usd: F64
    # lanes by capacity: each partition's stored thresholds (msgpack: hub -> log-odds)
    lanes: dict[Partition, bytes] = field(default_factory=dict)
    norms: Norms | None = None
    # the rules' key ids (``risk_keys.rule_ids``), whose counts are the last rows of
    # ``uniq`` and ``rows``: which rules fired is known once the batch is scored
    rules: U64 = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))


@dataclass(frozen=True, slots=True)
class Norms:
    """The value norms a batch reads and updates: per parcel and HS level its slot
    (``risk.norm_slots``), per partition the HS key ids of its slots (in slot order), and
    the slots' rows [weight, mean, M2, t] (NaN: none yet) as read."""

    slots: I64
    parts: list[tuple[Partition, U64]]
    rows: F64

    def updated(self, rows: F64) -> list[tuple[Partition, U64, F64]]:
        """The partitions' rows after the batch, to store with its update."""
        out, lo = [], 0
        for part, ids in self.parts:
            out.append((part, ids, rows[lo : lo + len(ids)]))
            lo += len(ids)
        return out


def partition_index(prep: Prepared) -> I64:
    """Per parsed parcel the index of its input partition in ``prep.partitions``."""
    at = {p: i for i, p in enumerate(prep.partitions)}
    per_record = np.fromiter((at[(r.topic, r.partition)] for r in prep.records), np.int64,
                             len(prep.records))  # fmt: skip
    out: I64 = per_record[np.asarray(prep.parsed.record_index, dtype=np.int64)]
    return out


_LANES_ENC = msgspec.msgpack.Encoder(order="sorted")
_get_hub = attrgetter("hub")
_LANES_DEC = msgspec.msgpack.Decoder(dict[str, float])


def capacity_lanes(
    risk: RiskInput, prob: F64, prep: Prepared, skip: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.bool_], list[tuple[Partition, bytes]]]:
    """Which parcels the capacity thresholds hold (``risk.track_capacity``), per
    (partition, hub) in input order, and each partition's thresholds afterwards."""
    cfg = risk.cfg
    start = math.log(cfg.hold_probability / (1 - cfg.hold_probability)) if (
        cfg.hold_probability < 1) else 30.0  # fmt: skip
    n = len(prob)
    # each parcel's (partition, hub) group, numbered in columns
    hubs = list(map(_get_hub, prep.parsed.manifests))
    names = list(dict.fromkeys(hubs))
    hub_at = np.fromiter(map({h: i for i, h in enumerate(names)}.__getitem__, hubs), np.int64, n)
    uniq, group = np.unique(partition_index(prep) * max(len(names), 1) + hub_at,
                            return_inverse=True)  # fmt: skip
    groups = [(prep.partitions[u // len(names)], names[u % len(names)]) for u in uniq.tolist()]
    state: dict[Partition, dict[str, float]] = {}
    for part in dict.fromkeys(part for part, _hub in groups):
        raw = risk.lanes.get(part)
        state[part] = dict(_LANES_DEC.decode(raw)) if raw else {}
    t = np.array([state[p].get(h, start) for p, h in groups], dtype=np.float64)
    z = np.log(np.clip(prob, 1e-9, 1 - 1e-9) / np.clip(1 - prob, 1e-9, 1.0))
    hold = track_capacity(z, group.reshape(-1).astype(np.int64), skip, t,
                          cfg.capacity_pct / 100.0, cfg.capacity_step)  # fmt: skip
    for (part, hub), threshold in zip(groups, t.tolist(), strict=True):
        state[part][hub] = threshold
    return hold, [(part, _LANES_ENC.encode(hubs)) for part, hubs in state.items()]


def risk_keys(prep: Prepared) -> tuple[KeyBatch, F64]:
    """The learned model's keys of every parsed parcel (in columns), and each parcel's
    declared value in USD."""
    idx, manifests = prep.shippers, prep.parsed.manifests
    n = len(manifests)
    value = prep.columns.value_usd
    n_sellers = len(idx.parcel_seller) == n
    entities = Entities(idx.ids, idx.parcel_shipper, idx.sellers if n_sellers else [],
                        idx.parcel_seller if n_sellers else np.full(n, -1, dtype=np.int64),
                        idx.addresses, idx.parcel_address)  # fmt: skip
    return key_batch(manifests, None, value, entities=entities, columns=prep.columns), value


@dataclass(slots=True)
class Scored:
    """The learned model's output for a batch: per parcel its probability and the
    probability of its selection; per held parcel its learned reasons; per examinable
    parcel what its exam result will train on."""

    probability: F64
    propensity: F64
    learned: dict[int, list[LearnedReason]]
    refs: dict[int, RiskRef | bytes]  # bytes: encoded already (``risk.encode_refs``)


def _risk_score(
    risk: RiskInput, static: F64, ts: F64, skip: npt.NDArray[np.bool_]
) -> tuple[F64, F64, list[tuple[Partition, U64, F64]]]:
    """Features and probabilities, and the value norms after the batch (``skip``: repeats,
    which join no norm)."""
    st, cfg, n = risk.state, risk.cfg, len(ts)
    under, norms = np.zeros(n), []
    if risk.norms is not None:
        rows = risk.norms.rows.copy()
        under = norms_batch(risk.norms.slots, risk.keys.log_usd_per_kg, ts, skip, rows,
                            cfg.half_life_ms, cfg.norm_min)  # fmt: skip
        norms = risk.norms.updated(rows)
    x = features_batch(risk.keys, risk.pos, risk.rows, [st.exams, st.violations, st.t_ms], ts,
                       static, np.full(n, st.pivot), under, cfg.half_life_ms,
                       cfg.prior)  # fmt: skip
    prob = st.model(cfg).predict(x) if n else np.zeros(0)
    return x, prob, norms


def _ranges(starts: I64, ends: I64) -> I64:
    """The concatenation of ``arange(starts[j], ends[j])`` over j, in one pass."""
    lens = ends - starts
    out: I64 = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
    return out


def _risk_outputs(
    risk: RiskInput, x: F64, prob: F64, lanes: I8, selection: I8, ruleset: RuleSet,
    prep: Prepared, masks: I64, legend: Legend,
) -> Scored:  # fmt: skip
    """Selection probabilities: 1 for the risk lanes (hold, review), the sampling rate for
    a random audit or exploration hold; for a released parcel the chance it had of a
    random audit. The named keys of the parcels sent to review or hold (kept for their
    exam results) and the learned reasons of the held ones."""
    prop = np.ones(len(lanes))
    prop[selection == 1] = ruleset.random_rate
    prop[selection == 2] = ruleset.exploration_rate
    prop[lanes == 0] = ruleset.random_rate
    theta = risk.state.model(risk.cfg).theta
    learned: dict[int, list[LearnedReason]] = {}
    refs: dict[int, RiskRef | bytes] = {}
    ex = np.flatnonzero(lanes >= 1)
    held = ex[lanes[ex] == LANE_HOLD]
    review = ex[lanes[ex] != LANE_HOLD]
    start = risk.keys.start
    if len(review):  # the key ids (named once a hold names them), encoded in one pass
        flat, at_ids = distinct_spans(risk.keys.ids, start[review], start[review + 1])
        refs.update(zip(review.tolist(), encode_refs(x[review], prop[review], flat, at_ids),
                        strict=True))  # fmt: skip
    if len(held):  # their keys by id with what names them, and the learned reasons
        idx, manifests, kb = prep.shippers, prep.parsed.manifests, risk.keys
        st, cfg = risk.state, risk.cfg
        best, b_rate, b_exams, rate = strongest_entries(
            kb, risk.pos, risk.rows, [st.exams, st.violations, st.t_ms], prep.columns.ts, held,
            cfg.half_life_ms, cfg.prior)  # fmt: skip
        flat, at_ids = distinct_spans(kb.ids, start[held], start[held + 1])
        ids_l, at_l = flat.tolist(), at_ids.tolist()
        x_l, prop_l, th = x[held].tolist(), prop[held].tolist(), theta.tolist()
        candidates = reason_candidates(best, b_rate, b_exams, x[held], theta)
        value_l, address_at = risk.value_usd[held].tolist(), idx.parcel_address[held].tolist()
        for k, i in enumerate(held.tolist()):
            m = manifests[i]
            fired = [r.code for r in legend.reasons(int(masks[i]))]
            parts = key_parts(m, idx.addresses[address_at[k]], value_l[k], fired)
            refs[i] = RiskRef([], x_l[k], prop_l[k], ids_l[at_l[k] : at_l[k + 1]], parts)
            name_of = _key_names(parts, kb, rate, m, i)
            why = explain_strongest(candidates[k], x_l[k], th, name_of, cfg.reasons)
            learned[i] = [LearnedReason(k, t, r, e, c) for k, t, r, e, c in why]
    return Scored(np.round(prob, 6), prop, learned, refs)


def _key_names(parts: KeyParts, kb: KeyBatch, rate: F64, m: Manifest, p: int
               ) -> Callable[[int, int], str]:  # fmt: skip
    """The name of the key a group's learned reason shows, given its entry: the entry's
    key; for the attributes, whose entries keep the manifest's order, the first in the
    order of their names among those of the same rate (as ``parcel_keys`` lists them)."""

    def name_of(group: int, e: int) -> str:
        if group == ATTRIBUTE:
            span = range(int(kb.start[p]), int(kb.start[p + 1]))
            first = next(a for a in span if kb.group[a] == ATTRIBUTE)
            items = list(m.attributes.items())
            tied = [a for a in span if kb.group[a] == ATTRIBUTE and rate[a] == rate[e]]
            k, v = min((items[a - first] for a in tied), key=lambda kv: kv[0])
            return f"attr:{k}={v}"
        return parts.name_of(GROUPS[group], int(kb.ids[e]))

    return name_of


@dataclass(frozen=True, slots=True)
class Prepared:
    """A parsed batch and what must be read from the state store to score it."""

    records: list[InRecord]
    parsed: ParsedBatch
    shippers: ShipperIndex
    partitions: list[Partition]
    hashes: list[str]
    columns: Columns
    parse_s: float = 0.0
    # the learned model's keys and each parcel's value in USD (``risk_keys``), when
    # computed with the parse (the worker's next batch, while Redis applies this one)
    keys: tuple[KeyBatch, F64] | None = None
    # the rule features (without history, as the batch step builds them), when computed
    # with the parse, and the rule set they were built for (scored with another, they are
    # built again)
    features: Features | None = None
    features_of: RuleSet | None = None

    @property
    def parcel_ids(self) -> list[str]:
        return self.columns.parcel_ids


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
    repeats: int = 0
    amendments: int = 0
    parcel_ids: list[str] = field(default_factory=list)
    # the learned model's probabilities and the selection probabilities (None when off)
    probability: F64 | None = None
    propensity: F64 | None = None


DEFAULT_STATE = StateConfig()


def prepare(
    records: list[InRecord], limits: Limits, now_ms: int, split_min_usd: float | None = None,
    parsed: ParsedBatch | None = None, keys: bool = False, ruleset: RuleSet | None = None,
) -> Prepared:  # fmt: skip
    """The batch parsed (``parsed``: already, as ``parse_batch`` gives it) and indexed:
    what the state read needs, and the columns the stages share. ``keys``: the learned
    model's keys too; ``ruleset``: the rule features for it too (both depend on the
    parcels alone, not on the state)."""
    t0 = perf_counter()
    parsed = parsed if parsed is not None else parse_batch(records, limits, now_ms)
    columns = Columns.of(parsed.manifests)
    prep = Prepared(
        records=records,
        parsed=parsed,
        shippers=with_pairs(index_shippers(parsed.manifests), columns.value_usd, split_min_usd),
        partitions=batch_partitions(records),
        hashes=content_hashes(parsed.manifests),
        columns=columns,
    )
    if keys:
        prep = replace(prep, keys=risk_keys(prep))
    if ruleset is not None:
        feats = build_features(parsed.manifests, prep.shippers, None, ruleset, now_ms,
                               columns=columns)  # fmt: skip
        prep = replace(prep, features=feats, features_of=ruleset)
    return replace(prep, parse_s=perf_counter() - t0)


def recognise(prep: Prepared, remembered: dict[str, bytes]) -> tuple[Prepared, Classified]:
    """Classify the batch's parcels as new, repeats or amendments against the remembered
    parcels; the index gains the entities of amended parcels' stored originals."""
    stored = {pid: decode_remembered(raw) for pid, raw in remembered.items()}
    classified = classify(prep.parcel_ids, prep.hashes, stored, prep.parsed.manifests)
    olds = [
        r
        for r, st in zip(classified.stored, classified.contrib.status.tolist(), strict=True)
        if r is not None and st == AMEND
    ]
    if olds:
        idx = extend_index(prep.shippers, [r.shipper_id for r in olds],
                           [r.seller for r in olds], [r.pair for r in olds])  # fmt: skip
        prep = replace(prep, shippers=idx)
    return prep, classified


def _stored_contributions(idx: ShipperIndex, classified: Classified) -> None:
    """Fill, for amendments of stored parcels, the batch positions of their originals'
    entities and what they added."""
    c = classified.contrib
    pos_s = {s: k for k, s in enumerate(idx.ids)}
    pos_l = {s: k for k, s in enumerate(idx.sellers)}
    pos_p = {s: k for k, s in enumerate(idx.pairs)}
    for i, r in enumerate(classified.stored):
        if r is None or c.status[i] != AMEND or c.prior[i] >= 0:
            continue
        c.ship[i] = pos_s.get(r.shipper_id, -1)
        c.sell[i] = pos_l.get(r.seller, -1) if r.seller else -1
        c.pair[i] = pos_p.get(r.pair, -1) if r.pair else -1
        c.ts_ms[i], c.value_usd[i], c.held[i] = r.event_ts_ms, r.value_usd, r.held


def _keys(prep: Prepared, combos: Combos, value_usd: F64) -> Keys:
    idx, n = prep.shippers, len(prep.parsed)
    sell = idx.parcel_seller if len(idx.parcel_seller) == n else np.full(n, -1, dtype=np.int64)
    pair = idx.parcel_pair if len(idx.parcel_pair) == n else np.full(n, -1, dtype=np.int64)
    ts = prep.columns.ts
    return Keys(idx.parcel_shipper, sell, idx.parcel_address, combos.parcel_combo, pair, ts,
                value_usd)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch between its reads and its scoring: the parsed records, what each parcel
    repeats or amends, and the stored state and watermarks its entities were read at."""

    prep: Prepared
    classified: Classified
    stored: StoredState
    watermarks: dict[Partition, int]
    combos: Combos


def score_prepared(
    batch: Batch,
    ruleset: RuleSet,
    now_ms: int,
    encode: bool = True,
    adjust: F64 | None = None,
    learner_version: int = 0,
    config: StateConfig = DEFAULT_STATE,
    risk: RiskInput | None = None,
    decisions: str = "lines",
) -> BatchResult:
    """Score a read batch (every record above its watermark); ``encode=False`` skips
    building output records (backtests). ``adjust``: learned points per rule (index as in
    the rule set) to add to the scores, with the learner state's version for the records.
    ``decisions``: the decisions records' form, lines or columns."""
    prep, classified, stored, combos = batch.prep, batch.classified, batch.stored, batch.combos
    watermarks = batch.watermarks
    parsed, idx = prep.parsed, prep.shippers
    n = len(parsed)
    t0 = perf_counter()
    if prep.features is not None and prep.features_of is ruleset:  # built with the parse
        feats = Features(prep.features.matrix.copy())  # (the history rows are filled in)
    else:
        feats = build_features(parsed.manifests, idx, None, ruleset, now_ms,  # history: below
                               columns=prep.columns)  # fmt: skip
    t1 = perf_counter()
    _stored_contributions(idx, classified)
    known = ruleset.known_shippers
    enrolled = np.array([float(s in known) for s in idx.ids]) if known else np.zeros(len(idx.ids))
    if adjust is not None and not adjust.any():  # the version names what changed the scores:
        adjust = None  # the learned adjustments, or the learned model
    if adjust is None and risk is None:
        learner_version = 0
    seq = run_sequence(
        feats.matrix, _keys(prep, combos, feats.value_usd), classified.contrib, stored, enrolled,
        ruleset, ruleset.active(now_ms), adjust, config.split_window_ms, config.half_life_ms,
    )  # fmt: skip
    status = classified.contrib.status
    pids = prep.parcel_ids
    risk_lanes = seq.risk_lanes
    lane_state: list[tuple[Partition, bytes]] = []
    norm_rows: list[tuple[Partition, U64, F64]] = []
    if risk is not None:
        ts = prep.columns.ts
        keys, pos = with_rules(risk.keys, risk.pos, seq.masks, risk.rules,
                               len(risk.uniq) - len(risk.rules))  # fmt: skip
        risk = replace(risk, keys=keys, pos=pos)
        x, prob, norm_rows = _risk_score(risk, seq.static, ts,
                                         classified.contrib.status == REPEAT)  # fmt: skip
        if risk.cfg.decides and risk.state.trained > 0:  # an untrained model decides nothing
            if risk.cfg.capacity_pct > 0:
                held, lane_state = capacity_lanes(risk, prob, prep,
                                                  classified.contrib.status == REPEAT)  # fmt: skip
            else:
                held = prob >= risk.cfg.hold_probability
            risk_lanes = np.where(held, 2, np.where(prob >= risk.cfg.review_probability, 1, 0)
                                  ).astype(np.int8)  # fmt: skip
            # hard criteria: rules an analyst marked "always hold" or "always review"
            for lane, code in ((1, "review"), (2, "hold")):
                mask = ruleset.always_mask(code)
                if mask:
                    forced = (seq.masks & mask) != 0
                    risk_lanes[forced] = np.maximum(risk_lanes[forced], lane)
    lanes, selection = sample(pids, risk_lanes, ruleset.random_rate, ruleset.exploration_rate)
    legend = Legend(ruleset, adjust)
    scored = (_risk_outputs(risk, x, prob, lanes, selection, ruleset, prep, seq.masks, legend)
              if risk is not None else None)  # fmt: skip
    scores, masks = seq.scores, seq.masks
    marks = _marks(prep, classified, scores, masks, lanes, selection, legend, learner_version,
                   now_ms, scored)  # fmt: skip
    t2 = perf_counter()
    shipper_of = list(map(idx.ids.__getitem__, idx.parcel_shipper.tolist()))  # per parcel
    outputs = (
        build_outputs(
            prep.records,
            parsed,
            scores,
            masks,
            lanes,
            legend,
            now_ms,
            selection,
            learner_version,
            marks,
            scored.probability if scored else None,
            scored.propensity if scored else None,
            scored.learned if scored else None,
            decisions,
            ParcelFields(pids, shipper_of, prep.columns.ts_ms),
        )  # fmt: skip
        if encode
        else Outputs()
    )
    wm, _fresh = new_watermarks(prep.records, watermarks)
    shippers, sellers, pairs, addresses = state_writes(idx, combos, stored, seq)
    fresh = status != REPEAT
    update = ReputationUpdate(
        wm, shippers, addresses, pairs,
        examinable_refs(idx, pids, fresh, lanes, masks, [r.code for r in ruleset.rules],
                        seq.static, scored.refs if scored else None),
        sellers,
        parcels=_remember(prep, classified, scores, masks, lanes, selection, risk_lanes, legend,
                          learner_version, now_ms, feats.value_usd, shipper_of, scored),
        lanes=lane_state,
        norms=norm_rows,
    )  # fmt: skip
    if encode:  # the decision digests the worker stores with the update (outbox.py)
        update = replace(update, outbox=record_digests(
            prep.records, parsed, scores, masks, lanes, selection, legend, learner_version,
            now_ms, watermarks, marks, scored))  # fmt: skip
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
        parcels=n,
        stage_s=stages,
        repeats=int(np.count_nonzero(status == REPEAT)),
        amendments=int(np.count_nonzero(status == AMEND)),
        parcel_ids=pids,
        probability=scored.probability if scored else None,
        propensity=scored.propensity if scored else None,
    )


def _marks(
    prep: Prepared,
    classified: Classified,
    scores: F64,
    masks: I64,
    lanes: I8,
    selection: I8,
    legend: Legend,
    learner_version: int,
    now_ms: int,
    scored: Scored | None = None,
) -> dict[int, Mark]:
    """Repeats take their original's decision (the arrays are overwritten in place);
    amendments name what they replace."""
    c, sources = classified.contrib, prep.parsed.sources
    marks: dict[int, Mark] = {}
    for i in np.flatnonzero(c.status != 0).tolist():
        j = int(c.prior[i])
        if c.status[i] == AMEND:
            ref = sources[j] if j >= 0 else _stored(classified, i).source
            marks[i] = Mark(AMEND_MARK, ref)
        elif j >= 0:
            scores[i], masks[i], lanes[i], selection[i] = (
                scores[j],
                masks[j],
                lanes[j],
                selection[j],
            )
            if scored is not None:
                scored.probability[i] = scored.probability[j]
                scored.propensity[i] = scored.propensity[j]
            codes = [r.code for r in legend.reasons(int(masks[j]))]
            marks[i] = Mark(REPEAT_MARK, sources[j], codes, legend.version, learner_version,
                            now_ms)  # fmt: skip
        else:
            r = _stored(classified, i)
            scores[i], masks[i], lanes[i], selection[i] = r.score, 0, r.lane, r.selection
            if scored is not None:
                scored.probability[i], scored.propensity[i] = r.probability, r.propensity
            marks[i] = Mark(REPEAT_MARK, r.source, r.codes, r.version, r.learner_version,
                            r.decision_ts_ms)  # fmt: skip
    return marks


def _stored(classified: Classified, i: int) -> Remembered:
    r = classified.stored[i]
    assert r is not None
    return r


def _remember(
    prep: Prepared,
    classified: Classified,
    scores: F64,
    masks: I64,
    lanes: I8,
    selection: I8,
    risk_lanes: I8,
    legend: Legend,
    learner_version: int,
    now_ms: int,
    value_usd: F64,
    shipper_of: list[str],
    scored: Scored | None = None,
) -> list[tuple[str, str, bytes]]:
    """What is remembered of each parcel id scored in this batch (its latest version):
    the rows of ``Remembered`` built column by column and encoded in one pass
    (``shipper_of``: each parcel's shipper id)."""
    idx, parsed, n = prep.shippers, prep.parsed, len(prep.parsed)
    pids = prep.parcel_ids
    status = classified.contrib.status
    if n and not (status == REPEAT).any() and len(set(pids)) == n:
        at: list[int] | None = None  # every parcel, each id once: no gathering
    else:
        latest: dict[str, int] = {}
        for i, (pid, st) in enumerate(zip(pids, status.tolist(), strict=True)):
            if st != REPEAT:
                latest[pid] = i
        at = list(latest.values())
    seller_l = idx.parcel_seller if len(idx.parcel_seller) == n else np.full(n, -1)
    pair_l = idx.parcel_pair if len(idx.parcel_pair) == n else np.full(n, -1)
    mask_a = masks if at is None else masks[at]
    codes_of = {m: [r.code for r in legend.reasons(m)] for m in set(mask_a.tolist())}
    sellers, pairs = [*idx.sellers, ""], [*idx.pairs, ""]  # -1 reads the "" appended

    def col(a: npt.NDArray[Any]) -> list[Any]:
        out: list[Any] = (a if at is None else a[at]).tolist()
        return out

    def pick(xs: list[Any]) -> list[Any]:
        return xs if at is None else [xs[i] for i in at]

    ids = pick(pids)
    rows: list[Iterable[Any]] = [
        pick(parsed.sources), col(np.round(scores, 2)), col(lanes), col(selection),
        list(map(codes_of.__getitem__, mask_a.tolist())), repeat(legend.version),
        repeat(learner_version), repeat(now_ms), col(prep.columns.ts_ms),
        pick(shipper_of),
        list(map(sellers.__getitem__, col(seller_l))), list(map(pairs.__getitem__, col(pair_l))),
        col(value_usd), col(risk_lanes == 2),
    ]  # fmt: skip
    if scored is not None:
        rows += [col(scored.probability), col(scored.propensity)]
    else:
        rows += [repeat(-1.0), repeat(1.0)]  # Remembered's defaults: the model was off
    blobs = map(bytes.__add__, map(str.encode, pick(prep.hashes)),
                map(REMEMBERED_ENCODE, zip(*rows, strict=False)))  # repeat()s: endless  # fmt: skip
    expected = classified.expected
    return list(zip(ids, map(expected.__getitem__, ids), blobs, strict=True))


def read_batch(prep: Prepared, store: StateStore) -> Batch:
    """The reads of one batch: remembered parcels, then the state of its entities."""
    prep, classified = recognise(prep, store.read_parcels(prep.parcel_ids))
    combos = Combos.of(prep.shippers)
    stored, marks = store.read(prep.shippers, prep.partitions, combos)
    return Batch(prep, classified, stored, marks, combos)
