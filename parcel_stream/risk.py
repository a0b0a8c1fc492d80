"""Learned risk: violation rates learned from examination outcomes, per key of a parcel,
combined by an online logistic model.

**Keys.** Each parcel has keys of several kinds (``KINDS``): its HS codes at 6, 4 and 2
digits, its origin and departure countries, crosses of them (HS6 x origin, HS6 x origin x
departure, origin x HS4, HS6 x value band, HS6 x weight band), its carrier, hub,
declarant, entry type, transport mode, shipper, seller, marketplace, consignee address
(the hashed key, never the address) and each of its ``attributes``.

**Rates.** For every key the table keeps decayed counts of examinations and violations
(halved every ``half_life_ms`` of manifest time), weighted by each outcome's inverse
selection probability. A key's violation rate is smoothed toward its parent's: HS6 toward
its HS4, HS4 toward its HS2, a cross toward its HS6, everything else toward the global
rate: ``(violations + m * parent) / (examinations + m)``. An unseen key therefore reads as
its parent, and a key's own record takes over as it is examined.

**Features.** The global log-odds; then one per kind group: the log-odds of the parcel's
rate minus the global log-odds (0 = no evidence), where a parcel has several keys of a
kind (items, attributes) the highest; then how far below its peers the parcel's USD per
kg lies (standard deviations under the learned norm of its main item's HS6, backing off
to HS4 and HS2; norms are learned from every parcel scored, not only examined ones); then
the rule set's score against the mean score of the parcels scored before it, / 100, so
the rules are a feature like the others.

**Model.** Logistic regression on those features, trained by SGD on each outcome with its
weight, L2 toward zero. It starts as the base rate (weight 1 on the global log-odds), a
little of each learned rate and the rule score as a prior, so its probabilities start near
the base rate and are calibrated by the outcomes.

**Point in time.** A parcel's features are computed when it is scored and kept with it;
when its outcome arrives it trains the model on those features (never on later
knowledge), and only then are its keys' counts updated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt
from numba import njit

from parcel_stream.model import Manifest
from parcel_stream.risk_keys import (
    ATTRIBUTE,
    FIRST_SINGLE,
    RULE,
    SINGLE_NAMING,
    SINGLES,
    KeyBatch,
    band,
    combine,
    hs_digits,
    part_id,
    rule_key,
)

F64 = npt.NDArray[np.float64]
U64 = npt.NDArray[np.uint64]
DAY_MS = 86_400_000

# Feature groups, in the order of the feature vector (after the intercept).
GROUPS: tuple[str, ...] = (
    "hs", "hs6_origin", "hs6_origin_departure", "origin_hs4", "hs6_value", "hs6_weight",
    "origin", "departure", "carrier", "hub", "declarant", "entry_type", "transport_mode",
    "shipper", "seller", "marketplace", "address", "attribute", "rule",
)  # fmt: skip
RULE_GROUP = GROUPS.index("rule")  # the rules that fired, each a key ("rule:CODE")
assert RULE_GROUP == RULE  # the worker's column of them (``risk_keys.with_rules``)
N_FEATURES = 2 + len(GROUPS) + 2  # intercept, global log-odds, groups, undervalued, rules
# The rule score's starting weight: 100 points of rules are 4 log-odds (x 55) before any
# outcome is known; the outcomes then set it.
RULE_PRIOR = 4.0
FEATURE_NAMES: tuple[str, ...] = ("intercept", "global", *GROUPS, "undervalued", "rule_score")
FIRST_GROUP = 2


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


@dataclass(frozen=True, slots=True)
class ParcelKeys:
    """The keys of one parcel: per group, the (key, parent key or "") pairs, and the same
    as ids (``risk_keys``: (key id, parent id or 0))."""

    groups: tuple[tuple[tuple[str, str], ...], ...]
    # value norms: the main item's HS6, HS4, HS2 keys (most specific first; empty when
    # the parcel has no usable code) and the parcel's log USD per kg
    norm_keys: tuple[str, ...] = ()
    log_usd_per_kg: float = 0.0
    ids: tuple[tuple[tuple[int, int], ...], ...] = ()

    def all_keys(self) -> list[str]:
        """Every key whose counts an outcome of this parcel updates (parents included)."""
        return list(self.named())

    def all_ids(self) -> list[int]:
        return list(self.named().values())

    def named(self) -> dict[str, int]:
        """Every key (parents included) with its id."""
        out: dict[str, int] = {}
        for pairs, id_pairs in zip(self.groups, self.ids, strict=True):
            for (key, parent), (kid, pid) in zip(pairs, id_pairs, strict=True):
                out[key] = kid
                if parent:
                    out[parent] = pid
        return out

    def parents(self) -> dict[int, int]:
        """Key id -> parent id (0: the global rate) for every key of the parcel."""
        out: dict[int, int] = {}
        for id_pairs in self.ids:
            for kid, pid in id_pairs:
                out.setdefault(kid, pid)
        return out


def parcel_keys(
    m: Manifest, address: str, value_usd: float, rules: Sequence[str] = ()
) -> ParcelKeys:
    """The parcel's keys by group (``GROUPS``), named and as ids; an HS key's parent is
    the next coarser HS level, a cross's parent its HS6 key (so unseen crosses read as
    their HS6); ``rules``: the codes of the rules that fired for it, each a key of its own
    (so the model learns each rule's violation rate from outcomes). The worker builds the
    same ids in columns (``risk_keys.key_batch``, ``risk_keys.with_rules``)."""
    parts = key_parts(m, address, value_usd, rules)
    groups, ids = zip(*map(parts.group, GROUPS), strict=True)
    norm_keys: tuple[str, ...] = ()
    main_value = -1.0
    for item, (code, io) in zip(m.items, parts.items, strict=True):
        got = _item_keys(code, io or parts.origin, parts.departure, parts.vband, parts.wband)
        if got is not None and item.value > main_value:
            main_value, norm_keys = item.value, got[3]
    per_kg = math.log(max(value_usd, 0.01) / max(m.gross_weight_kg, 0.001))
    return ParcelKeys(groups, norm_keys, per_kg, ids)


_PART_FIELDS = attrgetter(
    "origin_country", "carrier", "hub", "declarant", "entry_type", "transport_mode",
    "shipper.id", "seller", "attributes", "items",
)  # fmt: skip
_ITEM_PARTS = attrgetter("hs_code", "origin_country")
_SINGLE_NAMES = SINGLE_NAMING


def key_parts(m: Manifest, address: str, value_usd: float, rules: Sequence[str] = ()) -> KeyParts:
    """What names the parcel's keys (``KeyParts``)."""
    origin, carrier, hub, declarant, entry, mode, shipper, seller, attrs, items = _PART_FIELDS(m)
    departure = m.transit_countries[-1] if m.transit_countries else origin
    return KeyParts(
        [origin, departure, carrier, hub, declarant or "", entry or "", mode or "", shipper,
         f"{seller.id}@{seller.marketplace}" if seller else "",
         seller.marketplace if seller else "", address],
        band(value_usd), band(m.gross_weight_kg * 10),
        [(code, io or "") for code, io in map(_ITEM_PARTS, items)],
        attrs, list(dict.fromkeys(rules)),
    )  # fmt: skip


class KeyParts(msgspec.Struct, array_like=True, frozen=True):
    """What names a parcel's keys: its single keys' values (``SINGLES`` order; "" none),
    value and weight bands, items (HS code, the item's own origin or ""), attributes and
    the rules that fired. A held parcel keeps it with its ref in place of its keys' names,
    which are built from it only where they are read (its exam result stores them for
    ``learner show``; its learned reasons name the few keys they show), not for every
    held parcel as it is scored."""

    singles: list[str]
    vband: int
    wband: int
    items: list[tuple[str, str]]
    attributes: dict[str, str]
    rules: list[str]

    @property
    def origin(self) -> str:
        return self.singles[0]

    @property
    def departure(self) -> str:
        return self.singles[1]

    def group(self, g: str) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[int, int], ...]]:
        """Group ``g``'s (key, parent key or "") pairs, and the same as ids."""
        if g in _SINGLE_AT:
            prefix, optional = _SINGLE_NAMES[_SINGLE_AT[g]]
            value = self.singles[_SINGLE_AT[g]]
            if optional and not value:
                return (), ()
            key = prefix + value
            return ((key, ""),), ((part_id(key), 0),)
        if g == "attribute":  # (attribute keys are distinct)
            names = [f"attr:{k}={v}" for k, v in sorted(self.attributes.items())]
            return tuple((k, "") for k in names), tuple((part_id(k), 0) for k in names)
        if g == "rule":
            names = [rule_key(code) for code in self.rules]
            return tuple((k, "") for k in names), tuple((part_id(k), 0) for k in names)
        pairs: list[tuple[str, str]] = []
        id_pairs: list[tuple[int, int]] = []
        for code, io in self.items:
            got = _item_keys(code, io or self.origin, self.departure, self.vband, self.wband)
            if got is None:
                continue
            if g == "hs":
                pairs += got[0]
                id_pairs += got[1]
                continue
            for cg, pair, pair_ids in got[2]:
                if cg == g:
                    pairs.append(pair)
                    id_pairs.append(pair_ids)
        if len(self.items) == 1:  # its HS and cross pairs are distinct
            return tuple(pairs), tuple(id_pairs)
        keep = dict(zip(pairs, id_pairs, strict=True))  # each pair once, in order
        return tuple(keep), tuple(keep.values())

    def named(self) -> dict[str, int]:
        """Every key (parents included) with its id (as ``ParcelKeys.named``)."""
        groups, ids = zip(*map(self.group, GROUPS), strict=True)
        return ParcelKeys(groups, ids=ids).named()

    def name_of(self, g: str, key_id: int) -> str:
        """The name of the key ``key_id`` of group ``g`` (or of its parent). The same keys
        come back in reason after reason, so names are kept by id (a name is a function
        of its id), up to ``_NAMES_MAX``."""
        at = _SINGLE_AT.get(g)
        if at is not None and self.singles[at]:  # a single group's one key
            return _SINGLE_NAMES[at][0] + self.singles[at]
        got = _NAMES.get(key_id)
        if got is not None:
            return got
        for (key, parent), (kid, pid) in zip(*self.group(g), strict=True):
            if kid == key_id or pid == key_id:
                got = key if kid == key_id else parent
                break
        else:
            got = next((k for k, i in self.named().items() if i == key_id), None)
            if got is None:
                return f"#{key_id:016x}"
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        _NAMES[key_id] = got
        return got


