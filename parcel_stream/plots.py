"""Backtest plots (PNG), written with matplotlib: an optional extra, imported only here.

Without it, :func:`require_plots` and :func:`write_plots` raise :class:`PlotsUnavailable`,
whose message names the fix (``pip install 'parcel-stream[plots]'``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from parcel_stream.backtest import BacktestRun, Report

INSTALL_HINT = "pip install 'parcel-stream[plots]'"


class PlotsUnavailable(RuntimeError):
    """Plots were asked for, but matplotlib (the ``plots`` extra) is not installed."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailable(
            f"plots need matplotlib, which is not installed; install it with: {INSTALL_HINT}"
        ) from None
    return plt


def require_plots() -> None:
    """Fail early (before a long backtest) when plots are asked for and cannot be drawn."""
    _pyplot()


def write_plots(reports: list[Report], runs: list[BacktestRun], labels: dict[str, str | None],
                out_dir: str) -> list[str]:  # fmt: skip
    """PNG plots: score distributions (clean vs violative) and precision/recall vs capacity.

    Raises :class:`PlotsUnavailable` when matplotlib is not installed.
    """
    plt = _pyplot()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        scores = np.asarray(run.scores)
        bad = np.fromiter(
            (labels.get(p) is not None for p in run.parcel_ids), np.bool_, len(scores)
        )
        bins = np.linspace(0, 100, 41)
        ax.hist(scores[~bad], bins=bins, alpha=0.6, label="no violation", log=True)
        ax.hist(scores[bad], bins=bins, alpha=0.8, label="labelled violation", log=True)
        ax.set_title(f"scores: {run.ruleset_version}")
        ax.set_xlabel("score")
        ax.set_ylabel("parcels (log)")
        ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "score-distribution.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in reports:
        ks = [c[0] for c in r.pr_curve]
        ax.plot(ks, [c[1] for c in r.pr_curve], marker="o", label=f"precision, {r.ruleset_version}")
        ax.plot(
            ks,
            [c[2] for c in r.pr_curve],
            marker="s",
            ls="--",
            label=f"recall, {r.ruleset_version}",
        )  # noqa: E501
    ax.axvline(reports[0].capacity_pct, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("examination capacity (% of parcels, top scores)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("precision and recall vs examination capacity")
    fig.tight_layout()
    path = os.path.join(out_dir, "precision-recall-capacity.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
    return paths


def write_learning_curve(curves: list[tuple[str, list[float | None]]], out_dir: str) -> str:
    """A PNG of the hit rate of each run's examinations per period (the learned model's
    protocol); ``None`` where a run examined nothing in a period."""
    plt = _pyplot()
    os.makedirs(out_dir, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, rates in curves:
        xs = [k for k, r in enumerate(rates) if r is not None]
        ax.plot(xs, [rates[k] for k in xs], marker=".", label=label)
    ax.set_xlabel("period")
    ax.set_ylabel("hit rate of the examinations")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "learning-curve.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
