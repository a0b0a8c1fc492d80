"""A seeded synthetic hub feed that looks like low-value e-commerce traffic, with labels.

Shippers have heavy-tailed (Pareto) volumes; the HS mix is dominated by apparel,
footwear, electronics accessories, cosmetics and toys; values cluster well below the
threshold with a bump just under it; arrivals follow a diurnal curve. A few percent of
parcels carry injected bad behaviour, and each parcel gets a ground-truth label
(``None`` for compliant) kept apart from the manifest.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from parcel_stream.currency import USD_PER_UNIT

# (HS code, description, typical USD per item, typical kg per item, mix weight)
GOODS: tuple[tuple[str, str, float, float, float], ...] = (
    ("6109.10", "cotton t-shirt", 12.0, 0.2, 14.0),
    ("6204.62", "women's trousers", 25.0, 0.4, 8.0),
    ("6110.20", "knitted sweater", 30.0, 0.5, 6.0),
    ("6203.42", "men's jeans", 35.0, 0.6, 5.0),
    ("6404.11", "sports shoes", 45.0, 0.9, 6.0),
    ("6403.99", "leather boots", 70.0, 1.2, 3.0),
    ("8517.62", "bluetooth earbuds", 25.0, 0.1, 6.0),
    ("8504.40", "usb phone charger", 12.0, 0.15, 6.0),
    ("8518.30", "headphones", 30.0, 0.3, 4.0),
    ("3926.90", "phone case", 8.0, 0.08, 6.0),
    ("3304.99", "face cream", 18.0, 0.2, 6.0),
    ("3304.20", "eye shadow palette", 15.0, 0.15, 4.0),
    ("9503.00", "plastic toy figure", 14.0, 0.3, 7.0),
    ("9504.50", "video game controller", 40.0, 0.4, 2.0),
    ("4202.22", "handbag", 40.0, 0.7, 3.0),
    ("7117.19", "fashion jewellery", 10.0, 0.05, 4.0),
    ("9102.11", "wrist watch", 35.0, 0.15, 2.0),
    ("6307.90", "textile face mask", 6.0, 0.05, 2.0),
    ("8471.60", "computer keyboard", 35.0, 0.8, 2.0),
    ("4901.99", "printed book", 15.0, 0.5, 2.0),
)
GOODS_WEIGHTS = [g[4] for g in GOODS]
SHIPPER_COUNTRIES = (("CN", 62), ("HK", 8), ("US", 6), ("GB", 4), ("DE", 3), ("KR", 4),
                     ("JP", 2), ("VN", 4), ("IN", 3), ("TR", 2), ("AE", 2))  # fmt: skip
MARKETPLACES = ("shopfast", "megamart", "bazaarly", "dealzone", "cartwheel", "none")
CARRIERS = ("postal-epacket", "dhl-express", "ups", "fedex", "yunexpress", "cainiao")
HUBS = ("JFK-ISC", "ORD-ISC", "LAX-ISC", "CVG-DHL", "MEM-FDX")
CURRENCY_BY_COUNTRY = {"CN": "CNY", "HK": "HKD", "GB": "GBP", "DE": "EUR", "KR": "KRW",
                       "JP": "JPY", "VN": "VND", "IN": "INR", "TR": "TRY", "AE": "AED"}  # fmt: skip
STREETS = ("Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Pine St", "Elm St", "Lake Rd",
           "Hill St", "Park Ave", "River Rd", "2nd St", "Sunset Blvd")  # fmt: skip
CITIES = (("New York", "NY", "100"), ("Chicago", "IL", "606"), ("Houston", "TX", "770"),
          ("Phoenix", "AZ", "850"), ("Miami", "FL", "331"), ("Seattle", "WA", "981"),
          ("Denver", "CO", "802"), ("Atlanta", "GA", "303"))  # fmt: skip
FIRST = ("Alex", "Sam", "Jordan", "Taylor", "Morgan", "Casey", "Riley", "Jamie", "Drew", "Lee")
LAST = ("Smith", "Garcia", "Nguyen", "Brown", "Khan", "Lopez", "Kim", "Miller", "Davis", "Chen")

# Injected behaviours and their share of all parcels (about 3-4% in total; a split
# shipment event makes 2-4 parcels). Shippers of the "turned_bad" group comply until the
# middle of the feed and then mostly undervalue.
SCENARIOS: dict[str, float] = {
    "undervaluation": 0.010,
    "near_threshold": 0.004,
    "split_shipment": 0.0015,
    "counterfeit_new_shipper": 0.005,
    "precursor_vague": 0.002,
    "pill_press": 0.0007,
    "drop_address": 0.003,
    "watchlisted_party": 0.001,
    "risky_origin_transship": 0.002,
}
TURNED_BAD = "turned_bad"
TURNED_BAD_SHIPPER_SHARE = 0.01
# Synthetic watchlisted parties (no real company or person).
WATCHLIST: tuple[str, ...] = (
    "Golden Peak Chemical Trading Co", "Apex Fine Pharma Export Ltd", "Blue Lotus Labs Supply",
    "Northstar Reagent Trading", "Silverline Pill Machinery Co", "Vortex Precursor Holdings",
)  # fmt: skip
DROP_ADDRESSES = 6
# Local time of each hub relative to the feed clock, for the diurnal curves.
HUB_PHASE_H = {"JFK-ISC": 0, "ORD-ISC": -1, "LAX-ISC": -3, "CVG-DHL": 0, "MEM-FDX": -1}


@dataclass
class _Line:
    hs: str
    desc: str
    qty: int
    usd: float
    kg: float


@dataclass(frozen=True)
class FeedConfig:
    parcels: int = 10_000
    shippers: int = 2_000
    consignees: int = 20_000
    seed: int = 7
    start_ms: int = 1_790_000_000_000
    duration_s: float = 86_400.0
    threshold_usd: float = 800.0


def _arrivals(rng: random.Random, n: int, duration_s: float) -> list[tuple[float, str]]:
    """(offset s, hub) pairs sorted by time; each hub follows its own daily curve (quiet at
    night, peak in the afternoon, local time)."""
    out: list[tuple[float, str]] = []
    while len(out) < n:
        hub = HUBS[rng.randrange(len(HUBS))]
        t = rng.random() * duration_s
        hour = (t / 3600.0 + HUB_PHASE_H[hub]) % 24
        if rng.random() < 0.25 + 0.75 * (0.5 - 0.5 * math.cos((hour - 3) / 24 * 2 * math.pi)):
            out.append((t, hub))
    out.sort()
    return out


class FeedGenerator:
    def __init__(self, cfg: FeedConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        rng = self.rng
        countries = [c for c, _ in SHIPPER_COUNTRIES]
        cweights = [w for _, w in SHIPPER_COUNTRIES]
        self.shipper_country = rng.choices(countries, cweights, k=cfg.shippers)
        # Pareto volumes: a few shippers send most parcels.
        self.shipper_weight = [rng.paretovariate(1.1) for _ in range(cfg.shippers)]
        self.shipper_market = [rng.choice(MARKETPLACES) for _ in range(cfg.shippers)]
        self.shipper_goods = [
            rng.choices(range(len(GOODS)), GOODS_WEIGHTS, k=3) for _ in range(cfg.shippers)
        ]
        self.consignee_weight = [rng.paretovariate(2.0) for _ in range(cfg.consignees)]
        self.shipper_ids = range(cfg.shippers)
        self.shipper_cum = list(itertools.accumulate(self.shipper_weight))
        self.consignee_ids = range(cfg.consignees)
        self.consignee_cum = list(itertools.accumulate(self.consignee_weight))
        self.new_shipper_seq = 0
        k = max(1, int(cfg.shippers * TURNED_BAD_SHIPPER_SHARE))
        self.turncoats = set(rng.sample(range(cfg.shippers), k))

    def _shipper(self, i: int, new: bool = False) -> dict[str, Any]:
        cc = "CN" if new else self.shipper_country[i]
        sid = f"NEW{self.new_shipper_seq:06d}" if new else f"SHP{i:06d}"
        return {
            "id": sid,
            "name": f"{'Trading' if new else 'Export'} Co {sid[-4:]}",
            "address": {"lines": [f"{i % 900 + 1} Industrial Rd"], "city": "Shenzhen"
                        if cc == "CN" else "Port City", "country": cc},
            "country": cc,
        }  # fmt: skip

    def _consignee(self, j: int) -> dict[str, Any]:
        rng = random.Random(j * 7919 + self.cfg.seed)
        city, state, zip3 = CITIES[j % len(CITIES)]
        return {
            "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            "address": {
                "lines": [f"{rng.randint(1, 9999)} {rng.choice(STREETS)}"],
                "city": city,
                "postal_code": f"{zip3}{rng.randint(10, 99)}",
                "country": "US",
            },
            "country": "US",
        }

    def __iter__(self) -> Iterator[tuple[dict[str, Any], str | None]]:
        cfg, rng = self.cfg, self.rng
        arrivals = _arrivals(rng, cfg.parcels, cfg.duration_s)
        names = list(SCENARIOS)
        cut = list(itertools.accumulate(SCENARIOS[name] for name in names))
        midpoint = cfg.duration_s / 2
        n = 0
        while n < cfg.parcels:
            offset_s, hub = arrivals[n]
            u = rng.random()
            label = next((names[k] for k, c in enumerate(cut) if u < c), None)
            si = rng.choices(self.shipper_ids, cum_weights=self.shipper_cum)[0]
            cj = rng.choices(self.consignee_ids, cum_weights=self.consignee_cum)[0]
            if label is None and si in self.turncoats and offset_s > midpoint:
                label = TURNED_BAD if rng.random() < 0.7 else None
            if label == "split_shipment":
                k = min(rng.randint(2, 4), cfg.parcels - n)
                share = rng.uniform(1.1, 1.6) / k  # together above the threshold
                for j in range(k):
                    doc = self._parcel(n, si, cj, offset_s + 60 * j, hub, label, share)
                    yield doc, label
                    n += 1
                continue
            yield self._parcel(n, si, cj, offset_s, hub, label), label
            n += 1

    def _parcel(
        self,
        n: int,
        si: int,
        cj: int,
        offset_s: float,
        hub: str,
        label: str | None,
        split_share: float = 0.0,
    ) -> dict[str, Any]:
        cfg, rng = self.cfg, self.rng
        shipper = self._shipper(si)
        consignee = self._consignee(cj)
        goods = [GOODS[g] for g in rng.sample(self.shipper_goods[si], k=rng.randint(1, 2))]
        items: list[_Line] = []
        for hs, desc, usd, kg, _w in goods:
            qty = 1 if rng.random() < 0.7 else rng.randint(2, 4)
            items.append(_Line(hs, desc, qty, usd * qty * rng.lognormvariate(0, 0.35), kg * qty))
        origin = shipper["country"]
        threshold = cfg.threshold_usd or 800.0
        if label in ("undervaluation", TURNED_BAD):
            for it in items:
                it.usd *= rng.uniform(0.03, 0.12)
        elif label in ("near_threshold", "split_shipment"):
            share = split_share or rng.uniform(0.87, 0.995)
            scale = threshold * share / sum(it.usd for it in items)
            for it in items:
                it.usd *= scale
                it.kg *= min(scale, 3.0)
        elif label == "drop_address":
            cj = rng.randrange(DROP_ADDRESSES)
            consignee = self._consignee(cj)
            consignee["address"]["lines"] = [f"{100 + cj} Commerce Way", f"Suite {cj * 7 + 3}"]
        elif label == "watchlisted_party":
            name = WATCHLIST[rng.randrange(len(WATCHLIST))]
            self.new_shipper_seq += 1
            shipper = self._shipper(si, new=True)
            shipper["name"] = name
            items = [_Line("2933.39", rng.choice(["reagent", "sample", "chemical"]), 1,
                           rng.uniform(20, 90), rng.uniform(0.3, 1.5))]  # fmt: skip
        elif label == "counterfeit_new_shipper":
            self.new_shipper_seq += 1
            shipper = self._shipper(si, new=True)
            origin = "CN"
            hs, desc, usd, kg = rng.choice(
                [("6403.99", "sneakers", 60.0, 1.1), ("9102.11", "luxury watch", 40.0, 0.2),
                 ("4202.21", "designer handbag", 50.0, 0.8)]
            )  # fmt: skip
            items = [_Line(hs, desc, 1, usd * rng.uniform(0.5, 1.0), kg)]
        elif label == "precursor_vague":
            desc = rng.choice(["industrial chemical", "sample", "gift", "raw material"])
            hs = rng.choice(["2933.39", "2934.99", "2939.41"])
            items = [_Line(hs, desc, 1, rng.uniform(15, 60), rng.uniform(0.5, 2.0))]
        elif label == "pill_press":
            items = [_Line("8479.30", "machine parts", 1, rng.uniform(80, 400), rng.uniform(5, 25))]
        elif label == "risky_origin_transship":
            origin = rng.choice(["HK", "AE", "TR"])
            for it in items:
                it.usd *= rng.uniform(0.2, 0.5)
        currency = "USD"
        rate = 1.0
        if rng.random() < 0.25 and shipper["country"] in CURRENCY_BY_COUNTRY:
            currency = CURRENCY_BY_COUNTRY[shipper["country"]]
            rate = USD_PER_UNIT[currency]
        total = sum(it.usd for it in items) / rate
        weight = sum(it.kg for it in items) * rng.uniform(1.05, 1.3) + 0.05
        ts = int(cfg.start_ms + offset_s * 1000)
        doc: dict[str, Any] = {
            "parcel_id": f"PS{cfg.seed % 1000:03d}{n:09d}",
            "carrier": CARRIERS[(si + n) % len(CARRIERS)],
            "hub": hub,
            "shipper": shipper,
            "consignee": consignee,
            "items": [
                {
                    "description": it.desc,
                    "hs_code": it.hs,
                    "quantity": it.qty,
                    "value": round(it.usd / rate, 2),
                }
                for it in items
            ],
            "declared_value": round(total, 2),
            "currency": currency,
            "gross_weight_kg": round(weight, 3),
            "origin_country": origin,
            "manifest_ts_ms": ts,
            "shipped_ts_ms": ts - rng.randint(86_400_000, 5 * 86_400_000),
        }
        market = self.shipper_market[si]
        if market != "none":
            doc["seller"] = {"id": f"SEL{si:06d}", "marketplace": market}
        return doc


def generate(cfg: FeedConfig) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Yield (manifest document, ground-truth label or None) pairs, deterministically."""
    return iter(FeedGenerator(cfg))