_SINGLE_AT = {g: j for j, g in enumerate(GROUPS[FIRST_SINGLE:ATTRIBUTE])}
_NAMES: dict[int, str] = {}  # key id -> name (``KeyParts.name_of``)
_NAMES_MAX = 100_000
assert tuple(_SINGLE_AT) == SINGLES


_CROSSES = ("hs6_origin", "hs6_origin_departure", "origin_hs4", "hs6_value", "hs6_weight")
_Pair = tuple[str, str]
_Ids = tuple[int, int]
# an item's HS pairs, their ids, its crosses (group, pair, ids) and its value norm keys
_ItemKeys = tuple[tuple[_Pair, ...], tuple[_Ids, ...], tuple[tuple[str, _Pair, _Ids], ...],
                  tuple[str, ...]]  # fmt: skip


@lru_cache(maxsize=1 << 15)
def _item_keys(code: str, io: str, departure: str, vband: int, wband: int) -> _ItemKeys | None:
    """An item's HS keys and crosses (``parcel_keys``), named and as ids, and its value
    norm keys; None: a code under 4 digits. Items repeat (an HS code from an origin):
    each composed once."""
    d = hs_digits(code)
    if len(d) < 4:
        return None
    h6, h4, h2 = f"hs6:{d[:6]}", f"hs4:{d[:4]}", f"hs2:{d[:2]}"
    i6, i4, i2 = part_id(h6), part_id(h4), part_id(h2)
    hs: tuple[_Pair, ...] = ((h2, ""), (h4, h2))
    hs_ids: tuple[_Ids, ...] = ((i2, 0), (i4, i2))
    if len(d) >= 6:
        hs, hs_ids = (*hs, (h6, h4)), (*hs_ids, (i6, i4))
    d_id, v_id, w_id = part_id(f"d:{departure}"), part_id(f"v:{vband}"), part_id(f"w:{wband}")
    io_id = part_id(f"o:{io}")
    base, b_id = (h6, i6) if len(d) >= 6 else (h4, i4)
    c1 = combine(b_id, io_id)
    crosses = (
        ("hs6_origin", (f"{base}|o:{io}", base), (c1, b_id)),
        ("hs6_origin_departure", (f"{base}|o:{io}|d:{departure}", f"{base}|o:{io}"),
         (combine(c1, d_id), c1)),
        ("origin_hs4", (f"o:{io}|{h4}", h4), (combine(io_id, i4), i4)),
        ("hs6_value", (f"{base}|v:{vband}", base), (combine(b_id, v_id), b_id)),
        ("hs6_weight", (f"{base}|w:{wband}", base), (combine(b_id, w_id), b_id)),
    )  # fmt: skip
    norm = ((h6,) if len(d) >= 6 else ()) + (h4, h2)
    return hs, hs_ids, crosses, norm


