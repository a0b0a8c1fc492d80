"""Offline work on feeds: generate (a synthetic feed with labels) and backtest."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parcel_stream.cli.common import percent, positive_int
from parcel_stream.cli.errors import UsageError
from parcel_stream.cli.protocol_cmds import add_protocol_args, cmd_protocol
from parcel_stream.cli.state_cmds import render_learner
from parcel_stream.settings import Settings

if TYPE_CHECKING:
    from parcel_stream.cli.common import Subcommands
    from parcel_stream.state import StateStore


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from parcel_stream.feed import RawRecord, encode_record
    from parcel_stream.generate import FeedConfig, generate
    from parcel_stream.progress import Progress
    from parcel_stream.rules import default_ruleset

    cfg = FeedConfig(
        parcels=args.parcels,
        shippers=args.shippers,
        seed=args.seed,
        threshold_usd=default_ruleset(settings).threshold_usd,
        duration_s=args.days * 86_400.0,
    )
    progress = Progress("generating", total=args.parcels, unit="parcels")
    out = sys.stdout.buffer if args.out == "-" else open_out(args.out)
    labels = open_out(args.labels) if args.labels else None
    try:
        pairs = generate(cfg)
        if args.shape == "declarations":
            from parcel_stream.declarations import DeclarationsConfig, generate_declarations

            pairs = generate_declarations(DeclarationsConfig(
                parcels=args.parcels, seed=args.seed, duration_s=args.days * 86_400.0,
            ))  # fmt: skip
        elif args.hidden_risk:
            from parcel_stream.hidden_risk import with_hidden_risk

            pairs = with_hidden_risk(pairs, cfg)
        for n, (doc, label) in enumerate(pairs):
            line = orjson.dumps(doc)
            if args.format == "feed":
                key = doc["shipper"]["id"].encode()
                topic = settings.topic_manifests
                line = encode_record(RawRecord(doc["manifest_ts_ms"], topic, 0, n, key, line))
            out.write(line + b"\n")
            if labels is not None:
                labels.write(orjson.dumps({"parcel_id": doc["parcel_id"], "label": label}) + b"\n")
            progress.update()
    finally:
        progress.close()
        if out is not sys.stdout.buffer:
            out.close()
        if labels is not None:
            labels.close()
    return 0


def open_out(path: str) -> Any:
    from parcel_stream.feed import open_feed

    try:
        return open_feed(path, "wb")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write ({exc.strerror})") from None


def _load_labels(path: str | None) -> dict[str, str | None]:
    import orjson

    if not path:
        return {}
    labels: dict[str, str | None] = {}
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    doc = orjson.loads(line)
                    labels[str(doc["parcel_id"])] = doc.get("label")
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    raise UsageError(
                        f'{path}:{n}: expected {{"parcel_id": ..., "label": ...}}'
                    ) from None
    except FileNotFoundError:
        raise UsageError(
            f"{path}: no such file; `parcel-stream generate --labels` writes one"
        ) from None
    return labels


def _require_plots() -> None:
    """--plots without matplotlib (an optional extra): one line naming the fix, no traceback."""
    from parcel_stream.plots import INSTALL_HINT, PlotsUnavailable, require_plots

    try:
        require_plots()
    except PlotsUnavailable:
        raise UsageError(
            f"--plots needs matplotlib, which is not installed; install it with: {INSTALL_HINT}"
        ) from None


def cmd_backtest(args: argparse.Namespace, settings: Settings) -> int:
    if args.feedback:
        return cmd_protocol(args, settings)
    from parcel_stream.backtest import evaluate, render_markdown
    from parcel_stream.feed import FeedError
    from parcel_stream.feedcache import CacheError
    from parcel_stream.kernels import warm_up
    from parcel_stream.parse import Limits
    from parcel_stream.rules import RuleSetError, default_ruleset, load_ruleset

    if not Path(args.feed).exists():
        raise UsageError(
            f"{args.feed}: no such file; `parcel-stream generate` or `record` makes one"
        )
    labels = _load_labels(args.labels)
    if args.plots:
        _require_plots()  # before the run, not after it
    try:
        base = default_ruleset(settings)
        rulesets = [load_ruleset(args.rules) if args.rules else base]
        if args.compare:
            rulesets.append(load_ruleset(args.compare))
    except RuleSetError as exc:
        raise UsageError(str(exc)) from None
    if len(rulesets) == 2 and rulesets[0].version == rulesets[1].version:
        raise UsageError('both rule sets have the same version; give one a distinct "version"')
    warm_up(base)
    limits = Limits(settings.max_record_bytes, settings.max_parcels_per_record)
    from parcel_stream.learner import LearnerConfig

    base_cfg = settings.learner_config()
    cfg = dataclasses.replace(base_cfg, mode=args.learner)
    off = dataclasses.replace(base_cfg, mode="off")
    plans: list[tuple[Any, str, bool, LearnerConfig]] = [
        (rs, rs.version, args.exam_feedback, cfg) for rs in rulesets
    ]
    rs0 = rulesets[0]
    if args.compare_feedback or args.compare_learner:
        if not labels:
            raise UsageError("--compare-feedback and --compare-learner need --labels "
                             "(they decide the exam outcomes)")  # fmt: skip
    if args.compare_feedback:
        plans = [
            (rs0, f"{rs0.version} feedback off", False, off),
            (rs0, f"{rs0.version} feedback on", True, cfg),
        ]
    if args.compare_learner:
        plans = [
            (rs0, f"{rs0.version} feedback, learner off", True, off),
            (rs0, f"{rs0.version} feedback, learner on", True,
             dataclasses.replace(base_cfg, mode="on")),
        ]  # fmt: skip
    if args.learner != "off" and not any(p[2] for p in plans):
        raise UsageError("--learner trains on exam outcomes: add --exam-feedback and --labels")
    cache = _cache_entry(args, limits, settings.backtest_cache_dir)
    jobs, workers = _jobs(args, len(plans))
    if jobs > 1:
        print(f"backtest: {len(plans)} runs in {jobs} processes", file=sys.stderr)
    elif workers > 1 and not (cache is not None and cache.exists):
        print(f"backtest: the feed parsed in {workers} processes", file=sys.stderr)
    specs = [
        _Plan(args.feed, rs, name, labels if feedback else None, learner, limits,
              settings.state_config(), settings.risk_config(), cache, args.store, settings,
              progress=jobs == 1, workers=workers)
        for rs, name, feedback, learner in plans
    ]  # fmt: skip
    try:
        if jobs == 1:
            done = [_run_plan(p) for p in specs]
        else:
            from concurrent.futures import ProcessPoolExecutor

            from parcel_stream.backtest import mp_context

            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp_context()) as pool:
                done = list(pool.map(_run_plan, specs))
    except (FeedError, CacheError) as exc:
        raise UsageError(str(exc)) from None
    runs, reports = [], []
    for (rs, name, _fb, _learner), (run, cached) in zip(plans, done, strict=True):
        if cache is not None:
            how = "read from" if cached else "written to"
            print(f"backtest {name}: parsed chunks {how} the cache {cache.path}", file=sys.stderr)
        runs.append(run)
        reports.append(evaluate(run, labels, rs, args.capacity_pct))
    text = render_markdown(reports)
    for run, (rs, _name, _fb, learner) in zip(runs, plans, strict=True):
        if run.learner is not None:
            text += "\n" + render_learner(run.learner, learner, rs, title=run.ruleset_version)
    print(text)
    if not labels:
        print("(no --labels given: precision and recall need ground truth)")
    if args.plots:
        from parcel_stream.plots import write_plots

        for path in write_plots(reports, runs, labels, args.plots):
            print(f"wrote {path}")
    if args.report:
        lines = [f"# Backtest of {args.feed}\n\n", text]
        if args.plots:
            lines.append("\n## Plots\n\n")
            for name in ("score-distribution.png", "precision-recall-capacity.png"):
                rel = os.path.relpath(
                    os.path.join(args.plots, name), os.path.dirname(args.report) or "."
                )
                lines.append(f"![{name}]({rel})\n\n")
        Path(args.report).write_text("".join(lines))
        print(f"wrote {args.report}")
    return 0


def add_generate(sub: Subcommands) -> None:
    g = sub.add_parser("generate", help="write a seeded synthetic feed as NDJSON")
    g.add_argument("--parcels", type=positive_int, default=10_000)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--out", default="-", help="file, or - for stdout")
    g.add_argument("--labels", help="also write ground-truth labels (NDJSON) to this file")
    g.add_argument("--shippers", type=positive_int, default=2000, help="distinct shippers")
    g.add_argument("--days", type=float, default=1.0, help="time span of the feed in days")
    g.add_argument(
        "--shape", choices=["parcels", "declarations"], default="parcels",
        help="e-commerce parcels (default), or customs declarations for testing the "
        "learning protocol (docs/learning.md)",
    )  # fmt: skip
    g.add_argument(
        "--hidden-risk", action="store_true",
        help="add declarants, modes, attributes and risk the default rules do not encode "
        "(for the learned model; see docs/learning.md)",
    )  # fmt: skip
    g.add_argument(
        "--format",
        choices=["manifests", "feed"],
        default="manifests",
        help="one manifest per line, or feed records (replayable at the generated pace)",
    )
    g.set_defaults(func=cmd_generate)


GROUP_LINES = 1000  # a manifests file's lines, grouped into batch records of this many


@dataclasses.dataclass(frozen=True)
class _Plan:
    """One run of a backtest (a rule set, its feedback and learner), as a process gets it."""

    feed: str
    ruleset: Any
    name: str
    exam_outcomes: dict[str, str | None] | None
    learner: Any
    limits: Any
    state_config: Any
    risk: Any
    cache: Any
    store: str
    settings: Settings
    progress: bool
    workers: int = 1  # processes that parse the feed ahead of the run


def _run_plan(plan: _Plan) -> tuple[Any, bool]:
    """One run, in this process or a child; the run and whether it read the cache."""
    from parcel_stream.backtest import run_backtest
    from parcel_stream.feed import read_feed
    from parcel_stream.progress import Progress
    from parcel_stream.reputation import InMemoryStore

    settings = plan.settings
    store: StateStore = InMemoryStore(half_life_ms=settings.half_life_ms)
    close = None
    if plan.store == "redis":  # single node or cluster, as the settings say
        from parcel_stream.adapters.redis_store import BlockingRedisStore, RedisReputationStore

        own = settings.replace(redis_key_prefix=f"{settings.redis_key_prefix}:bt")
        redis = BlockingRedisStore("", store=RedisReputationStore.from_settings(own))
        store, close = redis, redis.close
    progress = Progress(f"backtest {plan.name}", unit="records") if plan.progress else None

    def counted() -> Any:
        for rec in read_feed(plan.feed, group_lines=GROUP_LINES):
            if progress is not None:
                progress.update()
            yield rec

    cached = plan.cache is not None and plan.cache.exists
    try:
        run = run_backtest(counted(), plan.ruleset, store=store, limits=plan.limits,
                           exam_outcomes=plan.exam_outcomes, label=plan.name,
                           learner=plan.learner, state_config=plan.state_config, risk=plan.risk,
                           cache=plan.cache, workers=plan.workers)  # fmt: skip
    finally:
        if progress is not None:
            progress.close()
        if close is not None:
            close()
    return run, cached


def _jobs(args: argparse.Namespace, plans: int) -> tuple[int, int]:
    """(runs at once, parse processes a run): ``--jobs`` processes (default: one per
    core) run the runs at once, one each; one run at a time (a single run, or the Redis
    store, whose keys the runs would share) has them parse its feed ahead of it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    want = args.jobs if args.jobs is not None else (cores or 1)
    at_once = 1 if args.store == "redis" else max(1, min(want, plans))
    return at_once, (want if at_once == 1 and want > 1 else 1)


