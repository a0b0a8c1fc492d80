import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parcel_stream.features import Features
from parcel_stream.kernels import score_batch
from parcel_stream.rules import RULES, default_ruleset
from parcel_stream.settings import Settings
from tests.unit.reference import reference_score

finite = st.floats(min_value=0.0, max_value=5_000.0, allow_nan=False)


@st.composite
def feature_batches(draw: st.DrawFn) -> Features:
    n = draw(st.integers(min_value=0, max_value=40))
    counts = [draw(st.integers(min_value=0, max_value=4)) for _ in range(n)]
    m = sum(counts)
    starts = (
        np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        if n
        else np.zeros(0, np.int64)
    )
    headings = [
        draw(st.one_of(st.just(-1), st.sampled_from([2933, 6403, 8479, 6109, 9102, 3304]),
                       st.integers(min_value=0, max_value=9999)))
        for _ in range(m)
    ]  # fmt: skip
    arr = lambda xs, dt=np.float64: np.asarray(xs, dtype=dt)  # noqa: E731
    return Features(
        value_usd=arr([draw(finite) for _ in range(n)]),
        weight_kg=arr([draw(st.floats(min_value=0.001, max_value=50)) for _ in range(n)]),
        origin_idx=arr(
            [draw(st.integers(min_value=-1, max_value=675)) for _ in range(n)], np.int64
        ),
        item_start=starts,
        item_count=arr(counts, np.int64),
        item_heading=arr(headings, np.int64),
        item_value_usd=arr([draw(finite) for _ in range(m)]),
        shipper_seen=arr([draw(st.integers(min_value=0, max_value=200)) for _ in range(n)]),
        shipper_holds=arr([draw(st.integers(min_value=0, max_value=60)) for _ in range(n)]),
        shipper_age_days=arr([draw(st.sampled_from([-1.0, 0.5, 3.0, 30.0])) for _ in range(n)]),
    )


@st.composite
def rulesets(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    threshold = draw(st.sampled_from([0.0, 150.0, 800.0]))
    rs = default_ruleset(Settings(duty_free_threshold_usd=threshold))
    weights = np.asarray(
        [draw(st.floats(min_value=-50, max_value=80)) for _ in RULES], dtype=np.float64
    )
    origin = rs.origin_risk.copy()
    for idx in draw(st.lists(st.integers(min_value=0, max_value=675), max_size=20)):
        origin[idx] = draw(st.floats(min_value=0, max_value=1))
    params = rs.params.copy()
    params[3] = draw(st.sampled_from([0.0, 7.0]))
    enabled = draw(st.sampled_from([rs.enabled_mask, rs.enabled_mask & ~0b100, 0b1011]))
    return type(rs)(
        **{**rs.__dict__, "weights": weights, "origin_risk": origin, "params": params,
           "enabled_mask": enabled}
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(feature_batches(), rulesets())
def test_kernel_matches_reference(features: Features, rs) -> None:  # type: ignore[no-untyped-def]
    score, mask = score_batch(features, rs)
    ref_score, ref_mask = reference_score(features, rs)
    assert mask.tolist() == ref_mask
    np.testing.assert_allclose(score, np.asarray(ref_score, dtype=np.float64), rtol=0, atol=1e-9)


def test_precursor_from_new_shipper_is_a_hold_candidate() -> None:
    rs = default_ruleset(Settings())
    one = lambda x: np.asarray([x], dtype=np.float64)  # noqa: E731
    f = Features(
        value_usd=one(40.0), weight_kg=one(1.0), origin_idx=np.asarray([50], np.int64),
        item_start=np.asarray([0], np.int64), item_count=np.asarray([1], np.int64),
        item_heading=np.asarray([2933], np.int64), item_value_usd=one(40.0),
        shipper_seen=one(0.0), shipper_holds=one(0.0), shipper_age_days=one(-1.0),
    )  # fmt: skip
    score, mask = score_batch(f, rs)
    assert rs.reason_codes(int(mask[0])) == ["HIGH_RISK_HS", "NEW_SHIPPER"]
    assert score[0] >= rs.hold_score


def test_wrapper_rejects_wrong_dtype() -> None:
    rs = default_ruleset(Settings())
    f = Features(
        value_usd=np.zeros(2, dtype=np.float32), weight_kg=np.ones(2),
        origin_idx=np.zeros(2, np.int64),
        item_start=np.zeros(2, np.int64), item_count=np.zeros(2, np.int64),
        item_heading=np.zeros(0, np.int64), item_value_usd=np.zeros(0),
        shipper_seen=np.zeros(2), shipper_holds=np.zeros(2), shipper_age_days=np.zeros(2),
    )  # fmt: skip
    with pytest.raises(TypeError, match="value_usd"):
        score_batch(f, rs)
