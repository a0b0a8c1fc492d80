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
