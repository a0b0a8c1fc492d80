"""The columns of a parsed batch that the scoring stages read.

The rule features (``features.build_features``), the learned model's keys
(``risk_keys.key_batch``) and what the batch step remembers of each parcel read the same
fields of every parcel: its id, time, value, weight, origin, route, party names, items,
their HS codes, descriptions and values. Each such pass over the decoded manifests is
Python (a ``map`` over an attribute getter, a C loop but a Python object per value), so
each column is read once per batch, here, and the stages take it from the batch
(``Prepared``). A batch loaded from the backtest's columnar cache (``feedcache.py``) has
these columns without decoding its manifests at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from parcel_stream.currency import USD_PER_UNIT
from parcel_stream.model import Manifest

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# every field read in one call per parcel and per item, the rows then turned into columns
# in C (``zip(*rows)``): one pass each rather than one per field
_PARCEL_FIELDS = attrgetter(
    "currency", "declared_value", "gross_weight_kg", "origin_country", "items", "parcel_id",
    "manifest_ts_ms", "transit_countries", "shipper.name", "consignee.name",
)  # fmt: skip
_ITEM_FIELDS = attrgetter("hs_code", "value", "quantity", "description", "origin_country")


@dataclass(frozen=True, slots=True)
class Columns:
    """Per parcel: its currency's USD rate, declared value (in its currency and in USD),
    gross weight, origin and item count, its id, manifest time, transit countries and the
    shipper's and consignee's names; the items of all parcels in order, with their HS
    codes, values (in the parcel's currency), quantities, descriptions and origins (None:
    the parcel's). Shared by the stages, so never changed in place: a stage that needs a
    changed column makes its own. (Not flagged read-only: compiled kernels would need a
    variant for read-only arrays.)"""

    rates: F64
    declared: F64
    value_usd: F64
    weight_kg: F64
    origin: list[str]
    item_count: I64
    hs_codes: list[str]
    item_value: F64
    parcel_ids: list[str]
    ts_ms: I64
    transit: list[list[str]]
    shipper_names: list[str]
    consignee_names: list[str]
    item_qty: F64
    descriptions: list[str]
    item_origin: list[str | None]

    @classmethod
    def of(cls, manifests: Sequence[Manifest], usd_per_unit: dict[str, float] = USD_PER_UNIT
           ) -> Columns:  # fmt: skip
        n = len(manifests)
        if not n:
            return cls._of_fields(n, ([],) * 10, ([],) * 5, usd_per_unit)
        parcels = tuple(zip(*map(_PARCEL_FIELDS, manifests), strict=True))
        items = tuple(zip(*map(_ITEM_FIELDS, chain.from_iterable(parcels[4])), strict=True))
        return cls._of_fields(n, parcels, items or ([],) * 5, usd_per_unit)

    @classmethod
    def _of_fields(cls, n: int, parcels: Sequence[Sequence[Any]], items: Sequence[Sequence[Any]],
                  usd_per_unit: dict[str, float]) -> Columns:  # fmt: skip
        """From the fields as ``_PARCEL_FIELDS`` and ``_ITEM_FIELDS`` read them, by field."""
        f64 = np.float64
        (currency, declared_v, weight, origin, per_parcel, ids, ts, transit, shipper,
         consignee) = parcels  # fmt: skip
        hs, value, quantity, description, item_origin = items
        k = len(hs)
        rates = np.fromiter(map(usd_per_unit.__getitem__, currency), f64, n)
        declared = np.fromiter(declared_v, f64, n)
        return cls(
            rates, declared, declared * rates, np.fromiter(weight, f64, n), list(origin),
            np.fromiter(map(len, per_parcel), np.int64, n), list(hs),
            np.fromiter(value, f64, k), list(ids), np.fromiter(ts, np.int64, n), list(transit),
            list(shipper), list(consignee), np.fromiter(quantity, f64, k), list(description),
            list(item_origin),
        )  # fmt: skip

    @property
    def ts(self) -> F64:
        """The manifests' times (ms) as floats, as the kernels read them."""
        out: F64 = self.ts_ms.astype(np.float64)
        return out


class RowCache(dict[Any, int]):
    """Per value its row in ``table()`` (``width`` numbers a row, from ``ids_of``): few
    distinct values, so a column of values is looked up as row numbers (``map`` over the
    cache) and their rows taken from the table in one step. Rows added since the last
    ``table()`` go in at once; the table grows by doubling (it has spare rows at its end)."""

    width = 1
    dtype: Any = np.int64
    limit = 2_000_000  # values kept; ``bound`` starts afresh over it

    def __init__(self) -> None:
        super().__init__()
        self._new: list[Sequence[int]] = []  # rows not in the table yet
        self._table: npt.NDArray[Any] = np.zeros((64, self.width), dtype=self.dtype)

    def ids_of(self, value: Any) -> Sequence[int]:
        raise NotImplementedError

    def bound(self) -> None:
        """Start afresh once over ``limit``: only between passes, as a pass holds row
        numbers."""
        if len(self) > self.limit:
            self.clear()

    def clear(self) -> None:
        super().clear()
        self._new = []

    def __missing__(self, value: Any) -> int:
        self._new.append(self.ids_of(value))
        got = self[value] = len(self)  # (its length before it is added)
        return got

    def table(self) -> npt.NDArray[Any]:
        """Row ``k`` of value ``k``: call after the lookups (they add the new rows)."""
        if self._new:
            n, old = len(self), len(self) - len(self._new)
            if n > len(self._table):
                grown = np.zeros((2 * n, self.width), dtype=self.dtype)
                grown[:old] = self._table[:old]
                self._table = grown
            self._table[old:n] = self._new
            self._new = []
        return self._table
