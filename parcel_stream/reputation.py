"""Shipper reputation: a batch's update, its compare-and-set rule, and an in-memory store.

A batch's update is the state its parcels left behind (``sequence.py``), with what it was
computed against: per input partition the last offset applied (the watermark), per
entity and pair the version read, per parcel id the content remembered. A store applies
it only if all of these are still current; otherwise nothing is written and the batch is
scored again on the current state. Records at or below a watermark are left out of the
update, so a batch redelivered after a crash changes nothing twice. The Redis store
(``adapters/redis_store.py``) implements the same contract.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import repeat

import numpy as np
import numpy.typing as npt

from parcel_stream.features import Combos, ShipperIndex
from parcel_stream.learner import LearnerState
from parcel_stream.parse import InRecord
from parcel_stream.repeats import HASH_CHARS
from parcel_stream.risk import RiskRef, RiskTable, as_ref
from parcel_stream.sequence import (
    DAY_SLOTS,
    ENTITY_FIELDS,
    FIRST,
    HOLDS,
    LAST,
    PAIR_FIELDS,
    SEEN,
    EntityTable,
    Sequenced,
    StoredState,
)

F64 = npt.NDArray[np.float64]
I8 = npt.NDArray[np.int8]
I64 = npt.NDArray[np.int64]
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
class EntityWrite:
    """A shipper's (or seller's) state after a batch, written if the stored version is
    still ``expected_ver`` (0: absent). ``vals`` in the order of ``ENTITY_FIELDS``."""

    entity_id: str
    expected_ver: int
    vals: tuple[float, ...]
    newest_day: int = 0
    days: tuple[tuple[int, int], ...] = ()  # live (Unix day, parcels) after the batch


@dataclass(frozen=True, slots=True)
class EntityWrites(Sequence[EntityWrite]):
    """A batch's shipper (or seller) writes in columns, as the batch step builds them: one
    row each, so that a store formats them over the batch rather than one object at a
    time (a sequence of :class:`EntityWrite` to whoever reads them one by one).
    ``day_counts[k]``: the parcels of the ``DAY_SLOTS`` days up to ``newest_day[k]``,
    oldest first (a count taken back to 0 stays 0, so that a store deletes it);
    ``newest_day`` 0: no day counts (sellers)."""

    ids: list[str]
    expected_ver: I64
    vals: F64  # [k, len(ENTITY_FIELDS)]
    newest_day: I64
    day_counts: I64  # [k, DAY_SLOTS]

    @classmethod
    def of(cls, writes: Iterable[EntityWrite]) -> EntityWrites:
        ws = list(writes)
        counts = np.zeros((len(ws), DAY_SLOTS), dtype=np.int64)
        for k, w in enumerate(ws):
            first = w.newest_day - DAY_SLOTS + 1
            for day, count in w.days:
                if first <= day <= w.newest_day:
                    counts[k, day - first] = count
        vals = np.array([w.vals for w in ws], dtype=np.float64).reshape(len(ws), -1) if ws \
            else np.zeros((0, len(ENTITY_FIELDS)))  # fmt: skip
        return cls([w.entity_id for w in ws], np.array([w.expected_ver for w in ws], np.int64),
                   vals, np.array([w.newest_day for w in ws], np.int64), counts)  # fmt: skip

    @classmethod
    def of_table(cls, ids: list[str], before: EntityTable, after: EntityTable, rows: I64,
                 days: bool) -> EntityWrites:  # fmt: skip
        """Rows ``rows`` of a batch's entity table after the batch, with their stored
        versions before it (``days``: with their day counts)."""
        k = len(rows)
        counts = np.zeros((k, DAY_SLOTS), dtype=np.int64)
        newest = after.newest_day[rows] if days else np.zeros(k, dtype=np.int64)
        if days and k:
            slot_day = after.slot_day[rows]
            at = slot_day - (newest - (DAY_SLOTS - 1))[:, None]
            live = (slot_day >= 0) & (at >= 0) & (at < DAY_SLOTS)
            r, c = np.nonzero(live)
            counts[r, at[r, c]] = np.rint(after.slot_count[rows][r, c])
        return cls([ids[j] for j in rows.tolist()], before.ver[rows], after.vals[rows], newest,
                   counts)  # fmt: skip

    @classmethod
    def none(cls) -> EntityWrites:
        return cls.of(())

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> EntityWrite:  # type: ignore[override]
        if not -len(self.ids) <= k < len(self.ids):
            raise IndexError(k)
        newest = int(self.newest_day[k])
        first = newest - DAY_SLOTS + 1
        days = tuple((first + j, c) for j, c in enumerate(self.day_counts[k].tolist()) if c)
        return EntityWrite(self.ids[k], int(self.expected_ver[k]), tuple(self.vals[k].tolist()),
                           newest, days if newest else ())  # fmt: skip

    def __iter__(self) -> Iterator[EntityWrite]:
        return (self[k] for k in range(len(self.ids)))

    def take(self, rows: Sequence[int]) -> EntityWrites:
        at = np.asarray(rows, dtype=np.int64)
        return EntityWrites([self.ids[j] for j in rows], self.expected_ver[at], self.vals[at],
                            self.newest_day[at], self.day_counts[at])  # fmt: skip


def entity_columns(writes: Sequence[EntityWrite]) -> EntityWrites:
    """``writes`` in columns (as they are when the batch step made them)."""
    return writes if isinstance(writes, EntityWrites) else EntityWrites.of(writes)


@dataclass(frozen=True, slots=True)
class PairWrite:
    """A shipper-address pair's open split window after a batch (compare-and-set)."""

    pair: str  # "{address key}:{shipper id}"
    expected_ver: int
    start_ms: float
    value_usd: float
    parcels: float


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
    # the learned model's keys and features as scored (bytes: encoded, ``risk.encode_refs``;
    # a store decodes them)
    risk: RiskRef | bytes | None = None