@dataclass
class RiskTable:
    """Decayed, weighted examination and violation counts per key id (see the module)."""

    half_life_ms: float = 180.0 * DAY_MS
    prior: float = 10.0  # the weight of the parent's rate, in examinations
    counts: dict[int, list[float]] = field(default_factory=dict)  # key id -> [n, v, t]
    total: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    scored: int = 0  # parcels scored, and the mean of their rule scores
    score_mean: float = 0.0
    # value norms from every parcel scored: HS key id -> [weight, mean, M2, t] of log USD/kg
    norms: dict[int, list[float]] = field(default_factory=dict)
    norm_min: float = 20.0  # parcels a norm needs before it is used
    # the protocol's table keeps a running mean of the rule scores and learns the norms as
    # it scores; a live view of stored rows (``RiskState.table``) does neither
    track_scores: bool = True
    names: dict[int, str] = field(default_factory=dict)  # key id -> name, where known

    def _decayed(self, row: list[float], now_ms: float) -> tuple[float, float]:
        if row[2] <= 0 or now_ms <= row[2]:
            return row[0], row[1]
        f = 2.0 ** (-(now_ms - row[2]) / self.half_life_ms)
        return row[0] * f, row[1] * f

    def global_rate(self, now_ms: float) -> float:
        n, v = self._decayed(self.total, now_ms)
        return (v + 1.0) / (n + 2.0)  # a Laplace prior before any outcome

    def rate(self, key: int, parent_rate: float, now_ms: float) -> tuple[float, float]:
        """(smoothed rate, examinations) of the key ``key``."""
        row = self.counts.get(key)
        if row is None:
            return parent_rate, 0.0
        n, v = self._decayed(row, now_ms)
        return (v + self.prior * parent_rate) / (n + self.prior), n

    def _add(self, row: list[float], weight: float, y: float, at_ms: float) -> None:
        """Add an outcome at ``at_ms``: the row is brought up to it, or an outcome older
        than the row is added decayed to the row's time (as the Redis store does)."""
        if row[2] > 0 and at_ms < row[2]:
            weight *= 2.0 ** (-(row[2] - at_ms) / self.half_life_ms)
            row[0], row[1] = row[0] + weight, row[1] + weight * y
            return
        n, v = self._decayed(row, at_ms)
        row[0], row[1], row[2] = n + weight, v + weight * y, at_ms

    def update(
        self, keys: Sequence[int], violation: bool, weight: float, at_ms: float,
        names: Sequence[str] = (),
    ) -> None:  # fmt: skip
        y = 1.0 if violation else 0.0
        self._add(self.total, weight, y, at_ms)
        for key in keys:
            row = self.counts.get(key)
            if row is None:
                row = self.counts[key] = [0.0, 0.0, 0.0]
            self._add(row, weight, y, at_ms)
        for key, name in zip(keys, names, strict=False):
            self.names[key] = name

    def features(self, keys: ParcelKeys, rule_score: float, now_ms: float) -> F64:
        """The parcel's feature vector (``FEATURE_NAMES``) as of ``now_ms``: the reference
        implementation, one parcel at a time (``features_batch`` computes the same over a
        batch; a test keeps them equal)."""
        g_rate = self.global_rate(now_ms)
        g_logit = _logit(g_rate)
        x = np.zeros(N_FEATURES)
        x[0], x[1] = 1.0, g_logit
        parents = keys.parents()
        cache: dict[int, float] = {}

        def rate_of(key: int) -> float:
            got = cache.get(key)
            if got is None:
                parent = parents.get(key, 0)
                got = cache[key] = self.rate(key, rate_of(parent) if parent else g_rate,
                                             now_ms)[0]  # fmt: skip
            return got

        x[-2] = self._undervalued(keys, now_ms)
        for j, pairs in enumerate(keys.ids):
            if pairs:  # the riskiest key of the group
                x[FIRST_GROUP + j] = max(_logit(rate_of(key)) for key, _ in pairs) - g_logit
        x[-1] = (rule_score - self.score_mean) / 100.0
        if self.track_scores:
            self.scored += 1
            self.score_mean += (rule_score - self.score_mean) / self.scored
        return x

    def rows(self, ids: U64) -> F64:
        """[n, v, t] per key id (NaN for a key without counts), for ``features_batch``."""
        get = self.counts.get
        out = np.full((len(ids), 3), np.nan)
        for j, k in enumerate(ids.tolist()):
            row = get(k)
            if row is not None:
                out[j] = row
        return out

    def _undervalued(self, keys: ParcelKeys, now_ms: float) -> float:
        """How many standard deviations the parcel's USD per kg lies below the norm of its
        most specific HS level with enough parcels (clipped to +-5); then the parcel joins
        the norms. The reference of ``norms_batch``, one parcel at a time."""
        out = 0.0
        ids = [part_id(k) for k in keys.norm_keys]
        for key in ids:
            row = self.norms.get(key)
            if row is not None:
                w, mean, m2 = self._decayed_norm(row, now_ms)
                if w >= self.norm_min and m2 > 0:
                    out = max(-5.0, min(5.0, (mean - keys.log_usd_per_kg) / math.sqrt(m2 / w)))
                    break
        if not self.track_scores:
            return out
        for key in ids:
            row = self.norms.setdefault(key, [0.0, 0.0, 0.0, now_ms])
            w, mean, m2 = self._decayed_norm(row, now_ms)
            w += 1.0
            delta = keys.log_usd_per_kg - mean
            mean += delta / w
            m2 += delta * (keys.log_usd_per_kg - mean)
            row[0], row[1], row[2], row[3] = w, mean, m2, max(row[3], now_ms)
        return out

    def undervalued_batch(self, kb: KeyBatch, now_ms: F64) -> F64:
        """``_undervalued`` over a batch in feed order (``norms_batch``), the norms kept
        in this table."""
        slots, per_part = norm_slots(kb.norm_ids, np.zeros(len(now_ms), dtype=np.int64))
        ids = per_part[0][1] if per_part else np.zeros(0, dtype=np.uint64)
        rows = np.full((len(ids), 4), np.nan)
        for j, k in enumerate(ids.tolist()):
            row = self.norms.get(k)
            if row is not None:
                rows[j] = row
        under = norms_batch(slots, kb.log_usd_per_kg, now_ms, np.zeros(len(now_ms), np.bool_),
                            rows, self.half_life_ms, self.norm_min)  # fmt: skip
        for j, k in enumerate(ids.tolist()):
            if not np.isnan(rows[j, 0]):
                self.norms[k] = rows[j].tolist()
        return under

    def _decayed_norm(self, row: list[float], now_ms: float) -> tuple[float, float, float]:
        if now_ms <= row[3]:
            return row[0], row[1], row[2]
        f = 2.0 ** (-(now_ms - row[3]) / self.half_life_ms)
        return row[0] * f, row[1], row[2] * f

    def strongest(
        self, n: int, now_ms: float, min_exams: float = 5.0
    ) -> list[tuple[str, float, float]]:
        """The ``n`` keys whose rate is furthest above the global one: (name, rate, exams);
        a key whose name is not known shows as its id."""
        g = self.global_rate(now_ms)
        rows = []
        for key, row in self.counts.items():
            ex, v = self._decayed(row, now_ms)
            if ex >= min_exams:
                rows.append((self.names.get(key, f"#{key:016x}"),
                             (v + self.prior * g) / (ex + self.prior), ex))  # fmt: skip
        rows.sort(key=lambda r: -r[1])
        return rows[:n]


