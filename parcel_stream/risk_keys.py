"""The learned model's keys as 64-bit ids, built over a batch in columns.

A key is named by its parts (``hs6:293399``, ``hs6:293399|o:IN``); its id is the 64-bit
BLAKE2b of its first part, folded with each further part's (a SplitMix64 mix of the two),
so the id of a cross is computed from the ids of its parts without building its name.
The worker builds every parcel's key ids this way (``key_batch``): the batch is read
field by field, each column's values looked up in a cache of part ids (an address key is
a hash already: its ids are folded from it in one pass), then a compiled pass composes
the crosses. Names are built only where a person reads them (the
learned reasons of a hold, ``learner show``), from ``risk.parcel_keys``, which computes
the same ids (``tests/unit/test_risk_keys.py`` proves the two equal).

An entry is one (parcel, feature group, key id, parent entry): a parcel's entries come
parents first, so its rates can be computed in one pass (``risk.features_batch``).
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from parcel_stream.columns import Columns, RowCache
from parcel_stream.model import Manifest

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
M64 = (1 << 64) - 1
_CACHE_MAX = 2_000_000

# the feature groups of the single keys, in GROUPS order after the crosses
SINGLES = ("origin", "departure", "carrier", "hub", "declarant", "entry_type", "transport_mode",
           "shipper", "seller", "marketplace", "address")  # fmt: skip
FIRST_SINGLE = 6  # GROUPS: hs, 5 crosses, then the singles, then the attributes
ATTRIBUTE = FIRST_SINGLE + len(SINGLES)
RULE = ATTRIBUTE + 1  # the rules that fired (``with_rules``)

_PARTS: dict[str, int] = {}
ADDRESS = "addr:"  # an address key is a 16-hex-digit hash already (``features.address_key``)


def _hashed(part: str) -> int:
    if part.startswith(ADDRESS) and len(part) == len(ADDRESS) + 16:
        try:  # its id is folded from that hash rather than hashed again
            return combine(_ADDRESS_ID, int(part[len(ADDRESS) :], 16))
        except ValueError:
            pass
    digest = hashlib.blake2b(part.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def part_id(part: str) -> int:
    """A part's 64-bit id (never 0: 0 means "no key")."""
    got = _PARTS.get(part)
    if got is None:
        if len(_PARTS) > _CACHE_MAX:
            _PARTS.clear()
        got = _PARTS[part] = _hashed(part)
    return got


def combine(a: int, b: int) -> int:
    """The id of a key with parts ``a`` then ``b`` (the same as the compiled ``_mix``)."""
    z = (a * 0x9E3779B97F4A7C15 + b) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return z or 1


_ADDRESS_ID = int.from_bytes(hashlib.blake2b(ADDRESS.encode(), digest_size=8).digest(), "little")


def _address_ids(addresses: Sequence[str]) -> U64 | None:
    """The address keys' part ids in one pass over their hashes (None: some key is not
    16 hex digits; they are then looked up one by one). An empty key has none (0)."""
    n = len(addresses)
    joined = "".join([a or "0000000000000000" for a in addresses])
    if len(joined) != 16 * n:
        return None
    try:
        raw = np.frombuffer(bytes.fromhex(joined), dtype=">u8").astype(np.uint64)
    except ValueError:
        return None
    out: U64 = _fold(np.uint64(_ADDRESS_ID), raw)
    empty = np.fromiter(map(operator.not_, addresses), np.bool_, n)
    out[empty] = 0
    return out


@njit(cache=True, inline="always")
def _mix(a: np.uint64, b: np.uint64) -> np.uint64:  # pragma: no cover
    z = a * np.uint64(0x9E3779B97F4A7C15) + b
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return z if z != 0 else np.uint64(1)


class _Parts(dict[str, int]):
    """Part ids of one kind by value: ``o`` -> {"CN": id of "o:CN"}."""

    def __init__(self, prefix: str, optional: bool = False) -> None:
        super().__init__()
        self.prefix = prefix
        self.optional = optional  # None and "" have no key (id 0)

    def __missing__(self, value: str | None) -> int:
        if len(self) > _CACHE_MAX:
            self.clear()
        if value is None or (self.optional and not value):
            got = self[value] = 0  # type: ignore[index]
            return got
        got = self[value] = _hashed(self.prefix + value)
        return got


