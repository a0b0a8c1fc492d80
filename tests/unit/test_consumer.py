"""The consumer's configuration and its poison-record guard, without a broker.

The guard is exercised on real record-batch bytes (aiokafka's own builder) made
undecodable the ways a hub's producer or a disk can: a codec the consumer lacks, a
compression attribute over bytes that are not compressed, a CRC that does not match.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import pytest
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBase, DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition
from faust.types import TP

from agents import faust_transport
from parcel_stream.adapters import kafka_io
from parcel_stream.settings import ConfigError, Settings

TP0 = TopicPartition("manifests", 0)
ATTRIBUTES_AT = DefaultRecordBase.ATTRIBUTES_OFFSET
CRC_AT = DefaultRecordBase.CRC_OFFSET


def batch(base_offset: int, n: int, attributes: int | None = None, crc_ok: bool = True) -> bytes:
    """A v2 record batch of ``n`` records at ``base_offset``; ``attributes`` overwrites its
    attribute bits (e.g. a codec) over the uncompressed records, CRC recomputed unless not."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    for i in range(n):
        builder.append(i, timestamp=1_700_000_000_000, key=b"k", value=b'{"n": %d}' % i, headers=[])
    buf = bytearray(builder.build())
    struct.pack_into(">q", buf, 0, base_offset)
    if attributes is not None:
        struct.pack_into(">h", buf, ATTRIBUTES_AT, attributes)
        struct.pack_into(">I", buf, CRC_AT, calc_crc32c(bytes(buf[ATTRIBUTES_AT:])))
    if not crc_ok:
        buf[-1] ^= 0xFF
    return bytes(buf)


def read(log: bytes, fetch_offset: int) -> tuple[list[int], list[tuple[Any, int, str]], int]:
    """What a guarded fetch of ``log`` from ``fetch_offset`` hands out, what it reports and
    the partition's next position."""
    records = PartitionRecords(
        TP0, MemoryRecords(log), None, fetch_offset, None, None, True, READ_UNCOMMITTED
    )
    failures: list[tuple[Any, int, str]] = []
    records._records_iterator = faust_transport._guarded(
        records,
        records._records_iterator,
        lambda tp, offset, exc: failures.append((tp, offset, faust_transport.classify(exc)[0])),
    )
    return [r.offset for r in records], failures, records.next_fetch_offset


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (batch(3, 2, attributes=0x05), "unsupported_codec"),  # no such codec
        (batch(3, 2, attributes=0x02), "decode_error"),  # "snappy" over raw bytes
        (batch(3, 2, attributes=0x04), "decode_error"),  # "zstd" over raw bytes
        (batch(3, 2, crc_ok=False), "corrupt_record"),
    ],
    ids=["unknown-codec", "not-snappy", "not-zstd", "bad-crc"],
)
def test_guard_hands_out_the_good_records_and_reports_each_bad_offset(
    bad: bytes, reason: str
) -> None:
    log = batch(0, 3) + bad + batch(5, 2)
    # the good records before the bad batch are handed out, the failure is reported, and
    # the partition's next position is one past it
    assert read(log, 0) == ([0, 1, 2], [(TP0, 3, reason)], 4)
    # the broker serves the same batch again from there: its next record is skipped too
    assert read(bad + batch(5, 2), 4) == ([], [(TP0, 4, reason)], 5)
    assert read(batch(5, 2), 5) == ([5, 6], [], 7)


def test_failures_are_described_without_record_bytes() -> None:
    class DecompressionError(Exception):
        pass

    secret = DecompressionError("consignee Jane Doe, 1 Main St")
    assert faust_transport.classify(secret) == ("decode_error", "DecompressionError")


# -- isolation level ---------------------------------------------------------------------


def test_read_committed_is_the_default_and_a_bad_value_is_one_line() -> None:
    assert Settings().kafka_isolation_level == "read_committed"
    s = Settings.from_env({"PARCEL_KAFKA_ISOLATION_LEVEL": "read_uncommitted"})
    assert s.kafka_isolation_level == "read_uncommitted"
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"PARCEL_KAFKA_ISOLATION_LEVEL": "committed"})
    assert str(err.value) == (
        "PARCEL_KAFKA_ISOLATION_LEVEL: must be read_committed or read_uncommitted"
    )