def norm_slots(
    norm_ids: U64, part: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], list[tuple[int, U64]]]:
    """Each parcel's norm rows as slots: per parcel and HS level the slot of its (partition,
    key), -1 for none; and per partition (in the order of ``np.unique(part)``) the key ids
    of its slots, numbered in that order."""
    slots = np.full(norm_ids.shape, -1, dtype=np.int64)
    ids: list[tuple[int, U64]] = []
    base = 0
    for p in np.unique(part).tolist():
        rows = np.flatnonzero(part == p)
        sub = norm_ids[rows]
        uniq, inv = np.unique(sub, return_inverse=True)
        inv = inv.reshape(sub.shape) + base
        keep = uniq != 0
        remap = np.full(len(uniq), -1, dtype=np.int64)
        remap[keep] = np.arange(int(keep.sum())) + base
        slots[rows] = np.where(sub != 0, remap[inv - base], -1)
        ids.append((p, uniq[keep]))
        base += int(keep.sum())
    return slots, ids


def norms_batch(
    slots: npt.NDArray[np.int64], log_usd_per_kg: F64, now_ms: F64,
    skip: npt.NDArray[np.bool_], rows: F64, half_life_ms: float, norm_min: float,
) -> F64:  # fmt: skip
    """The undervaluation feature of every parcel in order (``RiskTable._undervalued``):
    against its slots' norms (``rows``: [weight, mean, M2, t], NaN for none yet), which it
    then joins (``rows`` are updated in place). ``skip``: parcels that join nothing."""
    return _norms(slots, log_usd_per_kg, now_ms, skip, rows, half_life_ms, norm_min)


@njit(cache=True)
def _norms(
    slots: npt.NDArray[np.int64], x: F64, now: F64, skip: npt.NDArray[np.bool_], rows: F64,
    hl: float, norm_min: float,
) -> F64:  # pragma: no cover  # fmt: skip
    under = np.zeros(x.shape[0])
    for p in range(x.shape[0]):
        if skip[p]:
            continue
        t = now[p]
        for level in range(slots.shape[1]):
            s = slots[p, level]
            if s < 0 or np.isnan(rows[s, 0]):
                continue
            w, mean, m2, rt = rows[s, 0], rows[s, 1], rows[s, 2], rows[s, 3]
            if t > rt:
                f = 2.0 ** (-(t - rt) / hl)
                w, m2 = w * f, m2 * f
            if w >= norm_min and m2 > 0:
                under[p] = max(-5.0, min(5.0, (mean - x[p]) / math.sqrt(m2 / w)))
                break
        for level in range(slots.shape[1]):
            s = slots[p, level]
            if s < 0:
                continue
            if np.isnan(rows[s, 0]):
                rows[s, 0], rows[s, 1], rows[s, 2], rows[s, 3] = 0.0, 0.0, 0.0, t
            w, mean, m2, rt = rows[s, 0], rows[s, 1], rows[s, 2], rows[s, 3]
            if t > rt:
                f = 2.0 ** (-(t - rt) / hl)
                w, m2 = w * f, m2 * f
            w += 1.0
            delta = x[p] - mean
            mean += delta / w
            m2 += delta * (x[p] - mean)
            rows[s, 0], rows[s, 1], rows[s, 2], rows[s, 3] = w, mean, m2, max(rt, t)
    return under


