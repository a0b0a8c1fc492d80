"""The adaptive-weights learner: examination outcomes -> per-rule score adjustments.

Model: logistic regression of "the examination found a violation" on the rules that
fired for the parcel, with the rule set's own score as a fixed offset::

    P(violation) = sigmoid(bias + (static_score - hold_score) / points_per_logit
                           + sum of theta[rule] over the rules that fired)

so ``theta`` learns only corrections to the rule set's weights: a rule whose holds keep
coming back clean drifts negative, one whose holds keep finding violations drifts
positive. A correction of ``theta`` logits is worth ``points_per_logit * theta`` score
points, which is what the worker adds to the score for each rule that fired, so every
point of a score stays attributable to a named rule (``Reason.learned_points``).

Bounded: ``theta`` is clipped to +-``max_adjust_points`` worth of points and shrunk
towards 0 (L2) on every step, so with no evidence a correction fades. Versioned: every
training step bumps ``version``; the store keeps the last states for inspection
(``parcel-stream learner show``). Modes: ``off`` (no training, no effect), ``shadow``
(trains, scores unaffected: the default, so analysts can inspect before switching on),
``on`` (trains and adjusts scores).

Training data comes from the examinations only, which the risk ranking selected: the
random compliance samples and exploration holds are what keep that sample from being
entirely self-confirming.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt
from numba import njit

from parcel_stream.risk import RiskState

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
LearnerMode = Literal["off", "shadow", "on"]
MODES: tuple[LearnerMode, ...] = ("off", "shadow", "on")


@dataclass(frozen=True, slots=True)
class LearnerConfig:
    mode: LearnerMode = "shadow"
    learning_rate: float = 0.05
    l2: float = 0.001
    max_adjust_points: float = 20.0
    points_per_logit: float = 10.0
    history: int = 100  # learner states kept for inspection

    @property
    def trains(self) -> bool:
        return self.mode != "off"

    @property
    def adjusts(self) -> bool:
        return self.mode == "on"


class LearnerState(msgspec.Struct, frozen=True):
    """One version of the learned corrections (stored as JSON)."""

    version: int = 0
    bias: float = 0.0
    theta: dict[str, float] = {}  # rule id -> correction in logits
    examples: int = 0  # examination results learned from
    violations: int = 0  # of which found a violation
    updated_ms: int = 0
    note: str = ""  # "reset" when an operator reset the weights
    # the learned risk model's weights and global counts (``risk.py``), None until trained
    risk: RiskState | None = None

    def points(self, cfg: LearnerConfig) -> dict[str, float]:
        """The score adjustment of each rule, in points."""
        return {k: cfg.points_per_logit * v for k, v in sorted(self.theta.items())}

    def adjustments(self, cfg: LearnerConfig, rule_codes: Sequence[str]) -> F64:
        """Points to add per rule of a rule set (by rule index); zeros unless mode "on"."""
        out = np.zeros(len(rule_codes), dtype=np.float64)
        if cfg.adjusts:
            for i, code in enumerate(rule_codes):
                out[i] = cfg.points_per_logit * self.theta.get(code, 0.0)
        return out


_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(LearnerState)


def encode_state(state: LearnerState) -> bytes:
    return _ENC.encode(state)


def decode_state(raw: bytes | str | None) -> LearnerState:
    return LearnerState() if not raw else _DEC.decode(raw)


@dataclass(frozen=True, slots=True)
class Example:
    """One examination result as the learner sees it."""

    rules: tuple[str, ...]
    static_score: float
    violation: bool


@njit(cache=True, nogil=True)
def _sgd(
    hits: I64,  # [n, max_hits] rule indices, -1 padded
    offset: F64,
    y: F64,
    theta: F64,
    bias: float,
    lr: float,
    l2: float,
    bound: float,
) -> float:
    """One pass of logistic-regression SGD over the examples, in order; updates ``theta``
    in place and returns the new bias."""
    for i in range(hits.shape[0]):
        z = bias + offset[i]
        for j in range(hits.shape[1]):
            r = hits[i, j]
            if r >= 0:
                z += theta[r]
        z = min(max(z, -30.0), 30.0)
        g = 1.0 / (1.0 + np.exp(-z)) - y[i]
        for j in range(hits.shape[1]):
            r = hits[i, j]
            if r >= 0:
                t = theta[r] - lr * (g + l2 * theta[r])
                theta[r] = min(max(t, -bound), bound)
        bias -= lr * g
    return bias


def train(
    state: LearnerState,
    examples: Sequence[Example],
    cfg: LearnerConfig,
    pivot_score: float,
    now_ms: int,
) -> LearnerState:
    """The next learner state after learning from ``examples`` (in the given order)."""
    if not examples:
        return state
    vocab = sorted(set(state.theta) | {r for e in examples for r in e.rules})
    index = {r: i for i, r in enumerate(vocab)}
    width = max(1, max(len(e.rules) for e in examples))
    hits = np.full((len(examples), width), -1, dtype=np.int64)
    for i, e in enumerate(examples):
        for j, r in enumerate(e.rules):
            hits[i, j] = index[r]
    offset = np.array([(e.static_score - pivot_score) / cfg.points_per_logit for e in examples])
    y = np.array([float(e.violation) for e in examples])
    theta = np.array([state.theta.get(r, 0.0) for r in vocab], dtype=np.float64)
    bound = cfg.max_adjust_points / cfg.points_per_logit
    bias = _sgd(hits, offset, y, theta, state.bias, cfg.learning_rate, cfg.l2, bound)
    return LearnerState(
        version=state.version + 1,
        bias=float(bias),
        theta={r: float(t) for r, t in zip(vocab, theta.tolist(), strict=True) if t != 0.0},
        examples=state.examples + len(examples),
        violations=state.violations + int(y.sum()),
        updated_ms=now_ms,
        risk=state.risk,
    )


def reset(state: LearnerState, now_ms: int) -> LearnerState:
    """All corrections back to 0 (a new version, so the reset is itself on record)."""
    return LearnerState(version=state.version + 1, updated_ms=now_ms, note="reset")


def apply_adjustments(static: F64, masks: I64, adjust: F64) -> F64:
    """Scores with each fired rule's learned points added, clipped to 0..100."""
    out = static.copy()
    for r in np.flatnonzero(adjust).tolist():
        out += ((masks >> r) & 1) * adjust[r]
    clipped: F64 = np.clip(out, 0.0, 100.0)
    return clipped


@dataclass(slots=True)
class LearnerCache:
    """The worker's copy of the learner state, refreshed from the store between batches."""

    state: LearnerState = field(default_factory=LearnerState)
    fetched_at: float = float("-inf")
