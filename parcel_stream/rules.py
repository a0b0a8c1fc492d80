"""The built-in rule set: reason codes, weights, risk tables and parameters.

A rule set compiles to flat numpy tables that the kernels in :mod:`parcel_stream.kernels`
read; no Python runs per parcel. Bit ``i`` of a parcel's fired mask is rule ``RULES[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from parcel_stream.settings import Settings

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Rule:
    code: str
    text: str
    weight: float


# Order is the bit order of the fired mask; append only, never reorder.
RULES: tuple[Rule, ...] = (
    Rule("NEAR_THRESHOLD", "declared value just below the duty-free threshold", 25.0),
    Rule("LOW_VALUE_PER_KG", "declared value per kg far below the norm for the goods", 35.0),
    Rule("HIGH_RISK_HS", "high-risk goods (HS heading on the risk table)", 60.0),
    Rule("ORIGIN_RISK", "origin country on the risk table", 20.0),
    Rule("NEW_SHIPPER", "new or rarely seen shipper", 15.0),
    Rule("BAD_REPUTATION", "shipper has a high share of past holds", 30.0),
    Rule("TOKEN_VALUE", "zero or token declared value", 20.0),
    Rule("VALUE_MISMATCH", "item values do not add up to the declared value", 15.0),
    Rule("MISSING_HS", "an item has no HS code", 10.0),
)
RULE_INDEX = {rule.code: i for i, rule in enumerate(RULES)}

# Parameter vector layout (index constants shared with the kernel).
P_THRESHOLD_USD = 0
P_NEAR_BAND = 1
P_NEW_MIN_PARCELS = 2
P_NEW_MAX_AGE_DAYS = 3
P_REP_MIN_SEEN = 4
P_REP_HOLD_RATIO = 5
P_TOKEN_USD = 6
P_MISMATCH_FRAC = 7
P_HS_FIRE_LEVEL = 8
P_ORIGIN_FIRE_LEVEL = 9
N_PARAMS = 10

# Risk level (0..1) per 4-digit HS heading. Precursor chemicals and pill presses are the
# highest; counterfeit-prone consumer goods are medium. Analysts replace this table.
HEADING_RISK: dict[int, float] = {
    2914: 0.8,  # ketones (e.g. P2P-type precursors)
    2924: 0.6,  # carboxyamide compounds
    2932: 0.7,  # heterocyclics with oxygen (safrole-type precursors)
    2933: 1.0,  # heterocyclics with nitrogen (fentanyl precursors: 4-AP, ANPP, NPP)
    2934: 1.0,  # nucleic acids and other heterocyclics
    2939: 1.0,  # alkaloids (ephedrine, pseudoephedrine)
    3003: 0.6,  # medicaments, not dosed
    3004: 0.7,  # medicaments, dosed (counterfeit pharmaceuticals)
    8479: 1.0,  # machines n.e.s. (8479.30: tablet/pill presses); broad at heading level
    2404: 0.6,  # nicotine products, e-liquids
    8543: 0.45,  # electrical machines (8543.40: e-cigarettes)
    6403: 0.45,  # footwear, leather uppers (counterfeit-prone)
    6404: 0.45,  # footwear, textile uppers (counterfeit-prone)
    4202: 0.45,  # handbags, wallets (counterfeit-prone)
    9101: 0.6,  # watches, precious metal cases
    9102: 0.45,  # wrist watches
    7113: 0.45,  # jewellery
    9303: 1.0,  # firearms
    9305: 1.0,  # parts of arms
    9306: 1.0,  # ammunition
}

# Lowest plausible declared USD per kg per HS chapter; below it suggests undervaluation.
CHAPTER_MIN_USD_PER_KG: dict[int, float] = {
    33: 8.0,  # cosmetics
    42: 10.0,  # bags
    61: 8.0,  # knitted apparel
    62: 8.0,  # woven apparel
    64: 10.0,  # footwear
    71: 100.0,  # jewellery
    84: 10.0,  # machinery
    85: 15.0,  # electronics and accessories
    90: 20.0,  # optical, medical instruments
    91: 50.0,  # watches
    95: 5.0,  # toys
}
DEFAULT_MIN_USD_PER_KG = 2.0

# Origin risk (0..1). Illustrative defaults drawn from published counterfeit-trade
# studies (major transshipment and source economies); replace with your own assessment.
ORIGIN_RISK: dict[str, float] = {"HK": 0.6, "AE": 0.6, "TR": 0.5}


def country_index(code: str) -> int:
    """ISO alpha-2 code -> 0..675 (the index into origin tables); -1 if not A-Z."""
    if len(code) != 2:
        return -1
    a, b = ord(code[0]) - 65, ord(code[1]) - 65
    if not (0 <= a < 26 and 0 <= b < 26):
        return -1
    return a * 26 + b


@dataclass(frozen=True)
class RuleSet:
    """A compiled rule set: everything the kernels need, as flat arrays."""

    version: str
    rules: tuple[Rule, ...]
    weights: F64
    params: F64
    heading_risk: F64  # [10000]
    chapter_min_usd_per_kg: F64  # [100]
    origin_risk: F64  # [676]
    review_score: float
    hold_score: float
    enabled_mask: int = (1 << 62) - 1  # bit i set = rule i enabled

    def reason_codes(self, mask: int) -> list[str]:
        return [r.code for i, r in enumerate(self.rules) if mask >> i & 1]


def default_ruleset(settings: Settings) -> RuleSet:
    """The built-in rule set, parameterised by the settings' threshold and lanes."""
    weights = np.array([r.weight for r in RULES], dtype=np.float64)
    params = np.zeros(N_PARAMS, dtype=np.float64)
    params[P_THRESHOLD_USD] = settings.duty_free_threshold_usd
    params[P_NEAR_BAND] = settings.near_threshold_band
    params[P_NEW_MIN_PARCELS] = 5
    params[P_NEW_MAX_AGE_DAYS] = 0  # age test off until the store has history
    params[P_REP_MIN_SEEN] = 10
    params[P_REP_HOLD_RATIO] = 0.2
    params[P_TOKEN_USD] = 1.0
    params[P_MISMATCH_FRAC] = 0.1
    params[P_HS_FIRE_LEVEL] = 0.4
    params[P_ORIGIN_FIRE_LEVEL] = 0.5
    heading = np.zeros(10_000, dtype=np.float64)
    for code, risk in HEADING_RISK.items():
        heading[code] = risk
    chapter = np.full(100, DEFAULT_MIN_USD_PER_KG, dtype=np.float64)
    for ch, norm in CHAPTER_MIN_USD_PER_KG.items():
        chapter[ch] = norm
    origin = np.zeros(676, dtype=np.float64)
    for cc, risk in ORIGIN_RISK.items():
        origin[country_index(cc)] = risk
    return RuleSet(
        version="builtin-1",
        rules=RULES,
        weights=weights,
        params=params,
        heading_risk=heading,
        chapter_min_usd_per_kg=chapter,
        origin_risk=origin,
        review_score=settings.review_score,
        hold_score=settings.hold_score,
    )