def to_entries(keys: Sequence[ParcelKeys]) -> KeyBatch:
    """Parcels' keys as batch entries (parents first), as ``risk_keys.key_batch`` builds
    them from the manifests."""
    start, group, parent = [0], [], []
    ids: list[int] = []
    for k in keys:
        parents = k.parents()
        depth: dict[int, int] = {}

        def depth_of(key: int, parents: dict[int, int] = parents, depth: dict[int, int] = depth
                     ) -> int:  # fmt: skip
            got = depth.get(key)
            if got is None:
                p = parents.get(key, 0)
                got = depth[key] = depth_of(p) + 1 if p else 0
            return got

        rows = sorted(((depth_of(kid), j, kid, pid) for j, pairs in enumerate(k.ids)
                       for kid, pid in pairs), key=lambda r: r[0])  # fmt: skip
        at: dict[int, int] = {}
        for _d, j, kid, pid in rows:
            at.setdefault(kid, len(ids))
            group.append(j)
            ids.append(kid)
            parent.append(at[pid] if pid else -1)
        start.append(len(ids))
    norm_ids = np.array([[part_id(n) for n in k.norm_keys] + [0] * (3 - len(k.norm_keys))
                         for k in keys], dtype=np.uint64).reshape(len(keys), 3)  # fmt: skip
    return KeyBatch(np.array(start, dtype=np.int64), np.array(group, dtype=np.int64),
                    np.array(ids, dtype=np.uint64), np.array(parent, dtype=np.int64), norm_ids,
                    np.array([k.log_usd_per_kg for k in keys]))  # fmt: skip


def features_batch(
    kb: KeyBatch, pos: npt.NDArray[np.int64], rows: F64, total: Sequence[float], now_ms: F64,
    rule_scores: F64, score_pivot: F64, undervalued: F64, half_life_ms: float, prior: float,
) -> F64:  # fmt: skip
    """Every parcel's feature vector (``FEATURE_NAMES``), as ``RiskTable.features``
    computes it one parcel at a time: ``pos`` per entry of ``kb`` its row in ``rows``
    ([n, v, t], NaN for none: ``kb.unique``), ``total`` the global [n, v, t],
    ``score_pivot`` per parcel the rule score its rule feature is centred on,
    ``undervalued`` per parcel its value-norm feature."""
    return _features(kb.start, kb.group, kb.parent, pos, rows, np.asarray(total, np.float64),
                     now_ms, rule_scores, score_pivot, undervalued, half_life_ms, prior,
                     len(GROUPS))  # fmt: skip


@njit(cache=True)
def _clogit(p: float) -> float:  # pragma: no cover
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


@njit(cache=True, inline="always")
def _global_rate(total: F64, t: float, hl: float) -> float:  # pragma: no cover
    """The rate of all keys together at ``t`` (decayed [n, v, t]; a Laplace prior)."""
    gn, gv = total[0], total[1]
    if total[2] > 0 and t > total[2]:
        f = 2.0 ** (-(t - total[2]) / hl)
        gn, gv = gn * f, gv * f
    return float((gv + 1.0) / (gn + 2.0))


@njit(cache=True, inline="always")
def _rated(
    rows: F64, r: int, t: float, parent_rate: float, hl: float, prior: float
) -> tuple[float, float]:  # pragma: no cover
    """A key's smoothed rate at ``t`` and its decayed examinations, from its row ``r`` of
    [n, v, t] (NaN: none, so its parent's rate and none), as ``RiskTable.rate``."""
    rn, rv, rt = rows[r, 0], rows[r, 1], rows[r, 2]
    if np.isnan(rn):
        return parent_rate, 0.0
    if rt > 0 and t > rt:
        f = 2.0 ** (-(t - rt) / hl)
        rn, rv = rn * f, rv * f
    return (rv + prior * parent_rate) / (rn + prior), rn


@njit(cache=True)
def _features(
    start: npt.NDArray[np.int64], group: npt.NDArray[np.int64], parent: npt.NDArray[np.int64],
    pos: npt.NDArray[np.int64], rows: F64, total: F64, now: F64, scores: F64, pivot: F64,
    under: F64, hl: float, prior: float, n_groups: int,
) -> F64:  # pragma: no cover  # fmt: skip
    n = start.shape[0] - 1
    x = np.zeros((n, 2 + n_groups + 2))
    rate = np.empty(group.shape[0])
    best = np.empty(n_groups)
    for p in range(n):
        t = now[p]
        g_rate = _global_rate(total, t, hl)
        g_logit = _clogit(g_rate)
        x[p, 0], x[p, 1] = 1.0, g_logit
        best[:] = -np.inf
        for e in range(start[p], start[p + 1]):
            pr = g_rate if parent[e] < 0 else rate[parent[e]]
            rate[e] = _rated(rows, pos[e], t, pr, hl, prior)[0]
            lg = _clogit(rate[e])
            if lg > best[group[e]]:
                best[group[e]] = lg
        for g in range(n_groups):
            if best[g] > -np.inf:
                x[p, 2 + g] = best[g] - g_logit
        x[p, 2 + n_groups] = under[p]
        x[p, 3 + n_groups] = (scores[p] - pivot[p]) / 100.0
    return x


@njit(cache=True)
def track_capacity(
    z: F64, group: npt.NDArray[np.int64], skip: npt.NDArray[np.bool_], t: F64, share: float,
    step: float,
) -> npt.NDArray[np.bool_]:  # pragma: no cover  # fmt: skip
    """In order: parcel i is held when its log-odds ``z[i]`` reach its group's threshold
    ``t[group[i]]``, which then moves toward holding ``share`` of the group (in place).
    ``skip``: parcels that take an earlier decision (repeats) and move nothing."""
    hold = np.zeros(z.shape[0], dtype=np.bool_)
    for i in range(z.shape[0]):
        if skip[i]:
            continue
        g = group[i]
        h = z[i] >= t[g]
        hold[i] = h
        t[g] += step * ((1.0 if h else 0.0) - share)
    return hold


@njit(cache=True)
def _sgd(theta: F64, x: F64, y: F64, w: F64, lr: float, l2: float) -> None:  # pragma: no cover
    for i in range(x.shape[0]):
        z = 0.0
        for k in range(theta.shape[0]):
            z += theta[k] * x[i, k]
        p = 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0)))
        g = w[i] * (y[i] - p)
        for k in range(theta.shape[0]):
            reg = l2 * theta[k] if k > 0 else 0.0
            theta[k] += lr * (g * x[i, k] - reg)