@dataclass(frozen=True, slots=True)
class ReputationUpdate:
    """What one batch changes, applied all or nothing: new watermarks (with the expected
    old ones), entity and pair states (with their expected versions), remembered parcels
    (with the content hash each id is expected to have, "" = none)."""

    watermarks: dict[Partition, tuple[int, int]]  # partition -> (expected, new)
    shippers: Sequence[EntityWrite] = field(default_factory=EntityWrites.none)
    addresses: list[tuple[str, list[str]]] = field(default_factory=list)  # key, new shipper ids
    pairs: list[PairWrite] = field(default_factory=list)
    # parcels sent to review or hold, by parcel id
    examinable: list[tuple[str, ParcelRef]] = field(default_factory=list)
    sellers: Sequence[EntityWrite] = field(default_factory=EntityWrites.none)
    # decision digests of the batch's input records, stored with the update: (partition,
    # offset, digest); see outbox.py
    outbox: list[tuple[Partition, int, bytes]] = field(default_factory=list)
    # outputs produced up to these offsets: their digests can go
    prune: dict[Partition, int] = field(default_factory=dict)
    # remembered parcels: (parcel id, expected content hash or "", hash + msgpack)
    parcels: list[tuple[str, str, bytes]] = field(default_factory=list)
    # the learned model's capacity thresholds of each partition after the batch (msgpack)
    lanes: list[tuple[Partition, bytes]] = field(default_factory=list)
    # and its value norms: per partition the HS key ids and their rows [w, mean, M2, t]
    norms: list[tuple[Partition, npt.NDArray[np.uint64], F64]] = field(default_factory=list)

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
    risk: RiskRef | None = None  # the learned model's keys and features as scored
    risk_weight: float = 0.0  # the outcome's weight in the keys' counts (0: none)


