"""The Redis store's reading of its read script's reply, in columns, against the
one-entity-at-a-time reading it replaced."""

import random

import numpy as np

from parcel_stream.adapters.redis_store import _fill_days, days_texts, decode_days
from parcel_stream.sequence import DAY_SLOTS, EntityTable


def one_by_one(dn: list[bytes | None], dd: list[bytes | None]) -> EntityTable:
    table = EntityTable.empty(len(dn))
    for j, (x, raw) in enumerate(zip(dn, dd, strict=True)):
        newest = int(x) if x is not None else 0
        if newest:
            table.set_days(j, newest, decode_days(newest, raw))
    return table


def test_day_counts_read_in_columns_as_one_by_one() -> None:
    rng = random.Random(5)
    for _ in range(300):
        dn: list[bytes | None] = []
        dd: list[bytes | None] = []
        for _ in range(rng.randint(0, 60)):
            r = rng.random()
            if r < 0.2:  # no such shipper
                dn.append(None)
                dd.append(None)
            elif r < 0.3:  # a newest day, no counts
                dn.append(str(rng.randint(19_000, 20_000)).encode())
                dd.append(rng.choice([None, b""]))
            else:  # counts as written (DAY_SLOTS of them), or as another version wrote them
                newest = rng.choice([3, 15, rng.randint(19_000, 20_000)])
                n = rng.choice([DAY_SLOTS, DAY_SLOTS, DAY_SLOTS, 5, DAY_SLOTS + 1, 1])
                counts = [rng.choice([0, 0, 0, 1, 2, 7, -1, 70_000]) for _ in range(n)]
                dn.append(str(newest).encode())
                dd.append(",".join(map(str, counts)).encode())
        want, got = one_by_one(dn, dd), EntityTable.empty(len(dn))
        _fill_days(got, dn, dd)
        assert got.newest_day.tolist() == want.newest_day.tolist()
        assert got.slot_day.tolist() == want.slot_day.tolist()
        assert got.slot_count.tolist() == want.slot_count.tolist()


def test_day_counts_written_read_back() -> None:
    row = [0] * DAY_SLOTS  # the DAY_SLOTS days up to the newest, oldest first
    row[-1], row[-11] = 3, 1  # the newest day (20,000) and ten days before
    texts = days_texts(np.array([row, [0] * DAY_SLOTS], dtype=np.int64))
    got = EntityTable.empty(3)
    _fill_days(got, [b"20000", b"19000", None], [t.encode() for t in texts] + [None])
    assert got.days(0) == {20_000: 3, 19_990: 1}
    assert got.days(1) == {}
    assert got.newest_day.tolist() == [20_000, 19_000, 0]
