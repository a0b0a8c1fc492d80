"""The ``parcel-stream`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from parcel_stream.adapters.security import kafka_client_options
from parcel_stream.settings import ConfigError, Settings


class UsageError(Exception):
    """A bad argument: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (and a pointer to --help), no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, e.g. 1000") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import gc

    import faust

    from agents.app import create_app

    # A batch allocates ~10 objects per parcel that live until the batch ends; with the
    # default thresholds the collector rescans them over and over (half the parse time).
    gc.set_threshold(50_000, 20, 100)
    from parcel_stream.logjson import logging_config

    app = create_app(settings)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        quiet=True,
        logging_config=logging_config(settings.log_level, settings.log_format),
    )
    worker.execute_from_commandline()
    return 0


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.adapters import devstack

    if args.action == "up":
        info = devstack.up(settings, args.state_dir)
        print(f"broker {info.bootstrap}  redis {info.redis_url}  (state in {info.state_dir})")
        print("use it with:")
        for k, v in info.env().items():
            print(f"  export {k}={v}")
    elif args.action == "down":
        stopped = devstack.down(args.state_dir)
        print(f"stopped {len(stopped)} process(es)" if stopped else "nothing was running")
    elif args.action in ("status", "env"):
        found = devstack.read_info(args.state_dir)
        if found is None:
            print("no dev stack in " + args.state_dir + "; start one with `parcel-stream dev up`")
            return 1
        if args.action == "env":
            for k, v in found.env().items():
                print(f"export {k}={v}")
        else:
            print(json.dumps({**found.__dict__, "bootstrap": found.bootstrap}, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.demo import run_demo

    result = run_demo(
        parcels=args.parcels,
        batch_size=args.batch_size,
        single_every=args.single_every,
        seed=args.seed,
        base=settings,
    )
    expected = result.sent_parcels + result.malformed
    accounted = len(result.decisions) + len(result.rejections)
    if accounted != expected:
        print(f"error: {expected - accounted} manifests have no decision or rejection")
        return 1
    return 0


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
        for n, (doc, label) in enumerate(generate(cfg)):
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


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from parcel_stream.adapters.kafka_io import make_producer, produce_parcels
    from parcel_stream.progress import Progress

    path = Path(args.file)
    if not path.exists():
        raise UsageError(
            f"{path}: no such file; create one with `parcel-stream generate --out {path}`"
        )
    pairs: list[tuple[bytes | None, bytes]] = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            key = str(orjson.loads(line)["shipper"]["id"]).encode()
        except Exception:
            key = None  # malformed lines are sent as they are: the worker rejects them
        pairs.append((key, line))
    producer = make_producer(settings.kafka_bootstrap, **kafka_client_options(settings))
    progress = Progress("producing", total=len(pairs), unit="parcels")
    stats = produce_parcels(
        producer, settings.topic_manifests, pairs, args.batch_size, progress=progress
    )
    producer.close()
    rate = stats.parcels / max(stats.seconds, 1e-9)
    print(f"sent {stats.parcels} manifests in {stats.records} records ({rate:,.0f}/s)")
    return 0


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        value = -1.0
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage between 0 and 100, e.g. 2")
    return value


def _time_ms(text: str) -> int:
    """Unix ms, or an ISO 8601 time (UTC when no zone is given)."""
    from datetime import UTC, datetime

    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use Unix ms or ISO 8601, e.g. 2026-11-22T08:00:00Z"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _speed(text: str) -> float:
    if text in ("max", "0"):
        return 0.0
    try:
        value = float(text.rstrip("x"))
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a speed: use max, 1 (recorded pace) or a factor such as 10"
        )
    return value


def cmd_record(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.adapters.kafka_io import RecordRange, consumer_options, record_topics
    from parcel_stream.progress import Progress

    rng = RecordRange(args.from_offset, args.to_offset, args.since, args.until, args.follow)
    if rng.since_ms is not None and rng.until_ms is not None and rng.since_ms > rng.until_ms:
        raise UsageError("--since is after --until; swap them")
    topics = args.topics or [settings.topic_manifests]
    try:
        n = record_topics(
            settings.kafka_bootstrap,
            topics,
            args.out,
            rng,
            Progress("recording", unit="records"),
            options=consumer_options(settings),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {n} records from {', '.join(topics)} to {args.out}")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.adapters.kafka_io import ReplayPlan, make_producer, replay_feed
    from parcel_stream.feed import FeedError, read_feed
    from parcel_stream.progress import Progress

    if not Path(args.file).exists():
        raise UsageError(f"{args.file}: no such file; record one with `parcel-stream record`")
    plan = ReplayPlan(
        topic=args.topic or settings.topic_manifests,
        speed=args.speed,
        mode=args.mode,
        batch_size=args.batch_size,
        keep_partitions=args.keep_partitions,
    )
    unit = "parcels" if plan.mode != "recorded" else "records"
    progress = Progress(f"replaying to {plan.topic}", unit=unit)
    producer = make_producer(settings.kafka_bootstrap, **kafka_client_options(settings))
    try:
        sent = replay_feed(producer, read_feed(args.file, plan.topic), plan, progress)
    except FeedError as exc:
        raise UsageError(str(exc)) from None
    finally:
        producer.close()
    print(f"sent {sent} records to {plan.topic} ({progress.rate():,.0f} {unit}/s)")
    return 0


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
    from parcel_stream.backtest import evaluate, render_markdown, run_backtest
    from parcel_stream.feed import FeedError, read_feed
    from parcel_stream.kernels import warm_up
    from parcel_stream.parse import Limits
    from parcel_stream.progress import Progress
    from parcel_stream.reputation import InMemoryStore
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
    runs, reports = [], []
    for rs, name, feedback, learner in plans:
        store: Any = InMemoryStore(half_life_ms=settings.half_life_ms)
        if args.store == "redis":
            from parcel_stream.adapters.redis_store import BlockingRedisStore

            store = BlockingRedisStore(settings.redis_url, prefix=f"{settings.redis_key_prefix}:bt",
                                       half_life_ms=settings.half_life_ms)  # fmt: skip
        progress = Progress(f"backtest {name}", unit="records")

        def counted(path: str = args.feed, progress: Progress = progress) -> Any:
            for rec in read_feed(path, group_lines=1000):
                progress.update()
                yield rec

        try:
            run = run_backtest(counted(), rs, store=store, limits=limits,
                               exam_outcomes=labels if feedback else None, label=name,
                               learner=learner, state_config=settings.state_config())  # fmt: skip
        except FeedError as exc:
            raise UsageError(str(exc)) from None
        finally:
            progress.close()
            if args.store == "redis":
                store.close()
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


def cmd_rules(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.feature_catalog import FEATURE_DOCS
    from parcel_stream.rules import (
        DEFAULT_RULESET_PATH,
        RuleSetError,
        default_ruleset,
        load_ruleset,
    )

    if args.action == "default":
        print(DEFAULT_RULESET_PATH.read_text(encoding="utf-8"), end="")
        return 0
    if args.action == "features":
        for name, doc in FEATURE_DOCS.items():
            print(f"{name:<26} {doc}")
        return 0
    if args.action == "validate":
        if not args.files:
            raise UsageError("rules validate needs one or more FILE arguments")
        failed = 0
        for path in args.files:
            try:
                rs = load_ruleset(path)
            except RuleSetError as exc:
                print(f"invalid: {exc}", file=sys.stderr)
                failed += 1
                continue
            active = int(rs.active(_now_ms()).sum())
            print(
                f"ok: {path}: version {rs.version}, {len(rs.rules)} rules ({active} in effect now)"
            )
        return 1 if failed else 0
    # explain
    if len(args.files) != 1:
        raise UsageError("rules explain needs one parcel JSON file (or - for stdin)")
    try:
        rs = load_ruleset(args.rules) if args.rules else default_ruleset(settings)
    except RuleSetError as exc:
        raise UsageError(str(exc)) from None
    print(explain_parcel(args.files[0], rs, args))
    return 0


def _now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def explain_parcel(path: str, rs: Any, args: argparse.Namespace) -> str:
    import numpy as np

    from parcel_stream.explain import evaluate_parcel, feature_values, render
    from parcel_stream.features import ReputationView, build_features, index_shippers
    from parcel_stream.parse import parse_one

    raw = sys.stdin.buffer.read() if path == "-" else _read(path)
    parsed = parse_one(raw, path, _now_ms())
    from parcel_stream.model import Manifest

    if not isinstance(parsed, Manifest):
        raise UsageError(
            f"{path}: not a valid manifest: {parsed.reason} at {parsed.path}: {parsed.detail}"
        )
    now = args.at if args.at is not None else _now_ms()
    view = ReputationView(
        seen=np.array([float(args.shipper_seen)]),
        holds=np.array([float(args.shipper_holds)]),
        value_usd=np.zeros(1),
        first_seen_ms=np.array(
            [float(now - args.shipper_age_days * 86_400_000) if args.shipper_age_days >= 0 else 0.0]
        ),
    )
    feats = build_features([parsed], index_shippers([parsed]), view, rs, now)
    return render(evaluate_parcel(feats, 0, rs, now), rs, feature_values(feats, 0))


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None


def _redis_unreachable(exc: BaseException) -> UsageError:
    return UsageError(
        f"cannot reach Redis at PARCEL_REDIS_URL ({type(exc).__name__}); is it running?"
    )


def cmd_reputation(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from redis.exceptions import RedisError

    from parcel_stream.adapters.redis_store import RedisReputationStore
    from parcel_stream.reputation import decay_add

    kind = "seller" if args.seller else "shipper"

    async def show() -> int:
        store = RedisReputationStore.from_settings(settings, socket_timeout_s=3.0)
        try:
            get = store.seller if args.seller else store.shipper
            st = await get(args.entity)
            key = store.seller_key(args.entity) if args.seller else store.shipper_key(args.entity)
            ttl = await store.ttl(key)
        except (RedisError, OSError) as exc:
            raise _redis_unreachable(exc) from None
        finally:
            await store.close()
        if st is None:
            print(f"{kind} {args.entity}: no state (never seen, or expired)")
            return 1
        # the recent-weighted counts as of now (decayed, nothing added)
        counts = (st.recent_seen, st.recent_holds, st.recent_exams, st.recent_violations)
        at = max(float(_now_ms()), st.recent_t_ms)
        _t, recent = decay_add(st.recent_t_ms, counts, at, (0.0,) * 4, settings.half_life_ms)
        doc: dict[str, Any] = {
            f"{kind}_id": args.entity,
            "parcels_seen": st.seen,
            "declared_value_usd": round(st.value_usd, 2),
            "holds": st.holds,
            "hold_ratio": round(st.holds / st.seen, 4) if st.seen else 0.0,
            "first_seen_ms": st.first_seen_ms,
            "last_seen_ms": st.last_seen_ms,
            "examinations": st.exams,
            "violations_found": st.violations,
            "recent_weighted": {
                "half_life_days": settings.reputation_half_life_days,
                "parcels": round(recent[0], 3),
                "holds": round(recent[1], 3),
                "examinations": round(recent[2], 3),
                "violations": round(recent[3], 3),
            },
            "expires_in_s": ttl,
        }
        if not args.seller:
            doc["parcels_per_day"] = {str(k): v for k, v in sorted(st.days.items())}
        print(json.dumps(doc, indent=2))
        return 0

    return asyncio.run(show())


def render_learner(state: Any, cfg: Any, rs: Any, title: str = "") -> str:
    """The learner state as a table: each rule's weight and learned adjustment."""
    weights = {r.code: float(rs.weights[i]) for i, r in enumerate(rs.rules)}
    points = state.points(cfg)
    lines = [
        f"learner {title}: version {state.version}, mode {cfg.mode}, "
        f"{state.examples} examination results learned ({state.violations} violations), "
        f"bias {state.bias:+.3f}{', ' + state.note if state.note else ''}",
        "",
        "| rule | rule-set weight | learned points | effective when on |",
        "|---|---:|---:|---:|",
    ]
    for code in sorted(set(weights) | set(points), key=lambda c: -abs(points.get(c, 0.0))):
        w, p = weights.get(code), points.get(code, 0.0)
        shown_w = f"{w:g}" if w is not None else "(not in rule set)"
        eff = f"{w + p:.1f}" if w is not None else ""
        lines.append(f"| {code} | {shown_w} | {p:+.2f} | {eff} |")
    return "\n".join(lines) + "\n"


def cmd_learner(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from redis.exceptions import RedisError

    from parcel_stream.adapters.redis_store import RedisReputationStore
    from parcel_stream.learner import encode_state, reset
    from parcel_stream.rules import RuleSetError, default_ruleset

    try:
        rs = default_ruleset(settings)
    except RuleSetError as exc:
        raise UsageError(str(exc)) from None
    cfg = settings.learner_config()

    async def run() -> int:
        store = RedisReputationStore.from_settings(settings, socket_timeout_s=3.0)
        try:
            state = await store.read_learner()
            if args.action == "reset":
                new = reset(state, _now_ms())
                if not await store.save_learner(state.version, new):
                    raise UsageError("the learner state changed meanwhile; run the reset again")
                print(f"learner reset: version {new.version}, all adjustments 0")
                return 0
            history = await store.learner_history(args.history) if args.history else []
        except (RedisError, OSError) as exc:
            raise _redis_unreachable(exc) from None
        finally:
            await store.close()
        if args.json:
            print(encode_state(state).decode())
            for old in history[1:]:
                print(encode_state(old).decode())
            return 0
        print(render_learner(state, cfg, rs), end="")
        if history:
            print("\nversion | learned from | violations | bias | largest adjustments")
            for old in history:
                top = sorted(old.points(cfg).items(), key=lambda kv: -abs(kv[1]))[:3]
                shown = ", ".join(f"{k} {v:+.1f}" for k, v in top) or old.note or "-"
                print(f"{old.version} | {old.examples} | {old.violations} | {old.bias:+.3f} | "
                      f"{shown}")  # fmt: skip
        return 0

    return asyncio.run(run())


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.contracts import CONTRACTS, json_schema

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, kind in CONTRACTS.items():
        text = json.dumps(json_schema(kind), indent=2, sort_keys=True) + "\n"
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="parcel-stream",
        description="Risk-score e-commerce parcel manifests as they stream through Kafka. "
        "Configuration comes from PARCEL_* environment variables (see docs/operations.md).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    w = sub.add_parser("worker", help="run the scoring worker (Faust) until stopped")
    w.set_defaults(func=cmd_worker)

    d = sub.add_parser("dev", help="start/stop the embedded broker and redis-server")
    d.add_argument("action", choices=["up", "down", "status", "env"])
    d.add_argument("--state-dir", default=".parcel-stream/dev", help="pid files and logs")
    d.set_defaults(func=cmd_dev)

    demo = sub.add_parser("demo", help="run the whole pipeline on a synthetic feed and stop")
    demo.add_argument("--parcels", type=_positive_int, default=20_000)
    demo.add_argument("--batch-size", type=_positive_int, default=500, help="parcels per record")
    demo.add_argument("--single-every", type=int, default=10, help="every Nth parcel alone")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=cmd_demo)

    g = sub.add_parser("generate", help="write a seeded synthetic feed as NDJSON")
    g.add_argument("--parcels", type=_positive_int, default=10_000)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--out", default="-", help="file, or - for stdout")
    g.add_argument("--labels", help="also write ground-truth labels (NDJSON) to this file")
    g.add_argument("--shippers", type=_positive_int, default=2000, help="distinct shippers")
    g.add_argument("--days", type=float, default=1.0, help="time span of the feed in days")
    g.add_argument(
        "--format",
        choices=["manifests", "feed"],
        default="manifests",
        help="one manifest per line, or feed records (replayable at the generated pace)",
    )
    g.set_defaults(func=cmd_generate)

    pr = sub.add_parser("produce", help="send an NDJSON feed file to the manifests topic")
    pr.add_argument("file")
    pr.add_argument("--batch-size", type=_positive_int, default=1, help="parcels per record")
    pr.set_defaults(func=cmd_produce)

    rec = sub.add_parser(
        "record", help="copy topic records (an offset or time range) into a feed file"
    )
    rec.add_argument("topics", nargs="*", help="topics to record (default: the manifests topic)")
    rec.add_argument("--out", required=True, help="feed file (.ndjson, or .ndjson.gz)")
    rec.add_argument("--from-offset", type=int, help="first offset per partition")
    rec.add_argument("--to-offset", type=int, help="last offset per partition (inclusive)")
    rec.add_argument("--since", type=_time_ms, help="Unix ms or ISO 8601; earlier records skipped")
    rec.add_argument("--until", type=_time_ms, help="Unix ms or ISO 8601; later records skipped")
    rec.add_argument("--follow", action="store_true", help="keep recording until Ctrl-C")
    rec.set_defaults(func=cmd_record)

    rp = sub.add_parser("replay", help="send a feed file to the manifests topic at any pace")
    rp.add_argument("file", help="feed file written by `record`, or a manifests NDJSON file")
    rp.add_argument("--topic", help="target topic (default: the manifests topic)")
    rp.add_argument(
        "--speed", type=_speed, default=0.0, help="max (default), 1 = recorded pace, N = N× faster"
    )
    rp.add_argument(
        "--as",
        dest="mode",
        choices=["recorded", "single", "batch"],
        default="recorded",
        help="send records as recorded, one parcel per record, or as NDJSON batch records",
    )
    rp.add_argument("--batch-size", type=_positive_int, default=1000, help="parcels per batch")
    rp.add_argument("--keep-partitions", action="store_true", help="send to recorded partitions")
    rp.set_defaults(func=cmd_replay)

    bt = sub.add_parser(
        "backtest", help="score a feed offline with the worker's code; report against labels"
    )
    bt.add_argument("feed", help="feed file (record/generate --format feed) or manifests NDJSON")
    bt.add_argument("--labels", help="ground truth: NDJSON lines {parcel_id, label}")
    bt.add_argument("--rules", help="rule-set file (TOML/JSON) for the main run")
    bt.add_argument("--compare", help="a second rule-set file, reported side by side")
    bt.add_argument(
        "--capacity-pct", type=_percent, default=2.0, help="examination capacity, %% of parcels"
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
    bt.set_defaults(func=cmd_backtest)

    ru = sub.add_parser("rules", help="validate, explain and list rule sets and features")
    ru.add_argument(
        "action",
        choices=["validate", "explain", "features", "default"],
        help="validate FILE...; explain PARCEL.json; features: list them; "
        "default: print the built-in rule set",
    )
    ru.add_argument("files", nargs="*", help="rule-set files (validate) or a parcel JSON (explain)")
    ru.add_argument(
        "--rules", help="rule-set file for explain (default: PARCEL_RULES_FILE or built-in)"
    )
    ru.add_argument(
        "--shipper-seen", type=int, default=0, help="explain: the shipper's past parcels"
    )
    ru.add_argument(
        "--shipper-holds", type=int, default=0, help="explain: the shipper's past holds"
    )
    ru.add_argument(
        "--shipper-age-days",
        type=float,
        default=-1,
        help="explain: days since first seen (-1 = never)",
    )
    ru.add_argument("--at", type=_time_ms, help="explain: decision time (default now)")
    ru.set_defaults(func=cmd_rules)

    rep = sub.add_parser("reputation", help="show a shipper's or seller's state (Redis)")
    rep.add_argument("action", choices=["show"])
    rep.add_argument("entity", metavar="ID", help="shipper id (or seller id@marketplace)")
    rep.add_argument("--seller", action="store_true", help="ID is a seller: id@marketplace")
    rep.set_defaults(func=cmd_reputation)

    le = sub.add_parser("learner", help="show or reset the adaptive weights (Redis)")
    le.add_argument("action", choices=["show", "reset"])
    le.add_argument("--history", type=_positive_int, default=0, help="show: last N versions")
    le.add_argument("--json", action="store_true", help="show: the raw state(s) as JSON lines")
    le.set_defaults(func=cmd_learner)

    s = sub.add_parser("schemas", help="write the JSON Schemas generated from the code")
    s.add_argument("dir", nargs="?", default="schemas")
    s.set_defaults(func=cmd_schemas)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from parcel_stream.rules import RuleSetError

    try:
        settings = Settings.from_env()
        unknown = Settings.unknown_variables()
        if unknown:
            print(
                f"parcel-stream: warning: ignoring {', '.join(unknown)}: not a setting "
                "(misspelt? docs/operations.md, Configuration, lists them)",
                file=sys.stderr,
            )
        return int(args.func(args, settings))
    except (ConfigError, UsageError, RuleSetError) as exc:
        print(f"parcel-stream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("parcel-stream: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from parcel_stream.adapters.devstack import DevStackError
        from parcel_stream.adapters.kafka_io import KafkaUnreachable

        if isinstance(exc, DevStackError):
            print(f"parcel-stream: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, KafkaUnreachable):
            print(
                f"parcel-stream: {exc}; start it with `parcel-stream dev up` "
                "or set PARCEL_KAFKA_BOOTSTRAP",
                file=sys.stderr,
            )
            return 2  # as for an unreachable Redis: the setting or the stack needs fixing
        raise


if __name__ == "__main__":
    sys.exit(main())
