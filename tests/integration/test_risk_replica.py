"""The worker's copy of the learned counts reads exactly what Redis holds, after every kind
of change: exam results, warm starts, pruning, clearing, a trimmed change log, and above
its size limit (real redis-server and Redis Cluster)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from parcel_stream.adapters.devcluster import ClusterInfo
from parcel_stream.adapters.redis_cluster import RedisClusterStore
from parcel_stream.adapters.redis_store import BlockingRedisStore, RedisReputationStore
from parcel_stream.reputation import ExamDelta
from parcel_stream.risk import RiskRef
from parcel_stream.settings import Settings

AT = 1_790_000_000_000


@pytest.fixture(params=["redis", "cluster"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[BlockingRedisStore, ...]]:
    """Three stores on the same keys: one reading from a copy, one reading Redis each
    time, one whose copy may hold only 10 keys per shard."""
    prefix = f"r{uuid.uuid4().hex[:6]}"
    if request.param == "cluster":
        info: ClusterInfo = request.getfixturevalue("cluster")

        def make(keys: int) -> RedisReputationStore:
            return RedisClusterStore(info.url, prefix=prefix, risk_replica_keys=keys)
    else:
        url = request.getfixturevalue("settings").redis_url

        def make(keys: int) -> RedisReputationStore:
            return RedisReputationStore(url, prefix=prefix, risk_replica_keys=keys)

    stores = tuple(BlockingRedisStore("", store=make(k)) for k in (1_000_000, 0, 10))
    try:
        yield stores
    finally:
        for s in stores:
            s.close()


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def test_the_copy_reads_what_redis_holds_after_every_change(
    pair: tuple[BlockingRedisStore, ...], settings: Settings
) -> None:
    copy, direct, small = pair
    rng = np.random.default_rng(3)
    universe = rng.integers(1, 2**63, 400, dtype=np.int64).astype(np.uint64)

    def check() -> None:
        asked = rng.choice(universe, 150)
        want = direct.read_risk(asked)
        assert same(copy.read_risk(asked), want) and same(small.read_risk(asked), want)

    check()  # nothing stored yet
    exam, was_big = 0, False
    for step in range(40):
        if step == 5:  # a warm start of 300 keys
            keys = universe[:300].tolist()
            copy.write_risk({k: [float(k % 7) + 1, 1.0, float(AT)] for k in keys},
                            {k: f"k{k}" for k in keys[:10]})  # fmt: skip
        elif step == 20:  # pruning drops the rare keys
            assert copy.prune_risk(AT + 10 * 180 * 86_400_000) > 0
        elif step == 30:
            copy.clear_risk()
        else:  # a few exam results on random keys
            deltas = []
            for _ in range(3):
                exam += 1
                ids = rng.choice(universe, 25, replace=False).tolist()
                ref = RiskRef([""] * len(ids), [0.0], 0.5, ids)
                deltas.append(ExamDelta(f"E{exam}", f"P{exam}", "S1", "A1", bool(exam % 3),
                                        AT + exam * 1000, risk=ref, risk_weight=2.0))  # fmt: skip
            assert all(direct.apply_exams(deltas) or [False])
        check()
        was_big |= any(r.too_big for r in small._store._replicas.values())
    assert not copy._store._replicas[0].too_big
    assert was_big  # the small copy read from Redis once over its limit


def test_a_trimmed_change_log_loads_the_copy_again(settings: Settings) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}"
    copy = BlockingRedisStore(settings.redis_url, prefix=prefix)
    direct = BlockingRedisStore("", store=RedisReputationStore(settings.redis_url, prefix=prefix,
                                                               risk_replica_keys=0))  # fmt: skip
    client = redis.Redis.from_url(settings.redis_url)
    try:
        ids = np.arange(1, 101, dtype=np.uint64)
        copy.write_risk({int(k): [3.0, 1.0, float(AT)] for k in ids}, {})
        assert copy.read_risk(ids)[:, 0].tolist() == [3.0] * 100
        direct.write_risk({int(k): [9.0, 2.0, float(AT)] for k in ids[:40]}, {})
        client.xtrim(copy._store.risk_log(0), maxlen=0)  # the change is gone from the log
        assert same(copy.read_risk(ids), direct.read_risk(ids))
        assert copy.read_risk(ids)[:40, 0].tolist() == [9.0] * 40
    finally:
        copy.close()
        direct.close()
