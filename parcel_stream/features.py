"""manifests + reputation view + rule-set tables -> the feature matrix the kernel reads.

One generator pass over the decoded structs per column, then vectorised numpy; there is
no dict-per-parcel hop. The features are named in :mod:`parcel_stream.feature_catalog`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from parcel_stream.countries import COUNTRIES
from parcel_stream.currency import USD_PER_UNIT
from parcel_stream.feature_catalog import FEATURE_INDEX, FEATURES
from parcel_stream.model import Manifest
from parcel_stream.rules import RuleSet, country_index, normalise_name

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
MS_PER_DAY = 86_400_000.0


@dataclass(frozen=True, slots=True)
class ShipperIndex:
    """The distinct shippers of a batch and, per parcel, the position of its shipper."""

    ids: list[str]
    parcel_shipper: I64


@dataclass(frozen=True, slots=True)
class ReputationView:
    """Reputation of the batch's distinct shippers, aligned with ``ShipperIndex.ids``."""

    seen: F64
    holds: F64
    value_usd: F64
    first_seen_ms: F64  # 0 when never seen

    @classmethod
    def empty(cls, n: int) -> ReputationView:
        z = np.zeros(n, dtype=np.float64)
        return cls(seen=z, holds=z.copy(), value_usd=z.copy(), first_seen_ms=z.copy())


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


def index_shippers(manifests: list[Manifest]) -> ShipperIndex:
    positions: dict[str, int] = {}
    idx = np.empty(len(manifests), dtype=np.int64)
    for i, m in enumerate(manifests):
        sid = m.shipper.id
        pos = positions.get(sid)
        if pos is None:
            pos = positions[sid] = len(positions)
        idx[i] = pos
    return ShipperIndex(ids=list(positions), parcel_shipper=idx)


@lru_cache(maxsize=1 << 16)
def _heading(hs_code: str) -> int:
    """4-digit HS heading of a validated code ("6109.10" -> 6109); -1 when empty."""
    return int(hs_code[:4]) if hs_code else -1


@lru_cache(maxsize=1 << 16)
def _words(text: str) -> str:
    return normalise_name(text)


_COUNTRY_INDEX: dict[str, int] = {c: country_index(c) for c in COUNTRIES}


def _text_features(manifests: list[Manifest], rs: RuleSet, n: int) -> tuple[F64, F64, F64, F64]:
    """Vague descriptions, description/HS contradictions and watchlist hits: per parcel
    Python, but only set lookups on cached normalised strings."""
    vague = np.zeros(n, dtype=np.float64)
    mismatch = np.zeros(n, dtype=np.float64)
    ship_watch = np.zeros(n, dtype=np.float64)
    cons_watch = np.zeros(n, dtype=np.float64)
    vague_words, watchlist, keywords = rs.vague_words, rs.watchlist, rs.keyword_chapters
    for i, m in enumerate(manifests):
        for it in m.items:
            desc = _words(it.description)
            if desc in vague_words:
                vague[i] += 1
            if keywords and it.hs_code:
                chapter = int(it.hs_code[:2])
                padded = f" {desc} "
                for word, chapters in keywords:
                    if chapter not in chapters and f" {word} " in padded:
                        mismatch[i] += 1
                        break
        if watchlist:
            if _words(m.shipper.name) in watchlist:
                ship_watch[i] = 1.0
            if _words(m.consignee.name) in watchlist:
                cons_watch[i] = 1.0
    return vague, mismatch, ship_watch, cons_watch


def build_features(
    manifests: list[Manifest],
    shippers: ShipperIndex,
    view: ReputationView,
    ruleset: RuleSet,
    now_ms: int,
    usd_per_unit: dict[str, float] = USD_PER_UNIT,
) -> Features:
    """Fill the feature matrix for one batch (one generator pass per column)."""
    n = len(manifests)
    f64, i64 = np.float64, np.int64
    rates = np.fromiter((usd_per_unit[m.currency] for m in manifests), f64, n)
    declared = np.fromiter((m.declared_value for m in manifests), f64, n)
    value_usd = declared * rates
    weight_kg = np.fromiter((m.gross_weight_kg for m in manifests), f64, n)
    cidx = _COUNTRY_INDEX
    origin_idx = np.fromiter((cidx.get(m.origin_country, -1) for m in manifests), i64, n)
    item_count = np.fromiter((len(m.items) for m in manifests), i64, n)
    items = [it for m in manifests for it in m.items]
    n_items = len(items)
    item_heading = np.fromiter((_heading(it.hs_code) for it in items), i64, n_items)
    item_value = np.fromiter((it.value for it in items), f64, n_items)
    item_value *= np.repeat(rates, item_count)
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
    usd_per_kg = value_usd / weight_kg
    to_norm = np.where(np.isfinite(norm), usd_per_kg / np.where(np.isfinite(norm), norm, 1.0), 1e9)
    threshold = ruleset.threshold_usd
    to_threshold = value_usd / threshold if threshold > 0 else np.full(n, -1.0)
    diff = np.abs(item_sum - value_usd)
    ps = shippers.parcel_shipper
    seen = view.seen[ps]
    holds = view.holds[ps]
    first_seen = view.first_seen_ms[ps]
    vague, mismatch, ship_watch, cons_watch = _text_features(manifests, ruleset, n)
    rows = {
        "value_usd": value_usd,
        "value_to_threshold": to_threshold,
        "weight_kg": weight_kg,
        "usd_per_kg": usd_per_kg,
        "usd_per_kg_to_norm": to_norm,
        "hs_risk": hs_risk,
        "origin_risk": np.where(origin_idx >= 0, ruleset.origin_risk[origin_idx], 0.0),
        "shipper_seen": seen,
        "shipper_hold_ratio": np.where(seen > 0, holds / np.maximum(seen, 1.0), 0.0),
        "shipper_age_days": np.where(first_seen > 0, (now_ms - first_seen) / MS_PER_DAY, -1.0),
        "value_mismatch": diff / np.maximum(value_usd, 1.0),
        "value_mismatch_usd": diff,
        "items_missing_hs": missing_hs,
        "item_count": item_count.astype(f64),
        "vague_items": vague,
        "description_hs_mismatch": mismatch,
        "shipper_watchlisted": ship_watch,
        "consignee_watchlisted": cons_watch,
        "value_is_round": ((declared > 0) & (np.fmod(declared, 10.0) == 0)).astype(f64),
    }
    matrix = np.empty((len(FEATURES), n), dtype=f64)
    for name, values in rows.items():
        matrix[FEATURE_INDEX[name]] = values
    return Features(matrix=matrix)
