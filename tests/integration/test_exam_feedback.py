"""Examination results on their topic move a shipper's reputation and change later scores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import orjson

from parcel_stream.adapters.kafka_io import make_producer, read_all
from parcel_stream.adapters.redis_store import RedisReputationStore
from parcel_stream.model import Decision, Rejection
from parcel_stream.settings import Settings
from tests.integration.conftest import alive, metrics_port, run_worker
from tests.integration.test_end_to_end import metric
from tests.unit.samples import line

NOW = 1_790_000_100_000


def exam(exam_id: str, parcel_id: str, outcome: str) -> bytes:
    return orjson.dumps({"exam_id": exam_id, "parcel_id": parcel_id, "outcome": outcome,
                         "examined_ts_ms": NOW, "finding": "precursor"})  # fmt: skip


def decisions(
    s: Settings, want: int, on_poll: Callable[[object], None] | None = None
) -> dict[str, Decision]:
    dec = msgspec.json.Decoder(Decision)
    got = read_all(
        s.kafka_bootstrap, [s.topic_decisions],
        lambda g: sum(v.count(b"\n") + 1 for _k, v in g[s.topic_decisions]) >= want, 60,
        on_poll=on_poll,
    )  # fmt: skip
    out = {}
    for _k, v in got[s.topic_decisions]:
        for x in v.split(b"\n"):
            d = dec.decode(x)
            out[d.parcel_id] = d
    return out


def test_exam_results_feed_back_into_scoring(settings: Settings, tmp_path: Path) -> None:
    s = settings
    shipper = {"id": "SHPX", "name": "X Export", "address": {"lines": ["1 Rd"], "country": "CN"},
               "country": "CN"}  # fmt: skip
    precursor = [{"description": "sample", "hs_code": "2933.39", "quantity": 1, "value": 24.0}]
    p = make_producer(s.kafka_bootstrap)
    with run_worker(s, tmp_path) as worker:
        for pid in ("H1", "H2"):
            p.send(s.topic_manifests, key=b"SHPX",
                   value=line(parcel_id=pid, shipper=shipper, items=precursor))  # fmt: skip
        p.flush()
        first = decisions(s, 2, alive(worker, tmp_path))
        assert first["H1"].lane == first["H2"].lane == "hold"
        before = first["H2"].reason_codes
        for value in (exam("E1", "H1", "seized"), exam("E1", "H1", "seized"),
                      exam("E2", "UNKNOWN", "clean"), b'{"exam_id": "E3"}',
                      exam("E4", "H2", "violation")):  # fmt: skip
            p.send(s.topic_exam_results, value=value)
        p.flush()
        deadline = time.monotonic() + 30
        statuses: dict[str, float] = {}
        while time.monotonic() < deadline:
            statuses = metric(
                metrics_port(s, worker, tmp_path), "parcel_stream_exam_results_total{"
            )
            if sum(statuses.values()) >= 5:
                break
            time.sleep(0.3)
        assert statuses == {
            'parcel_stream_exam_results_total{status="applied"}': 2.0,
            'parcel_stream_exam_results_total{status="duplicate"}': 1.0,
            'parcel_stream_exam_results_total{status="unknown_parcel"}': 1.0,
            'parcel_stream_exam_results_total{status="rejected"}': 1.0,
        }
        # an ordinary parcel from the same shipper is now scored with the seizure on record
        p.send(s.topic_manifests, key=b"SHPX", value=line(parcel_id="L1", shipper=shipper))
        p.flush()
        later = decisions(s, 3, alive(worker, tmp_path))["L1"]
        assert worker.poll() is None
    p.close()
    assert "EXAM_VIOLATIONS" not in before and "EXAM_VIOLATIONS" in later.reason_codes
    rejects = read_all(s.kafka_bootstrap, [s.topic_rejects], lambda g: bool(g[s.topic_rejects]), 10)
    rej = msgspec.json.decode(rejects[s.topic_rejects][0][1], type=Rejection)
    assert rej.reason == "missing_field" and rej.source.startswith(s.topic_exam_results)

    async def state() -> None:
        store = RedisReputationStore(s.redis_url, prefix=s.redis_key_prefix)
        st = await store.shipper("SHPX")
        await store.close()
        assert st is not None and (st.exams, st.violations) == (2, 2)

    asyncio.run(state())

    import json
    import os
    import subprocess
    import sys

    shown = subprocess.run(
        [sys.executable, "-m", "parcel_stream.cli", "reputation", "show", "SHPX"],
        env={**os.environ, **s.as_env()}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert (doc["parcels_seen"], doc["examinations"], doc["violations_found"]) == (3, 2, 2)
