"""Redis Cluster for real (3 masters, 3 replicas from Debian's redis-server): the keys
spread over every master; a batch left between its two phases is finished or released;
the worker killed at random moments and a master killed mid-stream lose no parcel."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from benchmarks.reliability.harness import (
    Worker,
    account,
    bound_metrics_port,
    check_reputation,
    collect,
    make_feed,
    metrics,
    pace,
    wait_alive,
)
from parcel_stream.adapters import devcluster
from parcel_stream.adapters.devcluster import ClusterInfo
from parcel_stream.adapters.redis_cluster import RedisClusterStore, shard_tags
from parcel_stream.adapters.redis_store import BlockingRedisStore
from parcel_stream.exams import apply_exam_batch, trace
from parcel_stream.learner import LearnerConfig
from parcel_stream.model import ExamResult
from parcel_stream.parse import Limits
from parcel_stream.pipeline import prepare, read_batch, score_prepared
from parcel_stream.reputation import InMemoryStore
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings
from parcel_stream.state import declared
from parcel_stream.step import run_sync
from tests.integration.test_redis_store import same_state, stored
from tests.unit.test_same_feed import feed

RS = default_ruleset(Settings())
TYPES = {"hash": "hash", "set": "set", "string": "string", "list": "list", "zset": "sorted set"}


def cluster_store(info: ClusterInfo, prefix: str) -> tuple[RedisClusterStore, BlockingRedisStore]:
    store = RedisClusterStore(info.url, prefix=prefix)
    return store, BlockingRedisStore("", store=store)


def keys_by_master(info: ClusterInfo, pattern: str) -> dict[int, list[str]]:
    out = {}
    for port in devcluster.masters_of(info):
        client = redis.Redis(port=port)
        out[port] = [k.decode() for k in client.scan_iter(match=pattern, count=1000)]
        client.close()
    return out


def test_keys_spread_over_every_master_and_each_is_declared(cluster: ClusterInfo) -> None:
    prefix = f"k{uuid.uuid4().hex[:6]}"
    _store, blocking = cluster_store(cluster, prefix)
    records = feed(7, 800)
    try:
        for i in range(0, len(records), 100):
            chunk = records[i : i + 100]
            res = run_sync(chunk, blocking, RS, Limits(), max(r.timestamp_ms for r in chunk))
            examined = [p for p, lane in zip(res.parcel_ids, res.lanes.tolist(), strict=True)
                        if lane >= 1]  # fmt: skip
            exams = [ExamResult(f"E-{p}", p, "violation", 1) for p in examined]
            deltas, _ = trace(exams, blocking.lookup_parcels(examined))
            apply_exam_batch(blocking, deltas, LearnerConfig(mode="on"), RS.hold_score, i)
    finally:
        blocking.close()
    found = keys_by_master(cluster, "{" + prefix + ".*")
    assert len(found) == 3 and all(len(keys) > 50 for keys in found.values()), {
        p: len(k) for p, k in found.items()
    }
    kinds = set()
    for port, keys in found.items():
        client = redis.Redis(port=port)
        for key in keys:
            tag = key[: key.index("}") + 1]
            assert tag in shard_tags(prefix, 16), key
            kind = declared(key, tag)
            assert kind is not None, key
            raw: bytes = client.type(key)  # type: ignore[assignment]
            assert TYPES[raw.decode()] == kind.redis_type, key
            kinds.add(kind.segment + kind.suffix)
        client.close()
    assert len(kinds) >= 10, kinds  # nearly every kind written
    assert "prep" not in kinds and "locks" not in kinds  # nothing left in flight


class Killed(Exception):
    """The worker died here."""


def _crash_on(store: RedisClusterStore, name: str, after: int) -> list[tuple[int, list[Any]]]:
    """Make the store die at its call number ``after + 1`` of the script ``name`` (one
    call per shard): the calls before it run, none after. Returns every call asked for."""
    real_eval = store._eval
    script = getattr(store, name)
    calls: list[tuple[int, list[Any]]] = []

    async def dying(s: Any, batch: list[tuple[int, list[Any]]]) -> list[Any]:
        if s is not script:
            return await real_eval(s, batch)
        room = max(0, after - len(calls))
        calls.extend(batch)
        done = await real_eval(s, batch[:room]) if room else []
        if len(done) < len(batch):
            raise Killed(name)
        return done

    store._eval = dying  # type: ignore[method-assign,assignment]
    return calls


@pytest.mark.parametrize("crash", ["before_commit", "during_commit", "during_prepare"])
def test_a_batch_left_between_its_phases_is_finished_or_released(
    cluster: ClusterInfo, crash: str
) -> None:
    """Killed after every shard prepared (or some committed): the next read of the
    partition commits the batch. Killed while preparing: it is released, and the dead
    worker's late prepare of it is refused."""
    prefix = f"x{uuid.uuid4().hex[:6]}"
    records = feed(3, 600, amend=False)
    first, second = records[: len(records) // 2], records[len(records) // 2 :]
    now = max(r.timestamp_ms for r in records)
    twin = InMemoryStore()
    run_sync(first, twin, RS, Limits(), now)
    dying, blocking = cluster_store(cluster, prefix)
    run_sync(first, blocking, RS, Limits(), now)
    batch = read_batch(prepare(second, Limits(), now, RS.split_min_usd), blocking)
    update = score_prepared(batch, RS, now).update
    assert len(dying.split(update)) > 3  # the batch spans shards
    if crash == "during_prepare":  # the home shard prepared, no other
        calls = _crash_on(dying, "_prepare", after=1)
    else:
        calls = _crash_on(dying, "_commit", after=0 if crash == "before_commit" else 2)
    with pytest.raises(Killed):
        blocking.apply(update)
    blocking._loop.run_until_complete(dying.client.aclose())

    fresh, after = cluster_store(cluster, prefix)
    try:
        stored(after, second, now)  # the next read of the partition resolves the batch
        if crash == "during_prepare":
            same_state(stored(after, records, now), stored(twin, records, now))  # released
            late = fresh._eval(fresh._prepare, [calls[1]])
            assert after._loop.run_until_complete(late) == [0]
            run_sync(second, after, RS, Limits(), now)
            run_sync(second, twin, RS, Limits(), now)
        else:
            assert twin.apply(update)  # committed: as if the batch had gone through
        same_state(stored(after, records, now), stored(twin, records, now))
        left = keys_by_master(cluster, "{" + prefix + ".*")
        in_flight = [k for keys in left.values() for k in keys
                     if ":locks" in k or ":prepdata:" in k]  # fmt: skip
        assert not in_flight, in_flight
    finally:
        after.close()


def cluster_settings(settings: Settings, info: ClusterInfo) -> Settings:
    return settings.replace(redis_url=info.url, redis_cluster=True)


def test_sigkill_at_random_moments_on_a_cluster_loses_nothing(
    settings: Settings, cluster: ClusterInfo, tmp_path: Path
) -> None:
    """The crash suite against the cluster: exact counts after three SIGKILLs."""
    rng = random.Random(11)
    s = cluster_settings(settings, cluster)
    feed_ = make_feed(8_000, seed=11)
    worker = Worker(s, tmp_path / "worker.log")
    sender = pace(s, feed_, 1500.0)
    try:
        for _ in range(3):
            worker.start()
            time.sleep(rng.uniform(2.0, 5.0))  # a random moment: the point of the test
            worker.kill()
        worker.start()
        sender.join()
        out = collect(s, feed_, timeout_s=180, progress=False)
        assert worker.alive()
    finally:
        worker.stop()
    acc = account(feed_, out)
    assert acc.missing == 0 and acc.unexpected == 0 and acc.conflicting_duplicates == 0, acc
    checked, mismatched = check_reputation(s, feed_, out)
    assert checked > 500 and mismatched == 0


def _worker_metric(log: Path, worker: Worker, name: str) -> Callable[[], float]:
    """A reader of the sum of one of the worker's metrics over its labels."""
    assert worker.proc is not None
    port = bound_metrics_port(worker.settings, worker.proc, log)

    def read() -> float:
        got = metrics(port)
        return sum(v for k, v in got.items() if k == name or k.startswith(name + "{"))

    return read


def test_a_master_killed_mid_stream_loses_no_parcel(settings: Settings, tmp_path: Path) -> None:
    """A master is SIGKILLed while the worker writes; its replica is promoted and the
    worker goes on. Every parcel is decided, and the state is exact unless the worker
    reported acknowledged writes lost in the failover (asynchronous replication)."""
    info = devcluster.up(tmp_path / "cluster", node_timeout_ms=1000)
    try:
        s = cluster_settings(settings, info)
        feed_ = make_feed(8_000, seed=13)
        log = tmp_path / "worker.log"
        worker = Worker(s, log)
        sender = pace(s, feed_, 1500.0)
        try:
            worker.start()
            lost = _worker_metric(log, worker, "parcel_stream_state_lost_total")
            scored = _worker_metric(log, worker, "parcel_stream_parcels_total")
            assert worker.proc is not None
            wait_alive(worker.proc, log, lambda: scored() > 1500, 120, "1,500 parcels scored")
            victim = devcluster.masters_of(info)[0]
            os.kill(info.pids[info.ports.index(victim)], signal.SIGKILL)
            live = [p for p in info.ports if p != victim]
            promoted = lambda: (len(devcluster.masters_of(info)) == 3  # noqa: E731
                                and all(devcluster.cluster_ok(p) for p in live))  # fmt: skip
            wait_alive(worker.proc, log, promoted, 60, "the replica promoted")
            sender.join()
            out = collect(s, feed_, timeout_s=180, progress=False)
            assert worker.alive()
            lost_records = lost()
        finally:
            worker.stop()
        acc = account(feed_, out)
        assert acc.missing == 0 and acc.unexpected == 0 and acc.conflicting_duplicates == 0, acc
        alive = s.replace(redis_url=f"redis://127.0.0.1:{live[0]}")  # the victim may be the first
        checked, mismatched = check_reputation(alive, feed_, out)
        assert checked > 500
        print(f"failover: {mismatched} of {checked} shippers off, {lost_records:g} records "
              "reported lost")  # fmt: skip
        assert mismatched == 0 or lost_records > 0, "state lost without the worker noticing"
    finally:
        devcluster.down(tmp_path / "cluster")
