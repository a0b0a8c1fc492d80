"""record -> replay -> record round-trips a topic's records byte for byte."""

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from kafka.admin import KafkaAdminClient, NewTopic

from parcel_stream.adapters.kafka_io import make_producer
from parcel_stream.feed import RawRecord, read_feed
from parcel_stream.settings import Settings
from tests.unit.samples import line


def _cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, **s.as_env()}
    return subprocess.run([sys.executable, "-m", "parcel_stream.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def by_partition(
    recs: list[RawRecord],
) -> dict[int, list[tuple[bytes | None, bytes, tuple[tuple[str, bytes], ...]]]]:
    out: dict[int, list[tuple[bytes | None, bytes, tuple[tuple[str, bytes], ...]]]] = defaultdict(
        list
    )
    for r in recs:
        out[r.partition].append((r.key, r.value, r.headers))
    return dict(out)


def test_record_replay_round_trip_is_byte_for_byte(settings: Settings, tmp_path: Path) -> None:
    s = settings
    copy_topic = s.topic_manifests + "-copy"
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    admin.create_topics([NewTopic(copy_topic, s.partitions, 1)])
    admin.close()
    p = make_producer(s.kafka_bootstrap)
    values = [line(parcel_id=f"R{i}") for i in range(40)] + [
        b"\xff\xfe not utf-8 \x00",
        b"",
        b"a\nb\nc",
        "üñíçødé €".encode(),
    ]
    for i, v in enumerate(values):
        headers = (
            [("content-type", b"application/json"), ("bin", bytes([i, 255]))]
            if i % 3 == 0
            else None
        )
        key = None if i % 5 == 0 else (b"\x00\xffk%d" % i if i % 7 == 0 else b"SHP%d" % (i % 4))
        p.send(s.topic_manifests, key=key, value=v, headers=headers, partition=i % s.partitions)
    p.flush()
    p.close()

    first, second = tmp_path / "a.ndjson.gz", tmp_path / "b.ndjson"
    r1 = _cli(s, "record", s.topic_manifests, "--out", str(first))
    assert r1.returncode == 0, r1.stderr
    assert f"wrote {len(values)} records" in r1.stdout and "recording:" in r1.stderr
    r2 = _cli(s, "replay", str(first), "--topic", copy_topic, "--keep-partitions")
    assert r2.returncode == 0, r2.stderr
    r3 = _cli(s, "record", copy_topic, "--out", str(second))
    assert r3.returncode == 0, r3.stderr

    original, copied = list(read_feed(first)), list(read_feed(second))
    assert len(original) == len(values) == len(copied)
    assert by_partition(original) == by_partition(copied)
    assert sorted(r.value for r in original) == sorted(values)

    # an offset range takes just those records
    r4 = _cli(s, "record", s.topic_manifests, "--out", str(tmp_path / "c.ndjson"),
              "--from-offset", "2", "--to-offset", "4")  # fmt: skip
    assert r4.returncode == 0, r4.stderr
    ranged = list(read_feed(tmp_path / "c.ndjson"))
    assert sorted({r.offset for r in ranged}) == [2, 3, 4] and len(ranged) == 3 * s.partitions


def test_record_rejects_bad_arguments(settings: Settings, tmp_path: Path) -> None:
    bad = _cli(settings, "record", "no-such-topic", "--out", str(tmp_path / "x.ndjson"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
    when = _cli(settings, "record", "--out", "x", "--since", "yesterday")
    assert when.returncode == 2 and "ISO 8601" in when.stderr
