"""A worker's copy of the learned counts follows every change exactly (``risk_replica.py``)."""

from __future__ import annotations

import numpy as np

from parcel_stream.adapters.risk_replica import RiskReplica


def as_dict(rep: RiskReplica) -> dict[int, list[float]]:
    ids, rows = rep.items()
    assert len(ids) == len(rep) and np.all(ids[1:] > ids[:-1])
    return {int(k): r.tolist() for k, r in zip(ids, rows, strict=True)}


def test_the_copy_follows_loads_changes_and_drops_like_a_dict() -> None:
    rng = np.random.default_rng(7)
    universe = np.array([0, 1, 2**63, 2**64 - 1, *rng.integers(2, 2**62, 300)], dtype=np.uint64)
    truth: dict[int, list[float]] = {}
    rep = RiskReplica()
    seq = 0
    for step in range(600):
        seq += 1
        if step % 97 == 0:  # a whole load
            keys = rng.choice(universe, 120, replace=False)
            truth = {int(k): rng.random(3).tolist() for k in keys}
            rep.load(np.array(list(truth), dtype=np.uint64), np.array(list(truth.values())), seq)
        else:  # a change: some keys updated or new, some dropped
            keys = rng.choice(universe, int(rng.integers(0, 40)), replace=False)
            rows = rng.random((len(keys), 3))
            rows[rng.random(len(keys)) < 0.3] = np.nan
            for k, r in zip(keys.tolist(), rows, strict=True):
                if np.isnan(r[0]):
                    truth.pop(k, None)
                else:
                    truth[k] = r.tolist()
            rep.apply(keys, rows, seq)
            rep.apply(keys[:1], np.zeros((min(1, len(keys)), 3)), seq - 1)  # older: ignored
        assert as_dict(rep) == truth
        asked = rng.choice(universe, 50)
        got = rep.lookup(asked)
        for k, row in zip(asked.tolist(), got, strict=True):
            assert row.tolist() == truth[k] if k in truth else np.isnan(row).all()
    assert rep.seq == seq


def test_an_empty_copy_reads_every_key_as_absent() -> None:
    rep = RiskReplica()
    assert np.isnan(rep.lookup(np.array([5, 6], dtype=np.uint64))).all()
    assert rep.lookup(np.zeros(0, dtype=np.uint64)).shape == (0, 3)