@pytest.mark.parametrize("level", ["read_committed", "read_uncommitted"])
def test_the_worker_consumer_uses_the_configured_isolation_level(
    level: str, tmp_path: Path
) -> None:
    from agents.app import make_faust_app

    async def consumer_of(settings: Settings) -> Any:
        app = make_faust_app(settings)
        thread = app.consumer._thread  # type: ignore[attr-defined]
        return thread._create_worker_consumer(app.transport)

    s = Settings(kafka_isolation_level=level, fetch_max_wait_ms=7, data_dir=str(tmp_path))
    consumer = asyncio.run(consumer_of(s))
    assert (consumer._isolation_level, consumer._fetch_max_wait_ms) == (level, 7)


class _Captured(Exception):
    pass


def test_the_tools_consume_with_the_configured_isolation_level(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[dict[str, object]] = []

    def fake_connect(client: object, bootstrap: str, timeout_s: float, opts: dict[str, Any]) -> Any:
        seen.append(opts)
        raise _Captured

    monkeypatch.setattr(kafka_io, "_connect", fake_connect)
    uncommitted = Settings(kafka_isolation_level="read_uncommitted")
    rng = kafka_io.RecordRange()
    for options in (None, kafka_io.consumer_options(Settings()),
                    kafka_io.consumer_options(uncommitted)):  # fmt: skip
        with pytest.raises(_Captured):
            kafka_io.record_topics("h:1", ["t"], str(tmp_path / "f"), rng, options=options)
    with pytest.raises(_Captured):
        kafka_io.read_all("h:1", ["t"], lambda g: True, 1.0)
    with pytest.raises(_Captured):
        kafka_io.read_all("h:1", ["t"], lambda g: True, 1.0, isolation_level="read_uncommitted")
    assert [o["isolation_level"] for o in seen] == [
        "read_committed", "read_committed", "read_uncommitted",
        "read_committed", "read_uncommitted",
    ]  # fmt: skip


# Faust's fetch loop as of the pinned faust-streaming: the batch-native override
# (faust_transport._Consumer._drain_messages) mirrors it, so a faust-streaming that
# changes it must be read again before the pin moves.
DRAIN_MESSAGES_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


def test_the_batch_native_fetch_loop_mirrors_the_pinned_faust() -> None:
    import hashlib
    import inspect

    from faust.transport.consumer import Consumer

    src = inspect.getsource(Consumer._drain_messages)
    assert hashlib.sha256(src.encode()).hexdigest() == DRAIN_MESSAGES_SHA256


def _message(topic: str, partition: int, offset: int) -> Any:
    from faust.types import Message

    return Message(topic, partition, offset, 1.7e9, 0, [], b"k", b"v%d" % offset, None)


def test_batch_native_topics_reach_their_sink_as_one_list_per_fetch(tmp_path: Path) -> None:
    """One fetch of records of a batch-native topic and of another: the first go to the
    sink as one list in fetch order, tracked (not acked) so a rebalance waits for them,
    with the skipped offsets recorded as a gap that commits may pass; the other topic's
    records take Faust's per-record path."""
    from agents.app import make_faust_app

    async def run() -> tuple[list[Any], list[Any], Any]:
        app = make_faust_app(Settings(data_dir=str(tmp_path)))
        sink = faust_transport.BatchSink(100, app.flow_control)
        app.parcel_batch_sinks = {"manifests": sink}  # type: ignore[attr-defined]
        topics: Any = app.topics
        topics._acking_topics.add("manifests")  # as subscribing to it does
        consumer: Any = app.consumer
        fetched = [_message("manifests", 0, 5), _message("exams", 0, 1),
                   _message("manifests", 0, 6), _message("manifests", 0, 9),
                   _message("manifests", 1, 0)]  # fmt: skip
        consumer._read_offset[TP("manifests", 0)] = 4
        fetcher = type("Fetcher", (), {"_stopped": asyncio.Event()})()
        per_record: list[Any] = []

        async def getmany(timeout: float) -> Any:
            for m in fetched:
                yield m.tp, m
            fetcher._stopped.set()  # one fetch

        async def callback(message: Any) -> None:
            per_record.append(message)

        consumer.getmany = getmany
        consumer.callback = callback
        await consumer._drain_messages(fetcher)
        got = await sink.take(100)
        return got, per_record, consumer

    got, per_record, consumer = asyncio.run(run())
    assert [(m.partition, m.offset) for m in got] == [(0, 5), (0, 6), (0, 9), (1, 0)]
    assert [m.topic for m in per_record] == ["exams"]
    assert set(consumer._unacked_messages) == set(got)
    assert not any(m.acked for m in got)
    # Faust's gap for offsets 7 and 8, as its own loop records it ([7, 10): 9 is acked too)
    assert [(g.begin, g.end) for g in consumer._gap[TP("manifests", 0)]] == [(7, 10)]
    assert consumer._read_offset[TP("manifests", 0)] == 9


def test_the_batch_sink_is_bounded_by_records_and_bytes_and_cleared_by_a_rebalance() -> None:
    from mode.utils.queues import FlowControlEvent

    async def run() -> None:
        flow, suspended = FlowControlEvent(), asyncio.Event()
        sink = faust_transport.BatchSink(4, flow, max_bytes=100)
        a: Any = [_message("m", 0, 1), _message("m", 0, 2)]
        b: Any = [_message("m", 0, n) for n in (3, 4, 5)]
        c: Any = [_message("m", 0, 6)] * 9
        assert await sink.put(a, suspended)
        blocked = asyncio.ensure_future(sink.put(b, suspended))
        await asyncio.sleep(0)
        assert not blocked.done() and len(sink) == 2  # 2 + 3 > 4: waits for room
        assert await sink.take(10) == a  # room: b goes in
        assert await blocked and len(sink) == 3
        assert await sink.take(10) == b
        assert await sink.put(c, suspended)  # empty: any size
        blocked = asyncio.ensure_future(sink.put(a, suspended))
        await asyncio.sleep(0)
        suspended.set()  # a rebalance: Faust suspends the flow, then clears its buffers
        flow.clear()
        assert await blocked is False and len(sink) == 0
        taker = asyncio.ensure_future(sink.take(10))
        await asyncio.sleep(0)
        assert not taker.done()  # nothing left to take
        suspended.clear()
        assert await sink.put(a, suspended)
        assert await taker == a
        big: Any = [_message("m", 1, 0)]
        big[0].value = b"x" * 99
        assert await sink.put(big, suspended)
        blocked = asyncio.ensure_future(sink.put(a, suspended))
        await asyncio.sleep(0)
        assert not blocked.done()  # 2 records, but 99 + 4 bytes > 100
        assert await sink.take(10) == big
        assert await blocked and await sink.take(10) == a

    asyncio.run(run())


def test_records_taken_ahead_count_against_the_sink_until_their_turn() -> None:
    """The agent takes the next fetch's records ahead of their turn (to parse them while
    Redis applies the current chunk): they hold the sink's room until it lets them go, so
    looking ahead holds no more records than waiting; a rebalance's clear lets go of them."""
    from mode.utils.queues import FlowControlEvent

    async def run() -> None:
        flow, suspended = FlowControlEvent(), asyncio.Event()
        sink = faust_transport.BatchSink(4, flow)
        a: Any = [_message("m", 0, 1), _message("m", 0, 2)]
        b: Any = [_message("m", 0, n) for n in (3, 4, 5)]
        assert sink.take_ahead(10)[0] == [] and not sink.waiting()
        assert await sink.put(a, suspended) and sink.waiting()
        got, turn = sink.take_ahead(10)
        assert got == a and not sink.waiting() and len(sink) == 2
        blocked = asyncio.ensure_future(sink.put(b, suspended))
        await asyncio.sleep(0)
        assert not blocked.done()  # a still holds its room: 2 + 3 > 4
        turn()
        assert await blocked and len(sink) == 3
        got, turn = sink.take_ahead(10)
        assert got == b
        flow.clear()  # a rebalance: the sink starts empty, and b's turn changes nothing
        turn()
        assert len(sink) == 0
        assert await sink.put(b, suspended) and len(sink) == 3

    asyncio.run(run())
