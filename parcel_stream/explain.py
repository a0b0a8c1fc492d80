"""The slow, obvious evaluator: one parcel and one rule at a time, in plain Python.

It is the reference the kernel is tested against, and what ``parcel-stream rules explain``
prints: every rule's conditions with the parcel's feature values, the result and the
points it adds.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from parcel_stream.feature_catalog import FEATURE_INDEX, FEATURES
from parcel_stream.features import Features
from parcel_stream.model import Manifest
from parcel_stream.risk import (
    FEATURE_NAMES,
    RiskConfig,
    RiskState,
    explain,
    parcel_keys,
)
from parcel_stream.rules import RuleSet

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}  # fmt: skip


@dataclass(frozen=True)
class RuleResult:
    code: str
    active: bool
    fired: bool
    points: float
    conditions: list[tuple[str, str, float, float, bool]]  # feature, op, value, actual, ok


def evaluate_parcel(features: Features, i: int, rs: RuleSet, now_ms: int = 0) -> list[RuleResult]:
    column = {name: float(features.matrix[k, i]) for k, name in enumerate(FEATURES)}
    active = rs.active(now_ms)
    out = []
    for r, rule in enumerate(rs.rules):
        conds = []
        for feat, op, value in rule.conditions:
            actual = column[feat]
            conds.append((feat, op, value, actual, _OPS[op](actual, value)))
        is_active = bool(active[r])
        fired = is_active and all(c[4] for c in conds)
        scale = column[rule.scale_by] if rule.scale_by else 1.0
        points = float(rs.weights[r]) * scale if fired else 0.0
        out.append(RuleResult(rule.code, is_active, fired, points, conds))
    return out


def reference_score(
    features: Features, rs: RuleSet, now_ms: int = 0
) -> tuple[list[float], list[int]]:
    scores, masks = [], []
    for i in range(len(features)):
        results = evaluate_parcel(features, i, rs, now_ms)
        total = 0.0
        for res in results:
            total += res.points
        scores.append(min(max(total, 0.0), 100.0))
        masks.append(sum(1 << r for r, res in enumerate(results) if res.fired))
    return scores, masks


def render(results: list[RuleResult], rs: RuleSet, feature_values: dict[str, float]) -> str:
    lines = [f"rule set {rs.version} ({rs.source})", ""]
    total = 0.0
    for res, rule in zip(results, rs.rules, strict=True):
        state = "FIRES" if res.fired else ("inactive" if not res.active else "no")
        scale = f" x {rule.scale_by}" if rule.scale_by else ""
        head = f"{res.code:<26} {state:<8} {res.points:+7.2f}"
        lines.append(f"{head}  (weight {rule.weight:g}{scale}) {rule.text}")
        for feat, op, value, actual, ok in res.conditions:
            lines.append(
                f"    {'ok ' if ok else 'NO '} {feat} {op} {value:g}   [{feat} = {actual:.6g}]"
            )
        total += res.points
    score = min(max(total, 0.0), 100.0)
    lane = "hold" if score >= rs.hold_score else "review" if score >= rs.review_score else "release"
    bounds = f"review >= {rs.review_score:g}, hold >= {rs.hold_score:g}"
    lines += ["", f"score {score:.2f} -> lane {lane} ({bounds})", "", "features:"]
    lines += [f"    {k:<26} {v:.6g}" for k, v in feature_values.items()]
    return "\n".join(lines)


def feature_values(features: Features, i: int) -> dict[str, float]:
    return {name: float(features.matrix[FEATURE_INDEX[name], i]) for name in FEATURES}


def render_learned(
    m: Manifest, rule_score: float, state: RiskState, rows: dict[int, list[float]],
    cfg: RiskConfig, now_ms: int, address: str, fired: Sequence[str] = (),
) -> str:  # fmt: skip
    """The learned part of a parcel's explanation: its probability, what each feature
    group adds to the log-odds, and its strongest learned reasons in words (``fired``:
    the codes of the rules that fired for it)."""
    from parcel_stream.currency import USD_PER_UNIT

    keys = parcel_keys(m, address, m.declared_value * USD_PER_UNIT[m.currency], fired)
    table = state.table(rows, cfg)
    x = table.features(keys, rule_score, float(now_ms))
    model = state.model(cfg)
    p = float(model.predict(x[None, :])[0])
    theta = model.theta
    lines = [
        "",
        f"learned model: probability of a violation {p:.1%} (mode {cfg.mode}, "
        f"{state.trained:,} examination results learned)",
        "",
        "    feature                    value     weight   adds (log-odds)",
    ]
    for name, xi, wi in zip(FEATURE_NAMES, x.tolist(), theta.tolist(), strict=True):
        if xi != 0.0:
            lines.append(f"    {name:<26} {xi:+8.3f} {wi:+9.3f}   {xi * wi:+8.3f}")
    why = explain(table, keys, x, theta, float(now_ms), 5)
    lines += ["", "strongest learned reasons:"]
    lines += [f"    {text} ({c:+.2f})" for _k, text, _r, _n, c in why] or ["    (none)"]
    return "\n".join(lines)
