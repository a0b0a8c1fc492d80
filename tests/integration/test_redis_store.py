import asyncio

import numpy as np

from parcel_stream.adapters.redis_store import RedisReputationStore
from parcel_stream.features import ShipperIndex
from parcel_stream.parse import InRecord, Limits
from parcel_stream.pipeline import prepare, score_prepared
from parcel_stream.reputation import InMemoryStore
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings
from tests.unit.samples import line

RS = default_ruleset(Settings())
NOW = 1_790_000_100_000


def records(offset: int) -> list[InRecord]:
    batch = b"\n".join(line(parcel_id=f"P{offset}-{i}") for i in range(4))
    return [InRecord(value=batch, topic="m", partition=2, offset=offset)]


async def step(store, recs):  # type: ignore[no-untyped-def]
    prep = prepare(recs, Limits(), NOW, RS.split_min_usd)
    view, marks = await store.read(prep.shippers, prep.partitions)
    result = score_prepared(prep, view, marks, RS, NOW)
    return result, await store.apply(result.update)


def test_redis_store_matches_in_memory_twin_and_is_idempotent(settings: Settings) -> None:
    async def run() -> None:
        store = RedisReputationStore(settings.redis_url, prefix=settings.redis_key_prefix)
        twin = InMemoryStore()
        try:
            for off in (0, 1, 2):
                r, ok = await step(store, records(off))
                assert ok
                twin_prep = prepare(records(off), Limits(), NOW)
                v, m = twin.read(twin_prep.shippers, twin_prep.partitions)
                assert twin.apply(score_prepared(twin_prep, v, m, RS, NOW).update)
            state = await store.shipper("SHP000001")
            assert state == twin.shippers["SHP000001"]
            assert state is not None and state.seen == 12
            # Redelivery of the last two batches after a "crash": nothing changes.
            for off in (1, 2):
                r, ok = await step(store, records(off))
                assert ok and r.update.shippers == []
            assert await store.shipper("SHP000001") == state
            # An update computed against old watermarks is refused.
            prep = prepare(records(3), Limits(), NOW)
            view, marks = await store.read(prep.shippers, prep.partitions)
            stale = score_prepared(prep, view, marks, RS, NOW)
            _, ok = await step(store, records(3))
            assert ok and not await store.apply(stale.update)
            after = await store.shipper("SHP000001")
            assert after is not None and after.seen == 16
            v, _ = await store.read(
                ShipperIndex(["SHP000001", "nobody"], np.zeros(0, np.int64)), []
            )
            assert v.seen.tolist() == [16.0, 0.0] and np.isclose(v.value_usd[0], 16 * 24.0)
        finally:
            await store.close()

    asyncio.run(run())


def test_address_and_pair_state_match_the_twin(settings: Settings) -> None:
    import orjson

    from parcel_stream.generate import FeedConfig, generate

    docs = [
        orjson.dumps(d)
        for d, _ in generate(FeedConfig(parcels=3000, seed=8, shippers=100, consignees=300))
    ]
    batches = [
        [InRecord(b"\n".join(docs[i : i + 250]), "m", 1, i // 250)]
        for i in range(0, len(docs), 250)
    ]

    async def run() -> None:
        store = RedisReputationStore(settings.redis_url, prefix=settings.redis_key_prefix + "x")
        twin = InMemoryStore()
        try:
            for recs in batches + batches[-3:]:  # the last three batches redelivered
                r, ok = await step(store, recs)
                assert ok
                prep = prepare(recs, Limits(), NOW, RS.split_min_usd)
                v, m = twin.read(prep.shippers, prep.partitions)
                assert twin.apply(score_prepared(prep, v, m, RS, NOW).update)
            prep = prepare([r for b in batches for r in b], Limits(), NOW, RS.split_min_usd)
            keys = prep.shippers
            got, _ = await store.read(keys, [])
            want, _ = twin.read(keys, [])
            assert got.seen.tolist() == want.seen.tolist()
            assert got.day_counts.tolist() == want.day_counts.tolist() and got.day_counts.sum() > 0
            assert np.allclose(got.pair_value_usd, want.pair_value_usd)
            assert got.pair_parcels.tolist() == want.pair_parcels.tolist()
            # HyperLogLog is approximate (about 1 %); small sets are exact in practice
            assert np.allclose(got.address_shippers, want.address_shippers, rtol=0.02, atol=0.5)
            assert max(want.address_shippers) >= 2
        finally:
            await store.close()

    asyncio.run(run())


def test_sellers_decay_exams_and_learner_match_the_twin(settings: Settings) -> None:
    """Shippers, sellers and addresses with recent-weighted counts, examination results
    and learner steps: the Redis scripts and the in-memory twin agree (the decayed counts
    to rounding), and redelivered batches and results change nothing."""
    import orjson

    from parcel_stream.adapters.redis_store import BlockingRedisStore
    from parcel_stream.exams import apply_exam_batch, trace
    from parcel_stream.generate import FeedConfig, generate
    from parcel_stream.learner import LearnerConfig
    from parcel_stream.model import ExamResult
    from parcel_stream.reputation import DAY_MS

    hl = 2 * DAY_MS  # short, so the feed's 6 days decay the counts a lot
    cfg = FeedConfig(parcels=4000, seed=12, shippers=150, duration_s=6 * 86_400.0)
    docs = [orjson.dumps(d) for d, _ in generate(cfg)]
    batches = [[InRecord(b"\n".join(docs[i : i + 400]), "m", 0, i // 400)]
               for i in range(0, len(docs), 400)]  # fmt: skip
    redis = BlockingRedisStore(settings.redis_url, prefix=settings.redis_key_prefix + "d",
                               half_life_ms=hl)  # fmt: skip
    twin = InMemoryStore(half_life_ms=hl)
    on = LearnerConfig(mode="on")
    try:
        for n, recs in enumerate(batches + batches[-2:]):  # the last two redelivered
            results = []
            for store in (redis, twin):
                prep = prepare(recs, Limits(), NOW, RS.split_min_usd)
                view, marks = store.read(prep.shippers, prep.partitions)
                res = score_prepared(prep, view, marks, RS, NOW)
                assert store.apply(res.update)
                results.append(res)
            assert results[0].scores.tolist() == results[1].scores.tolist()
            examined = [m.parcel_id for m, lane in zip(prep.parsed.manifests,
                        results[1].lanes.tolist(), strict=True) if lane >= 1]  # fmt: skip
            ts = max(m.manifest_ts_ms for m in prep.parsed.manifests)
            exams = [ExamResult(f"E-{p}", p, "violation" if i % 3 == 0 else "clean", ts)
                     for i, p in enumerate(examined)]  # fmt: skip
            for store in (redis, twin):
                deltas, unknown = trace(exams, store.lookup_parcels(examined))
                # redelivered: the lanes may differ now, parcels released first are unknown
                assert deltas and (not unknown or n >= len(batches))
                apply_exam_batch(store, deltas, on, RS.hold_score, n)
        assert redis.read_learner() == twin.read_learner()
        assert twin.read_learner().version == len(batches)  # redelivered results: no step
        prep = prepare([r for b in batches for r in b], Limits(), NOW, RS.split_min_usd)
        got, _ = redis.read(prep.shippers, [])
        want, _ = twin.read(prep.shippers, [])
        assert got.seen.tolist() == want.seen.tolist()
        for name in (
            "recent_seen",
            "recent_holds",
            "exams",
            "violations",
            "address_violations",
            "seller_seen",
            "seller_recent_seen",
            "seller_exams",
            "seller_violations",
        ):
            g, w = getattr(got, name), getattr(want, name)
            assert np.allclose(g, w, rtol=1e-9, atol=1e-12), name
        assert want.violations.sum() > 0 and want.seller_exams.sum() > 0
        # decayed: the recent count is well below the lifetime count after 6 days at hl=2
        assert want.recent_seen.sum() < 0.7 * want.seen.sum()
    finally:
        redis.close()
