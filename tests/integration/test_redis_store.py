"""The Redis store against its in-memory twin: same decisions, same state, same refusals."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import numpy as np
import pytest

from parcel_stream.adapters.devcluster import ClusterInfo
from parcel_stream.adapters.redis_cluster import RedisClusterStore
from parcel_stream.adapters.redis_store import BlockingRedisStore
from parcel_stream.exams import apply_exam_batch, trace
from parcel_stream.features import Combos
from parcel_stream.learner import LearnerConfig
from parcel_stream.model import ExamResult
from parcel_stream.parse import Limits
from parcel_stream.pipeline import (
    BatchResult,
    StateConfig,
    prepare,
    read_batch,
    score_prepared,
)
from parcel_stream.reputation import DAY_MS, ExamDelta, InMemoryStore
from parcel_stream.rules import default_ruleset
from parcel_stream.sequence import StoredState
from parcel_stream.settings import Settings
from parcel_stream.state import StateStore
from parcel_stream.step import run_sync
from tests.unit.test_same_feed import decisions, feed

RS = default_ruleset(Settings())
HL = 2 * DAY_MS  # short, so the feed's days decay the counts a lot


def stored(store: StateStore, recs: list, now: int) -> StoredState:  # type: ignore[type-arg]
    prep = prepare(recs, Limits(), now, RS.split_min_usd)
    return read_batch(prep, store).stored


def same_state(a: StoredState, b: StoredState) -> None:
    for name in ("vals", "ver", "newest_day"):
        assert getattr(a.shippers, name).tolist() == getattr(b.shippers, name).tolist(), name
        assert getattr(a.sellers, name).tolist() == getattr(b.sellers, name).tolist(), name
    days_a = [a.shippers.days(j) for j in range(len(a.shippers.ver))]
    days_b = [b.shippers.days(j) for j in range(len(b.shippers.ver))]
    assert [{d: c for d, c in x.items() if c} for x in days_a] == [
        {d: c for d, c in x.items() if c} for x in days_b
    ]
    assert a.pairs.tolist() == b.pairs.tolist() and a.pair_ver.tolist() == b.pair_ver.tolist()
    assert a.address_count.tolist() == b.address_count.tolist()
    assert a.member.tolist() == b.member.tolist()
    assert np.allclose(a.address_rv, b.address_rv, rtol=1e-12)


def as_rows(u: list[Any]) -> list[Any]:
    """An apply script's update in the form earlier versions sent: a row a parcel, entity,
    pair, address and examinable parcel (now columns), no format mark."""
    u = list(u[:17])
    for j in (7, 8, 10, 11):
        u[j] = [list(row) for row in zip(*u[j], strict=True)]
    keys, sizes, members = u[9]
    ends = list(itertools.accumulate(sizes))
    u[9] = [[k, members[e - n : e]] for k, n, e in zip(keys, sizes, ends, strict=True)]
    return u


def redis_store(request: pytest.FixtureRequest, kind: str, prefix: str) -> BlockingRedisStore:
    """Single-node Redis (the test's own prefix) or the Redis Cluster."""
    if kind == "cluster":
        info: ClusterInfo = request.getfixturevalue("cluster")
        return BlockingRedisStore(
            "", store=RedisClusterStore(info.url, prefix=prefix, half_life_ms=HL)
        )
    settings: Settings = request.getfixturevalue("settings")
    return BlockingRedisStore(settings.redis_url, prefix=settings.redis_key_prefix + prefix,
                              half_life_ms=HL)  # fmt: skip


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_redis_store_matches_the_twin_with_repeats_exams_and_redelivery(
    request: pytest.FixtureRequest, kind: str
) -> None:
    records = feed(21, 2500)
    redis = redis_store(request, kind, f"t{uuid.uuid4().hex[:6]}")
    twin = InMemoryStore(half_life_ms=HL)
    config = StateConfig(half_life_ms=HL)
    on = LearnerConfig(mode="on")
    got: dict[str, list[tuple[object, ...]]] = {"redis": [], "twin": []}
    try:
        chunks = [records[i : i + 37] for i in range(0, len(records), 37)]
        for n, chunk in enumerate(chunks + chunks[-2:]):  # the last two redelivered
            now = max(r.timestamp_ms for r in chunk) + 1000
            results: list[BatchResult] = []
            for name, store in (("redis", redis), ("twin", twin)):
                res = run_sync(chunk, store, RS, Limits(), now, config=config)
                got[name] += decisions([v for _k, v in res.outputs.decisions])
                results.append(res)
            examined = [p for p, lane in zip(results[1].parcel_ids, results[1].lanes.tolist(),
                                             strict=True) if lane >= 1]  # fmt: skip
            exams = [ExamResult(f"E-{p}", p, "violation" if i % 3 == 0 else "clean", now)
                     for i, p in enumerate(examined)]  # fmt: skip
            for store in (redis, twin):
                deltas, _unknown = trace(exams, store.lookup_parcels(examined))
                apply_exam_batch(store, deltas, on, RS.hold_score, n)
        assert got["redis"] == got["twin"] and len(got["twin"]) > 2500
        assert any(d[6] for d in got["twin"]) and any(d[7] for d in got["twin"])
        assert redis.read_learner() == twin.read_learner()
        now = records[-1].timestamp_ms
        want = stored(twin, records, now)
        same_state(stored(redis, records, now), want)
        assert want.shippers.vals[:, 8].sum() > 0  # exams reached the state
        assert (want.shippers.ver > 1).any() and want.member.any()
    finally:
        redis.close()


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_stale_updates_are_refused(request: pytest.FixtureRequest, kind: str) -> None:
    """An update computed before another batch or an exam result moved the state is
    refused by both stores, and the batch step then scores again on the current state."""
    records = feed(5, 200, amend=False)
    for store in (redis_store(request, kind, f"s{uuid.uuid4().hex[:6]}"), InMemoryStore()):
        first, second = records[:10], records[10:20]
        run_sync(first, store, RS, Limits(), 1)
        stale = score_prepared(
            read_batch(prepare(second, Limits(), 2, RS.split_min_usd), store), RS, 2
        )
        run_sync(second, store, RS, Limits(), 2)  # another writer got there first
        assert store.apply(stale.update) is False
        # an exam result moves the shipper's version: the old read is refused too
        third = records[20:30]
        batch = read_batch(prepare(third, Limits(), 3, RS.split_min_usd), store)
        prep = batch.prep
        stale = score_prepared(batch, RS, 3)
        shipper = prep.shippers.ids[0]
        applied = store.apply_exams([ExamDelta("E-stale", "P?", shipper, "A?", True, 4)])
        assert applied == [True]
        assert store.apply(stale.update) is False
        assert run_sync(third, store, RS, Limits(), 3).parcels == len(stale.parcel_ids)
        assert Combos.of(prep.shippers).codes.size > 0
        if isinstance(store, BlockingRedisStore):
            store.close()


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_entities_kept_as_earlier_versions_did_are_read_examined_and_packed_in_place(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """Shippers and sellers stored by earlier versions (one text field per value) read as
    the packed layout does, take examination results the same way, and are packed in
    place the first time they are read; a batch prepared before an upgrade (its entity
    values as text fields) is still written."""
    import dataclasses

    import msgspec

    from parcel_stream.adapters.redis_lua import PACKED_PARTS
    from parcel_stream.adapters.redis_store import num_text
    from parcel_stream.reputation import ExamDelta
    from parcel_stream.sequence import ENTITY_FIELDS
    from tests.integration.test_store_contract import PART, VALS, index, update

    idx = index()
    now, old = redis_store(request, kind, "now"), redis_store(request, kind, "old")
    inner = old._store
    client = inner.client
    keys = [inner.shipper_key("S1"), inner.seller_key("L1@shop")]

    def run(coro: Any) -> Any:
        return old._loop.run_until_complete(coro)

    def as_before(key: str) -> None:  # rewrite a stored entity as earlier versions kept it
        got = run(client.hgetall(key))
        packed = b"".join(got.pop(name.encode()) for name in PACKED_PARTS)
        vals = np.frombuffer(packed, dtype="<f8").tolist()
        run(client.delete(key))
        run(client.hset(key, mapping={**got, **dict(zip(ENTITY_FIELDS, map(num_text, vals),
                                                        strict=True))}))  # fmt: skip

    def fields(key: str) -> set[bytes]:
        return set(run(client.hkeys(key)))

    try:
        for store in (now, old):
            assert store.apply(update())
        for key in keys:
            as_before(key)
            assert b"p0" not in fields(key) and b"seen" in fields(key)
        delta = ExamDelta("E1", "P1", "S1", "A1", True, 1_790_000_600_000, "L1@shop")
        for store in (now, old):  # the old layout's examined before it is read
            assert store.apply_exams([delta]) == [True]
        shipper = now._loop.run_until_complete(now._store.shipper("S1"))
        assert shipper is not None and shipper.recent_violations > 0.99
        # a tool reads either layout alike (packed now by the exam)
        assert run(inner.shipper("S1")) == shipper
        a, marks_a = now.read(idx, [PART], Combos.of(idx))
        b, marks_b = old.read(idx, [PART], Combos.of(idx))
        same_state(a, b)
        assert a.shippers.vals.tolist() == b.shippers.vals.tolist()
        assert a.sellers.vals.tolist() == b.sellers.vals.tolist() and b.sellers.ver.tolist() == [2]
        assert b.shippers.vals[0, 9] > 0.99 and marks_a == marks_b == {PART: 10}
        for key in keys:  # packed in place by the read
            assert fields(key) >= {p.encode() for p in PACKED_PARTS}
            assert not fields(key) & {f.encode() for f in ENTITY_FIELDS}
            # each part fits Redis's compact encoding of small hashes (64-byte values)
            assert run(client.object("encoding", key)) == b"listpack"
        # the next batch, prepared by an earlier version (entity values as text fields)
        nxt = update(expect_ver=2, wm=(10, 11), remembered="0123456789abcdef")
        nxt = dataclasses.replace(nxt, pairs=[])  # its version did not move: 1
        u = as_rows(msgspec.msgpack.decode(inner.apply_args(nxt, inner.prefix)[0]))
        u[7] = [[k, v, [num_text(x) for x in VALS], dn, dd] for k, v, _at, dn, dd in u[7]]
        if kind == "redis":
            args = [msgspec.msgpack.encode(u), inner.apply_args(nxt, inner.prefix)[1]]
            assert run(inner._apply(keys=[], args=args)) == 1
            assert now.apply(nxt)
            a, _ = now.read(idx, [PART], Combos.of(idx))
            b, _ = old.read(idx, [PART], Combos.of(idx))
            same_state(a, b)
            assert b.shippers.vals[0].tolist() == list(VALS)
    finally:
        now.close()
        old.close()


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_every_key_written_expires_and_entities_are_refreshed_once_a_day(
    request: pytest.FixtureRequest, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key a batch writes has a TTL. An entity's is set on its first write of the
    day, a day longer than the setting (so it lives at least that long after its last
    write), and not again that day: one EXPIRE an entity a day, not one a batch."""
    from tests.integration.test_store_contract import update

    store = redis_store(request, kind, f"t{uuid.uuid4().hex[:6]}")
    inner = store._store
    client = inner.client

    def run(coro: Any) -> Any:
        return store._loop.run_until_complete(coro)

    def ttls(keys: list[str]) -> list[int]:
        return [int(run(client.ttl(k))) for k in keys]

    entities = [inner.shipper_key("S1"), inner.seller_key("L1@shop")]
    full = inner.ttl_s + 86_400
    today = inner.today()
    try:
        assert store.apply(update()) is True
        others = [inner.address_key("A1") + ":shippers", inner.pair_key("A1:S1"),
                  inner.parcel_key("P1"), inner.examinable_key("P1")]  # fmt: skip
        assert min(ttls(others)) > 0, ttls(others)
        assert all(full - 60 <= t <= full for t in ttls(entities)), ttls(entities)
        for key in entities:
            run(client.expire(key, 1000))
        # written again the same day: the version moves, the TTL is left
        assert store.apply(update(1, (10, 20), "0123456789abcdef")) is True
        assert run(client.hget(entities[0], "v")) == b"2"
        if kind == "redis":  # (a Redis Cluster's prepared shards refresh on every write)
            assert max(ttls(entities)) <= 1000
        # the next day's first write refreshes it
        monkeypatch.setattr(type(inner), "today", staticmethod(lambda: today + 1))
        assert store.apply(update(2, (20, 30), "0123456789abcdef")) is True
        assert all(full - 60 <= t <= full for t in ttls(entities)), ttls(entities)
    finally:
        store.close()
