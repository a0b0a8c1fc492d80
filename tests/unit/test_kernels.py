import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parcel_stream.explain import reference_score
from parcel_stream.feature_catalog import FEATURES
from parcel_stream.features import Features
from parcel_stream.kernels import score_batch
from parcel_stream.rules import OPS, compile_ruleset, default_document, default_ruleset

values = st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 100.0, 1e9])


@st.composite
def feature_batches(draw: st.DrawFn) -> Features:
    n = draw(st.integers(min_value=0, max_value=30))
    cells = draw(st.lists(st.one_of(values, st.floats(-10, 1e4, allow_nan=False)),
                          min_size=n * len(FEATURES), max_size=n * len(FEATURES)))  # fmt: skip
    return Features(matrix=np.asarray(cells, dtype=np.float64).reshape(len(FEATURES), n))


@st.composite
def random_rulesets(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    rules = []
    for k in range(draw(st.integers(min_value=1, max_value=12))):
        when = [
            f"{draw(st.sampled_from(FEATURES))} {draw(st.sampled_from(OPS))} {draw(values):g}"
            for _ in range(draw(st.integers(min_value=1, max_value=3)))
        ]
        rule = {"id": f"R{k:02d}", "description": "random rule", "when": when,
                "weight": draw(st.floats(min_value=-40, max_value=80)),
                "enabled": draw(st.booleans())}  # fmt: skip
        if draw(st.booleans()):
            rule["scale_by"] = draw(st.sampled_from(FEATURES))
        if draw(st.booleans()):
            rule["effective_from"] = "2026-06-01"
        rules.append(rule)
    return compile_ruleset({"version": "random", "rules": rules})


@settings(max_examples=150, deadline=None)
@given(feature_batches(), random_rulesets(), st.sampled_from([0, 1_790_000_000_000]))
def test_kernel_matches_reference_on_random_rule_sets(features: Features, rs, now_ms: int) -> None:  # type: ignore[no-untyped-def]
    score, mask = score_batch(features, rs, now_ms)
    ref_score, ref_mask = reference_score(features, rs, now_ms)
    assert mask.tolist() == ref_mask
    np.testing.assert_allclose(
        score, np.asarray(ref_score, dtype=np.float64), rtol=1e-12, atol=1e-9
    )


@settings(max_examples=100, deadline=None)
@given(feature_batches())
def test_kernel_matches_reference_on_the_default_rule_set(features: Features) -> None:
    rs = default_ruleset()
    score, mask = score_batch(features, rs)
    ref_score, ref_mask = reference_score(features, rs)
    assert mask.tolist() == ref_mask
    np.testing.assert_allclose(score, np.asarray(ref_score), rtol=1e-12, atol=1e-9)


def test_disabled_and_future_rules_neither_fire_nor_score() -> None:
    doc = default_document()
    doc["rules"] = [
        {"id": "ALWAYS", "description": "d", "when": ["value_usd >= 0"], "weight": 10},
        {"id": "OFF", "description": "d", "when": ["value_usd >= 0"], "weight": 10, "enabled": False},
        {"id": "LATER", "description": "d", "when": ["value_usd >= 0"], "weight": 10,
         "effective_from": "2030-01-01"},
    ]  # fmt: skip
    rs = compile_ruleset(doc)
    f = Features(matrix=np.zeros((len(FEATURES), 2)))
    score, mask = score_batch(f, rs, now_ms=1_790_000_000_000)
    assert mask.tolist() == [1, 1] and score.tolist() == [10.0, 10.0]
    score, mask = score_batch(f, rs, now_ms=1_900_000_000_000)  # 2030: LATER in effect
    assert mask.tolist() == [5, 5] and score.tolist() == [20.0, 20.0]


def test_wrapper_rejects_wrong_dtype() -> None:
    with pytest.raises(TypeError, match="features"):
        score_batch(
            Features(matrix=np.zeros((len(FEATURES), 2), dtype=np.float32)), default_ruleset()
        )