class RuleSetError(ValueError):
    """A rule-set override file is invalid; the message names the file and the field."""


def _number(doc: dict[str, object], key: str, where: str) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleSetError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def apply_overrides(base: RuleSet, doc: dict[str, object], where: str = "overrides") -> RuleSet:
    """A variant of ``base``: ``version``, ``disabled`` rule codes, ``weights`` by code,
    ``review_score``, ``hold_score``, ``duty_free_threshold_usd``, ``near_threshold_band``.
    Unknown keys or codes are errors naming ``where`` and the field."""
    known = {"version", "disabled", "weights", "review_score", "hold_score",
             "duty_free_threshold_usd", "near_threshold_band", "description"}  # fmt: skip
    for key in doc:
        if key not in known:
            raise RuleSetError(f"{where}: unknown field {key!r}; known: {', '.join(sorted(known))}")
    codes = {r.code: i for i, r in enumerate(base.rules)}
    weights = base.weights.copy()
    enabled = base.enabled_mask
    new_weights = doc.get("weights", {})
    if not isinstance(new_weights, dict):
        raise RuleSetError(f"{where}: weights must be an object of rule code -> number")
    for code in new_weights:
        if code not in codes:
            raise RuleSetError(f"{where}: weights.{code}: unknown rule; known: {', '.join(codes)}")
        value = _number(new_weights, code, f"{where}: weights")
        assert value is not None
        weights[codes[code]] = value
    disabled = doc.get("disabled", [])
    if not isinstance(disabled, list):
        raise RuleSetError(f"{where}: disabled must be a list of rule codes")
    for code in disabled:
        if code not in codes:
            raise RuleSetError(
                f"{where}: disabled: unknown rule {code!r}; known: {', '.join(codes)}"
            )
        enabled &= ~(1 << codes[code])
        weights[codes[code]] = 0.0
    params = base.params.copy()
    threshold = _number(doc, "duty_free_threshold_usd", where)
    if threshold is not None:
        if threshold < 0:
            raise RuleSetError(f"{where}: duty_free_threshold_usd must be >= 0")
        params[P_THRESHOLD_USD] = threshold
    band = _number(doc, "near_threshold_band", where)
    if band is not None:
        if not 0 < band < 1:
            raise RuleSetError(f"{where}: near_threshold_band must be between 0 and 1")
        params[P_NEAR_BAND] = band
    review = _number(doc, "review_score", where)
    hold = _number(doc, "hold_score", where)
    review = base.review_score if review is None else review
    hold = base.hold_score if hold is None else hold
    if not 0 <= review <= hold:
        raise RuleSetError(f"{where}: review_score must be >= 0 and <= hold_score")
    version = doc.get("version", base.version + "+overrides")
    if not isinstance(version, str) or not version:
        raise RuleSetError(f"{where}: version must be a non-empty string")
    return RuleSet(
        version=version,
        rules=base.rules,
        weights=weights,
        params=params,
        heading_risk=base.heading_risk,
        chapter_min_usd_per_kg=base.chapter_min_usd_per_kg,
        origin_risk=base.origin_risk,
        review_score=review,
        hold_score=hold,
        enabled_mask=enabled,
    )


def load_overrides(base: RuleSet, path: str) -> RuleSet:
    import json

    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise RuleSetError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise RuleSetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(doc, dict):
        raise RuleSetError(f"{path}: expected a JSON object")
    return apply_overrides(base, doc, path)
