"""Known-shipper programme and adaptive weights, live: an enrolled shipper gets the
benefit; an examination that finds a violation suspends it (visible in the decisions and
holds), and with the learner on, the same result moves the learned weights that the next
scores carry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from parcel_stream.adapters.kafka_io import make_producer, read_all
from parcel_stream.model import Hold
from parcel_stream.rules import DEFAULT_RULESET_PATH
from parcel_stream.settings import Settings
from tests.integration.conftest import alive, metrics_port, run_worker
from tests.integration.test_end_to_end import metric
from tests.integration.test_exam_feedback import decisions, exam
from tests.unit.samples import line

SHIPPER = {"id": "SHPK", "name": "K Export", "address": {"lines": ["9 Rd"], "country": "CN"},
           "country": "CN"}  # fmt: skip
PRECURSOR = [{"description": "sample", "hs_code": "2933.39", "quantity": 1, "value": 24.0}]


def test_known_shipper_suspended_by_an_exam_and_learner_moves(
    settings: Settings, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    text = DEFAULT_RULESET_PATH.read_text()
    rules.write_text(text.replace("known_shippers = []", 'known_shippers = ["SHPK"]'))
    s = settings.replace(rules_file=str(rules), learner_mode="on", learner_refresh_s=0.2)
    p = make_producer(s.kafka_bootstrap)
    with run_worker(s, tmp_path) as worker:
        p.send(s.topic_manifests, key=b"SHPK",
               value=line(parcel_id="K1", shipper=SHIPPER, items=PRECURSOR))  # fmt: skip
        p.flush()
        k1 = decisions(s, 1, alive(worker, tmp_path))["K1"]
        assert "KNOWN_SHIPPER" in k1.reason_codes and k1.lane in ("review", "hold"), k1
        assert k1.learner_version == 0
        p.send(s.topic_exam_results, value=exam("EK1", "K1", "violation"))
        p.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = metric(metrics_port(s, worker, tmp_path), "parcel_stream_learner_updates_total")
            if m.get("parcel_stream_learner_updates_total", 0) >= 1:
                break
            time.sleep(0.3)
        time.sleep(0.5)  # past the worker's learner refresh interval
        p.send(s.topic_manifests, key=b"SHPK",
               value=line(parcel_id="K2", shipper=SHIPPER, items=PRECURSOR))  # fmt: skip
        p.flush()
        k2 = decisions(s, 2, alive(worker, tmp_path))["K2"]
        holds = read_all(s.kafka_bootstrap, [s.topic_holds],
                         lambda g: any(k == b"K2" for k, _v in g[s.topic_holds]), 30,
                         alive(worker, tmp_path))  # fmt: skip
        assert worker.poll() is None
    p.close()
    assert "KNOWN_SHIPPER_SUSPENDED" in k2.reason_codes and "KNOWN_SHIPPER" not in k2.reason_codes
    assert k2.score > k1.score and k2.lane == "hold" and k2.learner_version >= 1
    hold = next(msgspec.json.decode(v, type=Hold) for k, v in holds[s.topic_holds] if k == b"K2")
    reasons = {r.code: r for r in hold.reasons}
    assert "KNOWN_SHIPPER_SUSPENDED" in reasons and hold.learner_version == k2.learner_version
    # the violation taught the learner that the rules which fired on K1 under-scored it
    assert reasons["HIGH_RISK_HS"].learned_points > 0

    shown = subprocess.run(
        [sys.executable, "-m", "parcel_stream.cli", "learner", "show", "--json"],
        env={**os.environ, **s.as_env()}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    state = json.loads(shown.stdout.splitlines()[0])
    assert state["version"] >= 1 and state["examples"] == 1 and state["theta"]["HIGH_RISK_HS"] > 0