def band(x: float) -> int:
    """A log2 band: 0 for x < 1, then 1, 2, 3 ... for each doubling."""
    return 0 if x < 1 else int(math.log2(x)) + 1


def hs_digits(code: str) -> str:
    return "".join(c for c in code if c.isdigit())


def _band_ids(parts: _Parts, x: F64) -> U64:
    """The part ids of each value's log2 band (``band``), computed over the column."""
    with np.errstate(divide="ignore"):
        bands = np.where(x < 1, 0, np.floor(np.log2(np.maximum(x, 1.0))) + 1).astype(np.int64)
    table = np.array([parts[str(b)] for b in range(int(bands.max(initial=0)) + 1)],
                     dtype=np.uint64)  # fmt: skip
    out: U64 = table[bands]
    return out


class _RowCache(RowCache):
    """Part ids a row (``width`` of them), as unsigned 64-bit numbers."""

    dtype = np.uint64
    limit = _CACHE_MAX


class _HSRows(_RowCache):
    """Per raw HS code: the (hs2, hs4, hs6 or 0) part ids; (0, 0, 0) under 4 digits."""

    width = 3

    def ids_of(self, code: str) -> tuple[int, ...]:
        d = hs_digits(code)
        if len(d) < 4:
            return (0, 0, 0)
        return (part_id(f"hs2:{d[:2]}"), part_id(f"hs4:{d[:4]}"),
                part_id(f"hs6:{d[:6]}") if len(d) >= 6 else 0)  # fmt: skip


_HS_ROWS = _HSRows()
_O, _D = _Parts("o:"), _Parts("d:")
_O_ITEM = _Parts("o:", optional=True)  # an item's own origin, if it names one
_V, _W = _Parts("v:"), _Parts("w:")
_SINGLE = {
    "origin": _Parts("origin:"), "departure": _Parts("departure:"), "carrier": _Parts("carrier:"),
    "hub": _Parts("hub:"), "declarant": _Parts("declarant:", True),
    "entry_type": _Parts("entry:", True), "transport_mode": _Parts("mode:", True),
    "shipper": _Parts("shipper:"), "seller": _Parts("seller:", True),
    "marketplace": _Parts("market:", True), "address": _Parts("addr:", True),
}  # fmt: skip
_ATTR = _Parts("attr:")
# per single group, in ``SINGLES`` order: its keys' prefix, and whether an empty value has
# no key (what names a stored parcel's keys: ``risk.KeyParts``)
SINGLE_NAMING = tuple((_SINGLE[name].prefix, _SINGLE[name].optional) for name in SINGLES)


class _Routes(_RowCache):
    """Per route (origin, carrier, hub, declarant, entry type, transport mode): the part
    ids of the seven singles from origin to transport mode, then of ``o:`` origin and
    ``d:`` departure, the departure taken as the origin (a parcel in transit departs from
    its last transit country: ``key_batch`` puts those in afterwards)."""

    width = 9

    def ids_of(self, route: tuple[Any, ...]) -> tuple[int, ...]:
        origin, *rest = route
        values = (origin, origin, *rest)
        row = [_SINGLE[name][v] for name, v in zip(SINGLES[:7], values, strict=True)]
        return (*row, _O[origin], _D[origin])


_ROUTES = _Routes()


class _AttrParts(dict[tuple[str, str], int]):
    """Part ids of attributes by (key, value)."""

    def __missing__(self, kv: tuple[str, str]) -> int:
        if len(self) > _CACHE_MAX:
            self.clear()
        got = self[kv] = _ATTR[f"{kv[0]}={kv[1]}"]
        return got


_ATTR_KV = _AttrParts()
_get_origin, _get_transit = attrgetter("origin_country"), attrgetter("transit_countries")
_get_seller, _get_shipper = attrgetter("seller"), attrgetter("shipper.id")
_get_route = attrgetter("origin_country", "carrier", "hub", "declarant", "entry_type",
                        "transport_mode")  # fmt: skip
