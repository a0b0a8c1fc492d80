"""The documented key table is the declared one."""

from pathlib import Path

from parcel_stream.state import STATE_KEYS, declared, key_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "state.md"


def test_the_key_table_in_the_docs_is_generated_from_the_declaration() -> None:
    assert key_table() in DOC.read_text(), (
        "docs/state.md's key table differs from parcel_stream/state.py: paste the output "
        "of `python -m parcel_stream.state`"
    )


def test_keys_are_recognised_by_their_declared_kind() -> None:
    examples = {
        "ps:shipper:SHP1": "ps:shipper:{id}",
        "ps:seller:L1@shop": "ps:seller:{seller id}@{marketplace}",
        "ps:addr:0a1b:shippers": "ps:addr:{address key}:shippers",
        "ps:addr:0a1b:violations": "ps:addr:{address key}:violations",
        "ps:learner": "ps:learner",
        "ps:learner:history": "ps:learner:history",
        "ps:wm:manifests:3": "ps:wm:{topic}:{partition}",
    }
    for key, pattern in examples.items():
        kind = declared(key, "ps")
        assert kind is not None and kind.pattern() == pattern, key
    assert declared("ps:nothing:1", "ps") is None and declared("other:shipper:1", "ps") is None
    assert len({k.pattern() for k in STATE_KEYS}) == len(STATE_KEYS)


def test_state_fields_are_written_as_text_that_reads_back_exactly() -> None:
    import math
    import random

    from parcel_stream.adapters.redis_store import num_text

    assert [num_text(v) for v in (58.0, 0.0, 1.7e12, -3.0)] == ["58", "0", "1700000000000", "-3"]
    rng = random.Random(3)
    for v in [rng.uniform(-1e6, 1e6) for _ in range(2000)] + [0.1, 1e-300, 2.5e15 + 0.5]:
        assert float(num_text(v)) == v
        assert ("." in num_text(v)) or ("e" in num_text(v))  # never read as an integer
    assert math.isinf(float(num_text(math.inf))) and math.isnan(float(num_text(math.nan)))


def test_entity_writes_in_columns_format_as_each_write_alone() -> None:
    """The batch's entity writes are formatted in columns (``entity_args``): the keys,
    expected versions, where the packed values start, and the day counts' fields as one
    write at a time gave them; the packed values read back bit for bit, for whole numbers
    of any size, fractions, -0.0, infinities and NaN; and back to the same writes."""
    import math
    import random

    import numpy as np

    from parcel_stream.adapters.redis_store import (
        ENTITY_BYTES,
        entity_args,
        pack_entities,
        unpack_entities,
    )
    from parcel_stream.reputation import EntityWrite, EntityWrites
    from parcel_stream.sequence import DAY_SLOTS, ENTITY_FIELDS
    from parcel_stream.state import SELLER, SHIPPER

    def encode_days(newest: int, days: tuple[tuple[int, int], ...]) -> str:
        # one write at a time, as the write script's field was made before the columns
        first = newest - DAY_SLOTS + 1
        counts = [0] * DAY_SLOTS
        for day, count in days:
            if first <= day <= newest:
                counts[day - first] = count
        return ",".join(map(str, counts))

    rng = random.Random(5)
    special = [0.0, -0.0, 3.0, -7.0, 2.0**62, 2.0**63, 1e20, -1e300, 0.5, math.inf, -math.inf,
               math.nan, 1.7e12, 1e-300]  # fmt: skip
    pool = special + [rng.uniform(-1e6, 1e6) for _ in range(200)] + [float(rng.randrange(10**6))
                                                                      for _ in range(200)]  # fmt: skip
    nf = len(ENTITY_FIELDS)
    writes = []
    for k in range(60):
        newest = 20_700 + k
        days = tuple(sorted({newest - rng.randrange(DAY_SLOTS + 4): rng.randrange(0, 9)
                             for _ in range(rng.randrange(0, 6))}.items()))  # fmt: skip
        writes.append(EntityWrite(f"S{k}", rng.randrange(5), tuple(rng.choice(pool)
                                  for _ in range(nf)), newest, days))  # fmt: skip
    ws = EntityWrites.of(writes)
    rows = list(zip(*entity_args(SHIPPER, ws, "ps", True, 7), strict=True))
    packed = pack_entities(ws.vals)
    assert len(packed) == ENTITY_BYTES * len(writes) == 8 * nf * len(writes)
    for j, (w, row) in enumerate(zip(writes, rows, strict=True)):
        first = 7 + j * ENTITY_BYTES  # in the script's binary argument, from byte 7 on
        assert row == (SHIPPER.key("ps", w.entity_id), w.expected_ver, first, w.newest_day,
                       encode_days(w.newest_day, w.days))  # fmt: skip
        one = packed[first - 7 : first - 7 + ENTITY_BYTES]
        back = unpack_entities([one], 1)[0]
        assert [math.copysign(1, v) for v in back] == [math.copysign(1, v) for v in w.vals]
        assert np.array_equal(back, w.vals, equal_nan=True)
    sellers = list(zip(*entity_args(SELLER, ws, "ps", False, 1), strict=True))
    assert [r[2:] for r in sellers] == [(1 + j * ENTITY_BYTES, 0, "") for j in range(len(writes))]
    assert unpack_entities([None, packed[:ENTITY_BYTES]], 2)[0].tolist() == [0.0] * nf
    # packed before the last field was added: it reads 0, the others as stored
    short = unpack_entities([packed[: ENTITY_BYTES - 8], packed[:ENTITY_BYTES]], 2)
    assert short[0, -1] == 0.0 and np.array_equal(short[0, :-1], short[1, :-1], equal_nan=True)
    # read one at a time, the columns give the writes back (days outside the window gone)
    for w, again in zip(writes, ws, strict=True):
        assert (again.entity_id, again.expected_ver, again.newest_day) == (
            w.entity_id, w.expected_ver, w.newest_day)  # fmt: skip
        assert np.array_equal(again.vals, w.vals, equal_nan=True)
        live = {d: c for d, c in w.days if c and d > w.newest_day - DAY_SLOTS}
        assert dict(again.days) == live
    assert [w.entity_id for w in ws.take([3, 1])] == ["S3", "S1"] and len(EntityWrites.none()) == 0
    big = EntityWrite("B", 1, (1.0,) * nf, 20_800, ((20_799, 70_000), (20_800, 3)))
    assert entity_args(SHIPPER, EntityWrites.of([big]), "ps", True, 1)[4][0] == encode_days(
        big.newest_day, big.days)  # fmt: skip


def test_keys_in_one_pass_are_each_key() -> None:
    ids = ["S1", "L1@shop", "", "0a1b"]
    for kind in STATE_KEYS:
        if kind.id_doc:
            assert kind.keys("ps", ids) == [kind.key("ps", i) for i in ids], kind.segment
