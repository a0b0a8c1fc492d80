"""The evaluation protocol for learned targeting: test, then train, in time order.

A feed is cut into periods of manifest time (``period_ms``, a day by default). In each
period every parcel is scored with what was known when it arrived: the rule set, the
reputation state, and the learned risk (``risk.py``) trained on the outcomes that had
arrived by the period's start. Then, per hub, the examination capacity is spent: the
riskiest parcels (by the model's probability, or by the rule score when the model is
off), and a share of it (``exploration``) on parcels drawn from the rest: where the model
is least certain, or at random (``explore_by``). Each
selection's probability is recorded. Outcomes come back ``outcome_delay_ms`` after the
parcel's manifest time: in the ``selected`` loop only for the examined parcels (weighted
by their inverse selection probability, clipped at ``ipw_clip``), in ``all`` for every
parcel (a labelled history, weight 1).

The figures: per period, the precision of the system's own examinations (the hit rate
of what it chose to examine) and, where every label is known, the precision of its
ranking at the capacity (top k% by score, whether examined or not).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from parcel_stream.decide import Legend
from parcel_stream.features import ShipperIndex
from parcel_stream.feed import RawRecord
from parcel_stream.model import Manifest
from parcel_stream.parse import InRecord, Limits
from parcel_stream.pipeline import prepare, risk_keys
from parcel_stream.reputation import InMemoryStore
from parcel_stream.risk import (
    OnlineModel,
    ParcelKeys,
    RiskTable,
    features_batch,
    parcel_keys,
)
from parcel_stream.risk_keys import KeyBatch, rule_ids, with_rules
from parcel_stream.rules import RuleSet
from parcel_stream.step import run_sync

F64 = npt.NDArray[np.float64]
U64 = npt.NDArray[np.uint64]
DAY_MS = 86_400_000
# selected: the closed loop; all: every parcel's outcome (missing from the labels =
# clean); labelled: the outcomes of the labelled parcels only (past examinations)
Feedback = Literal["selected", "all", "labelled"]
SELECTED, RISK, EXPLORATION = 1, 1, 2


@dataclass(frozen=True)
class ProtocolConfig:
    capacity_pct: float = 5.0
    feedback: Feedback = "selected"
    outcome_delay_ms: int = DAY_MS
    period_ms: int = DAY_MS
    model: bool = True  # False: rank by the rule score alone
    exploration: float = 0.1  # share of the capacity spent exploring
    # how: "uncertain" (in proportion to p (1 - p), where the model is least certain) or
    # "random"
    explore_by: Literal["uncertain", "random"] = "uncertain"
    ipw: bool = True
    ipw_clip: float = 5.0
    half_life_ms: float = 180.0 * DAY_MS
    prior: float = 10.0
    learning_rate: float = 0.05
    seed: int = 0
    label: str = ""


@dataclass
class ProtocolRun:
    """Per parcel, in feed order: what the run decided and what was true."""

    config: ProtocolConfig
    parcel_ids: list[str] = field(default_factory=list)
    periods: list[int] = field(default_factory=list)
    rule_scores: list[float] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    selected: list[int] = field(default_factory=list)  # 0 no, 1 risk, 2 exploration
    propensity: list[float] = field(default_factory=list)
    violation: list[bool] = field(default_factory=list)
    model: OnlineModel | None = None
    table: RiskTable | None = None
    outcomes: int = 0
    # with keep_features: each parcel's feature vector as scored, and every row trained on
    features: dict[str, F64] | None = None
    trained: list[tuple[str, F64]] | None = None

    def score(self) -> list[float]:
        return self.probabilities if self.config.model else self.rule_scores


@dataclass(order=True)
class _Pending:
    at_ms: int
    seq: int
    parcel_id: str = field(compare=False)
    keys: ParcelKeys = field(compare=False)
    x: F64 = field(compare=False)
    violation: bool = field(compare=False)
    weight: float = field(compare=False)


def _periods(records: Iterable[RawRecord], period_ms: int) -> Iterator[list[RawRecord]]:
    """Consecutive runs of records in the same period of time (the feed is in order)."""
    chunk: list[RawRecord] = []
    current = None
    for r in records:
        p = r.ts_ms // period_ms
        if current is not None and p != current and chunk:
            yield chunk
            chunk = []
        current = p
        chunk.append(r)
    if chunk:
        yield chunk


def _select(
    scores: F64,
    hubs: list[str],
    capacity: float,
    exploration: float,
    rng: random.Random,
    uncertainty: F64 | None = None,
) -> tuple[list[int], list[float]]:
    """Per hub: the top of the capacity by score, a share of it (``exploration``) on the
    rest. Exploration draws at random, or, given ``uncertainty`` per parcel, with
    probability in proportion to it (each parcel independently, so its probability is
    known exactly; the count is the share on average). Returns per parcel 0, RISK or
    EXPLORATION and the probability it had of being chosen."""
    n = len(scores)
    chosen, prob = [0] * n, [0.0] * n
    by_hub: dict[str, list[int]] = {}
    for i, h in enumerate(hubs):
        by_hub.setdefault(h, []).append(i)
    for idx in by_hub.values():
        k = round(capacity * len(idx))
        k_explore = min(round(exploration * k), k)
        k_risk = k - k_explore
        # ties broken at random, not by feed order
        order = sorted(idx, key=lambda i: (-scores[i], rng.random()))
        for i in order[:k_risk]:
            chosen[i], prob[i] = RISK, 1.0
        rest = order[k_risk:]
        if not rest or not k_explore:
            continue
        if uncertainty is None:
            for i in rest:
                prob[i] = k_explore / len(rest)
            for i in rng.sample(rest, k_explore):
                chosen[i] = EXPLORATION
            continue
        pi = _inclusion([float(uncertainty[i]) for i in rest], k_explore)
        for i, p in zip(rest, pi, strict=True):
            prob[i] = p
            if rng.random() < p:
                chosen[i] = EXPLORATION
    return chosen, prob


def _inclusion(sizes: list[float], k: int) -> list[float]:
    """Inclusion probabilities in proportion to ``sizes`` that sum to ``k``, none above 1."""
    total = sum(sizes)
    if total <= 0:
        return [k / len(sizes)] * len(sizes)
    pi = [0.0] * len(sizes)
    capped: set[int] = set()
    while True:
        left = k - len(capped)
        mass = sum(s for j, s in enumerate(sizes) if j not in capped)
        over = False
        for j, s in enumerate(sizes):
            if j in capped:
                pi[j] = 1.0
                continue
            pi[j] = left * s / mass if mass > 0 else 0.0
            if pi[j] > 1.0:
                capped.add(j)
                over = True
        if not over:
            return pi


def run_protocol(
    records: Iterable[RawRecord],
    ruleset: RuleSet,
    labels: dict[str, str | None],
    config: ProtocolConfig,
    limits: Limits | None = None,
    keep_features: bool = False,
    learn_rest: bool = False,
) -> ProtocolRun:
    """``learn_rest``: after the feed, learn the outcomes still pending (a warm start
    learns every outcome of the history; an evaluation only those known in time)."""
    limits = limits or Limits()
    rng = random.Random(config.seed)
    store = InMemoryStore()
    table = RiskTable(half_life_ms=config.half_life_ms, prior=config.prior)
    model = OnlineModel(learning_rate=config.learning_rate)
    run = ProtocolRun(config, model=model, table=table)
    if keep_features:
        run.features, run.trained = {}, []
    pending: list[_Pending] = []
    legend = Legend(ruleset)  # the rules that fired, per distinct mask
    rules = rule_ids([r.code for r in ruleset.rules])
    seq = 0
    offset = 0
    for period, raw in enumerate(_periods(records, config.period_ms)):
        start_ms = raw[0].ts_ms
        _arrive(pending, start_ms, table, model, run)
        recs: list[InRecord] = []
        for r in raw:
            rec = r.to_in_record()
            rec.partition, rec.offset = 0, offset
            offset += 1
            recs.append(rec)
        now_ms = max(r.ts_ms for r in raw)
        prep = prepare(recs, limits, now_ms, ruleset.split_min_usd)  # one parse, shared
        result = run_sync(recs, store, ruleset, limits, now_ms, encode=False, prepared=prep)
        manifests = prep.parsed.manifests
        idx = prep.shippers
        # the keys in columns, as the worker builds them; named (for the outcomes that
        # will train on them) only for the parcels whose outcome comes back
        plain, value_usd = risk_keys(prep)
        uniq, pos = plain.unique()
        kb, rows_at = with_rules(plain, pos, result.masks, rules, len(uniq))
        x = _features(table, kb, rows_at, np.concatenate([uniq, rules]), prep.columns.ts,
                      result.scores)  # fmt: skip
        values, masks = value_usd.tolist(), result.masks.tolist()

        def named(i: int, manifests: Sequence[Manifest] = manifests,
                  idx: ShipperIndex = idx, values: list[float] = values,
                  masks: list[int] = masks) -> ParcelKeys:  # fmt: skip
            return parcel_keys(manifests[i], idx.addresses[idx.parcel_address[i]], values[i],
                               [r.code for r in legend.reasons(masks[i])])  # fmt: skip

        xs = list(x)
        probs = model.predict(x) if len(xs) else np.zeros(0)
        scores = probs if config.model else result.scores
        explore = config.exploration if config.feedback == "selected" else 0.0
        uncertain = (probs * (1 - probs)
                     if config.model and config.explore_by == "uncertain" else None)  # fmt: skip
        chosen, prob = _select(scores, [m.hub for m in manifests], config.capacity_pct / 100,
                               explore, rng, uncertain)  # fmt: skip
        for i, m in enumerate(manifests):
            truth = labels.get(m.parcel_id) is not None
            run.parcel_ids.append(m.parcel_id)
            run.periods.append(period)
            run.rule_scores.append(float(result.scores[i]))
            run.probabilities.append(float(probs[i]))
            run.selected.append(chosen[i])
            run.propensity.append(prob[i])
            run.violation.append(truth)
            if (config.feedback == "all" or chosen[i] if config.feedback != "labelled"
                    else m.parcel_id in labels):  # fmt: skip
                weight = 1.0
                if config.feedback == "selected" and config.ipw and prob[i] > 0:
                    weight = min(1.0 / prob[i], config.ipw_clip)
                seq += 1
                heapq.heappush(pending, _Pending(m.manifest_ts_ms + config.outcome_delay_ms,
                                                 seq, m.parcel_id, named(i), xs[i], truth,
                                                 weight))  # fmt: skip
            if run.features is not None:
                run.features[m.parcel_id] = xs[i]
    if learn_rest and pending:
        _arrive(pending, max(p.at_ms for p in pending), table, model, run)
    return run


def _features(table: RiskTable, kb: KeyBatch, pos: npt.NDArray[np.int64], uniq: U64, ts: F64,
              scores: F64) -> F64:  # fmt: skip
    """The period's feature vectors, each parcel as of its manifest time and in feed order:
    its value against the norms learned so far (then it joins them), its rule score
    against the mean of the scores before it. ``pos``: each key's row in ``uniq``."""
    n = len(ts)
    under = table.undervalued_batch(kb, ts)
    pivot = np.empty(n)
    for i, s in enumerate(scores.tolist()):  # the running mean, as RiskTable.features keeps it
        pivot[i] = table.score_mean
        table.scored += 1
        table.score_mean += (s - table.score_mean) / table.scored
    return features_batch(kb, pos, table.rows(uniq), table.total, ts, scores, pivot, under,
                          table.half_life_ms, table.prior)  # fmt: skip