_NAMED = 10  # ENTITY_FIELDS with an attribute of their own in ShipperState


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
    ver: int = 0  # bumped by every write (compare-and-set of the scoring path)
    newest_day: int = 0  # newest day of ``days``; days before newest - 15 are dropped
    # fields of ``sequence.ENTITY_FIELDS`` after the ten named above: a new per-entity
    # count needs no change here
    more: dict[str, float] = field(default_factory=dict)

    def row(self) -> tuple[float, ...]:
        """The values in the order of ``sequence.ENTITY_FIELDS``."""
        named = (float(self.seen), self.value_usd, float(self.holds), float(self.first_seen_ms),
                 float(self.last_seen_ms), self.recent_t_ms, self.recent_seen, self.recent_holds,
                 self.recent_exams, self.recent_violations)  # fmt: skip
        return named + tuple(self.more.get(f, 0.0) for f in ENTITY_FIELDS[_NAMED:])

    def set_row(self, vals: Sequence[float]) -> None:
        (seen, self.value_usd, holds, first, last, self.recent_t_ms, self.recent_seen,
         self.recent_holds, self.recent_exams, self.recent_violations) = vals[:_NAMED]  # fmt: skip
        self.seen, self.holds = round(seen), round(holds)
        self.first_seen_ms, self.last_seen_ms = int(first), int(last)
        self.more = dict(zip(ENTITY_FIELDS[_NAMED:], vals[_NAMED:], strict=True))

    def add_recent(self, at_ms: float, deltas: Sequence[float], half_life_ms: float) -> None:
        """Decayed add of (seen, holds, exams, violations) observed at ``at_ms``."""
        old = (self.recent_seen, self.recent_holds, self.recent_exams, self.recent_violations)
        self.recent_t_ms, new = decay_add(self.recent_t_ms, old, at_ms, deltas, half_life_ms)
        self.recent_seen, self.recent_holds, self.recent_exams, self.recent_violations = new


def batch_partitions(records: list[InRecord]) -> list[Partition]:
    return sorted({(r.topic, r.partition) for r in records})


def state_writes(
    idx: ShipperIndex, combos: Combos, stored: StoredState, seq: Sequenced
) -> tuple[EntityWrites, EntityWrites, list[PairWrite], list[tuple[str, list[str]]]]:
    """The entity, pair and address writes of a scored batch."""
    after = seq.state
    shippers = EntityWrites.of_table(idx.ids, stored.shippers, after.shippers,
                                     np.flatnonzero(seq.touched_ship), True)  # fmt: skip
    sellers = EntityWrites.of_table(idx.sellers, stored.sellers, after.sellers,
                                    np.flatnonzero(seq.touched_sell), False)  # fmt: skip
    pv = after.pairs.tolist()
    pairs = [
        PairWrite(idx.pairs[j], int(stored.pair_ver[j]), *pv[j])
        for j in np.flatnonzero(seq.touched_pair).tolist()
    ]
    # new (address, shipper) members: codes are address-major and sorted, so each
    # address's new shippers are one run, in shipper order (addresses in batch order)
    codes = combos.codes[np.flatnonzero(after.member & ~stored.member)]
    if not len(codes):
        return shippers, sellers, pairs, []
    address = codes // combos.n_ship
    names = list(map(idx.ids.__getitem__, (codes % combos.n_ship).tolist()))
    cut = (np.flatnonzero(np.diff(address)) + 1).tolist()
    keys = list(map(idx.addresses.__getitem__, address[[0, *cut]].tolist()))
    if len(keys) == len(names):  # one new shipper an address, the usual case
        return shippers, sellers, pairs, list(zip(keys, map(_one, names), strict=True))
    runs = map(names.__getitem__, map(slice, [0, *cut], [*cut, len(names)]))
    return shippers, sellers, pairs, list(zip(keys, runs, strict=True))


def _one(x: str) -> list[str]:
    return [x]