@dataclass
class OnlineModel:
    """Logistic regression over ``FEATURE_NAMES``, trained online by SGD."""

    learning_rate: float = 0.05
    l2: float = 1e-4
    theta: F64 = field(default_factory=lambda: np.zeros(N_FEATURES))
    trained: int = 0  # outcomes seen
    version: int = 0

    def __post_init__(self) -> None:
        if not self.theta.any():  # a prior: the base rate, the rates a little each, the rules
            self.theta[1] = 1.0  # a lot; the outcomes set the rest
            self.theta[FIRST_GROUP:-1] = 1.0 / len(GROUPS)
            self.theta[-1] = RULE_PRIOR

    def predict(self, x: F64) -> F64:
        z = np.clip(x @ self.theta, -30.0, 30.0)
        out: F64 = 1.0 / (1.0 + np.exp(-z))
        return out

    def train(self, x: F64, y: F64, w: F64) -> None:
        if len(y):
            _sgd(self.theta, np.ascontiguousarray(x), y.astype(np.float64),
                 w.astype(np.float64), self.learning_rate, self.l2)  # fmt: skip
            self.trained += len(y)
            self.version += 1

    def weights(self) -> dict[str, float]:
        return dict(zip(FEATURE_NAMES, self.theta.tolist(), strict=True))


# -- the live model: the worker's scoring and the exam step's training -------------------

RiskMode = Literal["off", "shadow", "on"]


@dataclass(frozen=True, slots=True)
class RiskConfig:
    """The learned model in the worker (``PARCEL_RISK_*`` settings, ``docs/learning.md``).

    ``off``: not computed; ``shadow``: computed, trained and reported in decisions and
    holds, lanes still from the rules; ``on``: lanes from the probability (hold at or above
    ``hold_probability``, review at or above ``review_probability``).

    Lanes by capacity (``capacity_pct`` > 0, with ``on``): per hub, about that share of the
    parcels is held, the riskiest: a threshold on the log-odds per (partition, hub) moves
    after every parcel, up by ``capacity_step`` x (1 - share) when the parcel was held,
    down by ``capacity_step`` x share when not, so it settles where the share is held
    whatever the trade looks like. It starts at ``hold_probability`` and is stored with
    the partition's state, so the same feed gets the same lanes however it is batched."""

    mode: RiskMode = "off"
    hold_probability: float = 0.5
    review_probability: float = 0.3
    capacity_pct: float = 0.0  # 0: fixed thresholds
    capacity_step: float = 0.05
    learning_rate: float = 0.05
    l2: float = 1e-4
    half_life_ms: float = 180.0 * DAY_MS
    prior: float = 10.0
    ipw_clip: float = 5.0
    reasons: int = 3  # learned reasons per hold
    norm_min: float = 20.0  # parcels a value norm needs before it is used

    @property
    def scores(self) -> bool:
        return self.mode != "off"

    @property
    def decides(self) -> bool:
        return self.mode == "on"


class RiskState(msgspec.Struct, frozen=True):
    """The model's small part, stored inside the learner state (so it is versioned, kept in
    the learner's history and changed only by compare-and-set): the logistic weights
    (``FEATURE_NAMES``), the decayed, selection-weighted examinations and violations of all
    keys together, and the rule score the rule feature is centred on. The per-key counts
    are stored per key (``ps:risk:{key}``)."""

    theta: list[float] = []
    exams: float = 0.0
    violations: float = 0.0
    t_ms: int = 0
    trained: int = 0  # outcomes learned from
    pivot: float = 0.0

    def model(self, cfg: RiskConfig) -> OnlineModel:
        theta = np.array(self.theta, dtype=np.float64)
        if theta.shape == (N_FEATURES - 1,):  # learned before the rule group: its prior
            theta = np.insert(theta, FIRST_GROUP + RULE_GROUP, 1.0 / len(GROUPS))
        if theta.shape != (N_FEATURES,):  # none yet, or from a model with other features
            theta = np.zeros(N_FEATURES)
        return OnlineModel(cfg.learning_rate, cfg.l2, theta, self.trained)

    def table(self, rows: dict[int, list[float]], cfg: RiskConfig) -> RiskTable:
        """A read-only view of stored rows (key id -> [examinations, violations, t])."""
        return RiskTable(cfg.half_life_ms, cfg.prior, rows,
                         [self.exams, self.violations, float(self.t_ms)],
                         score_mean=self.pivot, track_scores=False)  # fmt: skip


class RiskRef(msgspec.Struct, array_like=True, frozen=True):
    """What the exam step needs of a scored parcel (kept with the parcel's memory): its
    keys (ids, and names or what names them), its features as scored, the probability with
    which it was selected."""

    keys: list[str]
    x: list[float]
    propensity: float = 1.0
    ids: list[int] = []
    parts: KeyParts | None = None  # what names the keys, when ``keys`` does not

    @classmethod
    def of(cls, keys: ParcelKeys, x: list[float], propensity: float) -> RiskRef:
        named = keys.named()
        return cls(list(named), x, propensity, list(named.values()))

    def names(self) -> list[str]:
        """The name of each of ``ids`` ("": not known, as a review's keys)."""
        if self.keys or self.parts is None:
            return self.keys
        by_id = {i: k for k, i in self.parts.named().items()}
        return [by_id.get(i, "") for i in self.ids]


# Stored as MessagePack: a third of the time and half the bytes of the JSON it replaced
# (20-digit ids, 17-digit features). Refs stored before as JSON still read.
_REF_ENC = msgspec.msgpack.Encoder()
_REF_DEC = msgspec.msgpack.Decoder(RiskRef)
_REF_DEC_JSON = msgspec.json.Decoder(RiskRef)


def encode_ref(ref: RiskRef | bytes) -> bytes:
    """A ref's stored form (bytes: encoded already, ``encode_refs``)."""
    return ref if isinstance(ref, bytes) else _REF_ENC.encode(ref)


def encode_refs(x: F64, propensity: F64, ids: U64, at: npt.NDArray[np.int64]) -> list[bytes]:
    """The encoded refs (``encode_ref``) of parcels whose keys go by id only (a review's):
    per row ``r``, its features ``x[r]``, ``propensity[r]`` and the key ids
    ``ids[at[r]:at[r + 1]]``, written as MessagePack in one compiled pass over the batch
    rather than a struct per parcel. ``decode_ref`` reads them back as those values, bit
    for bit (``tests/unit/test_risk.py``)."""
    if not len(propensity):
        return []
    bits = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
    buf, off = _pack_refs(bits, np.ascontiguousarray(propensity, np.float64).view(np.uint64),
                          np.ascontiguousarray(ids, np.uint64), at)  # fmt: skip
    raw, o = buf.tobytes(), off.tolist()
    return [raw[a:b] for a, b in zip(o, o[1:], strict=False)]