_get_attributes, _get_hs = attrgetter("attributes"), attrgetter("hs_code")
_last = operator.itemgetter(-1)
_get_item_origin, _get_value = attrgetter("origin_country"), attrgetter("value")


@dataclass(frozen=True, slots=True)
class KeyBatch:
    """Every parcel's keys as entries (see the module): parcel ``p`` has the entries
    ``start[p]:start[p + 1]``, parents first."""

    start: I64
    group: I64
    ids: U64
    parent: I64  # entry index, -1: the global rate
    # value norms: per parcel its main item's HS6, HS4, HS2 ids (0: none; the main item is
    # the first of the highest value with a usable code) and its log USD per kg
    norm_ids: U64 = field(default_factory=lambda: np.zeros((0, 3), dtype=np.uint64))
    log_usd_per_kg: F64 = field(default_factory=lambda: np.zeros(0))

    def unique(self) -> tuple[U64, I64]:
        """The distinct key ids (in the order first met) and, per entry, its position
        among them."""
        return _unique_ids(self.ids)


def _column(table: dict[Any, int], values: Iterable[Any], n: int) -> U64:
    """The part ids of a column of values, looked up in C (``map``), misses hashed once."""
    return np.fromiter(map(table.__getitem__, values), np.uint64, n)


@dataclass(frozen=True, slots=True)
class Entities:
    """A batch's distinct shippers, seller keys and address keys, and per parcel the
    index of its own (-1: no seller), as the batch's index has them
    (``features.ShipperIndex``): their part ids are then computed once per entity."""

    shippers: Sequence[str]
    parcel_shipper: I64
    sellers: Sequence[str]
    parcel_seller: I64
    addresses: Sequence[str]
    parcel_address: I64


def _entity_ids(table: dict[Any, int], names: Sequence[str | None], at: I64) -> U64:
    """Each parcel's part id from its entity's (``at``: -1, none: 0)."""
    ids = np.append(_column(table, names, len(names)), np.uint64(0))
    out: U64 = ids[at]  # -1 reads the 0 appended
    return out


