"""The generic rule kernel: feature matrix + compiled rule tables -> score and fired mask.

``_rules_kernel`` is the compiled body (no Python objects inside): every active rule's
conditions are compared against the parcel's feature column, and a rule fires when all
of them hold. :func:`score_batch` is the typed wrapper that checks shapes and dtypes and
preallocates the outputs. The slow, obvious evaluator is :mod:`parcel_stream.explain`;
property tests keep the two equal on random rule sets and parcels.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from parcel_stream.feature_catalog import FEATURES
from parcel_stream.features import Features
from parcel_stream.rules import RuleSet

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@njit(cache=True, nogil=True)
def score_column(
    features: F64,
    i: int,
    cond_feature: I64,
    cond_op: I64,
    cond_value: F64,
    rule_start: I64,
    rule_count: I64,
    rule_scale: I64,
    weights: F64,
    active: I64,
) -> tuple[float, int]:
    """(score 0..100, fired mask) of column ``i``: every active rule's conditions are
    compared against the parcel's features; a rule fires when all of them hold."""
    score = 0.0
    mask = 0
    for r in range(weights.shape[0]):
        if active[r] == 0:
            continue
        ok = True
        for c in range(rule_start[r], rule_start[r] + rule_count[r]):
            x = features[cond_feature[c], i]
            v = cond_value[c]
            op = cond_op[c]
            if op == 0:
                ok = x < v
            elif op == 1:
                ok = x <= v
            elif op == 2:
                ok = x > v
            elif op == 3:
                ok = x >= v
            elif op == 4:
                ok = x == v
            else:
                ok = x != v
            if not ok:
                break
        if ok:
            mask |= 1 << r
            s = rule_scale[r]
            score += weights[r] * (features[s, i] if s >= 0 else 1.0)
    return min(max(score, 0.0), 100.0), mask


@njit(cache=True, nogil=True)
def _rules_kernel(
    features: F64,
    cond_feature: I64,
    cond_op: I64,
    cond_value: F64,
    rule_start: I64,
    rule_count: I64,
    rule_scale: I64,
    weights: F64,
    active: I64,
    out_score: F64,
    out_mask: I64,
) -> None:
    for i in range(features.shape[1]):
        out_score[i], out_mask[i] = score_column(
            features, i, cond_feature, cond_op, cond_value, rule_start, rule_count,
            rule_scale, weights, active,
        )  # fmt: skip


def _check(name: str, arr: np.ndarray, dtype: type, ndim: int = 1) -> None:
    if arr.dtype != dtype or arr.ndim != ndim or not arr.flags.c_contiguous:
        raise TypeError(f"{name}: expected a contiguous {ndim}-d {np.dtype(dtype).name} array")


def score_batch(features: Features, ruleset: RuleSet, now_ms: int = 0) -> tuple[F64, I64]:
    """Score every parcel: returns (score 0..100, fired-rule bitmask). Rules that are
    disabled or not in effect at ``now_ms`` neither fire nor score."""
    _check("features", features.matrix, np.float64, 2)
    if features.matrix.shape[0] != len(FEATURES):
        raise ValueError(f"features: expected {len(FEATURES)} rows")
    rs = ruleset
    for name in ("cond_feature", "cond_op", "rule_start", "rule_count", "rule_scale"):
        _check(name, getattr(rs, name), np.int64)
    _check("cond_value", rs.cond_value, np.float64)
    _check("weights", rs.weights, np.float64)
    n = len(features)
    score = np.empty(n, dtype=np.float64)
    mask = np.empty(n, dtype=np.int64)
    _rules_kernel(
        features.matrix,
        rs.cond_feature,
        rs.cond_op,
        rs.cond_value,
        rs.rule_start,
        rs.rule_count,
        rs.rule_scale,
        rs.weights,
        rs.active(now_ms),
        score,
        mask,
    )
    return score, mask


def warm_up(ruleset: RuleSet) -> None:
    """Compile (or load from the cache) the kernel before the first batch arrives."""
    score_batch(Features(matrix=np.zeros((len(FEATURES), 1), dtype=np.float64)), ruleset)