def _cache_entry(args: argparse.Namespace, limits: Any, setting: str) -> Any:
    """The feed's entry in the columnar cache (None: --no-cache)."""
    if args.no_cache:
        return None
    from parcel_stream.backtest import CHUNK_BYTES
    from parcel_stream.feedcache import FeedCache, default_dir

    root = Path(args.cache_dir) if args.cache_dir else default_dir(setting)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"{root}: cannot write the backtest cache there ({exc.strerror}); give "
            "--cache-dir DIR (or PARCEL_BACKTEST_CACHE_DIR) or --no-cache"
        ) from None
    return FeedCache(root, Path(args.feed), limits, CHUNK_BYTES, GROUP_LINES).entry()


def add_backtest(sub: Subcommands) -> None:
    bt = sub.add_parser(
        "backtest", help="score a feed offline with the worker's code; report against labels"
    )
    bt.add_argument("feed", help="feed file (record/generate --format feed) or manifests NDJSON")
    bt.add_argument("--labels", help="ground truth: NDJSON lines {parcel_id, label}")
    bt.add_argument("--rules", help="rule-set file (TOML/JSON) for the main run")
    bt.add_argument("--compare", help="a second rule-set file, reported side by side")
    bt.add_argument(
        "--capacity-pct", type=percent, default=2.0, help="examination capacity, %% of parcels"
    )
    bt.add_argument(
        "--exam-feedback",
        action="store_true",
        help="examine every hold (outcome from --labels) and feed it back, as live",
    )
    bt.add_argument(
        "--compare-feedback",
        action="store_true",
        help="run the rule set twice, exam feedback off and on, side by side",
    )
    bt.add_argument(
        "--learner",
        choices=["off", "shadow", "on"],
        default="off",
        help="adaptive weights in the run (needs --exam-feedback): shadow trains, on also "
        "adjusts scores",
    )
    bt.add_argument(
        "--compare-learner",
        action="store_true",
        help="run with exam feedback twice, learner off and on, side by side",
    )
    bt.add_argument("--report", help="also write the report as Markdown to this file")
    bt.add_argument(
        "--plots",
        help="write PNG plots into this directory "
        "(needs matplotlib: pip install 'parcel-stream[plots]')",
    )
    bt.add_argument(
        "--store", choices=["memory", "redis"], default="memory", help="reputation store"
    )
    bt.add_argument(
        "--cache-dir",
        help="the columnar cache of parsed feeds: the first backtest of a feed writes it, "
        "later ones skip JSON (default: PARCEL_BACKTEST_CACHE_DIR, else "
        "~/.cache/parcel-stream/backtest)",
    )
    bt.add_argument(
        "--jobs", type=positive_int,
        help="processes (default: one per core): the runs of --compare, the --compare-* "
        "options and --compare-model at once, one each; a single run has them parse the "
        "feed ahead of it. Each run decides exactly as it would in one process",
    )  # fmt: skip
    bt.add_argument(
        "--no-cache", action="store_true", help="parse the feed, neither reading nor writing "
        "the cache"
    )  # fmt: skip
    add_protocol_args(bt)
    bt.set_defaults(func=cmd_backtest)