def examinable_refs(
    idx: ShipperIndex,
    parcel_ids: list[str],
    take: npt.NDArray[np.bool_],
    lanes: I8,
    masks: npt.NDArray[np.int64],
    rule_codes: Sequence[str],
    static_scores: F64,
    risk: dict[int, RiskRef | bytes] | None = None,
) -> list[tuple[str, ParcelRef]]:
    """Parcels sent to review or hold (final lanes), remembered for their exam results with
    the rules that fired and the rule-set score."""
    out = []
    rules_of: dict[int, tuple[str, ...]] = {}
    for i in np.flatnonzero(take & (lanes >= 1)).tolist():
        mask = int(masks[i])
        if mask not in rules_of:
            rules_of[mask] = tuple(c for b, c in enumerate(rule_codes) if mask >> b & 1)
        seller_i = int(idx.parcel_seller[i]) if len(idx.parcel_seller) else -1
        ref = ParcelRef(
            idx.ids[idx.parcel_shipper[i]],
            idx.addresses[idx.parcel_address[i]],
            idx.sellers[seller_i] if seller_i >= 0 else "",
            rules_of[mask],
            float(static_scores[i]),
            risk.get(i) if risk else None,
        )
        out.append((parcel_ids[i], ref))
    return out


def new_watermarks(
    records: list[InRecord], watermarks: dict[Partition, int]
) -> tuple[dict[Partition, tuple[int, int]], npt.NDArray[np.bool_]]:
    """(partition -> (expected, new) watermark, per record: above its watermark)."""
    new_wm: dict[Partition, int] = {}
    fresh = np.zeros(len(records), dtype=np.bool_)
    for i, r in enumerate(records):
        part = (r.topic, r.partition)
        applied = watermarks.get(part, -1)
        if r.offset > applied:
            fresh[i] = True
        if r.offset > new_wm.get(part, applied):
            new_wm[part] = r.offset
    return {p: (watermarks.get(p, -1), off) for p, off in new_wm.items()}, fresh


