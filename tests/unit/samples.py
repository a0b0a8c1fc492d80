"""Small manifests for tests."""

from __future__ import annotations

import copy
from typing import Any

import orjson

BASE: dict[str, Any] = {
    "parcel_id": "PX0001",
    "carrier": "postal-epacket",
    "hub": "JFK-ISC",
    "shipper": {
        "id": "SHP000001",
        "name": "Export Co 0001",
        "address": {"lines": ["1 Industrial Rd"], "city": "Shenzhen", "country": "CN"},
        "country": "CN",
    },
    "consignee": {
        "name": "Alex Smith",
        "address": {
            "lines": ["12 Main St"],
            "city": "New York",
            "postal_code": "10001",
            "country": "US",
        },
        "country": "US",
    },
    "items": [
        {"description": "cotton t-shirt", "hs_code": "6109.10", "quantity": 2, "value": 24.0}
    ],
    "declared_value": 24.0,
    "currency": "USD",
    "gross_weight_kg": 0.5,
    "origin_country": "CN",
    "manifest_ts_ms": 1_790_000_000_000,
}


def manifest(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc.update(changes)
    return doc


def line(**changes: Any) -> bytes:
    return orjson.dumps(manifest(**changes))
