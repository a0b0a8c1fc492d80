"""Shipper reputation: the per-batch update, its idempotency rule, and an in-memory store.

Every state change carries the Kafka offsets it came from. A store keeps, per input
partition, the last offset applied (the watermark) and applies a batch's update only if the
watermarks it was computed against are still current (compare-and-set). Records at or
below a watermark are left out of the update, so a batch redelivered after a crash changes
nothing twice. The Redis store (``adapters/redis_store.py``) implements the same contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from parcel_stream.features import ReputationView, ShipperIndex
from parcel_stream.learner import LearnerState
from parcel_stream.parse import InRecord, ParsedBatch

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
LANE_HOLD = 2
DAY_MS = 86_400_000
DEFAULT_HALF_LIFE_MS = 90 * DAY_MS

Partition = tuple[str, int]


def decay_add(
    t_ms: float, values: Sequence[float], at_ms: float, deltas: Sequence[float], half_life_ms: float
) -> tuple[float, list[float]]:
    """Add ``deltas`` observed at ``at_ms`` to exponentially decayed counters last brought
    up to date at ``t_ms`` (0 = no state yet). Returns the new reference time and values.

    A counter is worth ``value * 2 ** (-(now - t) / half_life)`` at time ``now``. Events
    older than the reference time are discounted instead, so the result does not depend
    on arrival order (up to rounding). The Redis scripts do the same arithmetic."""
    if t_ms <= 0:
        t_ms = at_ms
    if at_ms >= t_ms:
        f = 2.0 ** (-(at_ms - t_ms) / half_life_ms)
        return at_ms, [v * f + d for v, d in zip(values, deltas, strict=True)]
    g = 2.0 ** (-(t_ms - at_ms) / half_life_ms)
    return t_ms, [v + d * g for v, d in zip(values, deltas, strict=True)]


def decay_factor(t_ms: F64, now_ms: float, half_life_ms: float) -> F64:
    """What a counter last updated at ``t_ms`` is worth at ``now_ms`` (never more than 1)."""
    out: F64 = np.exp2(-np.maximum(now_ms - t_ms, 0.0) / half_life_ms)
    return out


@dataclass(frozen=True, slots=True)
class EntityDelta:
    """What one batch adds to a shipper's (or a marketplace seller's) state."""

    entity_id: str
    seen: int
    value_usd: float
    holds: int
    first_seen_ms: int
    last_seen_ms: int
    days: tuple[tuple[int, int], ...] = ()  # (Unix day, parcels) for the volume baseline


@dataclass(frozen=True, slots=True)
class PairDelta:
    """Parcels one shipper sent to one consignee address in a batch."""

    pair: str  # "{address key}:{shipper id}"
    first_ms: int
    last_ms: int
    value_usd: float
    parcels: int


@dataclass(frozen=True, slots=True)
class ParcelRef:
    """What is remembered of a parcel sent to review or hold, so that its examination
    result can be traced to its shipper, address and seller, and the learner can see
    which rules fired and what the rule set alone scored it."""

    shipper_id: str
    address: str
    seller: str = ""  # seller key, "" when the manifest named none
    rules: tuple[str, ...] = ()
    static_score: float = 0.0


@dataclass(frozen=True, slots=True)
class ReputationUpdate:
    """What one batch changes: new watermarks (with the expected old ones) and deltas."""

    watermarks: dict[Partition, tuple[int, int]]  # partition -> (expected, new)
    shippers: list[EntityDelta]
    addresses: list[tuple[str, list[str]]] = field(default_factory=list)  # key, shipper ids
    pairs: list[PairDelta] = field(default_factory=list)
    # parcels sent to review or hold, by parcel id
    examinable: list[tuple[str, ParcelRef]] = field(default_factory=list)
    sellers: list[EntityDelta] = field(default_factory=list)
    # decision digests of the batch's input records, stored with the update: (partition,
    # offset, digest); see outbox.py
    outbox: list[tuple[Partition, int, bytes]] = field(default_factory=list)
    # outputs produced up to these offsets: their digests can go
    prune: dict[Partition, int] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.watermarks and not self.prune


@dataclass(frozen=True, slots=True)
class ExamDelta:
    """One examination result traced to its parcel's shipper, address and seller."""

    exam_id: str
    parcel_id: str
    shipper_id: str
    address: str
    violation: bool  # outcome "violation" or "seized"
    examined_ts_ms: int = 0
    seller: str = ""
    rules: tuple[str, ...] = ()  # rules that fired when the parcel was scored
    static_score: float = 0.0  # its rule-set score (before learned adjustments)


