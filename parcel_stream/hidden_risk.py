"""Risk that the default rules do not encode, added to a generated feed, so that learning
from outcomes is needed and measurable here (``parcel-stream generate --hidden-risk``).

On top of the generator's own parcels and labels, every parcel gets a declarant (a broker
per shipper), a transport mode (postal for the postal carrier, else air), an entry type and
two attributes (the sales platform and the payment method). Then, among the parcels the
generator left compliant:

- a few HS6 x origin pairs, drawn per seed, are violations at ``pair_rate``
  (``hidden_hs_origin``): nothing about their values, weights or parties stands out;
- a few declarants file violations at ``declarant_rate`` (``risky_declarant``);
- from the middle of the feed a new pattern starts, different per hub: at one hub,
  cash-on-delivery parcels from one platform; at another, postal parcels of one HS6
  (``drift_*``).

The generator's tuning target is none of this: the shares are plain numbers chosen to be
learnable by any method that learns from outcomes, and the labels say which is which.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from parcel_stream.currency import USD_PER_UNIT
from parcel_stream.generate import GOODS, SHIPPER_COUNTRIES, FeedConfig

PAYMENTS = ("card", "card", "card", "wallet", "wallet", "cod")


@dataclass(frozen=True)
class HiddenRisk:
    declarants: int = 30
    risky_pairs: int = 4
    pair_rate: float = 0.35
    risky_declarants: int = 2
    declarant_rate: float = 0.2
    drift_rate: float = 0.5


def with_hidden_risk(
    pairs: Iterable[tuple[dict[str, Any], str | None]],
    cfg: FeedConfig,
    hidden: HiddenRisk = HiddenRisk(),
) -> Iterator[tuple[dict[str, Any], str | None]]:
    rng = random.Random(cfg.seed * 7919 + 17)
    common = [g[0] for g in GOODS if g[4] >= 4.0]
    countries = [c for c, _w in SHIPPER_COUNTRIES if c != "CN"]
    risky_pairs: set[tuple[str, str]] = set()
    while len(risky_pairs) < hidden.risky_pairs:
        risky_pairs.add((rng.choice(common), rng.choice(countries)))
    risky_declarants = {f"BRK{d:03d}" for d in rng.sample(range(hidden.declarants),
                                                          hidden.risky_declarants)}  # fmt: skip
    drift_platform = rng.choice(["shopfast", "megamart", "bazaarly", "dealzone"])
    drift_hs = rng.choice(common)
    midpoint_ms = cfg.start_ms + cfg.duration_s * 1000 / 2
    for doc, label in pairs:
        sid = doc["shipper"]["id"]
        number = int(sid[3:]) if sid[3:].isdigit() else 0
        doc["declarant"] = f"BRK{(number * 7 + (sid[0] == 'N')) % hidden.declarants:03d}"
        doc["transport_mode"] = "postal" if doc["carrier"].startswith("postal") else "air"
        usd = doc["declared_value"] * USD_PER_UNIT[doc["currency"]]
        doc["entry_type"] = "de minimis" if usd < cfg.threshold_usd else "informal"
        platform = doc.get("seller", {}).get("marketplace") or "direct"
        payment = rng.choice(PAYMENTS)
        doc["attributes"] = {"platform": platform, "payment": payment}
        if label is None:
            u = rng.random()
            codes = {item["hs_code"][:7] for item in doc["items"]}
            late = doc["manifest_ts_ms"] >= midpoint_ms
            if any((code, doc["origin_country"]) in risky_pairs for code in codes):
                label = "hidden_hs_origin" if u < hidden.pair_rate else None
            elif doc["declarant"] in risky_declarants:
                label = "risky_declarant" if u < hidden.declarant_rate else None
            elif (
                late and doc["hub"] == "LAX-ISC" and payment == "cod" and platform == drift_platform
            ):
                label = "drift_lax" if u < hidden.drift_rate else None
            elif (late and doc["hub"] == "JFK-ISC" and doc["transport_mode"] == "postal"
                  and drift_hs in codes):  # fmt: skip
                label = "drift_jfk" if u < hidden.drift_rate else None
        yield doc, label