@njit(cache=True, inline="always")
def _be64(buf: npt.NDArray[np.uint8], o: int, v: np.uint64) -> None:  # pragma: no cover
    for k in range(8):
        buf[o + k] = (v >> np.uint64(56 - 8 * k)) & np.uint64(0xFF)


@njit(cache=True, inline="always")
def _array_header(buf: npt.NDArray[np.uint8], o: int, m: int) -> int:  # pragma: no cover
    if m < 16:
        buf[o] = 0x90 | m
        return o + 1
    if m < 65536:
        buf[o], buf[o + 1], buf[o + 2] = 0xDC, m >> 8, m & 0xFF
        return o + 3
    buf[o] = 0xDD
    for k in range(4):
        buf[o + 1 + k] = (m >> (24 - 8 * k)) & 0xFF
    return o + 5


@njit(cache=True)
def _pack_refs(
    bits: U64, pbits: U64, ids: U64, at: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:  # pragma: no cover
    rows, nf = bits.shape
    off = np.zeros(rows + 1, dtype=np.int64)
    for r in range(rows):
        m = at[r + 1] - at[r]
        head = 1 if m < 16 else (3 if m < 65536 else 5)
        off[r + 1] = off[r] + 2 + (1 if nf < 16 else 3) + 9 * nf + 9 + head + 9 * m + 1
    buf = np.empty(off[rows], dtype=np.uint8)
    for r in range(rows):
        o = off[r]
        buf[o], buf[o + 1] = 0x95, 0x90  # [keys: [], x, propensity, ids, parts: nil]
        o = _array_header(buf, o + 2, nf)
        for k in range(nf):
            buf[o] = 0xCB  # float 64
            _be64(buf, o + 1, bits[r, k])
            o += 9
        buf[o] = 0xCB
        _be64(buf, o + 1, pbits[r])
        o = _array_header(buf, o + 9, at[r + 1] - at[r])
        for j in range(at[r], at[r + 1]):
            buf[o] = 0xCF  # uint 64
            _be64(buf, o + 1, ids[j])
            o += 9
        buf[o] = 0xC0
    return buf, off


def as_ref(ref: RiskRef | bytes | None) -> RiskRef | None:
    """A ref, decoded when it is still encoded."""
    return decode_ref(ref) if isinstance(ref, bytes) else ref


def decode_ref(raw: str | bytes | None) -> RiskRef | None:
    if not raw:
        return None
    if isinstance(raw, str) or raw[:1] == b"[":  # JSON (an array) before MessagePack
        return _REF_DEC_JSON.decode(raw)
    return _REF_DEC.decode(raw)


def weight(propensity: float, clip: float) -> float:
    """An outcome's inverse-propensity weight, clipped."""
    return min(1.0 / propensity, clip) if propensity > 0 else clip


def train_state(
    state: RiskState,
    examples: Sequence[tuple[RiskRef, bool, int]],
    cfg: RiskConfig,
    now_ms: int,
) -> RiskState:
    """The next state after learning from ``(ref, violation, examined_ts_ms)`` in order:
    the model trains on each parcel's features as scored, each outcome weighted by its
    inverse selection probability; the global counts move."""
    if not examples:
        return state
    model = state.model(cfg)
    x = np.array([e[0].x for e in examples], dtype=np.float64)
    if x.shape[1] != N_FEATURES:  # features of another model version: counts only
        x = np.zeros((0, N_FEATURES))
    y = np.array([float(e[1]) for e in examples])
    w = np.array([weight(e[0].propensity, cfg.ipw_clip) for e in examples])
    if len(x):
        model.train(x, y, w)
    total = [state.exams, state.violations, float(state.t_ms)]
    table = RiskTable(cfg.half_life_ms, cfg.prior, total=total)
    for (_, v, at), wi in zip(examples, w.tolist(), strict=True):
        table.update((), v, wi, float(at))
    return RiskState(model.theta.tolist(), table.total[0], table.total[1], int(table.total[2]),
                     state.trained + len(examples), state.pivot)  # fmt: skip


@lru_cache(maxsize=1 << 16)
def key_text(key: str) -> str:
    """A learned key in words an officer can use (never personal data: the consignee
    address appears only as "the consignee address")."""
    parts = []
    for part in key.split("|"):
        kind, _, val = part.partition(":")
        if kind in ("hs6", "hs4", "hs2"):
            parts.append("HS " + (f"{val[:4]}.{val[4:]}" if len(val) > 4 else val))
        elif kind in ("o", "origin"):
            parts.append(f"from {val}")
        elif kind in ("d", "departure"):
            parts.append(f"via {val}")
        elif kind == "v":
            b = int(val)
            parts.append("valued under USD 1" if b == 0
                         else f"valued USD {2 ** (b - 1):,}-{2**b:,}")  # fmt: skip
        elif kind == "w":
            b = int(val)
            parts.append("under 0.1 kg" if b == 0
                         else f"{2 ** (b - 1) / 10:g}-{2**b / 10:g} kg")  # fmt: skip
        elif kind == "addr":
            parts.append("the consignee address")
        elif kind == "attr":
            k, _, v = val.partition("=")
            parts.append(f"{k} {v}")
        elif kind == "entry":
            parts.append(f"entry type {val}")
        elif kind == "mode":
            parts.append(f"transport mode {val}")
        elif kind == "market":
            parts.append(f"marketplace {val}")
        elif kind == "rule":
            parts.append(f"rule {val}")
        else:
            parts.append(f"{kind} {val}")
    return " ".join(parts)


def _examinations(n: float) -> str:
    shown = f"{n:,.0f}"
    return f"{shown} examination" if shown == "1" else f"{shown} examinations"


def explain(
    table: RiskTable, keys: ParcelKeys, x: F64, theta: F64, now_ms: float, n: int
) -> list[tuple[str, str, float, float, float]]:
    """The ``n`` strongest positive learned contributions to a parcel's log-odds: per
    feature group, its riskiest key (key, text, rate, examinations, contribution). Only
    keys riskier than the whole (a rate above the global one) that the model weighs as
    risk: a rare-violation key that a negative weight turns into points is no reason an
    officer could act on."""
    g_rate = table.global_rate(now_ms)
    parents = keys.parents()
    th, xs = np.asarray(theta).tolist(), np.asarray(x).tolist()  # the same doubles, as floats

    known: dict[int, tuple[float, float]] = {}

    def rate_of(key: int) -> tuple[float, float]:
        got = known.get(key)
        if got is None:  # each key rated once, its parents' chain with it
            parent = parents.get(key, 0)
            got = known[key] = table.rate(key, rate_of(parent)[0] if parent else g_rate,
                                          now_ms)  # fmt: skip
        return got

    out = []
    for j, (pairs, id_pairs) in enumerate(zip(keys.groups, keys.ids, strict=True)):
        if not pairs:
            continue
        c = th[FIRST_GROUP + j] * xs[FIRST_GROUP + j]
        if c <= 0.005 or xs[FIRST_GROUP + j] <= 0:
            continue
        rated = [(rate_of(kid), name) for (name, _), (kid, _) in zip(pairs, id_pairs, strict=True)]
        (rate, exams), key = max(rated, key=lambda r: r[0][0])
        out.append((key, "", round(rate, 4), round(exams, 1), round(c, 3)))
    return _shown(out, xs, th, n)


def _shown(
    out: list[tuple[str, str, float, float, float]], xs: list[float], th: list[float], n: int
) -> list[tuple[str, str, float, float, float]]:
    """The ``n`` strongest of the groups' reasons ``out`` and the value norm's, in words."""
    if xs[-2] > 0 and th[-2] * xs[-2] > 0.005:
        out.append(("undervalued", f"value per kg {xs[-2]:.1f} standard deviations under its "
                    "HS peers", 0.0, 0.0, round(th[-2] * xs[-2], 3)))  # fmt: skip
    out.sort(key=lambda r: -r[4])
    # the words only for the reasons shown
    return [(key, text or f"{key_text(key)}: {rate:.0%} violations in {_examinations(exams)}",
             rate, exams, c) for key, text, rate, exams, c in out[:n]]  # fmt: skip


def strongest_entries(
    kb: KeyBatch, pos: npt.NDArray[np.int64], rows: F64, total: Sequence[float], now_ms: F64,
    parcels: npt.NDArray[np.int64], half_life_ms: float, prior: float,
) -> tuple[npt.NDArray[np.int64], F64, F64, F64]:  # fmt: skip
    """For the parcels ``parcels`` (the held ones), rated as ``explain`` rates each key and
    ``features_batch`` every entry: per feature group the entry of its riskiest key (the
    first of the highest rate; -1: the group has none), that rate and the key's decayed
    examinations; and every entry's rate (those of other parcels unset)."""
    return _strongest(kb.start, kb.group, kb.parent, pos, rows, np.asarray(total, np.float64),
                      now_ms, parcels, half_life_ms, prior, len(GROUPS))  # fmt: skip


@njit(cache=True)
def _strongest(
    start: npt.NDArray[np.int64], group: npt.NDArray[np.int64], parent: npt.NDArray[np.int64],
    pos: npt.NDArray[np.int64], rows: F64, total: F64, now: F64,
    parcels: npt.NDArray[np.int64], hl: float, prior: float, n_groups: int,
) -> tuple[npt.NDArray[np.int64], F64, F64, F64]:  # pragma: no cover  # fmt: skip
    k = parcels.shape[0]
    best = np.full((k, n_groups), -1, dtype=np.int64)
    best_rate = np.zeros((k, n_groups))
    best_exams = np.zeros((k, n_groups))
    rate = np.zeros(group.shape[0])
    for q in range(k):
        p = parcels[q]
        t = now[p]
        g_rate = _global_rate(total, t, hl)
        for e in range(start[p], start[p + 1]):
            pr = g_rate if parent[e] < 0 else rate[parent[e]]
            rate[e], exams = _rated(rows, pos[e], t, pr, hl, prior)
            g = group[e]
            if best[q, g] < 0 or rate[e] > best_rate[q, g]:
                best[q, g], best_rate[q, g], best_exams[q, g] = e, rate[e], exams
    return best, best_rate, best_exams, rate


_Candidate = tuple[int, int, float, float, float]


def reason_candidates(
    best: npt.NDArray[np.int64], rate: F64, exams: F64, x: F64, theta: F64
) -> list[list[_Candidate]]:
    """Per parcel, from its row of ``strongest_entries`` and its features: the groups that
    can give a learned reason (as ``explain`` chooses them: a key, a positive feature and
    more than 0.005 of log-odds), each as (group, entry, rate, examinations,
    contribution), in group order; found for all the parcels at once."""
    g = best.shape[1]
    xg = x[:, FIRST_GROUP : FIRST_GROUP + g]
    c = xg * np.asarray(theta, dtype=np.float64)[FIRST_GROUP : FIRST_GROUP + g]
    rows, cols = np.nonzero((best >= 0) & ~((c <= 0.005) | (xg <= 0)))
    cuts = np.searchsorted(rows, np.arange(best.shape[0] + 1)).tolist()
    at = (rows, cols)
    flat = list(zip(cols.tolist(), best[at].tolist(), rate[at].tolist(), exams[at].tolist(),
                    c[at].tolist(), strict=True))  # fmt: skip
    return [flat[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


def explain_strongest(
    candidates: list[_Candidate], x: list[float], theta: list[float],
    name_of: Callable[[int, int], str], n: int,
) -> list[tuple[str, str, float, float, float]]:  # fmt: skip
    """``explain`` of one parcel from its ``reason_candidates`` (``name_of(group,
    entry)``: the name of the key a group's reason shows): only the keys that can be
    shown are named."""
    out = sorted(candidates, key=lambda r: -round(r[4], 3))[:n]  # ties: in group order
    return _shown([(name_of(j, e), "", round(r, 4), round(ex, 1), round(c, 3))
                   for j, e, r, ex, c in out], x, theta, n)  # fmt: skip
