"""Kafka edges for tools, the demo and the tests (kafka-python): produce feeds, read topics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

NDJSON_HEADER = [("content-type", b"application/x-ndjson")]


def make_producer(bootstrap: str, **kwargs: object) -> KafkaProducer:
    opts: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "linger_ms": 5,
        "max_request_size": 16 * 1024 * 1024,
        "client_id": "parcel-stream-tools",
    }
    opts.update(kwargs)
    return KafkaProducer(**opts)


@dataclass(frozen=True)
class ProduceStats:
    records: int
    parcels: int
    seconds: float


def produce_parcels(
    producer: KafkaProducer,
    topic: str,
    parcels: Sequence[tuple[bytes | None, bytes]],
    batch_size: int = 1,
    single_every: int = 0,
) -> ProduceStats:
    """Send (shipper key, JSON line) pairs: as NDJSON batch records of ``batch_size`` parcels,
    or one parcel per record when ``batch_size`` is 1. With ``single_every`` = k, every k-th
    parcel goes as its own record even in batch mode (a mixed feed)."""
    t0 = time.perf_counter()
    records = 0
    buf: list[bytes] = []

    def flush() -> None:
        nonlocal records
        if buf:
            producer.send(topic, value=b"\n".join(buf), headers=NDJSON_HEADER)
            records += 1
            buf.clear()

    for n, (key, line) in enumerate(parcels):
        if batch_size <= 1 or (single_every and n % single_every == 0):
            producer.send(topic, key=key, value=line)
            records += 1
            continue
        buf.append(line)
        if len(buf) >= batch_size:
            flush()
    flush()
    producer.flush()
    return ProduceStats(records, len(parcels), time.perf_counter() - t0)


def read_all(
    bootstrap: str,
    topics: Iterable[str],
    done: Callable[[dict[str, list[tuple[bytes | None, bytes]]]], bool],
    timeout_s: float,
    on_poll: Callable[[dict[str, list[tuple[bytes | None, bytes]]]], None] | None = None,
) -> dict[str, list[tuple[bytes | None, bytes]]]:
    """Read the topics from the beginning (no consumer group) until ``done`` or timeout."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id="parcel-stream-reader",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    names = list(topics)
    got: dict[str, list[tuple[bytes | None, bytes]]] = {t: [] for t in names}
    try:
        parts = [
            TopicPartition(t, p)
            for t in names
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=200, max_records=50_000)
            for tp, msgs in batch.items():
                got[tp.topic].extend((m.key, m.value) for m in msgs)
            if on_poll is not None:
                on_poll(got)
            if done(got):
                break
    finally:
        consumer.close()
    return got
