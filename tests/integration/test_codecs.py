"""Records as hubs produce them: librdkafka (confluent-kafka) with each compression codec.

With cramjam installed every codec is decided. A worker that cannot decode a record (here:
cramjam hidden from it, so snappy, lz4 and zstd are unknown codecs; the records are real
broker records) skips exactly those records, reports each on the rejects topic and in a
metric, keeps consuming every partition, loses nothing else, and commits past them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
import orjson
import pytest
from confluent_kafka import KafkaError, Message, Producer
from kafka import KafkaConsumer, TopicPartition

from parcel_stream.feed import read_feed
from parcel_stream.model import Rejection
from parcel_stream.settings import Settings
from tests.integration.conftest import metrics_port, run_worker
from tests.integration.test_end_to_end import decisions_of, feed, metric, read_until

CODECS = ("gzip", "snappy", "lz4", "zstd")
NDJSON: list[tuple[str, str | bytes | None]] = [("content-type", b"application/x-ndjson")]
Parcels = list[tuple[bytes | None, bytes]]
Offsets = list[tuple[int, int]]  # (partition, offset) of each record produced


def hub_producer(s: Settings, codec: str) -> Producer:
    """A hub's librdkafka producer: the codec, and Java-compatible key hashing."""
    return Producer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "compression.type": codec,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "acks": "all",
        }
    )


def produce(
    producer: Producer,
    topic: str,
    parcels: Parcels,
    batch_size: int = 1,
    partition: int | None = None,
) -> Offsets:
    """Single-parcel records (keyed by shipper), or NDJSON batch records of ``batch_size``;
    returns where each record landed, once all are acknowledged."""
    landed: Offsets = []
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            landed.append((msg.partition() or 0, msg.offset() or 0))

    where = -1 if partition is None else partition  # -1: the partitioner chooses
    if batch_size == 1:
        for key, value in parcels:
            producer.produce(topic, value, key, where, on_delivery=delivered)
    else:
        for lo in range(0, len(parcels), batch_size):
            value = b"\n".join(v for _k, v in parcels[lo : lo + batch_size])
            producer.produce(topic, value, None, where, on_delivery=delivered, headers=NDJSON)
    assert producer.flush(30) == 0, "records not delivered within 30 s"
    assert not errors, errors
    return landed


def ids(parcels: Parcels) -> list[str]:
    return [orjson.loads(v)["parcel_id"] for _k, v in parcels]


def test_every_codec_is_decided(settings: Settings, tmp_path: Path) -> None:
    s = settings
    sent: Parcels = []
    with run_worker(s, tmp_path) as worker:
        for n, codec in enumerate(CODECS):
            singles, batched = feed(60, seed=100 + n), feed(60, seed=200 + n)
            producer = hub_producer(s, codec)
            produce(producer, s.topic_manifests, singles)
            produce(producer, s.topic_manifests, batched, batch_size=20)
            sent += singles + batched
        got = read_until(s, len(sent), worker, timeout_s=90)
    assert not got[s.topic_rejects], [v[:200] for _k, v in got[s.topic_rejects]]
    counts = Counter(d.parcel_id for d in decisions_of(got, s))
    assert set(counts) == set(ids(sent)) and max(counts.values()) == 1
    # the analysts' tools (kafka-python) read the compressed records too
    out = tmp_path / "recorded.ndjson"
    rec = subprocess.run(
        [sys.executable, "-m", "parcel_stream.cli", "record", s.topic_manifests, "--out", str(out)],
        env={**os.environ, **s.as_env()}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert rec.returncode == 0, rec.stderr
    lines = [x for r in read_feed(out) for x in r.value.split(b"\n")]
    assert sorted(lines) == sorted(v for _k, v in sent)


def committed(s: Settings, partitions: range) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=s.app_id,
                             enable_auto_commit=False)  # fmt: skip
    try:
        return {p: consumer.committed(TopicPartition(s.topic_manifests, p)) for p in partitions}
    finally:
        consumer.close()


def test_undecodable_records_are_skipped_reported_and_committed_past(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings
    hide = tmp_path / "no-cramjam"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n\n# this worker has no codec library: snappy, lz4 and zstd are unknown\n"
        "sys.modules['cramjam'] = None\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(hide))  # for the worker's process only
    gzip = hub_producer(s, "gzip")
    good: Parcels = []
    landed: Offsets = []
    poison: Offsets = []
    with run_worker(s, tmp_path) as worker:
        # good records on every partition, then records nobody here can decode on partition
        # 1 (each codec its own record batch; the snappy one with 3 records), then more good
        # records on every partition, partition 1 included
        before, after, tail = feed(120, seed=1), feed(120, seed=2), feed(20, seed=3)
        landed += produce(gzip, s.topic_manifests, before[:60])
        landed += produce(gzip, s.topic_manifests, before[60:], batch_size=20)
        for codec, n, seed in (("snappy", 3, 4), ("lz4", 1, 5), ("zstd", 1, 6)):
            poison += produce(hub_producer(s, codec), s.topic_manifests, feed(n, seed), 1, 1)
        landed += produce(gzip, s.topic_manifests, after, batch_size=10)
        landed += produce(gzip, s.topic_manifests, tail, partition=1)
        good = before + after + tail
        got = read_until(s, len(good) + len(poison), worker, timeout_s=90)

        # every good parcel decided once; each undecodable record rejected once, by offset
        counts = Counter(d.parcel_id for d in decisions_of(got, s))
        assert set(counts) == set(ids(good)) and max(counts.values()) == 1
        rejections = [msgspec.json.decode(v, type=Rejection) for _k, v in got[s.topic_rejects]]
        assert sorted(r.source for r in rejections) == sorted(
            f"{s.topic_manifests}/{p}/{o}" for p, o in poison
        )
        assert {r.reason for r in rejections} == {"undecodable_record"}
        assert all(r.detail.startswith("unsupported_codec: ") for r in rejections)
        assert all(r.raw_bytes == 0 and not r.raw_b64 for r in rejections)

        # counted; and the group's committed offsets reach the end of every partition, so
        # a restarted worker neither stops at nor re-reports the skipped records
        ends: dict[int, int] = {}
        for p, o in landed + poison:
            ends[p] = max(ends.get(p, 0), o + 1)
        assert max(o for _p, o in poison) < ends[1]
        port = metrics_port(s, worker, tmp_path)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            poisoned = {
                k: v for k, v in metric(port, "parcel_stream_poison_records_total{").items() if v
            }
            if committed(s, range(s.partitions)) == ends and sum(poisoned.values()) >= 5:
                break
            time.sleep(0.5)
        assert worker.poll() is None, "worker exited; see its log"
    assert committed(s, range(s.partitions)) == ends
    assert poisoned == {
        f'parcel_stream_poison_records_total{{reason="unsupported_codec",topic="{s.topic_manifests}"}}': 5.0
    }
    log = (tmp_path / "worker.log").read_text()
    assert f"topic={s.topic_manifests} partition=1 offset={poison[0][1]} " in log