def key_batch(
    manifests: Sequence[Manifest],
    addresses: Sequence[str] | None,
    value_usd: F64,
    sellers: Sequence[str | None] | None = None,
    entities: Entities | None = None,
    columns: Columns | None = None,
) -> KeyBatch:
    """The keys of a batch of parcels (``addresses``: each parcel's consignee address key;
    ``value_usd``: its declared value in USD; ``sellers``: each parcel's seller key, when
    the caller has them; ``entities``: instead of both, the batch's index of its
    entities; ``columns``: the batch's shared columns), read field by field in columns, the
    crosses composed in compiled code."""
    n = len(manifests)
    cols = columns if columns is not None else Columns.of(manifests)
    u, i64 = np.uint64, np.int64
    sg = _SINGLE
    singles = np.empty((n, len(SINGLES)), dtype=u)
    # the parcel's route (origin, carrier, hub, declarant, entry type, mode): few distinct
    # ones, so their part ids are looked up once per route in one pass
    _ROUTES.bound()
    route = np.fromiter(map(_ROUTES.__getitem__, map(_get_route, manifests)), i64, n)
    ids = _ROUTES.table()[route]
    singles[:, :7] = ids[:, :7]
    o_part, d_part = ids[:, 7].copy(), ids[:, 8].copy()
    # in transit: the departure is the last transit country
    moved = np.flatnonzero(np.fromiter(map(len, cols.transit), i64, n))
    if len(moved):
        dep = list(map(_last, map(cols.transit.__getitem__, moved.tolist())))
        singles[moved, 1] = _column(sg["departure"], dep, len(dep))
        d_part[moved] = _column(_D, dep, len(dep))
    by_name: list[tuple[str, Iterable[Any]]] = []
    if entities is None:
        seller_of = list(map(_get_seller, manifests))
        if sellers is None:
            sellers = [f"{s.id}@{s.marketplace}" if s is not None else None for s in seller_of]
        markets = [s.marketplace if s is not None else None for s in seller_of]
        by_name += [("shipper", map(_get_shipper, manifests)), ("seller", sellers),
                    ("marketplace", markets)]  # fmt: skip
    for col, (name, values) in enumerate(by_name, 7):
        singles[:, col] = _column(sg[name], values, n)
    if entities is not None:  # once per entity
        e = entities
        singles[:, 7] = _entity_ids(sg["shipper"], e.shippers, e.parcel_shipper)
        singles[:, 8] = _entity_ids(sg["seller"], e.sellers, e.parcel_seller)
        # a seller's marketplace, from one of its parcels (none: no parcel reads it)
        one = np.full(len(e.sellers), -1, dtype=i64)
        has = np.flatnonzero(e.parcel_seller >= 0)
        one[e.parcel_seller[has]] = has
        sold = [manifests[i].seller if i >= 0 else None for i in one.tolist()]
        markets = [x.marketplace if x is not None else None for x in sold]
        singles[:, 9] = _entity_ids(sg["marketplace"], markets, e.parcel_seller)
        addr = _address_ids(e.addresses)
        if addr is None:
            singles[:, -1] = _entity_ids(sg["address"], e.addresses, e.parcel_address)
        else:
            singles[:, -1] = np.append(addr, np.uint64(0))[e.parcel_address]
    else:
        assert addresses is not None
        addr = _address_ids(addresses)
        singles[:, -1] = _column(sg["address"], addresses, n) if addr is None else addr
    kg = cols.weight_kg
    v_ids, w_ids = _band_ids(_V, value_usd), _band_ids(_W, kg * 10)
    # the items, flattened: HS part ids, origin (0: the parcel's), value
    counts = cols.item_count
    k = len(cols.hs_codes)
    _HS_ROWS.bound()
    hs_row = np.fromiter(map(_HS_ROWS.__getitem__, cols.hs_codes), i64, k)
    hs = _HS_ROWS.table()[hs_row]  # after the lookups: they add the rows of new codes
    item_o = _column(_O_ITEM, cols.item_origin, k)
    item_value = cols.item_value
    item_start, usable, norm_ids = _items(counts, hs, item_value)
    item_parcel = np.repeat(np.arange(n), counts)[usable]
    io = item_o[usable]
    io = np.where(io == 0, o_part[item_parcel], io)
    # the attributes, in the manifest's order (a group's feature is its maximum)
    attr_maps = list(map(_get_attributes, manifests))
    attr_start = np.zeros(n + 1, dtype=i64)
    attrs = np.zeros(0, dtype=u)
    if any(attr_maps):
        np.cumsum([len(a) if a else 0 for a in attr_maps], out=attr_start[1:])
        attrs = np.fromiter(map(_ATTR_KV.__getitem__, chain.from_iterable(
            a.items() for a in attr_maps if a)), u, int(attr_start[-1]))  # fmt: skip
    per_kg = np.log(np.maximum(value_usd, 0.01) / np.maximum(kg, 0.001))
    return KeyBatch(*_entries(
        singles, o_part, d_part, v_ids, w_ids, item_start, hs[usable, 0].copy(),
        hs[usable, 1].copy(), hs[usable, 2].copy(), io, attr_start, attrs,
    ), norm_ids, per_kg)  # fmt: skip


def rule_key(code: str) -> str:
    """The learned key of a rule that fired."""
    return f"rule:{code}"


def rule_ids(codes: Sequence[str]) -> U64:
    """The key ids of rules (by their codes, in rule-set order)."""
    return np.array([part_id(rule_key(c)) for c in codes], dtype=np.uint64)


def with_rules(kb: KeyBatch, pos: I64, masks: I64, ids: U64, row0: int) -> tuple[KeyBatch, I64]:
    """The batch's keys with, at the end of each parcel's, one entry per rule that fired
    for it (``masks``: bit ``b`` for rule ``b``; ``ids``: the rules' key ids), and per
    entry its row: ``pos`` for the others, ``row0 + b`` for rule ``b``'s (its counts read
    after the batch's distinct keys). The rules are known only once the batch is scored,
    after its keys' counts were read."""
    bits = masks.astype(np.uint64)
    if not len(ids) or not (bits & np.uint64((1 << min(len(ids), 64)) - 1)).any():
        return kb, pos
    start, group, out_ids, parent, rows = _with_rules(
        kb.start, kb.group, kb.ids, kb.parent, pos, bits, ids, row0, RULE
    )
    return KeyBatch(start, group, out_ids, parent, kb.norm_ids, kb.log_usd_per_kg), rows


