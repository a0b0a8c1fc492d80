"""Numba rule kernels: feature columns -> score and fired-rule bitmask per parcel.

``_score_kernel`` is the compiled body (no Python objects inside); :func:`score_batch` is
the typed wrapper that checks shapes and dtypes and preallocates the outputs. The slow,
obvious reference lives in ``tests/unit/reference.py`` and a property test keeps both equal.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from parcel_stream.features import Features
from parcel_stream.rules import (
    P_HS_FIRE_LEVEL,
    P_MISMATCH_FRAC,
    P_NEAR_BAND,
    P_NEW_MAX_AGE_DAYS,
    P_NEW_MIN_PARCELS,
    P_ORIGIN_FIRE_LEVEL,
    P_REP_HOLD_RATIO,
    P_REP_MIN_SEEN,
    P_THRESHOLD_USD,
    P_TOKEN_USD,
    RuleSet,
)

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@njit(cache=True, nogil=True)
def _score_kernel(  # noqa: PLR0913
    value_usd: F64,
    weight_kg: F64,
    origin_idx: I64,
    item_start: I64,
    item_count: I64,
    item_heading: I64,
    item_value_usd: F64,
    shipper_seen: F64,
    shipper_holds: F64,
    shipper_age_days: F64,
    weights: F64,
    params: F64,
    heading_risk: F64,
    chapter_min_usd_per_kg: F64,
    origin_risk: F64,
    out_score: F64,
    out_mask: I64,
) -> None:
    threshold = params[P_THRESHOLD_USD]
    near_low = threshold * (1.0 - params[P_NEAR_BAND])
    for i in range(value_usd.shape[0]):
        v = value_usd[i]
        score = 0.0
        mask = 0
        # 0 NEAR_THRESHOLD
        if threshold > 0.0 and near_low <= v < threshold:
            score += weights[0]
            mask |= 1 << 0
        # items: highest heading risk, lowest chapter value norm, item value sum, missing HS
        max_risk = 0.0
        min_norm = np.inf
        item_sum = 0.0
        missing_hs = False
        for k in range(item_start[i], item_start[i] + item_count[i]):
            h = item_heading[k]
            item_sum += item_value_usd[k]
            if h < 0:
                missing_hs = True
                continue
            r = heading_risk[h]
            if r > max_risk:
                max_risk = r
            norm = chapter_min_usd_per_kg[h // 100]
            if norm < min_norm:
                min_norm = norm
        # 1 LOW_VALUE_PER_KG (only judged when some item has an HS code)
        w = weight_kg[i]
        if min_norm < np.inf and w > 0.0 and v / w < min_norm:
            score += weights[1]
            mask |= 1 << 1
        # 2 HIGH_RISK_HS, contribution scaled by the risk level
        if max_risk >= params[P_HS_FIRE_LEVEL]:
            score += weights[2] * max_risk
            mask |= 1 << 2
        # 3 ORIGIN_RISK, scaled by the risk level
        o = origin_idx[i]
        if o >= 0:
            orisk = origin_risk[o]
            if orisk >= params[P_ORIGIN_FIRE_LEVEL]:
                score += weights[3] * orisk
                mask |= 1 << 3
        # 4 NEW_SHIPPER
        age = shipper_age_days[i]
        seen = shipper_seen[i]
        if seen < params[P_NEW_MIN_PARCELS] or (age >= 0.0 and age < params[P_NEW_MAX_AGE_DAYS]):
            score += weights[4]
            mask |= 1 << 4
        # 5 BAD_REPUTATION
        if seen >= params[P_REP_MIN_SEEN] and shipper_holds[i] >= params[P_REP_HOLD_RATIO] * seen:
            score += weights[5]
            mask |= 1 << 5
        # 6 TOKEN_VALUE
        if v <= params[P_TOKEN_USD]:
            score += weights[6]
            mask |= 1 << 6
        # 7 VALUE_MISMATCH
        if abs(item_sum - v) > max(1.0, params[P_MISMATCH_FRAC] * v):
            score += weights[7]
            mask |= 1 << 7
        # 8 MISSING_HS
        if missing_hs:
            score += weights[8]
            mask |= 1 << 8
        out_score[i] = min(max(score, 0.0), 100.0)
        out_mask[i] = mask


def _check(name: str, arr: np.ndarray, dtype: type, n: int | None) -> None:
    if arr.dtype != dtype or arr.ndim != 1 or not arr.flags.c_contiguous:
        raise TypeError(f"{name}: expected a contiguous 1-d {np.dtype(dtype).name} array")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: expected {n} elements, got {arr.shape[0]}")


def score_batch(features: Features, ruleset: RuleSet) -> tuple[F64, I64]:
    """Score every parcel: returns (score 0..100, fired-rule bitmask)."""
    n = len(features)
    for name in ("value_usd", "weight_kg", "shipper_seen", "shipper_holds", "shipper_age_days"):
        _check(name, getattr(features, name), np.float64, n)
    for name in ("origin_idx", "item_start", "item_count"):
        _check(name, getattr(features, name), np.int64, n)
    m = features.item_heading.shape[0]
    _check("item_heading", features.item_heading, np.int64, None)
    _check("item_value_usd", features.item_value_usd, np.float64, m)
    if n and int(features.item_start[-1] + features.item_count[-1]) != m:
        raise ValueError("item_start/item_count do not cover the item columns")
    if ruleset.weights.shape[0] < len(ruleset.rules) or ruleset.heading_risk.shape[0] != 10_000:
        raise ValueError("rule set tables have the wrong shape")
    score = np.empty(n, dtype=np.float64)
    mask = np.empty(n, dtype=np.int64)
    _score_kernel(
        features.value_usd,
        features.weight_kg,
        features.origin_idx,
        features.item_start,
        features.item_count,
        features.item_heading,
        features.item_value_usd,
        features.shipper_seen,
        features.shipper_holds,
        features.shipper_age_days,
        ruleset.weights,
        ruleset.params,
        ruleset.heading_risk,
        ruleset.chapter_min_usd_per_kg,
        ruleset.origin_risk,
        score,
        mask,
    )
    if ruleset.enabled_mask != (1 << 62) - 1:
        mask &= ruleset.enabled_mask
    return score, mask


def warm_up(ruleset: RuleSet) -> None:
    """Compile (or load from cache) the kernels before the first batch arrives."""
    one = np.ones(1, dtype=np.float64)
    zero_i = np.zeros(1, dtype=np.int64)
    feats = Features(
        value_usd=one,
        weight_kg=one.copy(),
        origin_idx=zero_i,
        item_start=zero_i.copy(),
        item_count=np.ones(1, dtype=np.int64),
        item_heading=zero_i.copy(),
        item_value_usd=one.copy(),
        shipper_seen=one.copy(),
        shipper_holds=one.copy(),
        shipper_age_days=one.copy(),
    )
    score_batch(feats, ruleset)