def _arrive(
    pending: list[_Pending], now_ms: int, table: RiskTable, model: OnlineModel, run: ProtocolRun
) -> None:
    """Outcomes known by ``now_ms``: the model trains on each parcel's features as they
    were when it was scored, then its keys' counts move."""
    due: list[_Pending] = []
    while pending and pending[0].at_ms <= now_ms:
        due.append(heapq.heappop(pending))
    if not due:
        return
    model.train(np.array([d.x for d in due]), np.array([float(d.violation) for d in due]),
                np.array([d.weight for d in due]))  # fmt: skip
    if run.trained is not None:
        run.trained += [(d.parcel_id, d.x) for d in due]
    for d in due:
        named = d.keys.named()
        table.update(list(named.values()), d.violation, d.weight, d.at_ms, list(named))
    run.outcomes += len(due)


@dataclass(frozen=True)
class PeriodFigures:
    period: int
    parcels: int
    examined: int
    hits: int  # violations among the examined
    ranked_hits: int  # violations in the top capacity by score (every label known)
    ranked: int


def figures(run: ProtocolRun) -> list[PeriodFigures]:
    out = []
    score = run.score()
    cap = run.config.capacity_pct / 100
    by_period: dict[int, list[int]] = {}
    for i, p in enumerate(run.periods):
        by_period.setdefault(p, []).append(i)
    for p, idx in sorted(by_period.items()):
        examined = [i for i in idx if run.selected[i]]
        k = max(1, round(cap * len(idx)))
        top = sorted(idx, key=lambda i: -score[i])[:k]
        out.append(PeriodFigures(
            p, len(idx), len(examined), sum(run.violation[i] for i in examined),
            sum(run.violation[i] for i in top), len(top),
        ))  # fmt: skip
    return out


def last_share(figs: list[PeriodFigures], share: float = 1 / 3) -> tuple[float, float]:
    """Over the last ``share`` of the periods: (hit rate of the examinations, precision of
    the ranking at the capacity)."""
    tail = figs[-max(1, round(len(figs) * share)) :]
    examined = sum(f.examined for f in tail)
    ranked = sum(f.ranked for f in tail)
    return (sum(f.hits for f in tail) / examined if examined else 0.0,
            sum(f.ranked_hits for f in tail) / ranked if ranked else 0.0)  # fmt: skip


def calibration(run: ProtocolRun, share: float = 1 / 3) -> tuple[float, float, float]:
    """Over the last ``share`` of the periods: the mean probability, the share of
    violations, and the Brier score of the probabilities (every parcel, labels known)."""
    last = max(run.periods, default=0)
    first = last - max(1, round((last + 1) * share)) + 1
    idx = [i for i, p in enumerate(run.periods) if p >= first]
    if not idx:
        return 0.0, 0.0, 0.0
    p = np.array([run.probabilities[i] for i in idx])
    y = np.array([float(run.violation[i]) for i in idx])
    return float(p.mean()), float(y.mean()), float(((p - y) ** 2).mean())