@njit(cache=True)
def _with_rules(
    start: I64, group: I64, ids: U64, parent: I64, pos: I64, masks: U64, rule_ids: U64,
    row0: int, rule_group: int,
) -> tuple[I64, I64, U64, I64, I64]:  # pragma: no cover  # fmt: skip
    n, r = start.shape[0] - 1, min(rule_ids.shape[0], 64)
    one = np.uint64(1)
    new_start = np.zeros(n + 1, dtype=np.int64)
    for p in range(n):
        c = 0
        for b in range(r):
            if (masks[p] >> np.uint64(b)) & one:
                c += 1
        new_start[p + 1] = new_start[p] + (start[p + 1] - start[p]) + c
    total = new_start[n]
    out_ids = np.empty(total, dtype=np.uint64)
    out_group = np.empty(total, dtype=np.int64)
    out_parent = np.empty(total, dtype=np.int64)
    rows = np.empty(total, dtype=np.int64)
    for p in range(n):
        shift = new_start[p] - start[p]
        for e in range(start[p], start[p + 1]):
            out_ids[e + shift], out_group[e + shift], rows[e + shift] = ids[e], group[e], pos[e]
            out_parent[e + shift] = parent[e] + shift if parent[e] >= 0 else -1
        k = start[p + 1] + shift
        for b in range(r):
            if (masks[p] >> np.uint64(b)) & one:
                out_ids[k], out_group[k], out_parent[k], rows[k] = (
                    rule_ids[b],
                    rule_group,
                    -1,
                    row0 + b,
                )
                k += 1
    return new_start, out_group, out_ids, out_parent, rows


@njit(cache=True, inline="always")
def home_slot(k: np.uint64, mask: np.uint64) -> np.int64:  # pragma: no cover
    """A key id's first slot in an open-addressing table of ``mask + 1`` slots (the ids
    are hashes already: their bits are mixed once more), shared with the counts' copy
    (``adapters/risk_replica.py``)."""
    return np.int64((k ^ (k >> np.uint64(29))) & mask)


@njit(cache=True, inline="always")
def next_slot(s: np.int64, mask: np.uint64) -> np.int64:  # pragma: no cover
    """The slot probed after ``s`` (linear probing)."""
    return np.int64((np.uint64(s) + np.uint64(1)) & mask)


@njit(cache=True)
def _unique_ids(ids: U64) -> tuple[U64, I64]:  # pragma: no cover
    """``np.unique(ids, return_inverse=True)`` without the sort (a hash table: a third of
    the time), the distinct ids in the order first met."""
    n = ids.shape[0]
    size = 16
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    slot_of = np.full(size, -1, dtype=np.int64)
    uniq = np.empty(n, dtype=np.uint64)
    pos = np.empty(n, dtype=np.int64)
    m = 0
    for i in range(n):
        k = ids[i]
        s = home_slot(k, mask)
        while True:
            j = slot_of[s]
            if j < 0:
                slot_of[s], uniq[m], pos[i] = m, k, m
                m += 1
                break
            if uniq[j] == k:
                pos[i] = j
                break
            s = next_slot(s, mask)
    return uniq[:m].copy(), pos


@njit(cache=True)
def distinct_spans(ids: U64, lo: I64, hi: I64) -> tuple[U64, I64]:  # pragma: no cover
    """For each span ``ids[lo[k]:hi[k]]`` (a parcel's entries) its distinct ids in the order
    first met, all in one array: span k's are ``out[at[k]:at[k + 1]]``."""
    k = lo.shape[0]
    total = 0
    for j in range(k):
        total += hi[j] - lo[j]
    out = np.empty(total, dtype=np.uint64)
    at = np.zeros(k + 1, dtype=np.int64)
    m = 0
    for j in range(k):
        first = m
        for e in range(lo[j], hi[j]):
            x = ids[e]
            seen = False
            for q in range(first, m):  # a parcel has a few dozen keys: a scan is enough
                if out[q] == x:
                    seen = True
                    break
            if not seen:
                out[m] = x
                m += 1
        at[j + 1] = m
    return out[:m].copy(), at


