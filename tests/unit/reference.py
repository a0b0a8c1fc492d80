"""Slow, obvious reference of the scoring kernel: one parcel at a time, plain Python."""

from __future__ import annotations

import math

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


def reference_score(f: Features, rs: RuleSet) -> tuple[list[float], list[int]]:
    p = [float(x) for x in rs.params]
    w = [float(x) for x in rs.weights]
    scores, masks = [], []
    for i in range(len(f)):
        fired: dict[int, float] = {}
        v = float(f.value_usd[i])
        thr = p[P_THRESHOLD_USD]
        if thr > 0 and thr * (1 - p[P_NEAR_BAND]) <= v < thr:
            fired[0] = w[0]
        start, count = int(f.item_start[i]), int(f.item_count[i])
        headings = [int(h) for h in f.item_heading[start : start + count]]
        coded = [h for h in headings if h >= 0]
        item_sum = sum(float(x) for x in f.item_value_usd[start : start + count])
        if coded and f.weight_kg[i] > 0:
            norm = min(float(rs.chapter_min_usd_per_kg[h // 100]) for h in coded)
            if v / float(f.weight_kg[i]) < norm:
                fired[1] = w[1]
        risk = max((float(rs.heading_risk[h]) for h in coded), default=0.0)
        if risk >= p[P_HS_FIRE_LEVEL]:
            fired[2] = w[2] * risk
        o = int(f.origin_idx[i])
        if o >= 0 and rs.origin_risk[o] >= p[P_ORIGIN_FIRE_LEVEL]:
            fired[3] = w[3] * float(rs.origin_risk[o])
        seen, age = float(f.shipper_seen[i]), float(f.shipper_age_days[i])
        if seen < p[P_NEW_MIN_PARCELS] or (age >= 0 and age < p[P_NEW_MAX_AGE_DAYS]):
            fired[4] = w[4]
        if seen >= p[P_REP_MIN_SEEN] and float(f.shipper_holds[i]) >= p[P_REP_HOLD_RATIO] * seen:
            fired[5] = w[5]
        if v <= p[P_TOKEN_USD]:
            fired[6] = w[6]
        if abs(item_sum - v) > max(1.0, p[P_MISMATCH_FRAC] * v):
            fired[7] = w[7]
        if len(coded) < len(headings):
            fired[8] = w[8]
        total = 0.0
        for bit in sorted(fired):
            total += fired[bit]
        scores.append(min(max(total, 0.0), 100.0) if not math.isnan(total) else total)
        masks.append(sum(1 << b for b in fired) & rs.enabled_mask)
    return scores, masks