class EntityColumns(Mapping[str, ShipperState]):
    """The in-memory store's shippers (or sellers) in columns: a row per entity, the
    layout of :class:`EntityTable`, so a batch reads and writes its entities with one
    gather or scatter per column rather than an object per entity. Read one by one it is a
    mapping of :class:`ShipperState` (copies: change it with :meth:`put`)."""

    def __init__(self) -> None:
        self.row: dict[str, int] = {}
        self._cols = EntityTable.empty(0)
        self.exams = np.zeros(0, dtype=np.int64)
        self.violations = np.zeros(0, dtype=np.int64)

    def rows(self, ids: Sequence[str], create: bool = False) -> I64:
        """Each id's row (-1: absent, or a new row with ``create``)."""
        got = self.row.get
        rows = np.fromiter(map(got, ids, repeat(-1)), np.int64, len(ids))
        if create and (rows < 0).any():
            for k in np.flatnonzero(rows < 0).tolist():  # (an id can repeat)
                rows[k] = self.row.setdefault(ids[k], len(self.row))
            self._reserve(len(self.row))
        return rows

    def _reserve(self, n: int) -> None:
        have = len(self.exams)
        if n <= have:
            return
        grow = EntityTable.empty(max(n, 2 * have, 1024) - have)
        c = self._cols
        self._cols = EntityTable(*(np.concatenate([a, b]) for a, b in (
            (c.vals, grow.vals), (c.ver, grow.ver), (c.newest_day, grow.newest_day),
            (c.slot_day, grow.slot_day), (c.slot_count, grow.slot_count))))  # fmt: skip
        extra = np.zeros(len(grow.ver), dtype=np.int64)
        self.exams = np.concatenate([self.exams, extra])
        self.violations = np.concatenate([self.violations, extra])

    def table(self, ids: Sequence[str], days: bool = True) -> EntityTable:
        """The stored state of these entities (absent ones as ``EntityTable.empty``;
        ``days``: with their day counts)."""
        t = EntityTable.empty(len(ids))
        rows = self.rows(ids)
        at = np.flatnonzero(rows >= 0)
        if len(at):
            r, c = rows[at], self._cols
            t.vals[at], t.ver[at] = c.vals[r], c.ver[r]
            if days:
                t.newest_day[at], t.slot_day[at] = c.newest_day[r], c.slot_day[r]
                t.slot_count[at] = c.slot_count[r]
        return t

    def versions(self, ids: Sequence[str]) -> I64:
        rows = self.rows(ids)
        out = np.zeros(len(rows), dtype=np.int64)
        out[rows >= 0] = self._cols.ver[rows[rows >= 0]]
        return out

    def write(self, ws: EntityWrites) -> None:
        """Apply a batch's writes: values (counts and times whole, as a store keeps them),
        versions, and the day counts of those that carry them."""
        if not len(ws):
            return
        rows, c = self.rows(ws.ids, create=True), self._cols
        vals = ws.vals.copy()
        vals[:, [SEEN, HOLDS]] = np.round(vals[:, [SEEN, HOLDS]])
        vals[:, [FIRST, LAST]] = np.trunc(vals[:, [FIRST, LAST]])
        c.vals[rows], c.ver[rows] = vals, ws.expected_ver + 1
        dated = np.flatnonzero(ws.newest_day != 0)
        if len(dated):  # the ring of the DAY_SLOTS days up to the newest: a zero, no day
            r, newest = rows[dated], ws.newest_day[dated]
            day = newest[:, None] - (DAY_SLOTS - 1) + np.arange(DAY_SLOTS)
            counts = ws.day_counts[dated]
            slot = day % DAY_SLOTS
            c.newest_day[r] = newest
            c.slot_day[r[:, None], slot] = np.where(counts != 0, day, -1)
            c.slot_count[r[:, None], slot] = counts

    def __getitem__(self, entity_id: str) -> ShipperState:
        j = self.row[entity_id]
        c = self._cols
        st = ShipperState(ver=int(c.ver[j]), exams=int(self.exams[j]),
                          violations=int(self.violations[j]))  # fmt: skip
        st.set_row(c.vals[j].tolist())
        if c.newest_day[j]:
            st.newest_day, st.days = int(c.newest_day[j]), c.days(j)
        return st

    def put(self, entity_id: str, st: ShipperState) -> None:
        """Store one entity's state (an exam result's change)."""
        (j,) = self.rows([entity_id], create=True).tolist()
        c = self._cols
        c.vals[j], c.ver[j] = st.row(), st.ver
        c.slot_day[j], c.slot_count[j] = -1, 0.0
        c.set_days(j, st.newest_day, st.days)
        self.exams[j], self.violations[j] = st.exams, st.violations

    def __iter__(self) -> Iterator[str]:
        return iter(self.row)

    def __len__(self) -> int:
        return len(self.row)


