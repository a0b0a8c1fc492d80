"""`parcel-stream backtest --feedback selected|all`: the learned model through the
test-then-train protocol (``parcel_stream/protocol.py``), against the rules alone."""

from __future__ import annotations

import argparse
import os
import re
import sys
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from parcel_stream.cli.errors import UsageError
from parcel_stream.settings import Settings

if TYPE_CHECKING:
    from parcel_stream.feed import RawRecord
    from parcel_stream.protocol import PeriodFigures, ProtocolRun
    from parcel_stream.rules import RuleSet

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
EXPLORE_LABEL = {"random": "random exploration", "uncertain": "exploring where least certain"}


def duration_ms(text: str) -> int:
    """A duration: a number with a unit (ms, s, m, h, d), e.g. 1d, 12h, 0."""
    match = _DURATION.match(text.strip())
    if not match or (match.group(2) is None and float(match.group(1)) != 0):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: a number and a unit (ms, s, m, h, d), e.g. 1d or 12h"
        )
    return int(float(match.group(1)) * _UNIT_MS[match.group(2) or "ms"])


def period_ms(text: str) -> int:
    """A positive duration (the protocol's periods)."""
    value = duration_ms(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a period must be longer than 0, e.g. 1d")
    return value


def clip(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value >= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the clip must be a number >= 1 (1: every outcome weighs 1), e.g. 5"
        )
    return value


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1, e.g. 0.1")
    return value


def add_protocol_args(bt: argparse.ArgumentParser) -> None:
    g = bt.add_argument_group(
        "learned targeting (test, then train, in time order; docs/learning.md)"
    )
    g.add_argument(
        "--feedback", choices=["selected", "all"],
        help="run the protocol: outcomes of the examined parcels only (the closed loop), or "
        "of every parcel (a labelled history)",
    )  # fmt: skip
    g.add_argument(
        "--outcome-delay", type=duration_ms, default=86_400_000,
        help="when an outcome becomes known, after the manifest time (default 1d)",
    )  # fmt: skip
    g.add_argument(
        "--period", type=period_ms, default=86_400_000,
        help="periods of manifest time the feed is scored in (default 1d)",
    )  # fmt: skip
    g.add_argument(
        "--exploration", type=share, default=0.1,
        help="share of the capacity spent exploring, where the model is least certain or at "
        "random (--explore-by); only with --feedback selected (default 0.1)",
    )  # fmt: skip
    g.add_argument(
        "--explore-by", choices=["uncertain", "random"], default="uncertain",
        help="explore where the model is least certain (in proportion to p (1 - p)), or at "
             "random",
    )  # fmt: skip
    g.add_argument(
        "--ipw-clip", type=clip, default=5.0,
        help="inverse selection probability weights are clipped here (default 5)",
    )  # fmt: skip
    g.add_argument(
        "--model", choices=["on", "off"], default="on",
        help="rank by the learned model (on) or by the rule score alone (off)",
    )  # fmt: skip
    g.add_argument("--compare-model", action="store_true",
                   help="also the rules alone, the model without inverse-propensity weights "
                   "and without exploration, side by side")  # fmt: skip
    g.add_argument("--scores-out", help="write one NDJSON line per parcel to this file")


def rules_and_feed(args: argparse.Namespace, settings: Settings) -> tuple[RuleSet, list[RawRecord]]:
    """The rule set (``--rules`` or the settings') and the whole feed (``args.feed``) for a
    protocol run, the kernels compiled; one-line errors for a bad rule set or feed."""
    from parcel_stream.feed import FeedError, read_feed
    from parcel_stream.kernels import warm_up
    from parcel_stream.rules import RuleSetError, default_ruleset, load_ruleset

    try:
        rs = load_ruleset(args.rules) if args.rules else default_ruleset(settings)
    except RuleSetError as exc:
        raise UsageError(str(exc)) from None
    try:
        feed = list(read_feed(args.feed, group_lines=1000))
    except FeedError as exc:
        raise UsageError(str(exc)) from None
    warm_up(rs)
    return rs, feed


def _run_variants(feed: Any, rs: Any, labels: dict[str, str | None], variants: list[Any],
                  jobs: int | None) -> list[Any]:  # fmt: skip
    """The protocol's variants (``--compare-model`` makes five), at most ``jobs`` at once
    (default: one per core), each in its own process; each run is what it would be alone
    (its own seeded random numbers)."""
    from parcel_stream.protocol import run_protocol

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    at_once = max(1, min(jobs if jobs is not None else (cores or 1), len(variants)))
    if at_once == 1:
        return [run_protocol(feed, rs, labels, cfg) for cfg in variants]
    from concurrent.futures import ProcessPoolExecutor

    from parcel_stream.backtest import mp_context

    print(f"backtest: {len(variants)} runs, {at_once} at once", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=at_once, mp_context=mp_context()) as pool:
        return list(pool.map(partial(run_protocol, feed, rs, labels), variants))


def cmd_protocol(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses

    from parcel_stream.protocol import ProtocolConfig, figures

    if not args.labels:
        raise UsageError("--feedback needs --labels: the outcomes come from the labels")
    from parcel_stream.cli.analyst_cmds import _load_labels

    labels = _load_labels(args.labels)
    if args.plots:
        from parcel_stream.cli.analyst_cmds import _require_plots

        _require_plots()  # before the run, not after it
    rs, feed = rules_and_feed(args, settings)
    base = ProtocolConfig(
        capacity_pct=args.capacity_pct, feedback=args.feedback,
        outcome_delay_ms=args.outcome_delay, period_ms=args.period,
        model=args.model == "on", exploration=args.exploration, ipw_clip=args.ipw_clip,
        explore_by=args.explore_by,
        label="model" if args.model == "on" else "rules alone",
    )  # fmt: skip
    variants = [base]
    # the other way of exploring: random against where least certain, and the reverse
    other: Literal["uncertain", "random"] = "uncertain" if args.explore_by == "random" else "random"
    if args.compare_model:
        variants = [
            dataclasses.replace(base, model=False, label="rules alone"),
            dataclasses.replace(base, model=True, label="model"),
            dataclasses.replace(base, model=True, ipw=False, label="model, no IPW weights"),
            dataclasses.replace(base, model=True, exploration=0.0, label="model, no exploration"),
            dataclasses.replace(
                base, model=True, explore_by=other, label=f"model, {EXPLORE_LABEL[other]}"
            ),  # fmt: skip
        ]
    runs = _run_variants(feed, rs, labels, variants, getattr(args, "jobs", None))
    unknown = len(set(labels) - set(runs[0].parcel_ids))
    if unknown:
        print(f"warning: {unknown} labelled parcel ids are not in the feed", file=sys.stderr)
    figs = [figures(r) for r in runs]
    print(report(runs, figs))
    if args.plots:
        from parcel_stream.plots import write_learning_curve

        curves = [(r.config.label, [x.hits / x.examined if x.examined else None for x in f])
                  for r, f in zip(runs, figs, strict=True)]  # fmt: skip
        print(f"plot: {write_learning_curve(curves, args.plots)}")
    if args.scores_out:
        write_scores(runs[1] if args.compare_model else runs[0], args.scores_out)
    return 0


def report(runs: list[ProtocolRun], figs: list[list[PeriodFigures]]) -> str:
    from parcel_stream.protocol import calibration, last_share

    cfg = runs[0].config
    lines = [
        f"Protocol: feedback `{cfg.feedback}`, outcomes known {cfg.outcome_delay_ms / 3.6e6:g} h "
        f"after the manifest time, capacity {cfg.capacity_pct:g} % per hub and period of "
        f"{cfg.period_ms / 3.6e6:g} h, "
        + (
            f"exploration {cfg.exploration:g} of it ({cfg.explore_by}), IPW weights clipped at "
            f"{cfg.ipw_clip:g}."
            if cfg.feedback == "selected"
            else "no exploration and no IPW weights (every outcome is known)."
        ),
        "",
        "| run | examined | outcomes | hit rate of its examinations, last third | "
        "precision of its ranking at capacity, last third | mean probability / violation "
        "share / Brier, last third |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for run, f in zip(runs, figs, strict=True):
        hit, rank = last_share(f)
        mean_p, rate, brier = calibration(run)
        calib = f"{mean_p:.3f} / {rate:.3f} / {brier:.3f}" if run.config.model else "–"
        lines.append(f"| {run.config.label} | {sum(x.examined for x in f):,} | "
                     f"{run.outcomes:,} | {hit:.3f} | {rank:.3f} | {calib} |")  # fmt: skip
    lines += ["", "Learning curve (hit rate of the examinations per period):", "",
              "| period | " + " | ".join(r.config.label for r in runs) + " |",
              "| ---: | " + " | ".join("---:" for _ in runs) + " |"]  # fmt: skip
    for k in range(len(figs[0])):
        cells = [f"{f[k].hits / f[k].examined:.2f}" if f[k].examined else "–" for f in figs]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    learned = next((r for r in runs if r.config.model and r.table is not None), None)
    if learned is not None and learned.table is not None and learned.parcel_ids:
        table = learned.table
        now = max((row[3] for row in table.norms.values()), default=0.0)
        lines += ["", "Strongest learned keys (at least 5 examinations):", "",
                  "| key | violation rate | examinations (weighted) |",
                  "| --- | ---: | ---: |"]  # fmt: skip
        for key, rate, exams in table.strongest(10, now):
            lines.append(f"| `{key}` | {rate:.0%} | {exams:,.0f} |")
    return "\n".join(lines)


def write_scores(run: ProtocolRun, path: str) -> None:
    import orjson

    from parcel_stream.cli.analyst_cmds import open_out

    names = {0: None, 1: "risk", 2: "exploration"}
    with open_out(path) as out:
        for i, pid in enumerate(run.parcel_ids):
            out.write(orjson.dumps({
                "parcel_id": pid, "period": run.periods[i], "score": run.rule_scores[i],
                "probability": round(run.probabilities[i], 6),
                "lane": "hold" if run.selected[i] else "release",
                "selection": names[run.selected[i]],
                "selection_probability": round(run.propensity[i], 6),
            }) + b"\n")  # fmt: skip
