"""The learned model's keys as 64-bit ids, built over a batch in columns.

A key is named by its parts (``hs6:293399``, ``hs6:293399|o:IN``); its id is the 64-bit
BLAKE2b of its first part, folded with each further part's (a SplitMix64 mix of the two),
so the id of a cross is computed from the ids of its parts without building its name.
The worker builds every parcel's key ids this way (``key_batch``): a Python pass that
reads each parcel's fields once and looks their part ids up in caches, then a compiled
pass that composes the crosses. Names are built only where a person reads them (the
learned reasons of a hold, ``learner show``), from ``risk.parcel_keys``, which computes
the same ids (``tests/unit/test_risk_keys.py`` proves the two equal).

An entry is one (parcel, feature group, key id, parent entry): a parcel's entries come
parents first, so its rates can be computed in one pass (``risk.features_batch``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from numba import njit

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

_PARTS: dict[str, int] = {}


def part_id(part: str) -> int:
    """A part's 64-bit id (never 0: 0 means "no key")."""
    got = _PARTS.get(part)
    if got is None:
        if len(_PARTS) > _CACHE_MAX:
            _PARTS.clear()
        digest = hashlib.blake2b(part.encode(), digest_size=8).digest()
        got = _PARTS[part] = int.from_bytes(digest, "little") or 1
    return got


def combine(a: int, b: int) -> int:
    """The id of a key with parts ``a`` then ``b`` (the same as the compiled ``_mix``)."""
    z = (a * 0x9E3779B97F4A7C15 + b) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return z or 1


@njit(cache=True, inline="always")
def _mix(a: np.uint64, b: np.uint64) -> np.uint64:  # pragma: no cover
    z = a * np.uint64(0x9E3779B97F4A7C15) + b
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return z if z != 0 else np.uint64(1)


class _Parts(dict[str, int]):
    """Part ids of one kind by value: ``o`` -> {"CN": id of "o:CN"}."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, value: str) -> int:
        if len(self) > _CACHE_MAX:
            self.clear()
        got = self[value] = part_id(self.prefix + value)
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


class _HS(dict[str, tuple[int, int, int]]):
    """(hs2, hs4, hs6 or 0) part ids by raw HS code; (0, 0, 0) when under 4 digits."""

    def __missing__(self, code: str) -> tuple[int, int, int]:
        if len(self) > _CACHE_MAX:
            self.clear()
        d = hs_digits(code)
        if len(d) < 4:
            got = (0, 0, 0)
        else:
            got = (part_id(f"hs2:{d[:2]}"), part_id(f"hs4:{d[:4]}"),
                   part_id(f"hs6:{d[:6]}") if len(d) >= 6 else 0)  # fmt: skip
        self[code] = got
        return got


_HS_IDS = _HS()
_O, _D = _Parts("o:"), _Parts("d:")
_V, _W = _Parts("v:"), _Parts("w:")
_SINGLE = {
    "origin": _Parts("origin:"), "departure": _Parts("departure:"), "carrier": _Parts("carrier:"),
    "hub": _Parts("hub:"), "declarant": _Parts("declarant:"), "entry_type": _Parts("entry:"),
    "transport_mode": _Parts("mode:"), "shipper": _Parts("shipper:"),
    "seller": _Parts("seller:"), "marketplace": _Parts("market:"), "address": _Parts("addr:"),
}  # fmt: skip
_ATTR = _Parts("attr:")


class _AttrParts(dict[tuple[str, str], int]):
    """Part ids of attributes by (key, value)."""

    def __missing__(self, kv: tuple[str, str]) -> int:
        if len(self) > _CACHE_MAX:
            self.clear()
        got = self[kv] = _ATTR[f"{kv[0]}={kv[1]}"]
        return got


_ATTR_KV = _AttrParts()


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
        """The distinct key ids and, per entry, its position among them."""
        uniq, pos = np.unique(self.ids, return_inverse=True)
        return uniq, pos.astype(np.int64)


def key_batch(manifests: Sequence[Manifest], addresses: Sequence[str], value_usd: F64) -> KeyBatch:
    """The keys of a batch of parcels (``addresses``: each parcel's consignee address key;
    ``value_usd``: its declared value in USD), the crosses composed in compiled code."""
    n = len(manifests)
    singles: list[int] = []  # 11 per parcel, 0: none
    parts: list[int] = []  # o, d, v, w per parcel
    item_start, attr_start = [0], [0]
    h2s: list[int] = []
    h4s: list[int] = []
    h6s: list[int] = []
    ios: list[int] = []
    attrs: list[int] = []
    hs_ids, o_ids, sg = _HS_IDS, _O, _SINGLE
    s_origin, s_dep, s_carrier, s_hub = sg["origin"], sg["departure"], sg["carrier"], sg["hub"]
    s_decl, s_entry, s_mode = sg["declarant"], sg["entry_type"], sg["transport_mode"]
    s_ship, s_sell, s_market, s_addr = sg["shipper"], sg["seller"], sg["marketplace"], sg["address"]
    kg = np.fromiter((m.gross_weight_kg for m in manifests), np.float64, n)
    v_ids, w_ids = _band_ids(_V, value_usd), _band_ids(_W, kg * 10)
    d_ids, attr_ids = _D, _ATTR_KV
    norms: list[int] = []
    for i, m in enumerate(manifests):
        origin = m.origin_country
        transit = m.transit_countries
        dep = transit[-1] if transit else origin
        o = o_ids[origin]
        seller = m.seller
        address = addresses[i]
        parts.extend((o, d_ids[dep]))
        singles.extend((
            s_origin[origin], s_dep[dep], s_carrier[m.carrier], s_hub[m.hub],
            s_decl[m.declarant] if m.declarant else 0,
            s_entry[m.entry_type] if m.entry_type else 0,
            s_mode[m.transport_mode] if m.transport_mode else 0,
            s_ship[m.shipper.id],
            s_sell[f"{seller.id}@{seller.marketplace}"] if seller is not None else 0,
            s_market[seller.marketplace] if seller is not None and seller.marketplace else 0,
            s_addr[address] if address else 0,
        ))  # fmt: skip
        main, best = (0, 0, 0), -1.0
        for item in m.items:
            codes = hs_ids[item.hs_code]
            h2, h4, h6 = codes
            if h2:
                h2s.append(h2)
                h4s.append(h4)
                h6s.append(h6)
                ios.append(o_ids[item.origin_country] if item.origin_country else o)
                if item.value > best:
                    main, best = codes, item.value
        norms.extend((main[2], main[1], main[0]))
        item_start.append(len(h2s))
        if m.attributes:  # the order is the manifest's: a group's feature is its maximum
            for kv in m.attributes.items():
                attrs.append(attr_ids[kv])
        attr_start.append(len(attrs))
    u, i64 = np.uint64, np.int64
    p = np.array(parts, dtype=u).reshape(n, 2)
    per_kg = np.log(np.maximum(value_usd, 0.01) / np.maximum(kg, 0.001))
    return KeyBatch(*_entries(
        np.array(singles, dtype=u).reshape(n, len(SINGLES)), p[:, 0].copy(), p[:, 1].copy(),
        v_ids, w_ids, np.array(item_start, dtype=i64), np.array(h2s, dtype=u),
        np.array(h4s, dtype=u), np.array(h6s, dtype=u), np.array(ios, dtype=u),
        np.array(attr_start, dtype=i64), np.array(attrs, dtype=u),
    ), np.array(norms, dtype=u).reshape(n, 3), per_kg)  # fmt: skip


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
