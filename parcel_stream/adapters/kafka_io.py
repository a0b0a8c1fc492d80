"""Kafka edges for tools, the demo and the tests (kafka-python): produce feeds, read topics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError

from parcel_stream.adapters.security import kafka_client_options
from parcel_stream.feed import RawRecord, encode_record, manifest_key, open_feed
from parcel_stream.progress import Progress
from parcel_stream.settings import Settings

NDJSON_HEADER = [("content-type", b"application/x-ndjson")]
# Consumers skip records of aborted (and still open) transactions unless told otherwise.
DEFAULT_ISOLATION_LEVEL = "read_committed"

# How long a tool waits for the first broker to answer (kafka-python's default is 30 s).
CONNECT_TIMEOUT_S = 5.0


class KafkaUnreachable(Exception):
    """No broker at the bootstrap address answered within the connect timeout."""

    def __init__(self, bootstrap: str, timeout_s: float) -> None:
        super().__init__(f"cannot reach Kafka at {bootstrap} within {timeout_s:g} s")
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s


_Client = TypeVar("_Client", KafkaProducer, KafkaConsumer)


def _connect(
    client: type[_Client], bootstrap: str, timeout_s: float, opts: dict[str, object]
) -> _Client:
    """Build a kafka-python client, which connects in its constructor; a dead address
    raises ``KafkaUnreachable`` after ``timeout_s`` instead of a timeout traceback."""
    try:
        return client(
            bootstrap_servers=bootstrap, bootstrap_timeout_ms=int(timeout_s * 1000), **opts
        )
    except KafkaTimeoutError as exc:
        raise KafkaUnreachable(bootstrap, timeout_s) from exc


def make_producer(
    bootstrap: str, connect_timeout_s: float = CONNECT_TIMEOUT_S, **kwargs: object
) -> KafkaProducer:
    opts: dict[str, object] = {
        "acks": "all",
        "linger_ms": 5,
        "max_request_size": 16 * 1024 * 1024,
        "client_id": "parcel-stream-tools",
    }
    opts.update(kwargs)
    return _connect(KafkaProducer, bootstrap, connect_timeout_s, opts)


def consumer_options(s: Settings) -> dict[str, object]:
    """kafka-python consumer options from settings: security and the isolation level."""
    return {**kafka_client_options(s), "isolation_level": s.kafka_isolation_level}


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
    progress: Progress | None = None,
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
        if progress is not None:
            progress.update()
        if batch_size <= 1 or (single_every and n % single_every == 0):
            producer.send(topic, key=key, value=line)
            records += 1
            continue
        buf.append(line)
        if len(buf) >= batch_size:
            flush()
    flush()
    producer.flush()
    if progress is not None:
        progress.close()
    return ProduceStats(records, len(parcels), time.perf_counter() - t0)


def read_all(
    bootstrap: str,
    topics: Iterable[str],
    done: Callable[[dict[str, list[tuple[bytes | None, bytes]]]], bool],
    timeout_s: float,
    on_poll: Callable[[dict[str, list[tuple[bytes | None, bytes]]]], None] | None = None,
    isolation_level: str = DEFAULT_ISOLATION_LEVEL,
) -> dict[str, list[tuple[bytes | None, bytes]]]:
    """Read the topics from the beginning (no consumer group) until ``done`` or timeout."""
    consumer = _connect(
        KafkaConsumer,
        bootstrap,
        CONNECT_TIMEOUT_S,
        {
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "client_id": "parcel-stream-reader",
            "fetch_max_bytes": 64 * 1024 * 1024,
            "max_partition_fetch_bytes": 16 * 1024 * 1024,
            "isolation_level": isolation_level,
        },
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


# -- record and replay -------------------------------------------------------------------


@dataclass(frozen=True)
class RecordRange:
    """Which records to take: offsets per partition (inclusive) and/or a time range (ms).

    Time bounds are applied by reading the records' timestamps, not by the broker's
    offset-for-time lookup (which the dev broker gets wrong)."""

    from_offset: int | None = None
    to_offset: int | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    follow: bool = False


def record_topics(
    bootstrap: str,
    topics: Sequence[str],
    out_path: str,
    rng: RecordRange,
    progress: Progress | None = None,
    idle_stop_s: float = 2.0,
    options: dict[str, object] | None = None,
) -> int:
    """Copy records of ``topics`` into a feed file; returns the number written.

    Without ``follow`` it stops once every partition is past ``to_offset`` or, without an
    upper offset, when no record arrived for ``idle_stop_s`` (the dev broker's end-offset
    lookup is not reliable, so the end is found by reading). Ctrl-C stops cleanly: every
    record read so far is in the file. ``options`` (e.g. :func:`consumer_options`) override
    the defaults, read_committed among them."""
    opts: dict[str, object] = {
        "enable_auto_commit": False,
        "client_id": "parcel-stream-record",
        "fetch_max_bytes": 64 << 20,
        "max_partition_fetch_bytes": 16 << 20,
        "isolation_level": DEFAULT_ISOLATION_LEVEL,
        **(options or {}),
    }
    consumer = _connect(KafkaConsumer, bootstrap, CONNECT_TIMEOUT_S, opts)
    written = 0
    try:
        parts = []
        for t in topics:
            ids = consumer.partitions_for_topic(t)
            if not ids:
                raise ValueError(f"topic {t!r} does not exist on {bootstrap}")
            parts += [TopicPartition(t, p) for p in sorted(ids)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        if rng.from_offset is not None:
            for tp in parts:
                consumer.seek(tp, max(consumer.position(tp), rng.from_offset))
        done: set[TopicPartition] = set()
        idle_since = time.monotonic()
        with open_feed(out_path, "wb") as out:
            try:
                while len(done) < len(parts):
                    batch = consumer.poll(timeout_ms=200, max_records=10_000)
                    if not batch:
                        if not rng.follow and time.monotonic() - idle_since >= idle_stop_s:
                            break
                        continue
                    idle_since = time.monotonic()
                    for tp, msgs in batch.items():
                        for m in msgs:
                            if rng.to_offset is not None and m.offset > rng.to_offset:
                                done.add(tp)
                                consumer.pause(tp)
                                break
                            if progress is not None:
                                progress.update()
                            if rng.since_ms is not None and m.timestamp < rng.since_ms:
                                continue
                            if rng.until_ms is not None and m.timestamp > rng.until_ms:
                                continue
                            rec = RawRecord(
                                ts_ms=m.timestamp,
                                topic=m.topic,
                                partition=m.partition,
                                offset=m.offset,
                                key=m.key,
                                value=m.value if m.value is not None else b"",
                                headers=tuple((k, v or b"") for k, v in (m.headers or ())),
                            )
                            out.write(encode_record(rec) + b"\n")
                            written += 1
            except KeyboardInterrupt:
                pass
    finally:
        consumer.close()
        if progress is not None:
            progress.close()
    return written


@dataclass(frozen=True)
class ReplayPlan:
    topic: str
    speed: float = 0.0  # 0 = as fast as possible, 1 = recorded pace, N = N times faster
    mode: str = "recorded"  # recorded | single | batch
    batch_size: int = 1000
    keep_partitions: bool = False


def _split_batch(rec: RawRecord) -> list[RawRecord]:
    ctype = next((v for k, v in rec.headers if k == "content-type"), None)
    value = rec.value.strip()
    is_batch = (ctype or b"").startswith(NDJSON_HEADER[0][1]) or (
        b"\n" in value and value.split(b"\n", 1)[0].strip() != b"{"
    )
    if not is_batch:
        return [rec]
    out = []
    for line in value.split(b"\n"):
        if line.strip():
            key, _ts = manifest_key(line)
            out.append(RawRecord(rec.ts_ms, rec.topic, rec.partition, rec.offset, key, line))
    return out


def replay_feed(
    producer: KafkaProducer,
    records: Iterable[RawRecord],
    plan: ReplayPlan,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Send recorded records to ``plan.topic`` at the planned pace; returns records sent."""
    sent = 0
    t0_wall: float | None = None
    t0_ts = 0
    buf: list[bytes] = []

    def send(rec: RawRecord) -> None:
        nonlocal sent
        partition = rec.partition if plan.keep_partitions else None
        producer.send(
            plan.topic,
            key=rec.key,
            value=rec.value,
            headers=list(rec.headers) or None,
            partition=partition,
        )
        sent += 1

    def flush_batch() -> None:
        nonlocal sent
        if buf:
            producer.send(plan.topic, value=b"\n".join(buf), headers=NDJSON_HEADER)
            sent += 1
            if progress is not None:
                progress.update(len(buf))
            buf.clear()

    try:
        for rec in records:
            if plan.speed > 0:
                if t0_wall is None:
                    t0_wall, t0_ts = clock(), rec.ts_ms
                due = t0_wall + (rec.ts_ms - t0_ts) / 1000.0 / plan.speed
                ahead = due - clock()
                if ahead > 0:
                    flush_batch()
                    sleep(ahead)
            if plan.mode == "recorded":
                send(rec)
                if progress is not None:
                    progress.update()
                continue
            for part in _split_batch(rec):
                if plan.mode == "single":
                    send(part)
                    if progress is not None:
                        progress.update()
                else:
                    buf.append(part.value)
                    if len(buf) >= plan.batch_size:
                        flush_batch()
        flush_batch()
    except KeyboardInterrupt:
        pass
    finally:
        producer.flush()
        if progress is not None:
            progress.close()
    return sent