@dataclass
class InMemoryStore:
    """The in-memory twin of the Redis store: same contract, no network (tests, backtests).
    Distinct shippers per address are exact sets (in Redis: sets of 60-bit hashes)."""

    shippers: EntityColumns = field(default_factory=EntityColumns)
    watermarks: dict[Partition, int] = field(default_factory=dict)
    addresses: dict[str, set[str]] = field(default_factory=dict)
    pairs: dict[str, list[float]] = field(default_factory=dict)  # start, value, parcels, ver
    window_ms: float = 72 * 3_600_000.0
    half_life_ms: float = DEFAULT_HALF_LIFE_MS
    parcels: dict[str, ParcelRef] = field(default_factory=dict)
    address_violations: dict[str, tuple[float, float]] = field(default_factory=dict)  # t, v
    sellers: EntityColumns = field(default_factory=EntityColumns)
    exams_applied: set[str] = field(default_factory=set)
    learner: LearnerState = field(default_factory=LearnerState)
    learner_history: list[LearnerState] = field(default_factory=list)
    outbox: dict[Partition, dict[int, bytes]] = field(default_factory=dict)
    remembered: dict[str, bytes] = field(default_factory=dict)  # parcel id -> hash + msgpack
    # the learned model's per-key counts: key id -> [examinations, violations, t]
    risk_rows: dict[int, list[float]] = field(default_factory=dict)
    risk_names: dict[int, str] = field(default_factory=dict)
    risk_evict_below: float = 0.25
    risk_half_life_ms: float = 180.0 * DAY_MS
    lane_state: dict[Partition, bytes] = field(default_factory=dict)
    norm_rows: dict[Partition, dict[int, list[float]]] = field(default_factory=dict)

    def read_norms(self, wanted: dict[Partition, npt.NDArray[np.uint64]]) -> dict[Partition, F64]:
        out = {}
        for part, ids in wanted.items():
            have = self.norm_rows.get(part, {})
            rows = np.full((len(ids), 4), np.nan)
            for j, k in enumerate(ids.tolist()):
                if k in have:
                    rows[j] = have[k]
            out[part] = rows
        return out

    def read_lanes(self, partitions: list[Partition]) -> dict[Partition, bytes]:
        return {p: self.lane_state[p] for p in partitions if p in self.lane_state}

    def read_risk(self, ids: npt.NDArray[np.uint64]) -> F64:
        return RiskTable(counts=self.risk_rows).rows(ids)

    def prune_risk(self, now_ms: float) -> int:
        """Drop the learned keys whose decayed examinations are under ``risk_evict_below``."""
        table = RiskTable(self.risk_half_life_ms)
        gone = [k for k, row in self.risk_rows.items()
                if table._decayed(row, now_ms)[0] < self.risk_evict_below]  # fmt: skip
        for k in gone:
            del self.risk_rows[k]
            self.risk_names.pop(k, None)
        return len(gone)

    def read_learner(self) -> LearnerState:
        return self.learner

    def read_outbox(
        self, wanted: list[tuple[Partition, int]]
    ) -> dict[tuple[Partition, int], bytes]:
        return {(p, o): self.outbox[p][o] for p, o in wanted if o in self.outbox.get(p, {})}

    def lookup_parcels(self, parcel_ids: list[str]) -> dict[str, ParcelRef]:
        found = {p: self.parcels[p] for p in parcel_ids if p in self.parcels}
        return {p: replace(r, risk=as_ref(r.risk)) if isinstance(r.risk, bytes) else r
                for p, r in found.items()}  # fmt: skip

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
            entities = [(self.shippers, d.shipper_id)]
            if d.seller:
                entities.append((self.sellers, d.seller))
            for entity_table, eid in entities:
                st = entity_table.get(eid) or ShipperState()
                st.ver += 1
                st.exams += 1
                st.violations += v
                st.add_recent(d.examined_ts_ms, (0.0, 0.0, 1.0, float(v)), hl)
                entity_table.put(eid, st)
            if d.risk is not None and d.risk_weight > 0:
                table = RiskTable(self.risk_half_life_ms, counts=self.risk_rows,
                                  names=self.risk_names)  # fmt: skip
                table.update(d.risk.ids, d.violation, d.risk_weight, float(d.examined_ts_ms),
                             d.risk.names())  # fmt: skip
            if v:
                t, old = self.address_violations.get(d.address, (0.0, 0.0))
                t, (new,) = decay_add(t, (old,), d.examined_ts_ms, (1.0,), hl)
                self.address_violations[d.address] = (t, new)
            applied.append(True)
        return applied

    def read_parcels(self, parcel_ids: list[str]) -> dict[str, bytes]:
        """Remembered parcels (content hash + msgpack) among these ids."""
        return {p: self.remembered[p] for p in parcel_ids if p in self.remembered}

    def read(
        self, keys: ShipperIndex, partitions: list[Partition], combos: Combos | None = None
    ) -> tuple[StoredState, dict[Partition, int]]:
        """The stored state of a batch's entities, as columns, and the watermarks."""
        combos = combos if combos is not None else Combos.of(keys)
        n_p = len(keys.pairs)
        shippers_at = list(map(self.addresses.get, keys.addresses))
        counts = np.array([len(got) if got else 0 for got in shippers_at], dtype=np.float64)
        # membership looked up only where the address has shippers stored
        member = np.zeros(len(combos.codes), dtype=np.bool_)
        address_of = combos.codes // max(combos.n_ship, 1)
        known = np.flatnonzero(counts[address_of] > 0)
        if len(known):
            ids = keys.ids
            member[known] = [ids[s] in shippers_at[a] for a, s in zip(
                address_of[known].tolist(), (combos.codes[known] % combos.n_ship).tolist(),
                strict=True)]  # fmt: skip
        violations = [self.address_violations.get(a, (0.0, 0.0)) for a in keys.addresses]
        tv = np.array(violations, dtype=np.float64).reshape(-1, 2)
        state = StoredState(
            self.shippers.table(keys.ids),
            self.sellers.table(keys.sellers, days=False),
            np.zeros((n_p, len(PAIR_FIELDS))), np.zeros(n_p, dtype=np.int64),
            counts, tv[:, 0].copy(), tv[:, 1].copy(), member,
        )  # fmt: skip
        rows = list(map(self.pairs.get, keys.pairs))
        at = [j for j, row in enumerate(rows) if row is not None]
        if at:
            stored = np.array([rows[j] for j in at], dtype=np.float64)
            state.pairs[at] = stored[:, :3]
            state.pair_ver[at] = stored[:, 3].astype(np.int64)
        marks = {p: self.watermarks[p] for p in partitions if p in self.watermarks}
        return state, marks

    def _conflict(self, update: ReputationUpdate) -> bool:
        for part, (expected, _new) in update.watermarks.items():
            if self.watermarks.get(part, -1) != expected:
                return True
        for table, writes in ((self.shippers, update.shippers), (self.sellers, update.sellers)):
            ws = entity_columns(writes)
            if len(ws) and (table.versions(ws.ids) != ws.expected_ver).any():
                return True
        for p in update.pairs:
            row = self.pairs.get(p.pair)
            if (int(row[3]) if row is not None else 0) != p.expected_ver:
                return True
        if update.parcels:  # each remembered as expected ("": not remembered)
            pids, contents, _raw = zip(*update.parcels, strict=True)
            known = {pid: c for pid, c in zip(pids, contents, strict=True) if c}
            remembered = self.remembered
            if remembered.keys() & set(pids) != known.keys():
                return True
            return any(remembered[pid][:HASH_CHARS].decode() != c for pid, c in known.items())
        return False

    def apply(self, update: ReputationUpdate) -> bool:
        """Apply atomically if the expected watermarks, versions and remembered parcels
        still hold; False on a conflict (the caller re-reads and scores again)."""
        if self._conflict(update):
            return False
        self.shippers.write(entity_columns(update.shippers))
        self.sellers.write(entity_columns(update.sellers))
        addresses = self.addresses
        for address, shipper_ids in update.addresses:
            got = addresses.get(address)
            if got is None:
                addresses[address] = set(shipper_ids)
            else:
                got.update(shipper_ids)
        # refs kept as the batch encoded them: decoded only when an exam result reads them
        self.parcels.update(update.examinable)
        for p in update.pairs:
            self.pairs[p.pair] = [p.start_ms, p.value_usd, p.parcels, float(p.expected_ver + 1)]
        if update.parcels:
            pids, _content, raws = zip(*update.parcels, strict=True)
            self.remembered.update(zip(pids, raws, strict=True))
        for part, offset, digest in update.outbox:
            self.outbox.setdefault(part, {})[offset] = digest
        for part, upto in update.prune.items():
            kept = self.outbox.get(part, {})
            for off in [o for o in kept if o <= upto]:
                del kept[off]
        for part, raw in update.lanes:
            self.lane_state[part] = raw
        for part, ids, rows in update.norms:
            have = self.norm_rows.setdefault(part, {})
            for k, row in zip(ids.tolist(), rows.tolist(), strict=True):
                have[k] = row
        for part, (_expected, new) in update.watermarks.items():
            self.watermarks[part] = new
        return True
