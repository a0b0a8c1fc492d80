import gzip
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from parcel_stream.adapters.kafka_io import ReplayPlan, replay_feed
from parcel_stream.feed import RawRecord, decode_record, encode_record, read_feed, write_feed
from tests.unit.samples import line

raw_records = st.builds(
    RawRecord,
    ts_ms=st.integers(min_value=0, max_value=2**41),
    topic=st.text(alphabet="abc-._", min_size=1, max_size=10),
    partition=st.integers(min_value=0, max_value=100),
    offset=st.integers(min_value=0, max_value=2**40),
    key=st.one_of(st.none(), st.binary(max_size=40), st.text(max_size=20).map(str.encode)),
    value=st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode)),
    headers=st.lists(
        st.tuples(st.text(min_size=1, max_size=8), st.binary(max_size=20)), max_size=3
    ).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(raw_records)
def test_feed_line_round_trips_bytes_exactly(rec: RawRecord) -> None:
    line_ = encode_record(rec)
    assert b"\n" not in line_
    assert decode_record(line_) == rec


def test_gzip_feed_and_plain_manifest_file(tmp_path: Path) -> None:
    recs = [RawRecord(1000 + i, "t", i % 2, i, b"k", line(parcel_id=f"P{i}")) for i in range(5)]
    path = tmp_path / "f.ndjson.gz"
    assert write_feed(path, recs) == 5
    assert gzip.open(path).read().count(b"\n") == 5
    assert list(read_feed(path)) == recs
    plain = tmp_path / "m.ndjson"
    plain.write_bytes(b"\n".join(line(parcel_id=f"Q{i}") for i in range(3)) + b"\n")
    got = list(read_feed(plain, topic="man"))
    assert [r.key for r in got] == [b"SHP000001"] * 3 and got[0].topic == "man"
    assert orjson.loads(got[2].value)["parcel_id"] == "Q2"


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, topic: str, **kw: Any) -> None:
        self.sent.append({"topic": topic, **kw})

    def flush(self) -> None:
        pass


def _recs() -> list[RawRecord]:
    batch = b"\n".join(line(parcel_id=f"B{i}") for i in range(3))
    hdr = (("content-type", b"application/x-ndjson"),)
    return [
        RawRecord(1_000, "t", 0, 0, b"S", line(parcel_id="A")),
        RawRecord(3_000, "t", 1, 1, None, batch, hdr),
        RawRecord(2_000, "t", 0, 2, b"S", line(parcel_id="C")),
    ]


def test_replay_modes() -> None:
    p = FakeProducer()
    assert replay_feed(p, _recs(), ReplayPlan("out", keep_partitions=True)) == 3
    assert [s["partition"] for s in p.sent] == [0, 1, 0] and p.sent[1]["headers"] is not None
    p = FakeProducer()
    assert replay_feed(p, _recs(), ReplayPlan("out", mode="single")) == 5
    assert [orjson.loads(s["value"])["parcel_id"] for s in p.sent] == ["A", "B0", "B1", "B2", "C"]
    assert p.sent[1]["key"] == b"SHP000001"
    p = FakeProducer()
    assert replay_feed(p, _recs(), ReplayPlan("out", mode="batch", batch_size=2)) == 3
    assert [s["value"].count(b"\n") + 1 for s in p.sent] == [2, 2, 1]


def test_replay_paces_by_record_time() -> None:
    p = FakeProducer()
    now = [100.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    replay_feed(p, _recs(), ReplayPlan("out", speed=2.0), sleep=sleep, clock=lambda: now[0])
    # record 2 is due 1 s (2 s of feed time at 2x) after the first; record 3 is then late
    assert sleeps == [1.0] and len(p.sent) == 3