@njit(cache=True)
def _fold(a: np.uint64, b: U64) -> U64:  # pragma: no cover
    out = np.empty(b.shape[0], dtype=np.uint64)
    for j in range(b.shape[0]):
        out[j] = _mix(a, b[j])
    return out


@njit(cache=True)
def _items(
    counts: I64, hs: U64, value: F64
) -> tuple[I64, npt.NDArray[np.bool_], U64]:  # pragma: no cover
    """Per parcel the start of its usable items (an HS code of 4 digits or more), which
    items are usable, and the HS6, HS4, HS2 ids of its main item (the first of the highest
    value among the usable ones; 0: none)."""
    n = counts.shape[0]
    start = np.zeros(n + 1, dtype=np.int64)
    usable = hs[:, 0] != 0
    norm = np.zeros((n, 3), dtype=np.uint64)
    j = 0
    for p in range(n):
        best, main = -1.0, -1
        kept = 0
        for _ in range(counts[p]):
            if usable[j]:
                kept += 1
                if value[j] > best:
                    best, main = value[j], j
            j += 1
        start[p + 1] = start[p] + kept
        if main >= 0:
            norm[p, 0], norm[p, 1], norm[p, 2] = hs[main, 2], hs[main, 1], hs[main, 0]
    return start, usable, norm


@njit(cache=True)
def _entries(
    singles: U64, o_part: U64, d_part: U64, v_part: U64, w_part: U64, item_start: I64,
    h2: U64, h4: U64, h6: U64, io: U64, attr_start: I64, attrs: U64,
) -> tuple[I64, I64, U64, I64]:  # pragma: no cover  # fmt: skip
    n = singles.shape[0]
    cap = 8 * h2.shape[0] + n * singles.shape[1] + attrs.shape[0]
    group = np.empty(cap, dtype=np.int64)
    ids = np.empty(cap, dtype=np.uint64)
    parent = np.empty(cap, dtype=np.int64)
    start = np.zeros(n + 1, dtype=np.int64)
    e = 0
    for p in range(n):
        for j in range(item_start[p], item_start[p + 1]):
            # hs2, hs4 (parent hs2), hs6 (parent hs4): group 0
            group[e], ids[e], parent[e] = 0, h2[j], -1
            e2 = e
            e += 1
            group[e], ids[e], parent[e] = 0, h4[j], e2
            e4 = e
            e += 1
            base, base_e = h4[j], e4
            if h6[j] != 0:
                group[e], ids[e], parent[e] = 0, h6[j], e4
                base, base_e = h6[j], e
                e += 1
            c1 = _mix(base, io[j])  # HS6 x origin
            group[e], ids[e], parent[e] = 1, c1, base_e
            e1 = e
            e += 1
            group[e], ids[e], parent[e] = 2, _mix(c1, d_part[p]), e1  # x departure
            e += 1
            group[e], ids[e], parent[e] = 3, _mix(io[j], h4[j]), e4  # origin x HS4
            e += 1
            group[e], ids[e], parent[e] = 4, _mix(base, v_part[p]), base_e  # x value band
            e += 1
            group[e], ids[e], parent[e] = 5, _mix(base, w_part[p]), base_e  # x weight band
            e += 1
        for s in range(singles.shape[1]):
            if singles[p, s] != 0:
                group[e], ids[e], parent[e] = FIRST_SINGLE + s, singles[p, s], -1
                e += 1
        for j in range(attr_start[p], attr_start[p + 1]):
            group[e], ids[e], parent[e] = ATTRIBUTE, attrs[j], -1
            e += 1
        start[p + 1] = e
    return start, group[:e], ids[:e], parent[:e]
