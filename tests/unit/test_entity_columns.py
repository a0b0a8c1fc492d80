"""The in-memory store's shippers and sellers in columns (``reputation.EntityColumns``)
against the obvious model: a dict of entity states, each write replacing the entity's
values (counts and times kept whole), its version and, when it carries them, its days."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from parcel_stream.reputation import EntityColumns, EntityWrites, ShipperState
from parcel_stream.sequence import DAY_SLOTS, ENTITY_FIELDS, FIRST, HOLDS, LAST, SEEN


def _model_write(model: dict[str, dict[str, Any]], ws: EntityWrites) -> None:
    for k, eid in enumerate(ws.ids):
        vals = ws.vals[k].tolist()
        vals[SEEN], vals[HOLDS] = float(round(vals[SEEN])), float(round(vals[HOLDS]))
        vals[FIRST], vals[LAST] = float(int(vals[FIRST])), float(int(vals[LAST]))
        st = model.setdefault(eid, {"newest": 0, "days": {}})
        st["vals"], st["ver"] = vals, int(ws.expected_ver[k]) + 1
        newest = int(ws.newest_day[k])
        if newest:
            first = newest - DAY_SLOTS + 1
            st["newest"] = newest
            st["days"] = {first + j: c for j, c in enumerate(ws.day_counts[k].tolist()) if c}


def _writes(rng: random.Random, ids: list[str], days: bool) -> EntityWrites:
    k = len(ids)
    vals = np.array([[rng.choice([0.0, 1.5, 2.5, 3.0, rng.uniform(0, 1e12)])
                      for _ in ENTITY_FIELDS] for _ in ids]).reshape(k, len(ENTITY_FIELDS))  # fmt: skip
    newest = np.array([rng.choice([0, 20_000, 20_003, 20_040]) if days else 0 for _ in ids],
                      dtype=np.int64)  # fmt: skip
    counts = np.array([[rng.choice([0, 0, 1, 7]) for _ in range(DAY_SLOTS)] for _ in ids],
                      dtype=np.int64).reshape(k, DAY_SLOTS)  # fmt: skip
    ver = np.array([rng.randrange(5) for _ in ids], dtype=np.int64)
    return EntityWrites(ids, ver, vals, newest, counts)


def test_columns_read_back_what_the_model_keeps() -> None:
    rng = random.Random(5)
    for days in (True, False):
        cols = EntityColumns()
        model: dict[str, dict[str, Any]] = {}
        pool = [f"S{i}" for i in range(3000)]  # more than one growth of the columns
        for _ in range(12):
            ids = rng.sample(pool, rng.randrange(0, 700))
            ws = _writes(rng, ids, days)
            cols.write(ws)
            _model_write(model, ws)
        asked = rng.sample(pool, 900) + ["never"]
        t = cols.table(asked, days=days)
        for j, eid in enumerate(asked):
            st = model.get(eid)
            if st is None:
                assert t.ver[j] == 0 and not t.vals[j].any() and (t.slot_day[j] == -1).all()
                continue
            assert t.vals[j].tolist() == st["vals"] and t.ver[j] == st["ver"]
            assert t.newest_day[j] == st["newest"]
            assert t.days(j) == st["days"]
            one = cols[eid]  # read one by one, as a state
            assert list(one.row()) == st["vals"] and one.ver == st["ver"]
            assert one.days == st["days"] and one.newest_day == st["newest"]
        assert len(cols) == len(model) and set(cols) == set(model)
        versions = cols.versions(asked)
        assert versions.tolist() == [model[e]["ver"] if e in model else 0 for e in asked]


def test_a_state_put_back_is_read_as_it_was() -> None:
    cols = EntityColumns()
    st = ShipperState(seen=4, value_usd=12.5, holds=1, first_seen_ms=1000, last_seen_ms=9000,
                      exams=3, violations=2, recent_t_ms=5.0, recent_exams=1.25, ver=7,
                      newest_day=20_010, days={20_001: 2, 20_010: 5})  # fmt: skip
    cols.put("S1", st)
    assert cols["S1"] == st
    assert cols.get("S2") is None and "S1" in cols and "S2" not in cols
