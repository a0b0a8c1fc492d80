"""A feed shaped like customs declarations rather than e-commerce parcels, for testing the
learning protocol (``parcel-stream generate --shape declarations``).

Each parcel is one declaration: one HS6 line, origin and departure country, an importer
(the consignee, a company), a seller, a declarant, a customs office and a tax-rate band
(attributes), carrier, transport mode, import type (entry type), mass and value. About a
fifth are violations. Whether one is a violation depends on hidden effects of those
fields and of some of their combinations (HS6, HS6 x origin, HS6 x origin x departure,
declarant, importer, office), drawn per seed: sparse, a few large. Nothing is injected
that the default rules look for (values and weights do not depend on the label), so only
learning from outcomes finds the risk.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from parcel_stream.generate import CARRIERS, HUBS

COUNTRIES = ("CN", "HK", "VN", "IN", "TR", "AE", "KR", "JP", "DE", "GB", "US", "TH", "MY",
             "ID", "PK", "BD", "MX", "BR", "IT", "FR")  # fmt: skip
MODES = ("air", "sea", "road", "postal")
IMPORT_TYPES = ("home use", "warehouse", "re-import", "temporary")


@dataclass(frozen=True)
class DeclarationsConfig:
    parcels: int = 50_000
    seed: int = 11
    start_ms: int = 1_790_000_000_000
    duration_s: float = 60 * 86_400.0
    hs6_codes: int = 400
    importers: int = 3_000
    declarants: int = 150
    offices: int = 25
    base_logit: float = -1.6  # about 17 % before the effects; about a fifth after


def _effects(rng: random.Random, n: int, sparsity: float, scale: float) -> list[float]:
    """Per entity a hidden log-odds effect: mostly 0, some large."""
    return [rng.gauss(0, scale) if rng.random() < sparsity else 0.0 for _ in range(n)]


def generate_declarations(
    cfg: DeclarationsConfig,
) -> Iterator[tuple[dict[str, Any], str | None]]:
    rng = random.Random(cfg.seed)
    hs6 = sorted({f"{rng.randint(1, 97):02d}{rng.randint(1, 99):02d}.{rng.randint(10, 99)}"
                  for _ in range(cfg.hs6_codes * 2)})[: cfg.hs6_codes]  # fmt: skip
    hs_weight = [rng.paretovariate(1.2) for _ in hs6]
    hs_price = [math.exp(rng.uniform(1, 6)) for _ in hs6]  # USD per kg, per code
    e_hs = _effects(rng, len(hs6), 0.3, 1.2)
    e_declarant = _effects(rng, cfg.declarants, 0.2, 1.5)
    e_importer = _effects(rng, cfg.importers, 0.1, 1.5)
    e_office = _effects(rng, cfg.offices, 0.3, 0.6)
    e_pair: dict[tuple[int, str], float] = {}
    e_route: dict[tuple[int, str, str], float] = {}
    importer_w = [rng.paretovariate(1.5) for _ in range(cfg.importers)]
    for n in range(cfg.parcels):
        h = rng.choices(range(len(hs6)), hs_weight)[0]
        origin = rng.choice(COUNTRIES[:8]) if rng.random() < 0.7 else rng.choice(COUNTRIES)
        departure = origin if rng.random() < 0.8 else rng.choice(("HK", "AE", "SG", "NL"))
        imp = rng.choices(range(cfg.importers), importer_w)[0]
        dec = (imp * 31 + rng.randrange(3)) % cfg.declarants  # an importer's few brokers
        office = rng.randrange(cfg.offices)
        pair = e_pair.setdefault((h, origin), rng.gauss(0, 2.0) if rng.random() < 0.08 else 0.0)
        route = e_route.setdefault((h, origin, departure),
                                   rng.gauss(0, 2.0) if rng.random() < 0.04 else 0.0)  # fmt: skip
        z = (cfg.base_logit + e_hs[h] + pair + route + e_declarant[dec] + e_importer[imp]
             + e_office[office])  # fmt: skip
        violation = rng.random() < 1 / (1 + math.exp(-z))
        kg = math.exp(rng.gauss(1.0, 1.2))
        value = round(min(hs_price[h] * kg * math.exp(rng.gauss(0, 0.5)), 900_000.0), 2)
        ts = int(cfg.start_ms + cfg.duration_s * 1000 * n / cfg.parcels)
        doc = {
            "parcel_id": f"DC{cfg.seed % 1000:03d}{n:09d}",
            "carrier": CARRIERS[imp % len(CARRIERS)],
            "hub": HUBS[office % len(HUBS)],
            "shipper": {"id": f"SEL{(imp * 7 + h) % 5000:05d}", "name": "Exporter",
                        "address": {"lines": ["1 Export Rd"], "country": origin},
                        "country": origin},
            "consignee": {"name": f"Importer {imp:05d} Ltd",
                          "address": {"lines": [f"{imp} Trade Park"], "country": "US"},
                          "country": "US"},
            "items": [{"description": "goods", "hs_code": hs6[h], "quantity": 1,
                       "value": value}],
            "declared_value": value,
            "currency": "USD",
            "gross_weight_kg": round(max(kg, 0.01), 3),
            "origin_country": origin,
            "transit_countries": [] if departure == origin else [departure],
            "manifest_ts_ms": ts,
            "declarant": f"DEC{dec:04d}",
            "entry_type": IMPORT_TYPES[(imp + h) % len(IMPORT_TYPES)],
            "transport_mode": MODES[(imp * 3 + office) % len(MODES)],
            "attributes": {"office": f"OFF{office:03d}",
                           "tax_rate": f"{[0, 5, 8, 13, 20][h % 5]}"},
        }  # fmt: skip
        yield doc, ("declared_violation" if violation else None)
