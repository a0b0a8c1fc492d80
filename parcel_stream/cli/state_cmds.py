"""Looking into the live state in Redis: reputation (shipper, seller) and learner."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from parcel_stream.cli.common import now_ms, positive_int
from parcel_stream.cli.errors import UsageError, redis_unreachable
from parcel_stream.settings import Settings

if TYPE_CHECKING:
    from parcel_stream.cli.common import Subcommands


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
            raise redis_unreachable(exc) from None
        finally:
            await store.close()
        if st is None:
            print(f"{kind} {args.entity}: no state (never seen, or expired)")
            return 1
        # the recent-weighted counts as of now (decayed, nothing added)
        counts = (st.recent_seen, st.recent_holds, st.recent_exams, st.recent_violations)
        at = max(float(now_ms()), st.recent_t_ms)
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
    head = f"learner {title}" if title else "rule weights (PARCEL_LEARNER_MODE)"
    lines = [
        f"{head}: version {state.version}, mode {cfg.mode}, "
        f"{state.examples} examination results learned ({state.violations} violations), "
        f"bias {state.bias:+.3f}{', ' + state.note if state.note else ''}",
        "",
        "| rule | rule-set weight | learned points | effective when on |",
        "|---|---:|---:|---:|",
    ]
    for code in sorted(set(weights) | set(points), key=lambda c: (-abs(points.get(c, 0.0)), c)):
        w, p = weights.get(code), points.get(code, 0.0)
        shown_w = f"{w:g}" if w is not None else "(not in rule set)"
        eff = f"{w + p:.1f}" if w is not None else ""
        lines.append(f"| {code} | {shown_w} | {p:+.2f} | {eff} |")
    return "\n".join(lines) + "\n"


def render_risk(
    state: Any, cfg: Any, rows: dict[int, list[float]], names: dict[int, str], top: int
) -> str:
    """The learned risk model: its weights per feature and its strongest learned keys."""
    from parcel_stream.risk import FEATURE_NAMES, RiskState, key_text

    risk = state.risk or RiskState()
    theta = risk.model(cfg).theta
    table = risk.table(rows, cfg)
    table.names = names
    now = float(now_ms())
    lines = [
        f"risk model: mode {cfg.mode}, {risk.trained:,} examination results learned, "
        f"global violation rate {table.global_rate(now):.1%} "
        f"({risk.exams:,.1f} weighted examinations, decayed); PARCEL_RISK_MODEL sets the "
        "mode. Rates and examinations below are as of now: decayed to today",
        "",
        "| feature | weight |",
        "|---|---:|",
        *(f"| {n} | {w:+.3f} |" for n, w in zip(FEATURE_NAMES, theta.tolist(), strict=True)),
    ]
    strongest = table.strongest(top, now)
    lines += [
        "",
        f"strongest learned keys ({len(rows):,} keys stored; at least 5 examinations):",
        "",
        "| key | in words | violation rate | examinations |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {k} | {key_text(k)} | {r:.1%} | {n:,.1f} |" for k, r, n in strongest]
    if not strongest:
        lines.append("| (none yet) | | | |")
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
                new = reset(state, now_ms())
                if not await store.save_learner(state.version, new):
                    raise UsageError("the learner state changed meanwhile; run the reset again")
                print(f"learner reset: version {new.version}, all adjustments 0")
                return 0
            if args.action == "rollback":
                return await rollback(store, state, args.version)
            history = await store.learner_history(args.history) if args.history else []
            rows, names = await store.scan_risk() if state.risk is not None else ({}, {})
        except (RedisError, OSError) as exc:
            raise redis_unreachable(exc) from None
        finally:
            await store.close()
        if args.json:
            print(encode_state(state).decode())
            for old in history[1:]:
                print(encode_state(old).decode())
            return 0
        print(render_learner(state, cfg, rs), end="")
        if state.risk is not None:
            print()
            print(render_risk(state, settings.risk_config(), rows, names, args.top), end="")
        if history:
            print("\n| version | rule weights learned from | violations | bias | "
                  "largest adjustments | risk model learned from | note |")  # fmt: skip
            print("|---:|---:|---:|---:|---|---:|---|")
            for old in history:
                top = sorted(old.points(cfg).items(), key=lambda kv: -abs(kv[1]))[:3]
                shown = ", ".join(f"{k} {v:+.1f}" for k, v in top) or "-"
                risk = f"{old.risk.trained:,}" if old.risk is not None else "-"
                print(f"| {old.version} | {old.examples} | {old.violations} | {old.bias:+.3f} | "
                      f"{shown} | {risk} | {old.note or ''} |")  # fmt: skip
        return 0

    return asyncio.run(run())


async def rollback(store: Any, state: Any, version: int | None) -> int:
    """Store an earlier learner state (rule weights and risk model) again, as a new
    version, so the rollback is itself on record. The per-key counts stay: they are
    examination results, not a model."""
    import msgspec

    if version is None:
        raise UsageError("learner rollback needs --version N (see learner show --history 20)")
    from parcel_stream.learner import LearnerState

    history = await store.learner_history(store.learner_keep)
    old = next((h for h in history if h.version == version), None)
    if version == 0:  # before anything was learned
        old = LearnerState()
    if old is None:
        kept = ", ".join(str(h.version) for h in history[:10]) or "none"
        raise UsageError(f"version {version} is not in the learner history (latest: {kept})")
    new = msgspec.structs.replace(old, version=state.version + 1, updated_ms=now_ms(),
                                  note=f"rollback to {version}")  # fmt: skip
    if not await store.save_learner(state.version, new):
        raise UsageError("the learner state changed meanwhile; run the rollback again")
    print(f"learner rolled back to version {version}: now version {new.version}")
    return 0


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0, e.g. 41")
    return value


def add_reputation(sub: Subcommands) -> None:
    rep = sub.add_parser("reputation", help="show a shipper's or seller's state (Redis)")
    rep.add_argument("action", choices=["show"])
    rep.add_argument("entity", metavar="ID", help="shipper id (or seller id@marketplace)")
    rep.add_argument("--seller", action="store_true", help="ID is a seller: id@marketplace")
    rep.set_defaults(func=cmd_reputation)


def add_learner(sub: Subcommands) -> None:
    le = sub.add_parser(
        "learner", help="show, reset or roll back the learned weights and risk model (Redis)"
    )
    le.add_argument("action", choices=["show", "reset", "rollback"])
    le.add_argument("--history", type=positive_int, default=0, help="show: last N versions")
    le.add_argument("--top", type=positive_int, default=20,
                    help="show: the strongest learned keys listed (default 20)")  # fmt: skip
    le.add_argument("--version", type=non_negative_int,
                    help="rollback: the version to restore (0: nothing learned)")  # fmt: skip
    le.add_argument("--json", action="store_true", help="show: the raw state(s) as JSON lines")
    le.set_defaults(func=cmd_learner)
