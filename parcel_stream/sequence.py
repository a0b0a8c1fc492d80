"""The stateful part of scoring, parcel by parcel in input order: one compiled pass.

A parcel's decision must depend on the feed and the state as of that parcel, never on how
the worker happened to batch the records. So the batch's parcels are taken in input order
and, for each one, this kernel

1. takes back the contribution of the parcel it amends (same id, different content),
2. fills the stateful feature rows of its column from the running state of its shipper,
   seller, consignee address and shipper-address pair (recent counts decayed to the
   parcel's own manifest time, day counts of the parcel's own day),
3. scores the column with the rule kernel (plus learned points) and picks its risk lane,
4. adds the parcel to the running state (a risk hold counts against its shipper).

The state a store reads and writes is exactly these running values (compare-and-set on a
version per entity), so scoring a feed in batches of 1 or 10,000, live or in a backtest,
performs the same arithmetic in the same order and gives the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numba import njit

from parcel_stream.feature_catalog import FEATURE_INDEX
from parcel_stream.features import SUSPEND_AT
from parcel_stream.kernels import score_column
from parcel_stream.rules import RuleSet

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I8 = npt.NDArray[np.int8]
B1 = npt.NDArray[np.bool_]

DAY_MS = 86_400_000
DAY_SLOTS = 16  # day counts kept per shipper: its newest day and the 15 before

# Shipper and seller state, one column each (the Redis hash fields have these names).
ENTITY_FIELDS = (
    "seen", "value_usd", "holds", "first_seen_ms", "last_seen_ms", "t", "rs", "rh", "re", "rv",
)  # fmt: skip
SEEN, VALUE, HOLDS, FIRST, LAST, T, RS, RH, RE, RV = range(len(ENTITY_FIELDS))
PAIR_FIELDS = ("start_ms", "value_usd", "parcels")
P_START, P_VALUE, P_PARCELS = range(len(PAIR_FIELDS))

# Parcel status in the batch.
NEW, REPEAT, AMEND = 0, 1, 2


@dataclass(slots=True)
class EntityTable:
    """Stored state of a batch's shippers (or sellers), aligned with the index's ids:
    ``vals[:, k]`` is ``ENTITY_FIELDS[k]``; ``ver`` the store's version (0 = absent);
    day counts in a ring of ``DAY_SLOTS`` slots (slot ``day % DAY_SLOTS``)."""

    vals: F64  # [n, len(ENTITY_FIELDS)]
    ver: I64
    newest_day: I64
    slot_day: I64  # [n, DAY_SLOTS]
    slot_count: F64  # [n, DAY_SLOTS]

    @classmethod
    def empty(cls, n: int) -> EntityTable:
        return cls(
            np.zeros((n, len(ENTITY_FIELDS))),
            np.zeros(n, dtype=np.int64),
            np.zeros(n, dtype=np.int64),
            np.full((n, DAY_SLOTS), -1, dtype=np.int64),
            np.zeros((n, DAY_SLOTS)),
        )

    def copy(self) -> EntityTable:
        return EntityTable(
            self.vals.copy(), self.ver.copy(), self.newest_day.copy(), self.slot_day.copy(),
            self.slot_count.copy(),
        )  # fmt: skip

    def days(self, j: int) -> dict[int, int]:
        """Entity ``j``'s live day counts (day -> parcels; a count taken back to 0 stays
        listed, so that a store deletes it)."""
        newest = int(self.newest_day[j])
        return {
            int(d): round(c)
            for d, c in zip(self.slot_day[j].tolist(), self.slot_count[j].tolist(), strict=True)
            if d >= 0 and d >= newest - (DAY_SLOTS - 1)
        }

    def set_days(self, j: int, newest: int, days: dict[int, int]) -> None:
        self.newest_day[j] = newest
        for d, c in days.items():
            if d >= newest - (DAY_SLOTS - 1):
                self.slot_day[j, d % DAY_SLOTS] = d
                self.slot_count[j, d % DAY_SLOTS] = c


@dataclass(slots=True)
class StoredState:
    """Everything a batch reads from the state store, as columns."""

    shippers: EntityTable
    sellers: EntityTable
    pairs: F64  # [n_pairs, len(PAIR_FIELDS)]
    pair_ver: I64
    address_count: F64  # distinct shippers stored per address
    address_t: F64  # recent-weighted violations at the address: reference time, value
    address_rv: F64
    member: B1  # per (address, shipper) combination of the batch: stored already

    @classmethod
    def empty(cls, n_ship: int, n_sell: int, n_addr: int, n_pair: int, n_combo: int) -> StoredState:
        return cls(
            EntityTable.empty(n_ship), EntityTable.empty(n_sell),
            np.zeros((n_pair, len(PAIR_FIELDS))), np.zeros(n_pair, dtype=np.int64),
            np.zeros(n_addr), np.zeros(n_addr), np.zeros(n_addr),
            np.zeros(n_combo, dtype=np.bool_),
        )  # fmt: skip


@dataclass(slots=True)
class Contribution:
    """Per parcel, the earlier contribution an amendment takes back: in-batch (``prior``
    >= 0, index of the earlier parcel) or stored (indices into the batch's entities)."""

    status: I8  # NEW, REPEAT or AMEND
    prior: I64  # earlier parcel of the batch it repeats or amends; -1: a stored one
    ship: I64
    sell: I64
    pair: I64
    ts_ms: F64
    value_usd: F64
    held: B1

    @classmethod
    def none(cls, n: int) -> Contribution:
        z = np.full(n, -1, dtype=np.int64)
        return cls(np.zeros(n, dtype=np.int8), z, z.copy(), z.copy(), z.copy(), np.zeros(n),
                   np.zeros(n), np.zeros(n, dtype=np.bool_))  # fmt: skip


@dataclass(slots=True)
class Sequenced:
    scores: F64
    static: F64  # before learned points
    masks: I64
    risk_lanes: I8
    state: StoredState  # the running state after the batch (what the store writes)
    touched_ship: B1
    touched_sell: B1
    touched_pair: B1


_ROWS = (
    "shipper_seen", "shipper_hold_ratio", "shipper_age_days", "shipper_today_parcels",
    "shipper_daily_baseline", "shipper_volume_ratio", "shipper_exams",
    "shipper_exam_violation_rate", "address_exam_violations", "shipper_enrolled",
    "shipper_suspended", "shipper_violations_per_parcel", "consignee_distinct_shippers",
    "pair_parcels", "pair_value_usd", "pair_value_to_threshold", "seller_seen",
    "seller_hold_ratio", "seller_exams", "seller_exam_violation_rate",
)  # fmt: skip
ROWS = np.array([FEATURE_INDEX[r] for r in _ROWS], dtype=np.int64)


@njit(cache=True, nogil=True)
def _decayed(value: float, t: float, at: float, hl: float) -> float:
    """A counter last brought up to date at ``t``, as worth at ``at`` (never more)."""
    if t <= 0.0 or at <= t:
        return value
    out: float = value * 2.0 ** (-(at - t) / hl)
    return out


@njit(cache=True, nogil=True)
def _decay_add(vals: F64, j: int, at: float, d_seen: float, d_holds: float, hl: float) -> None:
    """``reputation.decay_add`` on row ``j``'s (rs, rh, re, rv) at time ``at``."""
    t = vals[j, T]
    if t <= 0.0:
        t = at
    if at >= t:
        f = 2.0 ** (-(at - t) / hl)
        vals[j, T] = at
        vals[j, RS] = vals[j, RS] * f + d_seen
        vals[j, RH] = vals[j, RH] * f + d_holds
        vals[j, RE] = vals[j, RE] * f
        vals[j, RV] = vals[j, RV] * f
    else:
        g = 2.0 ** (-(t - at) / hl)
        vals[j, T] = t
        vals[j, RS] = vals[j, RS] + d_seen * g
        vals[j, RH] = vals[j, RH] + d_holds * g


@njit(cache=True, nogil=True)
def _day_count(newest: I64, slot_day: I64, slot_count: F64, j: int, day: int) -> float:
    k = day % DAY_SLOTS
    count = 0.0
    if slot_day[j, k] == day and day >= newest[j] - (DAY_SLOTS - 1):
        count = slot_count[j, k]
    return count


@njit(cache=True, nogil=True)
def _add_entity(
    vals: F64, newest: I64, slot_day: I64, slot_count: F64, j: int, ts: float, day: int,
    value: float, held: float, sign: float, days: bool, hl: float,
) -> None:  # fmt: skip
    """Add (sign 1) or take back (sign -1) one parcel of entity ``j``."""
    vals[j, SEEN] += sign
    vals[j, VALUE] += sign * value
    vals[j, HOLDS] += sign * held
    if sign > 0:
        if vals[j, FIRST] <= 0.0 or ts < vals[j, FIRST]:
            vals[j, FIRST] = ts
        if ts > vals[j, LAST]:
            vals[j, LAST] = ts
    _decay_add(vals, j, ts, sign, sign * held, hl)
    if not days:
        return
    if sign > 0 and day > newest[j]:
        newest[j] = day
    if day < newest[j] - (DAY_SLOTS - 1):
        return  # older than the days kept
    k = day % DAY_SLOTS
    if slot_day[j, k] != day:
        if sign < 0:
            return
        slot_day[j, k] = day
        slot_count[j, k] = 0.0
    slot_count[j, k] += sign


@njit(cache=True, nogil=True)
def _ratio(num: float, den: float) -> float:
    return num / max(den, 1e-9) if den > 1e-9 else 0.0


@njit(cache=True, nogil=True)
def _sequence_kernel(
    feats: F64, rows: I64,
    ship: I64, sell: I64, addr: I64, combo: I64, pair: I64, ts: F64, value: F64,
    status: I8, prior: I64, o_ship: I64, o_sell: I64, o_pair: I64, o_ts: F64, o_value: F64,
    o_held: B1,
    s_vals: F64, s_newest: I64, s_slot_day: I64, s_slot_count: F64, enrolled: F64,
    l_vals: F64, l_newest: I64, l_slot_day: I64, l_slot_count: F64,
    p_vals: F64, a_count: F64, a_t: F64, a_rv: F64, member: B1,
    cond_feature: I64, cond_op: I64, cond_value: F64, rule_start: I64, rule_count: I64,
    rule_scale: I64, weights: F64, active: I64, adjust: F64,
    review_score: float, hold_score: float, threshold_usd: float, window_ms: float, hl: float,
    out_static: F64, out_score: F64, out_mask: I64, out_lane: I8,
    t_ship: B1, t_sell: B1, t_pair: B1,
) -> None:  # fmt: skip
    n = ship.shape[0]
    n_rules = weights.shape[0]
    for i in range(n):
        if status[i] == REPEAT:
            continue
        if status[i] == AMEND:  # take the amended parcel's contribution back
            j = prior[i]
            if j >= 0:
                js, jl, jp = ship[j], sell[j], pair[j]
                jt, jv, jh = ts[j], value[j], 1.0 if out_lane[j] == 2 else 0.0
            else:
                js, jl, jp = o_ship[i], o_sell[i], o_pair[i]
                jt, jv, jh = o_ts[i], o_value[i], 1.0 if o_held[i] else 0.0
            jd = int(jt // DAY_MS)
            if js >= 0:
                _add_entity(s_vals, s_newest, s_slot_day, s_slot_count, js, jt, jd, jv, jh,
                            -1.0, True, hl)  # fmt: skip
                t_ship[js] = True
            if jl >= 0:
                _add_entity(l_vals, l_newest, l_slot_day, l_slot_count, jl, jt, jd, jv, jh,
                            -1.0, False, hl)  # fmt: skip
                t_sell[jl] = True
            if jp >= 0:
                start = p_vals[jp, P_START]
                if start > 0.0 and start <= jt and jt - start <= window_ms:
                    p_vals[jp, P_VALUE] -= jv
                    p_vals[jp, P_PARCELS] -= 1.0
                    t_pair[jp] = True
        s, at = ship[i], ts[i]
        day = int(at // DAY_MS)
        rs = _decayed(s_vals[s, RS], s_vals[s, T], at, hl)
        rh = _decayed(s_vals[s, RH], s_vals[s, T], at, hl)
        re = _decayed(s_vals[s, RE], s_vals[s, T], at, hl)
        rv = _decayed(s_vals[s, RV], s_vals[s, T], at, hl)
        first = s_vals[s, FIRST]
        today = _day_count(s_newest, s_slot_day, s_slot_count, s, day) + 1.0
        first_day = int(first // DAY_MS) if first > 0.0 else day
        known = min(max(day - first_day, 1), 7)
        past = 0.0
        for k in range(1, 8):
            past += _day_count(s_newest, s_slot_day, s_slot_count, s, day - k)
        baseline = past / known
        a = addr[i]
        distinct = a_count[a] + (0.0 if member[combo[i]] else 1.0)
        p = pair[i]
        if p >= 0:
            start = p_vals[p, P_START]
            if start <= 0.0 or at - start > window_ms:
                p_vals[p, P_START] = at
                p_vals[p, P_VALUE] = 0.0
                p_vals[p, P_PARCELS] = 0.0
            p_vals[p, P_VALUE] += value[i]
            p_vals[p, P_PARCELS] += 1.0
            t_pair[p] = True
            pp, pv = p_vals[p, P_PARCELS], p_vals[p, P_VALUE]
        else:
            pp, pv = 1.0, value[i]
        li = sell[i]
        if li >= 0:
            l_seen = l_vals[li, SEEN]
            l_rs = _decayed(l_vals[li, RS], l_vals[li, T], at, hl)
            l_rh = _decayed(l_vals[li, RH], l_vals[li, T], at, hl)
            l_re = _decayed(l_vals[li, RE], l_vals[li, T], at, hl)
            l_rv = _decayed(l_vals[li, RV], l_vals[li, T], at, hl)
        else:
            l_seen = l_rs = l_rh = l_re = l_rv = 0.0
        values = (
            s_vals[s, SEEN], _ratio(rh, rs), (at - first) / DAY_MS if first > 0.0 else -1.0,
            today, baseline, today / max(baseline, 1.0 / 7.0), re, _ratio(rv, re),
            _decayed(a_rv[a], a_t[a], at, hl), enrolled[s],
            enrolled[s] * (1.0 if rv >= SUSPEND_AT else 0.0), rv / max(rs, 1.0), distinct,
            pp, pv, pv / threshold_usd if threshold_usd > 0 else -1.0, l_seen,
            _ratio(l_rh, l_rs), l_re, _ratio(l_rv, l_re),
        )  # fmt: skip
        for k in range(len(values)):
            feats[rows[k], i] = values[k]
        static, mask = score_column(feats, i, cond_feature, cond_op, cond_value, rule_start,
                                    rule_count, rule_scale, weights, active)  # fmt: skip
        score = static
        for r in range(n_rules):
            if adjust[r] != 0.0:
                score += ((mask >> r) & 1) * adjust[r]
        score = min(max(score, 0.0), 100.0)
        lane = 2 if score >= hold_score else (1 if score >= review_score else 0)
        out_static[i], out_score[i], out_mask[i], out_lane[i] = static, score, mask, lane
        held = 1.0 if lane == 2 else 0.0
        _add_entity(s_vals, s_newest, s_slot_day, s_slot_count, s, at, day, value[i], held,
                    1.0, True, hl)  # fmt: skip
        t_ship[s] = True
        if li >= 0:
            _add_entity(l_vals, l_newest, l_slot_day, l_slot_count, li, at, day, value[i], held,
                        1.0, False, hl)  # fmt: skip
            t_sell[li] = True
        if not member[combo[i]]:
            member[combo[i]] = True
            a_count[a] += 1.0


@dataclass(frozen=True, slots=True)
class Keys:
    """Per parcel, the batch-local index of each of its entities."""

    ship: I64
    sell: I64
    addr: I64
    combo: I64
    pair: I64
    ts_ms: F64
    value_usd: F64


def run_sequence(
    feats: F64,
    keys: Keys,
    contrib: Contribution,
    stored: StoredState,
    enrolled: F64,
    ruleset: RuleSet,
    active: I64,
    adjust: F64 | None,
    window_ms: float,
    half_life_ms: float,
) -> Sequenced:
    """Fill the stateful rows of ``feats`` and score every non-repeat parcel in order;
    returns the scores and the state after the batch (``stored`` is left unchanged)."""
    n = keys.ship.shape[0]
    state = StoredState(
        stored.shippers.copy(), stored.sellers.copy(), stored.pairs.copy(),
        stored.pair_ver.copy(), stored.address_count.copy(), stored.address_t,
        stored.address_rv, stored.member.copy(),
    )  # fmt: skip
    sh, sl, rs = state.shippers, state.sellers, ruleset
    out = Sequenced(
        np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int8),
        state, np.zeros(len(sh.ver), dtype=np.bool_), np.zeros(len(sl.ver), dtype=np.bool_),
        np.zeros(len(state.pair_ver), dtype=np.bool_),
    )  # fmt: skip
    adj = adjust if adjust is not None else np.zeros(len(rs.weights))
    _sequence_kernel(
        feats, ROWS, keys.ship, keys.sell, keys.addr, keys.combo, keys.pair, keys.ts_ms,
        keys.value_usd, contrib.status, contrib.prior, contrib.ship, contrib.sell, contrib.pair,
        contrib.ts_ms, contrib.value_usd, contrib.held,
        sh.vals, sh.newest_day, sh.slot_day, sh.slot_count, enrolled,
        sl.vals, sl.newest_day, sl.slot_day, sl.slot_count,
        state.pairs, state.address_count, state.address_t, state.address_rv, state.member,
        rs.cond_feature, rs.cond_op, rs.cond_value, rs.rule_start, rs.rule_count, rs.rule_scale,
        rs.weights, active, np.ascontiguousarray(adj, dtype=np.float64),
        float(rs.review_score), float(rs.hold_score), float(rs.threshold_usd), float(window_ms),
        float(half_life_ms),
        out.static, out.scores, out.masks, out.risk_lanes,
        out.touched_ship, out.touched_sell, out.touched_pair,
    )  # fmt: skip
    return out
