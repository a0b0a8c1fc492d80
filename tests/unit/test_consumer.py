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
