"""`parcel-stream learn`: a warm start. The learned model is built from a labelled history
(past manifests and their outcomes, in time order, each outcome known after a delay, so
point-in-time) and stored where the workers read it: the model's weights as a new learner
state version, each learned key's counts (``docs/learning.md``)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

import msgspec

from parcel_stream.cli.common import now_ms
from parcel_stream.cli.errors import UsageError, redis_unreachable
from parcel_stream.cli.protocol_cmds import duration_ms, period_ms, rules_and_feed
from parcel_stream.settings import Settings

if TYPE_CHECKING:
    from parcel_stream.cli.common import Subcommands


def cmd_learn(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from redis.exceptions import RedisError

    from parcel_stream.cli.analyst_cmds import _load_labels
    from parcel_stream.protocol import Feedback, ProtocolConfig, run_protocol
    from parcel_stream.risk import RiskState, key_text

    labels = _load_labels(args.labels)
    if not labels:
        raise UsageError(f"{args.labels}: no labels; one line per outcome: "
                         '{"parcel_id": ..., "label": null or a violation}')  # fmt: skip
    rs, feed = rules_and_feed(args, settings)
    cfg = settings.risk_config()
    feedback: Feedback = "labelled" if args.examined_only else "all"
    run = run_protocol(feed, rs, labels, ProtocolConfig(
        feedback=feedback, outcome_delay_ms=args.outcome_delay, period_ms=args.period,
        exploration=0.0, half_life_ms=cfg.half_life_ms, prior=cfg.prior,
        learning_rate=cfg.learning_rate, label="warm start"), learn_rest=True)  # fmt: skip
    assert run.model is not None and run.table is not None
    unknown = len(set(labels) - set(run.parcel_ids))
    if unknown == len(labels):
        raise UsageError(f"{args.labels}: none of its {len(labels):,} parcel ids is in "
                         f"{args.feed}: are they the outcomes of this history?")  # fmt: skip
    if unknown:
        print(f"warning: {unknown} labelled parcel ids are not in the feed", file=sys.stderr)
    table = run.table
    state = RiskState(run.model.theta.tolist(), table.total[0], table.total[1],
                      int(table.total[2]), run.outcomes, table.score_mean)  # fmt: skip
    rows = {k: list(v) for k, v in table.counts.items() if v[0] >= args.min_examinations}
    print(f"learned from {run.outcomes:,} outcomes of {len(run.parcel_ids):,} parcels "
          f"({'labelled parcels only' if args.examined_only else 'unlabelled = clean'}): "
          f"{len(rows):,} keys with at least {args.min_examinations:g} examinations "
          f"(of {len(table.counts):,}); the strongest, as of the end of the history:")  # fmt: skip
    latest = float(table.total[2])
    for key, rate, exams in table.strongest(args.top, latest):
        print(f"  {key_text(key)}: {rate:.0%} violations in {exams:,.0f} examinations")
    if args.dry_run:
        print("dry run: nothing stored")
        return 0

    async def store_it() -> int:
        from parcel_stream.adapters.redis_store import RedisReputationStore

        store = RedisReputationStore.from_settings(settings, socket_timeout_s=10.0)
        try:
            stored = await store.risk_size()
            if stored and not (args.replace or args.add):
                raise UsageError(
                    f"{stored:,} learned keys are stored already: --replace starts them over "
                    "from this history, --add adds this history's counts to them"
                )
            if args.replace:
                await store.clear_risk()
            await store.write_risk(rows, table.names)
            current = await store.read_learner()
            new = msgspec.structs.replace(
                current, version=current.version + 1, updated_ms=now_ms(), risk=state,
                note=f"warm start from {run.outcomes} outcomes",
            )  # fmt: skip
            if not await store.save_learner(current.version, new):
                raise UsageError("the learner state changed meanwhile; run learn again")
        except (RedisError, OSError) as exc:
            raise redis_unreachable(exc) from None
        finally:
            await store.close()
        back = f"parcel-stream learner rollback --version {current.version}"
        print(f"stored: {len(rows):,} learned keys and learner state version {new.version} "
              f"(undo the weights with `{back}`)")  # fmt: skip
        return 0

    return asyncio.run(store_it())


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0, e.g. 0.5")
    return value


def add_learn(sub: Subcommands) -> None:
    le = sub.add_parser(
        "learn",
        help="warm start: build the learned risk model from a labelled history and store it",
        description=__doc__,
    )
    le.add_argument("feed", help="past manifests (NDJSON or a recorded feed), in time order")
    le.add_argument("--labels", required=True,
                    help='outcomes: NDJSON {"parcel_id": ..., "label": null | "..."}')  # fmt: skip
    le.add_argument("--examined-only", action="store_true",
                    help="only the labelled parcels have outcomes (past examinations); by "
                    "default a parcel missing from the labels counts as clean")  # fmt: skip
    le.add_argument("--outcome-delay", type=duration_ms, default=86_400_000,
                    help="when an outcome was known after the manifest time (1d)")  # fmt: skip
    le.add_argument("--period", type=period_ms, default=86_400_000,
                    help="periods of manifest time to replay it in (default 1d)")  # fmt: skip
    le.add_argument("--min-examinations", type=non_negative, default=0.5,
                    help="store keys with at least this many (decayed) examinations "
                    "(default 0.5)")  # fmt: skip
    le.add_argument("--rules", help="rule-set file (default: PARCEL_RULES_FILE or built-in)")
    le.add_argument("--top", type=int, default=10, help="strongest keys shown (default 10)")
    le.add_argument("--dry-run", action="store_true", help="learn and report; store nothing")
    how = le.add_mutually_exclusive_group()
    how.add_argument("--replace", action="store_true",
                     help="when learned keys are stored already: delete them first")  # fmt: skip
    how.add_argument("--add", action="store_true",
                     help="when learned keys are stored already: add to their counts (another "
                     "history, not the same one again)")  # fmt: skip
    le.set_defaults(func=cmd_learn)
