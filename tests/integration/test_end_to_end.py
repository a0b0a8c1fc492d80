"""Manifests in (kafka-python, single and batch records), holds/decisions/rejects out."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter
from pathlib import Path

import msgspec
import orjson
import pytest

from parcel_stream.adapters.kafka_io import make_producer, produce_parcels, read_all
from parcel_stream.adapters.redis_store import RedisReputationStore
from parcel_stream.decide import decision_count, read_decisions
from parcel_stream.demo import MALFORMED
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.model import Decision, Hold, Rejection
from parcel_stream.settings import Settings
from tests.integration.conftest import metrics_port, run_worker

Topics = dict[str, list[tuple[bytes | None, bytes]]]


def feed(n: int, seed: int) -> list[tuple[bytes | None, bytes]]:
    return [
        (doc["shipper"]["id"].encode(), orjson.dumps(doc))
        for doc, _ in generate(FeedConfig(parcels=n, seed=seed))
    ]


def decisions_of(got: Topics, s: Settings) -> list[Decision]:
    """The decisions read, in either form (``PARCEL_DECISIONS_FORMAT``)."""
    return [d for _k, v in got[s.topic_decisions] for d in read_decisions(v)]


def read_until(s: Settings, expected: int, worker, timeout_s: float = 120) -> Topics:  # type: ignore[no-untyped-def]
    def accounted(got: Topics) -> int:
        return sum(decision_count(v) for _k, v in got[s.topic_decisions]) + len(
            got[s.topic_rejects]
        )

    def check(got: Topics) -> None:
        assert worker.poll() is None, "worker exited; see its log"

    return read_all(
        s.kafka_bootstrap,
        [s.topic_decisions, s.topic_holds, s.topic_rejects],
        lambda g: accounted(g) >= expected,
        timeout_s,
        on_poll=check,
    )


def metric(port: int, name: str) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for row in body.splitlines():
        if row.startswith(name):
            key, value = row.rsplit(" ", 1)
            out[key] = float(value)
    return out


@pytest.mark.parametrize(("consume", "form"), [("batches", "lines"), ("events", "columns")])
def test_every_parcel_gets_exactly_one_decision_or_rejection(
    consume: str, form: str, settings: Settings, tmp_path: Path
) -> None:
    """Both ways the agent takes records: a fetch at a time (the default) and as Faust
    events (``PARCEL_CONSUME=events``); and both forms of the decisions records, a line a
    parcel (the default) and a record in columns (``PARCEL_DECISIONS_FORMAT=columns``)."""
    s = settings.replace(consume=consume, decisions_format=form)
    singles = feed(300, seed=1)
    batched = feed(3000, seed=2)
    # one batch record that mixes good parcels and malformed lines
    mixed = feed(20, seed=3)
    mixed_lines = [v for _k, v in mixed[:10]] + list(MALFORMED) + [v for _k, v in mixed[10:]]
    producer = make_producer(s.kafka_bootstrap)
    t_start = time.monotonic()
    with run_worker(s, tmp_path) as worker:
        produce_parcels(producer, s.topic_manifests, singles, batch_size=1)
        produce_parcels(producer, s.topic_manifests, batched, batch_size=250)
        producer.send(s.topic_manifests, value=b"\n".join(mixed_lines))
        producer.send(s.topic_manifests, key=b"x", value=b"{not json")  # single, malformed
        producer.send(s.topic_manifests, key=b"y", value=b"x" * (s.max_record_bytes + 1))
        producer.flush()
        good = len(singles) + len(batched) + len(mixed)
        bad = len(MALFORMED) + 2
        got = read_until(s, good + bad, worker)
        elapsed = time.monotonic() - t_start
        port = metrics_port(s, worker, tmp_path)
        decisions = decisions_of(got, s)
        # metrics are updated after the batch's outputs were sent: poll briefly for the last one
        deadline = time.monotonic() + 10
        lanes: dict[str, float] = {}
        while time.monotonic() < deadline:
            lanes = metric(port, "parcel_stream_parcels_total{")
            if sum(lanes.values()) >= good:
                break
            time.sleep(0.2)
        rejections_metric = metric(port, "parcel_stream_rejections_total{")
    producer.close()
    print(f"first run: {good + bad} manifests accounted for in {elapsed:.1f}s incl. worker start")

    columns = [v.startswith(b'{"kind":"decision-batch"') for _k, v in got[s.topic_decisions]]
    assert columns and set(columns) == {form == "columns"}
    sent_ids = [orjson.loads(v)["parcel_id"] for _k, v in singles + batched + mixed]
    counts = Counter(d.parcel_id for d in decisions)
    assert set(counts) == set(sent_ids) and max(counts.values()) == 1
    rejections = [msgspec.json.decode(v, type=Rejection) for _k, v in got[s.topic_rejects]]
    assert len(rejections) == bad
    assert Counter(r.reason for r in rejections) == Counter(
        {
            "invalid_json": 2,
            "out_of_range": 1,
            "not_an_object": 1,
            "invalid_utf8": 1,
            "oversize_record": 1,
        }
    )
    assert all(
        r.source.startswith(s.topic_manifests + "/") and r.path.startswith("$") for r in rejections
    )

    holds = [(k, msgspec.json.decode(v, type=Hold)) for k, v in got[s.topic_holds]]
    held = {d.parcel_id for d in decisions if d.lane == "hold"}
    assert holds and {h.parcel_id for _k, h in holds} == held
    assert all(k == h.parcel_id.encode() and h.reasons and h.ruleset_version for k, h in holds)

    # metrics agree with what was produced
    assert sum(lanes.values()) == len(decisions)
    assert lanes['parcel_stream_parcels_total{lane="hold"}'] == len(held)
    assert sum(rejections_metric.values()) == bad

    # reputation in Redis counts every scored parcel once per shipper
    per_shipper = Counter(d.shipper_id for d in decisions)
    holds_per_shipper = Counter(h.shipper_id for _k, h in holds if h.selection == "risk")

    async def check_redis() -> None:
        store = RedisReputationStore(s.redis_url, prefix=s.redis_key_prefix)
        try:
            for sid, n in per_shipper.most_common(25):
                st = await store.shipper(sid)
                assert st is not None and (st.seen, st.holds) == (n, holds_per_shipper[sid])
        finally:
            await store.close()

    asyncio.run(check_redis())

    # A restarted worker resumes from committed offsets: old parcels are not scored again.
    more = feed(200, seed=9)
    producer = make_producer(s.kafka_bootstrap)
    with run_worker(s, tmp_path) as worker:
        produce_parcels(producer, s.topic_manifests, more, batch_size=50)
        got2 = read_until(s, good + bad + len(more), worker)
    producer.close()
    counts2 = Counter(d.parcel_id for d in decisions_of(got2, s))
    assert len(counts2) == good + len(more) and max(counts2.values()) == 1
