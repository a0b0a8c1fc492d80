"""Shipper reputation: the per-batch update, its idempotency rule, and an in-memory store.

Every state change carries the Kafka offsets it came from. A store keeps, per input
partition, the last offset applied (the watermark) and applies a batch's update only if the
watermarks it was computed against are still current (compare-and-set). Records at or
below a watermark are left out of the update, so a batch redelivered after a crash changes
nothing twice. The Redis store (``adapters/redis_store.py``) implements the same contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from parcel_stream.features import ReputationView, ShipperIndex
from parcel_stream.parse import InRecord, ParsedBatch

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
LANE_HOLD = 2
DAY_MS = 86_400_000

Partition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ShipperDelta:
    shipper_id: str
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
class ReputationUpdate:
    """What one batch changes: new watermarks (with the expected old ones) and deltas."""

    watermarks: dict[Partition, tuple[int, int]]  # partition -> (expected, new)
    shippers: list[ShipperDelta]
    addresses: list[tuple[str, list[str]]] = field(default_factory=list)  # key, shipper ids
    pairs: list[PairDelta] = field(default_factory=list)
    # parcels sent to review or hold: (parcel id, shipper id, address key), so that an
    # examination result can later be traced to its shipper and address
    examinable: list[tuple[str, str, str]] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not self.watermarks


@dataclass(frozen=True, slots=True)
class ExamDelta:
    """One examination result traced to its parcel's shipper and address."""

    exam_id: str
    parcel_id: str
    shipper_id: str
    address: str
    violation: bool  # outcome "violation" or "seized"


@dataclass(slots=True)
class ShipperState:
    seen: int = 0
    value_usd: float = 0.0
    holds: int = 0
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    days: dict[int, int] = field(default_factory=dict)  # the last 8 days only
    exams: int = 0
    violations: int = 0  # outcomes "violation" or "seized"


def batch_partitions(records: list[InRecord]) -> list[Partition]:
    return sorted({(r.topic, r.partition) for r in records})


def compute_update(
    records: list[InRecord],
    parsed: ParsedBatch,
    shippers: ShipperIndex,
    value_usd: F64,
    lanes: I8,
    event_ts_ms: npt.NDArray[np.int64],
    watermarks: dict[Partition, int],
    examined: I8 | None = None,
) -> ReputationUpdate:
    """The reputation change of one batch, leaving out records already applied. ``lanes``
    are the risk lanes (holds count against the shipper); ``examined`` the final lanes,
    random samples included (those parcels are remembered for their exam results)."""
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
    take_full = take
    sidx = shippers.parcel_shipper[take]
    n = len(shippers.ids)
    seen = np.bincount(sidx, minlength=n)
    value = np.bincount(sidx, weights=value_usd[take], minlength=n)
    holds = np.bincount(sidx, weights=(lanes[take] == LANE_HOLD), minlength=n)
    ts = event_ts_ms[take]
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    last = np.zeros(n, dtype=np.int64)
    np.minimum.at(first, sidx, ts)
    np.maximum.at(last, sidx, ts)
    day_of = ts // DAY_MS
    day_combos, day_counts = np.unique(sidx * 1_000_000 + day_of, return_counts=True)
    per_shipper_days: dict[int, list[tuple[int, int]]] = {}
    for combo, count in zip(day_combos.tolist(), day_counts.tolist(), strict=True):
        per_shipper_days.setdefault(combo // 1_000_000, []).append((combo % 1_000_000, count))
    deltas = [
        ShipperDelta(
            shipper_id=shippers.ids[j],
            seen=int(seen[j]),
            value_usd=float(value[j]),
            holds=int(holds[j]),
            first_seen_ms=int(first[j]),
            last_seen_ms=int(last[j]),
            days=tuple(per_shipper_days.get(int(j), ())),
        )
        for j in np.flatnonzero(seen)
    ]
    if not len(shippers.parcel_address):
        return ReputationUpdate(watermarks=marks, shippers=deltas)
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
        p_value = np.bincount(pidx, weights=value_usd[take][eligible], minlength=np_)
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
    examinable = [
        (parsed.manifests[i].parcel_id, shippers.ids[shippers.parcel_shipper[i]],
         shippers.addresses[shippers.parcel_address[i]])
        for i in np.flatnonzero(take_full & (final >= 1)).tolist()
    ]  # fmt: skip
    return ReputationUpdate(marks, deltas, sorted(by_address.items()), pairs, examinable)


def view_from_states(states: list[ShipperState | None], today: int = 0) -> ReputationView:
    view = ReputationView.empty(len(states))
    assert view.day_counts is not None and view.exams is not None and view.violations is not None
    for i, st in enumerate(states):
        if st is not None:
            view.seen[i] = st.seen
            view.holds[i] = st.holds
            view.value_usd[i] = st.value_usd
            view.first_seen_ms[i] = st.first_seen_ms
            for k in range(8):
                view.day_counts[i, k] = st.days.get(today - k, 0)
            view.exams[i] = st.exams
            view.violations[i] = st.violations
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
    parcels: dict[str, tuple[str, str]] = field(default_factory=dict)  # -> shipper, address
    address_violations: dict[str, int] = field(default_factory=dict)
    exams_applied: set[str] = field(default_factory=set)

    def lookup_parcels(self, parcel_ids: list[str]) -> dict[str, tuple[str, str]]:
        return {p: self.parcels[p] for p in parcel_ids if p in self.parcels}

    def apply_exams(self, deltas: list[ExamDelta]) -> list[bool]:
        """Apply each result once (by exam id); returns which were new."""
        applied = []
        for d in deltas:
            if d.exam_id in self.exams_applied:
                applied.append(False)
                continue
            self.exams_applied.add(d.exam_id)
            st = self.shippers.setdefault(d.shipper_id, ShipperState())
            st.exams += 1
            if d.violation:
                st.violations += 1
                self.address_violations[d.address] = self.address_violations.get(d.address, 0) + 1
            applied.append(True)
        return applied

    def read(
        self, keys: ShipperIndex, partitions: list[Partition]
    ) -> tuple[ReputationView, dict[Partition, int]]:
        base = view_from_states([self.shippers.get(s) for s in keys.ids], keys.today)
        addr = np.array([float(len(self.addresses.get(a, ()))) for a in keys.addresses])
        addr_viol = np.array([float(self.address_violations.get(a, 0)) for a in keys.addresses])
        pair_rows = [self.pairs.get(p, [0.0, 0.0, 0.0]) for p in keys.pairs]
        pr = np.array(pair_rows, dtype=np.float64).reshape(len(pair_rows), 3)
        view = ReputationView(base.seen, base.holds, base.value_usd, base.first_seen_ms,
                              addr, pr[:, 0].copy(), pr[:, 1].copy(), pr[:, 2].copy(),
                              base.day_counts, base.exams, base.violations, addr_viol)  # fmt: skip
        marks = {p: self.watermarks[p] for p in partitions if p in self.watermarks}
        return view, marks

    def apply(self, update: ReputationUpdate) -> bool:
        """Apply atomically if the expected watermarks still hold; False on a conflict."""
        for part, (expected, _new) in update.watermarks.items():
            if self.watermarks.get(part, -1) != expected:
                return False
        for d in update.shippers:
            st = self.shippers.setdefault(d.shipper_id, ShipperState())
            st.seen += d.seen
            st.value_usd += d.value_usd
            st.holds += d.holds
            if not st.first_seen_ms or d.first_seen_ms < st.first_seen_ms:
                st.first_seen_ms = d.first_seen_ms
            st.last_seen_ms = max(st.last_seen_ms, d.last_seen_ms)
            for day, count in d.days:
                st.days[day] = st.days.get(day, 0) + count
            if d.days:
                newest = max(st.days)
                for day in [x for x in st.days if x <= newest - 8]:
                    del st.days[day]
        for address, shipper_ids in update.addresses:
            self.addresses.setdefault(address, set()).update(shipper_ids)
        for parcel_id, shipper_id, address in update.examinable:
            self.parcels[parcel_id] = (shipper_id, address)
        for p in update.pairs:
            row = self.pairs.get(p.pair)
            if row is None or row[0] <= 0 or p.last_ms - row[0] > self.window_ms:
                self.pairs[p.pair] = [float(p.first_ms), p.value_usd, float(p.parcels)]
            else:
                row[1] += p.value_usd
                row[2] += p.parcels
        for part, (_expected, new) in update.watermarks.items():
            self.watermarks[part] = new
        return True