@dataclass(slots=True)
class ShipperState:
    """A shipper's (or seller's) state. Lifetime counts, plus the recent-weighted
    counts (``recent_*``, halved every half-life, brought up to date at ``recent_t_ms``)
    that the rules read."""

    seen: int = 0
    value_usd: float = 0.0
    holds: int = 0
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    days: dict[int, int] = field(default_factory=dict)  # the last 8 days only
    exams: int = 0
    violations: int = 0  # outcomes "violation" or "seized"
    recent_t_ms: float = 0.0
    recent_seen: float = 0.0
    recent_holds: float = 0.0
    recent_exams: float = 0.0
    recent_violations: float = 0.0

    def add_recent(self, at_ms: float, deltas: Sequence[float], half_life_ms: float) -> None:
        """Decayed add of (seen, holds, exams, violations) observed at ``at_ms``."""
        old = (self.recent_seen, self.recent_holds, self.recent_exams, self.recent_violations)
        self.recent_t_ms, new = decay_add(self.recent_t_ms, old, at_ms, deltas, half_life_ms)
        self.recent_seen, self.recent_holds, self.recent_exams, self.recent_violations = new


def batch_partitions(records: list[InRecord]) -> list[Partition]:
    return sorted({(r.topic, r.partition) for r in records})


def _entity_deltas(
    ids: list[str],
    idx: npt.NDArray[np.int64],
    value_usd: F64,
    held: npt.NDArray[np.bool_],
    ts: npt.NDArray[np.int64],
    with_days: bool,
) -> list[EntityDelta]:
    """Per entity of the batch: parcels, value, holds, first/last time, parcels per day."""
    n = len(ids)
    if not n or not len(idx):
        return []
    seen = np.bincount(idx, minlength=n)
    value = np.bincount(idx, weights=value_usd, minlength=n)
    holds = np.bincount(idx, weights=held, minlength=n)
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.zeros(n, dtype=np.int64)
    np.minimum.at(first, idx, ts)
    np.maximum.at(last, idx, ts)
    per_days: dict[int, list[tuple[int, int]]] = {}
    if with_days:
        combos, counts = np.unique(idx * 1_000_000 + ts // DAY_MS, return_counts=True)
        for combo, count in zip(combos.tolist(), counts.tolist(), strict=True):
            per_days.setdefault(combo // 1_000_000, []).append((combo % 1_000_000, count))
    return [
        EntityDelta(ids[j], int(seen[j]), float(value[j]), int(holds[j]), int(first[j]),
                    int(last[j]), tuple(per_days.get(j, ())))
        for j in np.flatnonzero(seen).tolist()
    ]  # fmt: skip


def compute_update(
    records: list[InRecord],
    parsed: ParsedBatch,
    shippers: ShipperIndex,
    value_usd: F64,
    lanes: I8,
    event_ts_ms: npt.NDArray[np.int64],
    watermarks: dict[Partition, int],
    examined: I8 | None = None,
    masks: npt.NDArray[np.int64] | None = None,
    rule_codes: Sequence[str] = (),
    static_scores: F64 | None = None,
) -> ReputationUpdate:
    """The reputation change of one batch, leaving out records already applied. ``lanes``
    are the risk lanes (holds count against the shipper); ``examined`` the final lanes,
    random samples included (those parcels are remembered for their exam results, with
    the rules of ``masks`` (bit i = ``rule_codes[i]``) and the rule-set score)."""
    new_wm: dict[Partition, int] = {}
    fresh = np.zeros(len(records), dtype=np.bool_)
    for i, r in enumerate(records):
        part = (r.topic, r.partition)
        applied = watermarks.get(part, -1)
        if r.offset > applied:
            fresh[i] = True
        if r.offset > new_wm.get(part, applied):
            new_wm[part] = r.offset
    marks = {p: (watermarks.get(p, -1), off) for p, off in new_wm.items()}
    if not len(parsed):
        return ReputationUpdate(watermarks=marks, shippers=[])
    take = fresh[np.asarray(parsed.record_index, dtype=np.int64)]
    sidx = shippers.parcel_shipper[take]
    ts = event_ts_ms[take]
    held = lanes[take] == LANE_HOLD
    value = value_usd[take]
    deltas = _entity_deltas(shippers.ids, sidx, value, held, ts, with_days=True)
    sellers: list[EntityDelta] = []
    if len(shippers.parcel_seller):
        has = shippers.parcel_seller[take] >= 0
        sellers = _entity_deltas(shippers.sellers, shippers.parcel_seller[take][has],
                                 value[has], held[has], ts[has], with_days=False)  # fmt: skip
    if not len(shippers.parcel_address):
        return ReputationUpdate(watermarks=marks, shippers=deltas, sellers=sellers)
    n_ship = max(len(shippers.ids), 1)
    combos = np.unique(shippers.parcel_address[take] * n_ship + sidx)
    by_address: dict[str, list[str]] = {}
    for c in combos.tolist():
        by_address.setdefault(shippers.addresses[c // n_ship], []).append(shippers.ids[c % n_ship])
    pairs: list[PairDelta] = []
    pidx_all = shippers.parcel_pair[take]
    eligible = pidx_all >= 0
    if eligible.any():
        pidx = pidx_all[eligible]
        pts = ts[eligible]
        np_ = len(shippers.pairs)
        p_parcels = np.bincount(pidx, minlength=np_)
        p_value = np.bincount(pidx, weights=value[eligible], minlength=np_)
        p_first = np.full(np_, np.iinfo(np.int64).max, dtype=np.int64)
        p_last = np.zeros(np_, dtype=np.int64)
        np.minimum.at(p_first, pidx, pts)
        np.maximum.at(p_last, pidx, pts)
        pairs = [
            PairDelta(shippers.pairs[j], int(p_first[j]), int(p_last[j]), float(p_value[j]),
                      int(p_parcels[j]))
            for j in np.flatnonzero(p_parcels).tolist()
        ]  # fmt: skip
    final = examined if examined is not None else lanes
    examinable = []
    rules_of: dict[int, tuple[str, ...]] = {}
    for i in np.flatnonzero(take & (final >= 1)).tolist():
        mask = int(masks[i]) if masks is not None else 0
        if mask not in rules_of:
            rules_of[mask] = tuple(c for b, c in enumerate(rule_codes) if mask >> b & 1)
        seller_i = int(shippers.parcel_seller[i]) if len(shippers.parcel_seller) else -1
        ref = ParcelRef(
            shippers.ids[shippers.parcel_shipper[i]],
            shippers.addresses[shippers.parcel_address[i]],
            shippers.sellers[seller_i] if seller_i >= 0 else "",
            rules_of[mask],
            float(static_scores[i]) if static_scores is not None else 0.0,
        )
        examinable.append((parsed.manifests[i].parcel_id, ref))
    return ReputationUpdate(marks, deltas, sorted(by_address.items()), pairs, examinable, sellers)


def view_from_states(
    states: list[ShipperState | None], today: int, now_ms: float, half_life_ms: float
) -> ReputationView:
    """The view of a batch's shippers from their states, recent counts decayed to now."""
    n = len(states)
    view = ReputationView.empty(n)
    assert view.day_counts is not None and view.exams is not None and view.violations is not None
    assert view.recent_seen is not None and view.recent_holds is not None
    t = np.zeros(n)
    for i, st in enumerate(states):
        if st is not None:
            view.seen[i] = st.seen
            view.holds[i] = st.holds
            view.value_usd[i] = st.value_usd
            view.first_seen_ms[i] = st.first_seen_ms
            for k in range(8):
                view.day_counts[i, k] = st.days.get(today - k, 0)
            t[i] = st.recent_t_ms
            view.recent_seen[i] = st.recent_seen
            view.recent_holds[i] = st.recent_holds
            view.exams[i] = st.recent_exams
            view.violations[i] = st.recent_violations
    f = decay_factor(t, now_ms, half_life_ms)
    for arr in (view.recent_seen, view.recent_holds, view.exams, view.violations):
        arr *= f
    return view


@dataclass
class InMemoryStore:
    """The in-memory twin of the Redis store: same contract, no network (tests, backtests).
    Distinct shippers per address are exact sets here (Redis: HyperLogLog, ~1 % error)."""

    shippers: dict[str, ShipperState] = field(default_factory=dict)
    watermarks: dict[Partition, int] = field(default_factory=dict)
    addresses: dict[str, set[str]] = field(default_factory=dict)
    pairs: dict[str, list[float]] = field(default_factory=dict)  # start_ms, value, parcels
    window_ms: float = 72 * 3_600_000.0
    half_life_ms: float = DEFAULT_HALF_LIFE_MS
    parcels: dict[str, ParcelRef] = field(default_factory=dict)
    address_violations: dict[str, tuple[float, float]] = field(default_factory=dict)  # t, v
    sellers: dict[str, ShipperState] = field(default_factory=dict)
    exams_applied: set[str] = field(default_factory=set)
    learner: LearnerState = field(default_factory=LearnerState)
    learner_history: list[LearnerState] = field(default_factory=list)
    outbox: dict[Partition, dict[int, bytes]] = field(default_factory=dict)

    def read_learner(self) -> LearnerState:
        return self.learner

    def read_outbox(
        self, wanted: list[tuple[Partition, int]]
    ) -> dict[tuple[Partition, int], bytes]:
        return {(p, o): self.outbox[p][o] for p, o in wanted if o in self.outbox.get(p, {})}

    def lookup_parcels(self, parcel_ids: list[str]) -> dict[str, ParcelRef]:
        return {p: self.parcels[p] for p in parcel_ids if p in self.parcels}

    def exams_seen(self, exam_ids: list[str]) -> list[bool]:
        return [e in self.exams_applied for e in exam_ids]

    def apply_exams(
        self, deltas: list[ExamDelta], learner: tuple[int, LearnerState] | None = None
    ) -> list[bool] | None:
        """Apply each result once (by exam id); returns which were new. With ``learner``
        (expected version, new state): all or nothing, None when the version moved or a
        result was applied meanwhile."""
        if learner is not None:
            if self.learner.version != learner[0] or any(
                d.exam_id in self.exams_applied for d in deltas
            ):
                return None
            self.learner = learner[1]
            self.learner_history.insert(0, learner[1])
        applied = []
        hl = self.half_life_ms
        for d in deltas:
            if d.exam_id in self.exams_applied:
                applied.append(False)
                continue
            self.exams_applied.add(d.exam_id)
            v = int(d.violation)
            entities = [self.shippers.setdefault(d.shipper_id, ShipperState())]
            if d.seller:
                entities.append(self.sellers.setdefault(d.seller, ShipperState()))
            for st in entities:
                st.exams += 1
                st.violations += v
                st.add_recent(d.examined_ts_ms, (0.0, 0.0, 1.0, float(v)), hl)
            if v:
                t, old = self.address_violations.get(d.address, (0.0, 0.0))
                t, (new,) = decay_add(t, (old,), d.examined_ts_ms, (1.0,), hl)
                self.address_violations[d.address] = (t, new)
            applied.append(True)
        return applied

    def read(
        self, keys: ShipperIndex, partitions: list[Partition]
    ) -> tuple[ReputationView, dict[Partition, int]]:
        hl = self.half_life_ms
        base = view_from_states([self.shippers.get(s) for s in keys.ids], keys.today,
                                keys.now_ms, hl)  # fmt: skip
        addr = np.array([float(len(self.addresses.get(a, ()))) for a in keys.addresses])
        av = [self.address_violations.get(a, (0.0, 0.0)) for a in keys.addresses]
        addr_viol = np.array([v for _t, v in av]) * decay_factor(
            np.array([t for t, _v in av]), keys.now_ms, hl
        )
        pair_rows = [self.pairs.get(p, [0.0, 0.0, 0.0]) for p in keys.pairs]
        pr = np.array(pair_rows, dtype=np.float64).reshape(len(pair_rows), 3)
        sellers = view_from_states([self.sellers.get(s) for s in keys.sellers], keys.today,
                                   keys.now_ms, hl)  # fmt: skip
        view = ReputationView(base.seen, base.holds, base.value_usd, base.first_seen_ms,
                              addr, pr[:, 0].copy(), pr[:, 1].copy(), pr[:, 2].copy(),
                              base.day_counts, base.exams, base.violations, addr_viol,
                              base.recent_seen, base.recent_holds, sellers.seen,
                              sellers.recent_seen, sellers.recent_holds, sellers.exams,
                              sellers.violations)  # fmt: skip
        marks = {p: self.watermarks[p] for p in partitions if p in self.watermarks}
        return view, marks

    def _apply_entity(self, table: dict[str, ShipperState], d: EntityDelta) -> None:
        st = table.setdefault(d.entity_id, ShipperState())
        st.seen += d.seen
        st.value_usd += d.value_usd
        st.holds += d.holds
        if not st.first_seen_ms or d.first_seen_ms < st.first_seen_ms:
            st.first_seen_ms = d.first_seen_ms
        st.last_seen_ms = max(st.last_seen_ms, d.last_seen_ms)
        st.add_recent(d.last_seen_ms, (float(d.seen), float(d.holds), 0.0, 0.0), self.half_life_ms)
        for day, count in d.days:
            st.days[day] = st.days.get(day, 0) + count
        if d.days:
            newest = max(st.days)
            for day in [x for x in st.days if x <= newest - 8]:
                del st.days[day]

    def apply(self, update: ReputationUpdate) -> bool:
        """Apply atomically if the expected watermarks still hold; False on a conflict."""
        for part, (expected, _new) in update.watermarks.items():
            if self.watermarks.get(part, -1) != expected:
                return False
        for d in update.shippers:
            self._apply_entity(self.shippers, d)
        for d in update.sellers:
            self._apply_entity(self.sellers, d)
        for address, shipper_ids in update.addresses:
            self.addresses.setdefault(address, set()).update(shipper_ids)
        for parcel_id, ref in update.examinable:
            self.parcels[parcel_id] = ref
        for p in update.pairs:
            row = self.pairs.get(p.pair)
            if row is None or row[0] <= 0 or p.last_ms - row[0] > self.window_ms:
                self.pairs[p.pair] = [float(p.first_ms), p.value_usd, float(p.parcels)]
            else:
                row[1] += p.value_usd
                row[2] += p.parcels
        for part, offset, digest in update.outbox:
            self.outbox.setdefault(part, {})[offset] = digest
        for part, upto in update.prune.items():
            kept = self.outbox.get(part, {})
            for off in [o for o in kept if o <= upto]:
                del kept[off]
        for part, (_expected, new) in update.watermarks.items():
            self.watermarks[part] = new
        return True
