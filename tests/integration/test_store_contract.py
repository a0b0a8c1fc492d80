"""One suite, every store: the in-memory twin and Redis serve the same contract
(``parcel_stream.state.StateStore``)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import msgspec
import numpy as np
import pytest

from parcel_stream.adapters.devcluster import ClusterInfo
from parcel_stream.adapters.redis_cluster import RedisClusterStore
from parcel_stream.adapters.redis_store import BlockingRedisStore
from parcel_stream.features import Combos, ShipperIndex
from parcel_stream.learner import LearnerState
from parcel_stream.outbox import Digest
from parcel_stream.reputation import (
    EntityWrite,
    ExamDelta,
    InMemoryStore,
    PairWrite,
    ParcelRef,
    ReputationUpdate,
)
from parcel_stream.risk import RiskRef
from parcel_stream.risk_keys import part_id
from parcel_stream.settings import Settings
from parcel_stream.state import StateStore, declared

PART = ("m", 3)
DIGEST = msgspec.msgpack.encode(Digest(10, 1, "v1", 0, [12.5], b"\x00", b"\x00", [0], {}))


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[StateStore]:
    if request.param == "memory":
        yield InMemoryStore()
        return
    prefix = f"c{uuid.uuid4().hex[:6]}"
    if request.param == "cluster":
        info: ClusterInfo = request.getfixturevalue("cluster")
        redis = BlockingRedisStore("", store=RedisClusterStore(info.url, prefix=prefix))
    else:
        settings: Settings = request.getfixturevalue("settings")
        redis = BlockingRedisStore(settings.redis_url, prefix=prefix)
    try:
        yield redis
    finally:
        redis.close()


def index() -> ShipperIndex:
    one = np.zeros(1, dtype=np.int64)
    return ShipperIndex(["S1", "S2"], one, ["A1"], one.copy(), ["A1:S1"], one.copy(),
                        sellers=["L1@shop"], parcel_seller=one.copy())  # fmt: skip


VALS = (3.0, 75.5, 1.0, 1_790_000_000_000.0, 1_790_000_500_000.0, 1_790_000_500_000.0, 2.75,
        0.9, 0.0, 0.0)  # fmt: skip


def update(
    expect_ver: int = 0, wm: tuple[int, int] = (-1, 10), remembered: str = ""
) -> ReputationUpdate:
    return ReputationUpdate(
        {PART: wm},
        shippers=[EntityWrite("S1", expect_ver, VALS, 20_717, ((20_716, 1), (20_717, 2)))],
        sellers=[EntityWrite("L1@shop", expect_ver, VALS)],
        addresses=[("A1", ["S1"])],
        pairs=[PairWrite("A1:S1", expect_ver, 1_790_000_000_000.0, 75.5, 3.0)],
        examinable=[("P1", ParcelRef("S1", "A1", "L1@shop", ("R1", "R2"), 61.5))],
        outbox=[(PART, 10, DIGEST)],
        parcels=[("P1", remembered, b"0123456789abcdef\x92\x01\x02")],
    )


def test_absent_state_reads_as_empty(store: StateStore) -> None:
    idx = index()
    state, marks = store.read(idx, [PART], Combos.of(idx))
    assert marks == {} and state.shippers.ver.tolist() == [0, 0]
    assert not state.shippers.vals.any() and not state.pairs.any() and not state.member.any()
    assert store.read_parcels(["P1"]) == {} and store.lookup_parcels(["P1"]) == {}
    assert store.read_outbox([(PART, 10)]) == {}


def test_an_update_is_read_back_as_written(store: StateStore) -> None:
    idx = index()
    assert store.apply(update())
    state, marks = store.read(idx, [PART], Combos.of(idx))
    assert marks == {PART: 10}
    assert state.shippers.vals[0].tolist() == list(VALS) and state.shippers.ver.tolist() == [1, 0]
    live_days = {d: c for d, c in state.shippers.days(0).items() if c}
    assert live_days == {20_716: 1, 20_717: 2} and state.shippers.newest_day.tolist()[0] == 20_717
    assert state.sellers.vals[0].tolist() == list(VALS) and state.sellers.ver.tolist() == [1]
    assert state.pairs[0].tolist() == [1_790_000_000_000.0, 75.5, 3.0]
    assert state.pair_ver.tolist() == [1] and state.member.tolist() == [True]
    assert state.address_count.tolist() == [1.0]
    assert store.read_parcels(["P1", "P2"]) == {"P1": b"0123456789abcdef\x92\x01\x02"}
    assert store.lookup_parcels(["P1"])["P1"] == ParcelRef(
        "S1", "A1", "L1@shop", ("R1", "R2"), 61.5
    )
    assert store.read_outbox([(PART, 10)]) == {(PART, 10): DIGEST}


@pytest.mark.parametrize("stale", ["watermark", "version", "remembered"])
def test_a_stale_update_is_refused_whole(store: StateStore, stale: str) -> None:
    assert store.apply(update())
    wrong = {
        "watermark": update(expect_ver=1, wm=(-1, 11), remembered="0123456789abcdef"),
        "version": update(expect_ver=0, wm=(10, 11), remembered="0123456789abcdef"),
        "remembered": update(expect_ver=1, wm=(10, 11), remembered=""),
    }[stale]
    assert store.apply(wrong) is False
    idx = index()
    state, marks = store.read(idx, [PART], Combos.of(idx))
    assert marks == {PART: 10} and state.shippers.ver.tolist() == [1, 0]  # nothing written
    right = update(expect_ver=1, wm=(10, 11), remembered="0123456789abcdef")
    assert store.apply(right)


def test_outbox_digests_go_once_acknowledged(store: StateStore) -> None:
    assert store.apply(update())
    assert store.apply(ReputationUpdate({}, prune={PART: 10}))
    assert store.read_outbox([(PART, 10)]) == {}


def test_exam_results_apply_once_move_versions_and_the_learner_is_compare_and_set(
    store: StateStore,
) -> None:
    assert store.apply(update())
    delta = ExamDelta("E1", "P1", "S1", "A1", True, 1_790_000_600_000, "L1@shop")
    assert store.apply_exams([delta, delta]) == [True, False]
    assert store.exams_seen(["E1", "E2"]) == [True, False]
    idx = index()
    state, _ = store.read(idx, [PART], Combos.of(idx))
    assert state.shippers.ver.tolist() == [2, 0] and state.sellers.ver.tolist() == [2]
    assert state.shippers.vals[0, 9] > 0.99  # rv: one recent violation
    assert state.address_rv.tolist()[0] > 0.99
    # the scoring path's write computed before the exam result is refused
    assert store.apply(update(expect_ver=1, wm=(10, 11), remembered="0123456789abcdef")) is False
    learner = LearnerState(version=1, theta={"R1": 0.5})
    other = ExamDelta("E2", "P1", "S1", "A1", False, 1_790_000_700_000)
    assert store.apply_exams([other], (5, learner)) is None  # expected version 5: moved
    assert store.apply_exams([other], (0, learner)) == [True]
    assert store.read_learner() == learner


def test_the_violations_of_many_addresses_are_read_each_where_found(store: StateStore) -> None:
    """A batch's addresses are read in groups (Redis: 500 keys at a time, each address's
    violations only in a group where some exist): violations found at the first and the
    last address of a group, the first of the next and the last of the batch are each read
    at their own address, and no other address has any."""
    n = 1_201
    addrs = [f"A{j}" for j in range(n)]
    found = [0, 499, 500, 1_200]
    at = 1_790_000_600_000
    for k, j in enumerate(found):  # a violation found on a parcel to each of these
        assert store.apply(ReputationUpdate({}, examinable=[
            (f"P{j}", ParcelRef("S1", addrs[j], "", ("R1",), 61.5))]))  # fmt: skip
        delta = ExamDelta(f"E{j}", f"P{j}", "S1", addrs[j], True, at + k)
        assert store.apply_exams([delta]) == [True]
    zeros = np.zeros(n, dtype=np.int64)
    idx = ShipperIndex(["S1"], zeros, addrs, np.arange(n, dtype=np.int64), [], zeros - 1)
    state, _ = store.read(idx, [PART], Combos.of(idx))
    rv = np.asarray(state.address_rv)
    assert np.flatnonzero(rv > 0.99).tolist() == found
    assert (rv[np.setdiff1d(np.arange(n), found)] == 0).all()


NAMES = ["hs6:293399", "hs6:293399|o:IN|d:AE", "attr:platform=shop one", "declarant:D 1"]
IDS = [part_id(NAMES[0]), 2**64 - 1, 1, part_id(NAMES[3])]  # the extremes of the id range
REF = RiskRef(NAMES, [1.0, -1.2345678901234567, 0.1, 1e-300, *([0.0] * 18)], 0.25, IDS)


def test_learned_keys_are_kept_with_the_parcel_and_counted_once_per_result(
    store: StateStore,
) -> None:
    u = update()
    assert store.apply(dataclasses.replace(u, examinable=[
        ("P1", dataclasses.replace(u.examinable[0][1], risk=REF))]))  # fmt: skip
    got = store.lookup_parcels(["P1"])["P1"].risk
    assert got == REF  # the features as scored, bit for bit
    at = 1_790_000_600_000
    delta = ExamDelta("E1", "P1", "S1", "A1", True, at, "L1@shop", risk=REF, risk_weight=4.0)
    assert store.apply_exams([delta, delta]) == [True, False]
    assert store.apply_exams([delta]) == [False]
    rows = store.read_risk(np.array([*IDS, 12345], dtype=np.uint64))
    assert rows[:4].tolist() == [[4.0, 4.0, float(at)]] * 4 and np.isnan(rows[4]).all()
    # a clean result half a life later: the old counts decay to the new time
    later = at + 90 * 86_400_000
    clean = dataclasses.replace(delta, exam_id="E2", violation=False, examined_ts_ms=later,
                                risk=RiskRef(NAMES[:1], REF.x, 1.0, IDS[:1]), risk_weight=1.0)  # fmt: skip
    assert store.apply_exams([clean]) == [True]
    n, v, t = store.read_risk(np.array(IDS[:1], dtype=np.uint64))[0].tolist()
    half = 2**-0.5  # the default half-life is 180 days
    assert (n, v, t) == pytest.approx((4 * half + 1, 4 * half, later), rel=1e-12)


def test_rare_learned_keys_are_pruned(store: StateStore) -> None:
    u = update()
    assert store.apply(dataclasses.replace(u, examinable=[
        ("P1", dataclasses.replace(u.examinable[0][1], risk=REF))]))  # fmt: skip
    at = 1_790_000_600_000
    one = ExamDelta("E1", "P1", "S1", "A1", True, at, "L1@shop", risk=REF, risk_weight=1.0)
    many = dataclasses.replace(one, exam_id="E2", risk_weight=5.0,
                               risk=RiskRef(NAMES[:1], REF.x, 1.0, IDS[:1]))  # fmt: skip
    assert store.apply_exams([one, many]) == [True, True]
    assert store.prune_risk(at) == 0
    # two half-lives on: one examination weighs 0.25, six weigh 1.5
    later = at + 2 * 180 * 86_400_000 + 1
    assert store.prune_risk(later) == 3
    rows = store.read_risk(np.array(IDS, dtype=np.uint64))
    assert not np.isnan(rows[0, 0]) and np.isnan(rows[1:, 0]).all()


def test_capacity_thresholds_are_written_with_the_partition_and_read_back(
    store: StateStore,
) -> None:
    other = ("m", 4)
    assert store.read_lanes([PART, other]) == {}
    u = update()
    assert store.apply(
        dataclasses.replace(u, lanes=[(PART, b"\x81\xa3HUB\xcb?\xe0\x00\x00\x00\x00\x00\x00")])
    )
    assert store.read_lanes([PART, other]) == {
        PART: b"\x81\xa3HUB\xcb?\xe0\x00\x00\x00\x00\x00\x00"
    }
    # a stale batch's thresholds are refused with the rest of its update
    assert not store.apply(dataclasses.replace(u, lanes=[(PART, b"\x80")]))
    assert store.read_lanes([PART]) == {PART: b"\x81\xa3HUB\xcb?\xe0\x00\x00\x00\x00\x00\x00"}


def test_value_norms_are_written_with_the_partition_and_read_back(store: StateStore) -> None:
    ids = np.array([part_id("hs6:610910"), part_id("hs4:6109"), 2**64 - 1], dtype=np.uint64)
    assert np.isnan(store.read_norms({PART: ids})[PART]).all()
    rows = np.array([[20.5, 1.25, 3.5, 1.79e12], [1.0, -0.5, 0.0, 1.79e12], [2, 3, 4, 5]])
    assert store.apply(dataclasses.replace(update(), norms=[(PART, ids, rows)]))
    got = store.read_norms({PART: ids[::-1], ("m", 4): ids})
    assert got[PART].tolist() == rows[::-1].tolist() and np.isnan(got[("m", 4)]).all()
    # refused with the rest of a stale batch
    assert not store.apply(dataclasses.replace(update(), norms=[(PART, ids[:1], rows[1:2])]))
    assert store.read_norms({PART: ids[:1]})[PART].tolist() == rows[:1].tolist()


def test_every_key_written_is_declared(settings: Settings) -> None:
    """Every key the Redis store writes has a declared kind (``state.STATE_KEYS``), and
    its Redis type is the declared one."""
    import redis

    prefix = f"k{uuid.uuid4().hex[:6]}"
    store = BlockingRedisStore(settings.redis_url, prefix=prefix)
    try:
        assert store.apply(dataclasses.replace(update(), lanes=[(PART, b"\x80")], norms=[
            (PART, np.array([7], dtype=np.uint64), np.ones((1, 4)))]))  # fmt: skip
        delta = ExamDelta("E1", "P1", "S1", "A1", True, 1_790_000_600_000, "L1@shop",
                          risk=REF, risk_weight=1.0)  # fmt: skip
        assert store.apply_exams([delta], (0, LearnerState(version=1))) == [True]
    finally:
        store.close()
    client = redis.Redis.from_url(settings.redis_url)
    # learned keys end in their 8-byte id: read every name byte for byte
    raw_keys = {k.decode("latin-1"): k for k in client.scan_iter(f"{prefix}:*")}
    kinds = {k: declared(k, prefix) for k in raw_keys}
    assert None not in kinds.values(), [k for k, v in kinds.items() if v is None]
    names = {
        "hash": "hash",
        "set": "set",
        "string": "string",
        "list": "list",
        "zset": "sorted set",
        "stream": "stream",
    }
    for key, kind in kinds.items():
        raw = client.type(raw_keys[key])
        type_name = raw.decode() if isinstance(raw, bytes) else str(raw)
        assert kind is not None and names[type_name] == kind.redis_type, key
    assert len({k.pattern() for k in kinds.values() if k}) >= 15  # nearly every kind written
