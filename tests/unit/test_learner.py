"""Recent-weighted counts (decay) and the adaptive per-rule learner."""

import math
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from parcel_stream.exams import apply_exam_batch
from parcel_stream.learner import (
    Example,
    LearnerConfig,
    LearnerState,
    apply_adjustments,
    decode_state,
    encode_state,
    reset,
    train,
)
from parcel_stream.reputation import DAY_MS, ExamDelta, InMemoryStore, decay_add, decay_factor

HL = 10 * DAY_MS
ON = LearnerConfig(mode="on")


def test_a_count_halves_every_half_life() -> None:
    t, (v,) = decay_add(0, (0.0,), 1_000 * DAY_MS, (8.0,), HL)
    assert (t, v) == (1_000 * DAY_MS, 8.0)
    _, (v,) = decay_add(t, (v,), t + HL, (0.0,), HL)
    assert v == 4.0
    assert decay_factor(np.array([float(t)]), t + 3 * HL, HL).tolist() == [0.125]
    # never worth more than its value, even when read "before" its reference time
    assert decay_factor(np.array([float(t)]), t - HL, HL).tolist() == [1.0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 400), st.floats(0, 50)), min_size=1, max_size=20))
def test_decayed_sum_does_not_depend_on_arrival_order(events: list[tuple[int, float]]) -> None:
    def total(order: list[tuple[int, float]]) -> float:
        t, v = 0.0, [0.0]
        for day, amount in order:
            t, v = decay_add(t, v, day * DAY_MS, (amount,), HL)
        now = 500 * DAY_MS
        return float(v[0] * 2.0 ** (-(now - t) / HL))

    expected = sum(a * 2.0 ** (-(500 - d) / 10) for d, a in events)
    shuffled = events[:]
    random.Random(1).shuffle(shuffled)
    assert math.isclose(total(events), expected, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(total(shuffled), expected, rel_tol=1e-9, abs_tol=1e-9)


def examples(n: int, seed: int = 3) -> list[Example]:
    """NOISY fires on many parcels and is almost never right; SHARP is right 90 % of the
    time; both have the same rule-set score, so only the outcomes tell them apart."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append(Example(("NOISY",), 65.0, rng.random() < 0.05))
        else:
            out.append(Example(("SHARP",), 65.0, rng.random() < 0.9))
    return out


def test_learner_moves_weights_towards_the_outcomes_and_stays_bounded() -> None:
    state = LearnerState()
    for lo in range(0, 4000, 200):
        state = train(state, examples(4000)[lo : lo + 200], ON, 60.0, lo)
    points = state.points(ON)
    assert state.version == 20 and state.examples == 4000
    assert points["NOISY"] < -3.0 < 3.0 < points["SHARP"]
    assert all(abs(p) <= ON.max_adjust_points for p in points.values())
    # a tight bound holds however strong the evidence
    tight = LearnerConfig(mode="on", max_adjust_points=2.0, learning_rate=0.5)
    strong = train(LearnerState(), examples(4000), tight, 60.0, 0)
    assert max(abs(p) for p in strong.points(tight).values()) <= 2.0 + 1e-9


def test_learner_state_round_trips_and_reset_is_a_new_version() -> None:
    state = train(LearnerState(), examples(300), ON, 60.0, 5)
    assert decode_state(encode_state(state)) == state
    assert decode_state(None) == LearnerState()
    blank = reset(state, 6)
    assert blank.version == state.version + 1 and blank.theta == {} and blank.note == "reset"


def test_adjustments_apply_only_when_on_and_only_to_fired_rules() -> None:
    state = LearnerState(version=4, theta={"A": -1.0, "B": 0.5})
    codes = ["A", "B", "C"]
    assert LearnerState.adjustments(state, LearnerConfig(mode="shadow"), codes).tolist() == [0] * 3
    adj = state.adjustments(ON, codes)
    assert adj.tolist() == [-10.0, 5.0, 0.0]
    static = np.array([50.0, 50.0, 5.0, 98.0])
    masks = np.array([0b001, 0b011, 0b001, 0b010], dtype=np.int64)
    assert apply_adjustments(static, masks, adj).tolist() == [40.0, 45.0, 0.0, 100.0]


def test_exam_batch_trains_once_per_result_and_counts_once() -> None:
    store = InMemoryStore(half_life_ms=HL)
    deltas = [
        ExamDelta(
            f"E{i}", f"P{i}", "S1", "addr", i % 2 == 0, 100 * DAY_MS, "L1@m", ("NOISY",), 65.0
        )
        for i in range(10)
    ]
    applied = apply_exam_batch(store, deltas + deltas[:3], ON, 60.0, 1)
    assert applied == [True] * 10 + [False] * 3
    assert store.learner.version == 1 and store.learner.examples == 10
    # redelivered: nothing counted or learned twice
    assert apply_exam_batch(store, deltas, ON, 60.0, 2) == [False] * 10
    assert store.learner.version == 1 and store.shippers["S1"].exams == 10
    assert store.sellers["L1@m"].violations == 5
    # learner off: the counts move, the learner does not
    off = InMemoryStore()
    apply_exam_batch(off, deltas, LearnerConfig(mode="off"), 60.0, 1)
    assert off.learner.version == 0 and off.shippers["S1"].exams == 10


def test_a_stale_learner_version_is_refused() -> None:
    store = InMemoryStore()
    d = [ExamDelta("E1", "P1", "S1", "a", True, 1, "", ("X",), 70.0)]
    new = train(store.learner, [Example(("X",), 70.0, True)], ON, 60.0, 1)
    assert store.apply_exams(d, (5, new)) is None  # expected version 5, store has 0
    assert store.shippers == {} and store.learner.version == 0
    assert store.apply_exams(d, (0, new)) == [True] and store.learner.version == 1
