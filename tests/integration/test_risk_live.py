"""The learned risk model live (shadow): the worker reports a probability and a selection
probability in every decision; examination results train it; later holds carry learned
reasons in words; ``learner show`` lists the strongest learned keys, ``rules explain
--learned`` the parcel's learned part, and ``learner rollback`` restores an earlier
version."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import orjson

from parcel_stream.adapters.kafka_io import make_producer, read_all
from parcel_stream.model import Hold
from parcel_stream.settings import Settings
from tests.integration.conftest import alive, metrics_port, run_worker
from tests.integration.test_end_to_end import metric
from tests.integration.test_exam_feedback import decisions
from tests.unit.samples import line

SHIPPER = {"id": "SHPR", "name": "R Export", "address": {"lines": ["3 Rd"], "country": "CN"},
           "country": "CN"}  # fmt: skip
GOODS = [{"description": "sample", "hs_code": "2933.39", "quantity": 1, "value": 24.0}]


def cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "parcel_stream.cli", *args],
                          env={**os.environ, **s.as_env()}, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_the_risk_model_learns_live_and_explains_its_holds(
    settings: Settings, tmp_path: Path
) -> None:
    s = settings.replace(risk_model="shadow", learner_mode="off", learner_refresh_s=0.2)
    p = make_producer(s.kafka_bootstrap)
    first = [f"R{i}" for i in range(6)]
    with run_worker(s, tmp_path) as worker:
        for pid in first:
            p.send(s.topic_manifests, key=b"SHPR",
                   value=line(parcel_id=pid, shipper=SHIPPER, items=GOODS))  # fmt: skip
        p.flush()
        got = decisions(s, len(first), alive(worker, tmp_path))
        for pid in first:
            d = got[pid]
            assert d.probability is not None and 0 < d.probability < 1, d
            assert d.selection_probability is not None, d
        examined = [pid for pid in first if got[pid].lane in ("review", "hold")]
        assert len(examined) >= 5, got
        for pid in examined:  # examined now: the counts are not decayed when shown
            p.send(s.topic_exam_results, value=orjson.dumps({
                "exam_id": f"E{pid}", "parcel_id": pid, "outcome": "violation",
                "examined_ts_ms": time.time_ns() // 1_000_000, "finding": "precursor"}))  # fmt: skip
        p.flush()
        port = metrics_port(s, worker, tmp_path)
        deadline = time.monotonic() + 30
        applied = 0.0
        while time.monotonic() < deadline and applied < len(examined):
            m = metric(port, "parcel_stream_exam_results_total")
            applied = sum(v for k, v in m.items() if 'status="applied"' in k)
            time.sleep(0.2)
        assert applied == len(examined)
        time.sleep(0.5)  # past the worker's learner refresh interval
        p.send(s.topic_manifests, key=b"SHPR",
               value=line(parcel_id="R9", shipper=SHIPPER, items=GOODS))  # fmt: skip
        p.flush()
        later = decisions(s, len(first) + 1, alive(worker, tmp_path))["R9"]
        holds = read_all(s.kafka_bootstrap, [s.topic_holds],
                         lambda g: any(k == b"R9" for k, _v in g[s.topic_holds]), 30,
                         alive(worker, tmp_path))  # fmt: skip
        assert worker.poll() is None
    p.close()
    before = got[first[0]].probability
    assert later.probability is not None and before is not None and later.probability > before
    assert later.learner_version >= 1
    hold = next(msgspec.json.decode(v, type=Hold) for k, v in holds[s.topic_holds] if k == b"R9")
    assert hold.probability == later.probability
    texts = [r.text for r in hold.learned_reasons]
    assert any(t.startswith("HS 2933.39") and "violations in" in t for t in texts), texts

    shown = cli(s, "learner", "show")
    assert shown.returncode == 0, shown.stderr
    assert f"risk model: mode shadow, {len(examined)} examination results learned" in shown.stdout
    assert "| hs6:293339 | HS 2933.39 |" in shown.stdout, shown.stdout
    parcel = tmp_path / "r9.json"
    parcel.write_bytes(line(parcel_id="R9", shipper=SHIPPER, items=GOODS))
    explained = cli(s, "rules", "explain", str(parcel), "--learned")
    assert explained.returncode == 0, explained.stderr
    assert "learned model: probability of a violation" in explained.stdout
    assert "HS 2933.39" in explained.stdout
    back = cli(s, "learner", "rollback", "--version", "1")
    assert back.returncode == 0 and "rolled back to version 1" in back.stdout, back.stderr
    missing = cli(s, "learner", "rollback", "--version", "999")
    assert missing.returncode != 0 and "not in the learner history" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_learn_warm_starts_the_model_from_a_labelled_history(
    settings: Settings, tmp_path: Path
) -> None:
    import redis

    s = settings.replace(redis_key_prefix=f"w{time.time_ns() % 10**6}", risk_model="shadow")
    feed, labels = tmp_path / "feed.ndjson", tmp_path / "labels.ndjson"
    made = cli(s, "generate", "--parcels", "6000", "--days", "6", "--hidden-risk",
               "--out", str(feed), "--labels", str(labels))  # fmt: skip
    assert made.returncode == 0, made.stderr
    dry = cli(s, "learn", str(feed), "--labels", str(labels), "--dry-run")
    assert dry.returncode == 0 and "dry run: nothing stored" in dry.stdout, dry.stderr
    assert "learned from 6,000 outcomes" in dry.stdout
    done = cli(s, "learn", str(feed), "--labels", str(labels))
    assert done.returncode == 0, done.stderr
    assert "learner state version 1" in done.stdout, done.stdout
    stored = int(done.stdout.split("stored: ")[1].split(" ")[0].replace(",", ""))
    client = redis.Redis.from_url(s.redis_url)
    counts, names = f"{s.redis_key_prefix}:risk", f"{s.redis_key_prefix}:risk:names"
    assert client.hlen(counts) == stored > 100 and 0 < client.hlen(names) < stored
    used = int(client.memory_usage(counts, samples=0) or 0)
    used += int(client.memory_usage(names, samples=0) or 0)
    print(f"learned keys: {stored:,}, {used / stored:.0f} bytes each (MEMORY USAGE)")
    assert used / stored < 200
    shown = cli(s, "learner", "show")
    assert "risk model: mode shadow, 6,000 examination results learned" in shown.stdout
    assert "note" not in shown.stderr and shown.returncode == 0
    # only past examinations: the unlabelled parcels teach nothing
    few = tmp_path / "few.ndjson"
    few.write_text("".join(line + "\n" for line in labels.read_text().splitlines()[:500]))
    part = cli(s, "learn", str(feed), "--labels", str(few), "--examined-only", "--dry-run")
    assert "learned from 500 outcomes" in part.stdout, part.stdout + part.stderr
    # a second warm start: refused unless told whether to start over or to add
    again = cli(s, "learn", str(feed), "--labels", str(labels))
    assert again.returncode == 2 and "--replace starts them over" in again.stderr
    over = cli(s, "learn", str(feed), "--labels", str(labels), "--replace")
    assert over.returncode == 0 and client.hlen(counts) == stored, over.stderr
    # the undo the first warm start printed: back to nothing learned
    undo = done.stdout.split("`")[1].split()
    assert undo[-2:] == ["--version", "0"]
    back = cli(s, *undo[1:])
    assert back.returncode == 0 and "rolled back to version 0" in back.stdout, back.stderr
    assert "risk model" not in cli(s, "learner", "show").stdout
    missing = cli(s, "learn", str(feed), "--labels", str(tmp_path / "none.ndjson"))
    assert missing.returncode != 0 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr
