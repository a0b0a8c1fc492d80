"""The named features rule conditions can use; row ``i`` of the feature matrix is
``FEATURES[i]``. Append only: rule sets refer to features by name, kernels by index."""

from __future__ import annotations

FEATURE_DOCS: dict[str, str] = {
    "value_usd": "declared total value in USD",
    "value_to_threshold": "declared USD value / duty-free threshold (-1 when there is no threshold)",
    "weight_kg": "gross weight in kg",
    "usd_per_kg": "declared USD value per kg",
    "usd_per_kg_to_norm": "USD per kg / the lowest plausible USD per kg of the parcel's HS chapters (1e9 without HS codes)",
    "hs_risk": "highest risk level (0..1) of the items' HS headings on the risk table",
    "origin_risk": "risk level (0..1) of the origin country on the risk table",
    "shipper_seen": "parcels of this shipper scored before (reputation store)",
    "shipper_hold_ratio": "share of this shipper's past parcels that were held",
    "shipper_age_days": "days since the shipper was first seen (-1 when never seen)",
    "value_mismatch": "|sum of item values - declared value| / max(declared value, 1 USD)",
    "value_mismatch_usd": "|sum of item values - declared value| in USD",
    "items_missing_hs": "number of items without an HS code",
    "item_count": "number of item lines",
    "vague_items": "number of items whose description is only a vague word (gift, sample, parts, ...)",
    "description_hs_mismatch": "number of items whose description names goods of other HS chapters than declared",
    "shipper_watchlisted": "1 when the shipper's normalised name is on the watchlist",
    "consignee_watchlisted": "1 when the consignee's normalised name is on the watchlist",
    "value_is_round": "1 when the declared value is a positive multiple of 10 in its currency",
    "consignee_distinct_shippers": "distinct shippers seen sending to the consignee's normalised address (stored + this batch)",
    "pair_parcels": "parcels this shipper sent to this address within the split window, this one included",
    "pair_value_usd": "USD value this shipper sent to this address within the split window, this one included",
    "pair_value_to_threshold": "pair_value_usd / duty-free threshold (-1 when there is no threshold)",
    "shipper_watchlist_similarity": "1 for an exact watchlist match, else the best trigram similarity (0..1) of the shipper's normalised name to an entry",
    "consignee_watchlist_similarity": "as shipper_watchlist_similarity, for the consignee's name",
    "weight_per_item_kg": "gross weight / total item quantity",
    "shipper_today_parcels": "the shipper's parcels on the batch's (manifest-time) day, stored + this batch",
    "shipper_daily_baseline": "the shipper's mean parcels per day over the (up to 7) days before today that it was known",
    "shipper_volume_ratio": "shipper_today_parcels / max(shipper_daily_baseline, 1/7)",
    "placeholder_parties": "number of party names (shipper, consignee) that are placeholders or under 3 characters",
    "transit_risk": "highest risk level (0..1) of the transit countries on the transit table",
    "shipper_exams": "examinations of this shipper's parcels with a recorded outcome",
    "shipper_exam_violation_rate": "share of those examinations that found a violation or seized goods",
    "address_exam_violations": "examinations of parcels to this consignee address that found a violation",
    "shipper_enrolled": "1 when the shipper is on the known-shipper list (tables.known_shippers)",
    "shipper_suspended": "1 when an enrolled shipper's examinations found a violation (benefit suspended)",
    "shipper_violations_per_parcel": "violations found by examination / parcels seen from the shipper (a floor on its violation rate)",
}
FEATURES: tuple[str, ...] = tuple(FEATURE_DOCS)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURES)}
