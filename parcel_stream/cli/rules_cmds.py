"""The rule-set tool: rules validate, explain, features, default."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parcel_stream.cli.common import now_ms, time_ms
from parcel_stream.cli.errors import UsageError, redis_unreachable
from parcel_stream.settings import Settings

if TYPE_CHECKING:
    from parcel_stream.cli.common import Subcommands


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
            active = int(rs.active(now_ms()).sum())
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
    print(explain_parcel(args.files[0], rs, args, settings))
    return 0


def explain_parcel(
    path: str, rs: Any, args: argparse.Namespace, settings: Settings | None = None
) -> str:
    import numpy as np

    from parcel_stream.explain import evaluate_parcel, feature_values, render
    from parcel_stream.features import ReputationView, build_features, index_shippers
    from parcel_stream.parse import parse_one

    raw = sys.stdin.buffer.read() if path == "-" else _read(path)
    parsed = parse_one(raw, path, now_ms())
    from parcel_stream.model import Manifest

    if not isinstance(parsed, Manifest):
        raise UsageError(
            f"{path}: not a valid manifest: {parsed.reason} at {parsed.path}: {parsed.detail}"
        )
    now = args.at if args.at is not None else now_ms()
    view = ReputationView(
        seen=np.array([float(args.shipper_seen)]),
        holds=np.array([float(args.shipper_holds)]),
        value_usd=np.zeros(1),
        first_seen_ms=np.array(
            [float(now - args.shipper_age_days * 86_400_000) if args.shipper_age_days >= 0 else 0.0]
        ),
    )
    feats = build_features([parsed], index_shippers([parsed]), view, rs, now)
    results = evaluate_parcel(feats, 0, rs, now)
    text = render(results, rs, feature_values(feats, 0))
    if args.learned:
        score = min(max(sum(r.points for r in results), 0.0), 100.0)
        fired = [r.code for r in results if r.active and r.fired]
        text += learned_part(parsed, score, now, settings or Settings.from_env(), fired)
    return text


def learned_part(
    m: Any, score: float, now: int, settings: Settings, fired: list[str] | None = None
) -> str:
    """The learned model's part, from the learner state and the learned keys' counts in
    the store the settings name (``fired``: the codes of the rules that fired)."""
    import asyncio

    import numpy as np
    from redis.exceptions import RedisError

    from parcel_stream.adapters.redis_store import RedisReputationStore
    from parcel_stream.currency import USD_PER_UNIT
    from parcel_stream.explain import render_learned
    from parcel_stream.features import address_key
    from parcel_stream.risk import RiskState, parcel_keys

    cfg = settings.risk_config()

    async def read() -> str:
        store = RedisReputationStore.from_settings(settings, socket_timeout_s=3.0)
        try:
            state = (await store.read_learner()).risk or RiskState()
            address = address_key(m.consignee.address)
            keys = parcel_keys(m, address, m.declared_value * USD_PER_UNIT[m.currency],
                               fired or ())  # fmt: skip
            ids = keys.all_ids()
            got = await store.read_risk(np.array(ids, dtype=np.uint64))
            rows = {k: r.tolist() for k, r in zip(ids, got, strict=True) if not np.isnan(r[0])}
        except (RedisError, OSError) as exc:
            raise redis_unreachable(exc) from None
        finally:
            await store.close()
        return render_learned(m, score, state, rows, cfg, now, address, fired or ())

    return asyncio.run(read())


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None


def add_rules(sub: Subcommands) -> None:
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
    ru.add_argument("--at", type=time_ms, help="explain: decision time (default now)")
    ru.add_argument(
        "--learned",
        action="store_true",
        help="explain: add the learned model's probability, contributions and reasons, "
        "from the learner state and learned keys in Redis (PARCEL_REDIS_URL)",
    )
    ru.set_defaults(func=cmd_rules)
