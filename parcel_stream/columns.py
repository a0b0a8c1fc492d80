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

import numpy as np
import numpy.typing as npt

from parcel_stream.currency import USD_PER_UNIT
from parcel_stream.model import Manifest

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_CURRENCY, _DECLARED = attrgetter("currency"), attrgetter("declared_value")
_WEIGHT, _ORIGIN, _ITEMS = (
    attrgetter("gross_weight_kg"),
    attrgetter("origin_country"),
    attrgetter("items"),
)
_HS_CODE, _VALUE = attrgetter("hs_code"), attrgetter("value")
_PARCEL_ID, _TS = attrgetter("parcel_id"), attrgetter("manifest_ts_ms")
_SHIPPER_NAME, _CONSIGNEE_NAME = attrgetter("shipper.name"), attrgetter("consignee.name")
_TRANSIT, _QUANTITY = attrgetter("transit_countries"), attrgetter("quantity")
_DESCRIPTION = attrgetter("description")


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
        f64 = np.float64
        rates = np.fromiter(map(usd_per_unit.__getitem__, map(_CURRENCY, manifests)), f64, n)
        declared = np.fromiter(map(_DECLARED, manifests), f64, n)
        per_parcel = list(map(_ITEMS, manifests))
        items = list(chain.from_iterable(per_parcel))
        k = len(items)
        return cls(
            rates, declared, declared * rates, np.fromiter(map(_WEIGHT, manifests), f64, n),
            list(map(_ORIGIN, manifests)), np.fromiter(map(len, per_parcel), np.int64, n),
            list(map(_HS_CODE, items)), np.fromiter(map(_VALUE, items), f64, k),
            list(map(_PARCEL_ID, manifests)), np.fromiter(map(_TS, manifests), np.int64, n),
            list(map(_TRANSIT, manifests)), list(map(_SHIPPER_NAME, manifests)),
            list(map(_CONSIGNEE_NAME, manifests)), np.fromiter(map(_QUANTITY, items), f64, k),
            list(map(_DESCRIPTION, items)), list(map(_ORIGIN, items)),
        )  # fmt: skip

    @property
    def ts(self) -> F64:
        """The manifests' times (ms) as floats, as the kernels read them."""
        out: F64 = self.ts_ms.astype(np.float64)
        return out
