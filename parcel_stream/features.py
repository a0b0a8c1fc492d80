"""manifests + reputation view + rule-set tables -> the feature matrix the kernel reads.

One generator pass over the decoded structs per column, then vectorised numpy; there is
no dict-per-parcel hop. The features are named in :mod:`parcel_stream.feature_catalog`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import chain, count, repeat
from operator import attrgetter

import numpy as np
import numpy.typing as npt

from parcel_stream.columns import Columns
from parcel_stream.countries import COUNTRIES
from parcel_stream.currency import USD_PER_UNIT
from parcel_stream.feature_catalog import FEATURE_INDEX, FEATURES
from parcel_stream.model import Address, Manifest, Seller
from parcel_stream.rules import (
    PUNCTUATION_TO_SPACE,
    RuleSet,
    country_index,
    normalise_name,
    trigrams,
)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
MS_PER_DAY = 86_400_000.0
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class ShipperIndex:
    """The distinct entities of a batch and, per parcel, the position of each of its own:
    shippers (by id), consignee addresses and shipper-address pairs (by a hash of the
    normalised address, so no address is ever a store key or a log line)."""

    ids: list[str]
    parcel_shipper: I64
    addresses: list[str] = field(default_factory=list)
    parcel_address: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    pairs: list[str] = field(default_factory=list)
    parcel_pair: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    today: int = 0  # day number (Unix days) of the batch's latest manifest time
    # marketplace sellers, by seller key ("{seller id}@{marketplace}"); -1 = none named
    sellers: list[str] = field(default_factory=list)
    parcel_seller: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    now_ms: int = 0  # the batch's latest manifest time: recent counts are decayed to it


@dataclass(frozen=True, slots=True)
class ReputationView:
    """Stored state of the batch's entities, aligned with the ``ShipperIndex`` lists.
    The address and pair arrays may be left out (None): then they count as empty."""

    seen: F64
    holds: F64
    value_usd: F64
    first_seen_ms: F64  # 0 when never seen
    address_shippers: F64 | None = None  # distinct shippers seen at the address
    pair_start_ms: F64 | None = None  # start of the pair's open window, 0 = none
    pair_value_usd: F64 | None = None  # value shipped to the address in that window
    pair_parcels: F64 | None = None  # parcels shipped to the address in that window
    day_counts: F64 | None = None  # [n_shippers, 8]: parcels on today, today-1 .. today-7
    # Recent-weighted counts (halved every half-life, decayed to the batch's time):
    exams: F64 | None = None  # examinations of the shipper's parcels
    violations: F64 | None = None  # of which found violative or seized
    address_violations: F64 | None = None  # violations found on parcels to the address
    recent_seen: F64 | None = None  # None: the lifetime counts stand in
    recent_holds: F64 | None = None
    # per seller of the batch (``ShipperIndex.sellers``); None: no seller state
    seller_seen: F64 | None = None  # lifetime
    seller_recent_seen: F64 | None = None
    seller_recent_holds: F64 | None = None
    seller_exams: F64 | None = None
    seller_violations: F64 | None = None

    @classmethod
    def empty(cls, n: int, n_addresses: int = 0, n_pairs: int = 0) -> ReputationView:
        z = np.zeros(n, dtype=np.float64)
        za = np.zeros(n_addresses, dtype=np.float64)
        zp = np.zeros(n_pairs, dtype=np.float64)
        days = np.zeros((n, 8), dtype=np.float64)
        return cls(z, z.copy(), z.copy(), z.copy(), za, zp, zp.copy(), zp.copy(), days,
                   z.copy(), z.copy(), za.copy(), z.copy(), z.copy())  # fmt: skip


@dataclass(frozen=True, slots=True)
class Features:
    """The feature matrix of a batch: row ``FEATURE_INDEX[name]``, one column per parcel."""

    matrix: F64  # [len(FEATURES), n], C-contiguous

    def __len__(self) -> int:
        return int(self.matrix.shape[1])

    def row(self, name: str) -> F64:
        row: F64 = self.matrix[FEATURE_INDEX[name]]
        return row

    @property
    def value_usd(self) -> F64:
        return self.row("value_usd")


def address_key(addr: Address) -> str:
    """A stable, non-reversible key of a normalised postal address (16 hex digits)."""
    return _address_key(tuple(addr.lines), addr.postal_code, addr.country)


@lru_cache(maxsize=1 << 17)
def _address_key(lines: tuple[str, ...], postal_code: str, country: str) -> str:
    text = "|".join([*(normalise_name(x) for x in lines), normalise_name(postal_code), country])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


_FIELD, _ADDRESS = "\x00", "\x01"  # neither whitespace nor punctuation to normalise_name
_ADDRESS_KEYS: dict[str, str] = {}  # by an address's fields joined (``address_keys``)


def address_keys(addresses: Sequence[Address]) -> list[str]:
    """``address_key`` of each address. Each distinct address is keyed once, and the new
    ones of the batch are normalised together: ``normalise_name``'s steps in one pass
    over their joined lines and postal codes."""
    raws = [f"{_FIELD.join(a.lines)}{_FIELD}{a.postal_code}{_FIELD}{a.country}"
            for a in addresses]  # fmt: skip
    # a separator within a field, or no lines (each address has len(lines) + 1 of them):
    joined = "".join(raws)
    if joined.count(_FIELD) != sum(map(len, map(_get_lines, addresses))) + len(raws) or (
            _ADDRESS in joined):  # fmt: skip
        return [address_key(a) for a in addresses]  # one by one
    known = _ADDRESS_KEYS
    new = [r for r in dict.fromkeys(raws) if r not in known]
    if new:
        if len(known) + len(new) > 1 << 17:
            known.clear()
        heads, countries = zip(*(r.rsplit(_FIELD, 1) for r in new), strict=True)
        norm = " ".join(_ADDRESS.join(heads).lower().translate(PUNCTUATION_TO_SPACE).split())
        for sep in (_FIELD, _ADDRESS):  # each field's own ends, as split() drops them
            norm = norm.replace(" " + sep, sep).replace(sep + " ", sep)
        texts = norm.replace(_FIELD, "|").split(_ADDRESS)
        b2 = hashlib.blake2b
        keys = [b2(f"{t}|{c}".encode(), digest_size=8).hexdigest()
                for t, c in zip(texts, countries, strict=True)]  # fmt: skip
        known.update(zip(new, keys, strict=True))
    return list(map(known.__getitem__, raws))


_get_lines, _get_country = attrgetter("lines"), attrgetter("country")


def index_shippers(
    manifests: Sequence[Manifest],
    split_min_usd: float | None = None,
    usd_per_unit: dict[str, float] = USD_PER_UNIT,
) -> ShipperIndex:
    """Index the batch's entities. Shipper-address pairs (split-shipment windows) are kept
    only for parcels worth at least ``split_min_usd`` (None: none): a split meant to stay
    under the threshold is made of parcels that each carry a real share of it, and
    skipping the many small parcels keeps the state small. Others get pair index -1."""
    n = len(manifests)
    shippers, s_idx = _factorize(map(_get_shipper_id, manifests), n)
    addresses, a_idx = _factorize(address_keys(list(map(_get_address, manifests))), n)
    # seller keys ("" for none: a seller's key always has an "@")
    sold = list(map(_get_seller, manifests))
    sellers, l_idx = _factorize([seller_key(x) if x is not None else "" for x in sold], n)
    if "" in sellers:  # the parcels without a seller have none (-1)
        none = sellers.index("")
        del sellers[none]
        l_idx = np.where(l_idx == none, -1, np.where(l_idx > none, l_idx - 1, l_idx))
    latest = max(map(_get_ts, manifests), default=0)
    idx = ShipperIndex(shippers, s_idx, addresses, a_idx, [], np.full(n, -1, dtype=np.int64),
                       latest // DAY_MS, sellers, l_idx, latest)  # fmt: skip
    if split_min_usd is None:
        return idx
    value_usd = np.fromiter((m.declared_value * usd_per_unit[m.currency] for m in manifests),
                            np.float64, n)  # fmt: skip
    return with_pairs(idx, value_usd, split_min_usd)


def _factorize(values: Iterable[str], n: int) -> tuple[list[str], I64]:
    """The distinct values in the order they first appear, and each value's index among
    them (one pass: the position where each first appears, then ranked)."""
    first: dict[str, int] = {}
    at = np.fromiter(map(first.setdefault, values, count()), np.int64, n)
    rank = np.empty(n, dtype=np.int64)
    rank[np.fromiter(first.values(), np.int64, len(first))] = np.arange(len(first))
    out: I64 = rank[at]
    return list(first), out


_get_shipper_id, _get_address = attrgetter("shipper.id"), attrgetter("consignee.address")
_get_seller, _get_ts = attrgetter("seller"), attrgetter("manifest_ts_ms")


def with_pairs(idx: ShipperIndex, value_usd: F64, split_min_usd: float | None) -> ShipperIndex:
    """The index with its shipper-address pairs: those of the parcels worth at least
    ``split_min_usd`` (None: none), keyed "{address key}:{shipper id}", in the order of
    their first parcel."""
    n = len(idx.parcel_shipper)
    p_idx = np.full(n, -1, dtype=np.int64)
    if split_min_usd is None or not n:
        return replace(idx, pairs=[], parcel_pair=p_idx)
    kept = np.flatnonzero(value_usd >= split_min_usd)
    code = idx.parcel_address[kept] * max(len(idx.ids), 1) + idx.parcel_shipper[kept]
    uniq, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # numbered by first parcel, as a dict would
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    p_idx[kept] = rank[inverse.reshape(-1)]
    at = kept[first[order]]
    addrs, ids = idx.addresses, idx.ids
    pairs = [f"{addrs[a]}:{ids[s]}" for a, s in zip(idx.parcel_address[at].tolist(),
                                                     idx.parcel_shipper[at].tolist(),
                                                     strict=True)]  # fmt: skip
    return replace(idx, pairs=pairs, parcel_pair=p_idx)


def seller_key(seller: Seller) -> str:
    """Sellers are identified per marketplace: "{seller id}@{marketplace}"."""
    return f"{seller.id}@{seller.marketplace}"


@dataclass(frozen=True, slots=True)
class Combos:
    """The distinct (consignee address, shipper) combinations of a batch and, per parcel,
    the index of its own: whether a shipper is new at an address is state."""

    codes: I64  # address index * n_shippers + shipper index, sorted
    parcel_combo: I64
    n_ship: int

    @classmethod
    def of(cls, idx: ShipperIndex) -> Combos:
        n_ship = max(len(idx.ids), 1)
        codes, inverse = np.unique(
            idx.parcel_address * n_ship + idx.parcel_shipper, return_inverse=True
        )
        return cls(codes.astype(np.int64), inverse.astype(np.int64).reshape(-1), n_ship)

    def pairs_of(self, c: int) -> tuple[int, int]:
        code = int(self.codes[c])
        return code // self.n_ship, code % self.n_ship

    def pairs(self) -> list[tuple[int, int]]:
        return [(c // self.n_ship, c % self.n_ship) for c in self.codes.tolist()]


def extend_index(
    idx: ShipperIndex, shippers: list[str], sellers: list[str], pairs: list[str]
) -> ShipperIndex:
    """The index with more entities appended (those of amended parcels' originals): the
    parcels' own positions do not change."""

    def more(have: list[str], extra: list[str]) -> list[str]:
        known = set(have)
        return have + [x for x in dict.fromkeys(extra) if x and x not in known]

    return replace(idx, ids=more(list(idx.ids), shippers), sellers=more(list(idx.sellers), sellers),
                   pairs=more(list(idx.pairs), pairs))  # fmt: skip


def address_shipper_combos(idx: ShipperIndex) -> npt.NDArray[np.int64]:
    """Distinct (address, shipper) combinations of the batch, encoded as one integer."""
    return np.unique(idx.parcel_address * max(len(idx.ids), 1) + idx.parcel_shipper)


@lru_cache(maxsize=1 << 16)
def _heading(hs_code: str) -> int:
    """4-digit HS heading of a validated code ("6109.10" -> 6109); -1 when empty."""
    return int(hs_code[:4]) if hs_code else -1


@lru_cache(maxsize=1 << 16)
def _words(text: str) -> str:
    return normalise_name(text)


_COUNTRY_INDEX: dict[str, int] = {c: country_index(c) for c in COUNTRIES}


def _description_flags(rs: RuleSet, description: str, hs_code: str) -> tuple[bool, bool]:
    """(vague, contradicts its HS chapter) for one item line (``hs_code``: the code or its
    first two digits, the chapter); memoised per rule set, since marketplace descriptions
    repeat heavily."""
    key = (description, hs_code[:2])
    hit = rs.memo.get(key)
    if hit is not None:
        return bool(hit[0]), hit[1]
    desc = normalise_name(description)
    vague = desc in rs.vague_words
    mismatch = False
    if hs_code:
        chapter = int(hs_code[:2])
        padded = f" {desc} "
        mismatch = any(
            chapter not in chapters and f" {word} " in padded
            for word, chapters in rs.keyword_chapters
        )
    if len(rs.memo) > 200_000:
        rs.memo.clear()
    rs.memo[key] = (vague, mismatch)
    return vague, mismatch


def watchlist_similarity(rs: RuleSet, name: str) -> float:
    """1.0 for an exact match of the normalised name, else the best trigram Jaccard
    similarity to a watchlist entry."""
    norm = _words(name)
    if norm in rs.watchlist:
        return 1.0
    grams = trigrams(norm)
    best, size = 0.0, len(grams)
    if len(rs.watch_trigrams) > _WATCH_SCAN_MAX:  # the entries sharing a trigram with it
        postings, sizes = rs.watch_index
        hits = [postings[g] for g in grams if g in postings]
        if not hits:
            return 0.0
        counts = np.bincount(np.concatenate(hits), minlength=len(sizes))
        ids = np.flatnonzero(counts)
        return float((counts[ids] / (size + sizes[ids] - counts[ids])).max())
    for entry in rs.watch_trigrams:
        shared = len(grams & entry)
        if shared:  # |A ∪ B| = |A| + |B| - |A ∩ B|: no union set built
            best = max(best, shared / (size + len(entry) - shared))
    return best


_WATCH_SCAN_MAX = 32  # watchlist entries compared one by one; a longer list by its index


def _transit_risk(transit: list[list[str]], rs: RuleSet, n: int) -> F64:
    """Highest transit-table risk of the countries a parcel transits (0 when none)."""
    out = np.zeros(n, dtype=np.float64)
    table, cidx = rs.transit_risk, _COUNTRY_INDEX
    for i, countries in enumerate(transit):
        for c in countries:
            out[i] = max(out[i], table[cidx[c]])
    return out


def _name_flags(rs: RuleSet, name: str) -> tuple[float, bool]:
    """(watchlist similarity, a placeholder: test, n/a, xxx, ... or under 3 characters) of
    a party name, memoised per rule set (names repeat: a shipper's on every parcel)."""
    key = ("\0name", name)
    hit = rs.memo.get(key)
    if hit is not None:
        return hit[0], hit[1]
    norm = _words(name)
    watch = watchlist_similarity(rs, name) if rs.watchlist else 0.0
    flags = (watch, len(norm) < 3 or norm in rs.placeholder_names)
    if len(rs.memo) > 200_000:
        rs.memo.clear()
    rs.memo[key] = flags
    return flags


def _name_features(shipper: list[str], consignee: list[str], rs: RuleSet, n: int
                   ) -> tuple[F64, F64, F64]:  # fmt: skip
    """Watchlist similarity of the shipper's and the consignee's names, and how many of
    the two are placeholders: each distinct name of the batch looked at once (``at``: per
    name, where it first appears among the shippers' names, then the consignees'), then
    each parcel's gathered from the distinct ones."""
    first: dict[str, int] = {}
    at = np.fromiter(map(first.setdefault, chain(shipper, consignee), count()), np.int64,
                     2 * n)  # fmt: skip
    watch, placeholder = np.zeros(2 * n), np.zeros(2 * n)
    for name, pos in first.items():
        watch[pos], placeholder[pos] = _name_flags(rs, name)
    ship, cons = watch[at[:n]], watch[at[n:]]
    return ship, cons, placeholder[at[:n]] + placeholder[at[n:]]


_CHAPTER = slice(0, 2)


def _item_flags(descriptions: list[str], hs_codes: list[str], rs: RuleSet, owner: I64, n: int
                ) -> tuple[F64, F64]:  # fmt: skip
    """Per parcel, its vague item descriptions and the descriptions that contradict their
    HS chapter: each distinct (description, HS code) of the batch looked at once (``at``:
    per item, where its pair first appears), then each item's gathered from those."""
    k = len(descriptions)
    first: dict[tuple[str, str], int] = {}
    at = np.fromiter(map(first.setdefault, zip(descriptions, hs_codes, strict=True), count()),
                     np.int64, k)  # fmt: skip
    vague_i, mismatch_i = np.zeros(k), np.zeros(k)
    for (description, code), pos in first.items():
        vague_i[pos], mismatch_i[pos] = _description_flags(rs, description, code[_CHAPTER])
    f64 = np.float64
    vague = np.bincount(owner, weights=vague_i[at], minlength=n).astype(f64, copy=False)
    mismatch = np.bincount(owner, weights=mismatch_i[at], minlength=n).astype(f64, copy=False)
    return vague, mismatch


def _address_features(
    manifests: Sequence[Manifest],
    idx: ShipperIndex,
    view: ReputationView,
    value_usd: F64,
    window_ms: float,
) -> tuple[F64, F64, F64]:
    """Per parcel: distinct shippers seen at its consignee address (stored + this batch),
    and the parcels and USD value its shipper sent to that address within the split
    window, this parcel and the batch's earlier ones included."""
    n = len(manifests)
    if not n or not len(idx.parcel_address):
        return np.zeros(n), np.ones(n), value_usd.copy()
    n_addr, n_pair = len(idx.addresses), len(idx.pairs)
    stored = view.address_shippers if view.address_shippers is not None else np.zeros(n_addr)
    combos = address_shipper_combos(idx)
    in_batch = np.bincount(combos // max(len(idx.ids), 1), minlength=n_addr).astype(np.float64)
    addr_shippers = (stored + in_batch)[idx.parcel_address]
    start = view.pair_start_ms if view.pair_start_ms is not None else np.zeros(n_pair)
    prior_value = view.pair_value_usd if view.pair_value_usd is not None else np.zeros(n_pair)
    prior_parcels = view.pair_parcels if view.pair_parcels is not None else np.zeros(n_pair)
    ts = np.fromiter((m.manifest_ts_ms for m in manifests), np.float64, n)
    pair_parcels = np.empty(n, dtype=np.float64)
    pair_value = np.empty(n, dtype=np.float64)
    run_value = prior_value.copy()
    run_parcels = prior_parcels.copy()
    run_start = start.copy()
    pp = idx.parcel_pair.tolist()
    for i, p in enumerate(pp):  # input order: earlier parcels of the batch count first
        if p < 0:
            pair_parcels[i], pair_value[i] = 1.0, value_usd[i]
            continue
        t = ts[i]
        if run_start[p] <= 0 or t - run_start[p] > window_ms:
            run_start[p], run_value[p], run_parcels[p] = t, 0.0, 0.0
        run_value[p] += value_usd[i]
        run_parcels[p] += 1
        pair_parcels[i] = run_parcels[p]
        pair_value[i] = run_value[p]
    return addr_shippers, pair_parcels, pair_value


SUSPEND_AT = 0.5  # recent violations: a violation suspends for about one half-life


def _ratio(num: F64, den: F64) -> F64:
    out: F64 = np.where(den > 1e-9, num / np.maximum(den, 1e-9), 0.0)
    return out


def _seller_features(idx: ShipperIndex, view: ReputationView, n: int) -> dict[str, F64]:
    """The seller's stored state per parcel (zeros when the manifest names no seller)."""
    names = ("seller_seen", "seller_hold_ratio", "seller_exams", "seller_exam_violation_rate")
    if not len(idx.sellers) or view.seller_seen is None:
        return {name: np.zeros(n) for name in names}
    assert view.seller_recent_seen is not None and view.seller_recent_holds is not None
    assert view.seller_exams is not None and view.seller_violations is not None
    li = idx.parcel_seller
    has = li >= 0
    safe = np.where(has, li, 0)

    def per_parcel(col: F64) -> F64:
        out: F64 = np.where(has, col[safe], 0.0)
        return out

    exams = per_parcel(view.seller_exams)
    return {
        "seller_seen": per_parcel(view.seller_seen),
        "seller_hold_ratio": _ratio(
            per_parcel(view.seller_recent_holds), per_parcel(view.seller_recent_seen)
        ),
        "seller_exams": exams,
        "seller_exam_violation_rate": _ratio(per_parcel(view.seller_violations), exams),
    }


def build_features(
    manifests: Sequence[Manifest],
    shippers: ShipperIndex,
    view: ReputationView | None,
    ruleset: RuleSet,
    now_ms: int,
    usd_per_unit: dict[str, float] = USD_PER_UNIT,
    window_ms: float = 72 * 3_600_000.0,
    columns: Columns | None = None,
) -> Features:
    """Fill the feature matrix for one batch (one pass per column). With ``view`` None the
    history rows stay 0: the batch step's sequence kernel fills them. ``columns``: the
    batch's shared columns (``columns.py``), when the caller has them, read with
    ``usd_per_unit``."""
    n = len(manifests)
    f64, i64 = np.float64, np.int64
    cols = columns if columns is not None else Columns.of(manifests, usd_per_unit)
    rates, declared, value_usd = cols.rates, cols.declared, cols.value_usd
    weight_kg = cols.weight_kg
    cidx = _COUNTRY_INDEX
    origin_idx = np.fromiter(map(cidx.get, cols.origin, repeat(-1)), i64, n)
    item_count, item_qty = cols.item_count, cols.item_qty
    n_items = len(item_qty)
    item_heading = np.fromiter(map(_heading, cols.hs_codes), i64, n_items)
    item_value = cols.item_value * np.repeat(rates, item_count)
    owner = np.repeat(np.arange(n), item_count)
    coded = item_heading >= 0
    safe_heading = np.where(coded, item_heading, 0)
    hs_risk = np.zeros(n, dtype=f64)
    np.maximum.at(hs_risk, owner, np.where(coded, ruleset.heading_risk[safe_heading], 0.0))
    norm = np.full(n, np.inf, dtype=f64)
    np.minimum.at(
        norm, owner, np.where(coded, ruleset.chapter_min_usd_per_kg[safe_heading // 100], np.inf)
    )
    item_sum = np.bincount(owner, weights=item_value, minlength=n)
    missing_hs = np.bincount(owner, weights=~coded, minlength=n)
    total_qty = np.bincount(owner, weights=item_qty, minlength=n)
    usd_per_kg = value_usd / weight_kg
    to_norm = np.where(np.isfinite(norm), usd_per_kg / np.where(np.isfinite(norm), norm, 1.0), 1e9)
    threshold = ruleset.threshold_usd
    to_threshold = value_usd / threshold if threshold > 0 else np.full(n, -1.0)
    diff = np.abs(item_sum - value_usd)
    vague, mismatch = _item_flags(cols.descriptions, cols.hs_codes, ruleset, owner, n)
    ship_watch, cons_watch, placeholders = _name_features(
        cols.shipper_names, cols.consignee_names, ruleset, n
    )
    rows = {
        "value_usd": value_usd,
        "value_to_threshold": to_threshold,
        "weight_kg": weight_kg,
        "usd_per_kg": usd_per_kg,
        "usd_per_kg_to_norm": to_norm,
        "hs_risk": hs_risk,
        "origin_risk": np.where(origin_idx >= 0, ruleset.origin_risk[origin_idx], 0.0),
        "transit_risk": _transit_risk(cols.transit, ruleset, n),
        "value_mismatch": diff / np.maximum(value_usd, 1.0),
        "value_mismatch_usd": diff,
        "items_missing_hs": missing_hs,
        "item_count": item_count.astype(f64),
        "vague_items": vague,
        "description_hs_mismatch": mismatch,
        "shipper_watchlisted": (ship_watch >= 1.0).astype(f64),
        "consignee_watchlisted": (cons_watch >= 1.0).astype(f64),
        "shipper_watchlist_similarity": ship_watch,
        "consignee_watchlist_similarity": cons_watch,
        "weight_per_item_kg": weight_kg / np.maximum(total_qty, 1.0),
        "placeholder_parties": placeholders,
        "value_is_round": ((declared > 0) & (np.fmod(declared, 10.0) == 0)).astype(f64),
    }
    if view is not None:
        rows.update(_stateful_rows(manifests, shippers, view, ruleset, now_ms, value_usd,
                                   window_ms))  # fmt: skip
    matrix = np.zeros((len(FEATURES), n), dtype=f64)
    for name, values in rows.items():
        matrix[FEATURE_INDEX[name]] = values
    return Features(matrix=matrix)


def _stateful_rows(
    manifests: Sequence[Manifest],
    shippers: ShipperIndex,
    view: ReputationView,
    ruleset: RuleSet,
    now_ms: int,
    value_usd: F64,
    window_ms: float,
) -> dict[str, F64]:
    """The history rows from a view of the stored state, the whole batch at once (explain,
    single-parcel tools). The batch step fills them parcel by parcel instead
    (``sequence.py``), so that batching changes nothing."""
    n, f64 = len(manifests), np.float64
    threshold = ruleset.threshold_usd
    ps = shippers.parcel_shipper
    seen = view.seen[ps]
    recent_seen = (view.recent_seen if view.recent_seen is not None else view.seen)[ps]
    recent_holds = (view.recent_holds if view.recent_holds is not None else view.holds)[ps]
    first_seen = view.first_seen_ms[ps]
    zeros_s = np.zeros(len(shippers.ids))
    exams = (view.exams if view.exams is not None else zeros_s)[ps]
    violations = (view.violations if view.violations is not None else zeros_s)[ps]
    known = ruleset.known_shippers
    enrolled = np.array([float(sid in known) for sid in shippers.ids])[ps] if known else np.zeros(n)
    if view.address_violations is not None and len(shippers.parcel_address):
        addr_violations = view.address_violations[shippers.parcel_address]
    else:
        addr_violations = np.zeros(n)
    n_ship = len(shippers.ids)
    days = view.day_counts if view.day_counts is not None else np.zeros((n_ship, 8))
    batch_count = np.bincount(ps, minlength=n_ship).astype(f64)
    today_count = (days[:, 0] + batch_count)[ps] if n_ship else np.zeros(n)
    # Mean over the days before today that the shipper was known (at most 7): a shipper
    # first seen yesterday has a one-day baseline, not yesterday's count diluted by 7.
    first_day = np.where(view.first_seen_ms > 0, view.first_seen_ms // DAY_MS, shippers.today)
    known = np.clip(shippers.today - first_day, 1, 7)
    baseline = (days[:, 1:].sum(axis=1) / known)[ps] if n_ship else np.zeros(n)
    addr_shippers, pair_parcels, pair_value = _address_features(
        manifests, shippers, view, value_usd, window_ms
    )
    return {
        "shipper_seen": seen,
        "shipper_hold_ratio": _ratio(recent_holds, recent_seen),
        "shipper_age_days": np.where(first_seen > 0, (now_ms - first_seen) / MS_PER_DAY, -1.0),
        "shipper_today_parcels": today_count,
        "shipper_daily_baseline": baseline,
        "shipper_volume_ratio": today_count / np.maximum(baseline, 1.0 / 7.0),
        "shipper_exams": exams,
        "shipper_exam_violation_rate": _ratio(violations, exams),
        "address_exam_violations": addr_violations,
        "shipper_enrolled": enrolled,
        "shipper_suspended": enrolled * (violations >= SUSPEND_AT),
        "shipper_violations_per_parcel": violations / np.maximum(recent_seen, 1.0),
        "consignee_distinct_shippers": addr_shippers,
        "pair_parcels": pair_parcels,
        "pair_value_usd": pair_value,
        "pair_value_to_threshold": pair_value / threshold if threshold > 0 else np.full(n, -1.0),
        **_seller_features(shippers, view, n),
    }
