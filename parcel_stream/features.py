"""manifests + reputation view -> contiguous numpy columns for the kernels.

One pass over the decoded structs fills preallocated arrays; there is no dict-per-parcel
hop. Items are flattened into item columns addressed by ``item_start``/``item_count``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from parcel_stream.countries import COUNTRIES
from parcel_stream.currency import USD_PER_UNIT
from parcel_stream.model import Manifest
from parcel_stream.rules import country_index

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
    value_usd: F64
    weight_kg: F64
    origin_idx: I64
    item_start: I64
    item_count: I64
    item_heading: I64  # 4-digit HS heading, -1 when the code is empty
    item_value_usd: F64
    shipper_seen: F64
    shipper_holds: F64
    shipper_age_days: F64  # -1 when the shipper was never seen

    def __len__(self) -> int:
        return int(self.value_usd.shape[0])


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


_COUNTRY_INDEX: dict[str, int] = {c: country_index(c) for c in COUNTRIES}


def build_features(
    manifests: list[Manifest],
    shippers: ShipperIndex,
    view: ReputationView,
    now_ms: int,
    usd_per_unit: dict[str, float] = USD_PER_UNIT,
) -> Features:
    """Fill the feature columns for one batch (one generator pass per column)."""
    n = len(manifests)
    f64, i64 = np.float64, np.int64
    rates = np.fromiter((usd_per_unit[m.currency] for m in manifests), f64, n)
    value_usd = np.fromiter((m.declared_value for m in manifests), f64, n) * rates
    weight_kg = np.fromiter((m.gross_weight_kg for m in manifests), f64, n)
    cidx = _COUNTRY_INDEX
    origin_idx = np.fromiter((cidx.get(m.origin_country, -1) for m in manifests), i64, n)
    item_count = np.fromiter((len(m.items) for m in manifests), i64, n)
    item_start = np.cumsum(item_count) - item_count
    items = [it for m in manifests for it in m.items]
    n_items = len(items)
    item_heading = np.fromiter((_heading(it.hs_code) for it in items), i64, n_items)
    item_value = np.fromiter((it.value for it in items), f64, n_items)
    item_value *= np.repeat(rates, item_count)
    ps = shippers.parcel_shipper
    first_seen = view.first_seen_ms[ps]
    age_days = np.where(first_seen > 0, (now_ms - first_seen) / MS_PER_DAY, -1.0)
    return Features(
        value_usd=value_usd,
        weight_kg=weight_kg,
        origin_idx=origin_idx,
        item_start=item_start,
        item_count=item_count,
        item_heading=item_heading,
        item_value_usd=item_value,
        shipper_seen=np.ascontiguousarray(view.seen[ps]),
        shipper_holds=np.ascontiguousarray(view.holds[ps]),
        shipper_age_days=np.ascontiguousarray(age_days),
    )
