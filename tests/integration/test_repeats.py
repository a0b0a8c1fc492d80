"""A live worker: resent parcels are repeats, changed ones amendments, and a backtest of
the recorded feed gives every parcel the decision the worker gave it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
from kafka.admin import KafkaAdminClient, NewTopic

from parcel_stream.adapters.kafka_io import make_producer, produce_parcels
from parcel_stream.adapters.redis_store import RedisReputationStore
from parcel_stream.backtest import run_backtest
from parcel_stream.currency import USD_PER_UNIT
from parcel_stream.feed import read_feed
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.model import Decision
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings
from tests.integration.conftest import run_worker
from tests.integration.test_end_to_end import decisions_of, read_until

NDJSON = [("content-type", b"application/x-ndjson")]


def usd(doc: dict[str, object]) -> float:
    return float(doc["declared_value"]) * USD_PER_UNIT[str(doc["currency"])]  # type: ignore[arg-type]


def docs(n: int, seed: int, shippers: int = 30) -> list[dict[str, object]]:
    return [d for d, _ in generate(FeedConfig(parcels=n, seed=seed, shippers=shippers))]


def test_resent_parcels_are_repeats_and_changed_ones_amendments(
    settings: Settings, tmp_path: Path
) -> None:
    s = settings
    base = docs(300, seed=31)
    x, y = base[0], base[1]
    y2 = {**y, "declared_value": float(y["declared_value"]) + 250.0}  # type: ignore[arg-type]
    producer = make_producer(s.kafka_bootstrap)
    with run_worker(s, tmp_path) as worker:
        produce_parcels(producer, s.topic_manifests,
                        [(str(d["shipper"]["id"]).encode(), orjson.dumps(d)) for d in base],  # type: ignore[index]
                        batch_size=50)  # fmt: skip
        producer.flush()
        read_until(s, len(base), worker)
        # x resent in a record of its own, then twice inside one batch record (whitespace
        # and key order changed: same content); y sent again with another value.
        producer.send(s.topic_manifests, key=b"k", value=orjson.dumps(x))
        twice = (
            orjson.dumps(dict(reversed(list(x.items()))))
            + b"\n"
            + orjson.dumps(x, option=orjson.OPT_INDENT_2).replace(b"\n", b"")
        )
        producer.send(s.topic_manifests, value=twice, headers=NDJSON)
        producer.send(s.topic_manifests, key=b"k", value=orjson.dumps(y2))
        producer.flush()
        got = read_until(s, len(base) + 4, worker)
    decided = decisions_of(got, s)
    assert len(decided) == len(base) + 4
    xs = [d for d in decided if d.parcel_id == x["parcel_id"]]
    # decisions of other partitions come in any order: find the original
    (original,) = [d for d in xs if d.repeat_of is None]
    assert len(xs) == 4 and all(d.repeat_of == original.source for d in xs if d is not original)
    content = {(d.score, d.lane, tuple(d.reason_codes), d.ruleset_version, d.decision_ts_ms,
                d.event_ts_ms) for d in xs}  # fmt: skip
    assert len(content) == 1  # one decision content, re-emitted
    ys = [d for d in decided if d.parcel_id == y["parcel_id"]]
    (first,) = [d for d in ys if d.amends is None]
    assert len(ys) == 2 and [d.amends for d in ys if d is not first] == [first.source]

    async def state() -> None:
        store = RedisReputationStore(s.redis_url, prefix=s.redis_key_prefix)
        try:
            for sid in {str(x["shipper"]["id"]), str(y["shipper"]["id"])}:  # type: ignore[index]
                mine = [d for d in base if d["shipper"]["id"] == sid]  # type: ignore[index]
                st = await store.shipper(sid)
                assert st is not None and st.seen == len(mine), sid  # counted once each
                want = sum(usd(d) for d in mine)
                if sid == y["shipper"]["id"]:  # type: ignore[index]
                    want += usd(y2) - usd(y)  # the amendment replaced the original's value
                assert abs(st.value_usd - want) < 1e-6 * max(want, 1.0), sid
        finally:
            await store.close()

    asyncio.run(state())


def _cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, **s.as_env()}
    return subprocess.run([sys.executable, "-m", "parcel_stream.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_backtest_of_the_recorded_feed_gives_the_live_decisions(
    settings: Settings, tmp_path: Path
) -> None:
    # one partition: one order for every shared state (a consignee address)
    s = settings.replace(topic_manifests=settings.topic_manifests + "-one")
    admin = KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    admin.create_topics([NewTopic(s.topic_manifests, 1, 1)])
    admin.close()
    feed = docs(2500, seed=32, shippers=80)
    lines = [(str(d["shipper"]["id"]).encode(), orjson.dumps(d)) for d in feed]  # type: ignore[index]
    producer = make_producer(s.kafka_bootstrap)
    with run_worker(s, tmp_path) as worker:
        produce_parcels(producer, s.topic_manifests, lines[:600], batch_size=1)
        produce_parcels(producer, s.topic_manifests, lines[600:], batch_size=137, single_every=9)
        producer.flush()
        got = read_until(s, len(feed), worker)
    live = {d.parcel_id: d for d in decisions_of(got, s)}
    assert len(live) == len(feed)
    recording = tmp_path / "feed.ndjson"
    rec = _cli(s, "record", s.topic_manifests, "--out", str(recording))
    assert rec.returncode == 0, rec.stderr
    run = run_backtest(read_feed(recording), default_ruleset(s), encode=True,
                       state_config=s.state_config(), chunk_bytes=300_000)  # fmt: skip
    replayed: dict[str, Decision] = {}
    for out in run.outputs:
        for _k, value in out.decisions:
            for line in value.split(b"\n"):
                d = orjson.loads(line)
                replayed[d["parcel_id"]] = Decision(**d)
    assert replayed.keys() == live.keys()
    differ = [
        pid for pid, d in live.items()
        if (d.lane, d.score, d.reason_codes, d.selection)
        != (replayed[pid].lane, replayed[pid].score, replayed[pid].reason_codes,
            replayed[pid].selection)
    ]  # fmt: skip
    assert not differ, f"{len(differ)} parcels decided differently, e.g. {differ[:5]}"
    assert sum(d.lane == "hold" for d in live.values()) > 0
