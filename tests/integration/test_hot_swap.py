"""A rule-set change under load: no parcel lost, none scored twice, switch at a batch
boundary, an invalid file refused while the running rule set goes on."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import msgspec
import orjson

from parcel_stream.adapters.kafka_io import make_producer, read_all
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.model import Decision
from parcel_stream.rules import DEFAULT_RULESET_PATH
from parcel_stream.settings import Settings
from tests.integration.conftest import alive, metrics_port, run_worker
from tests.integration.test_end_to_end import metric

DEFAULT = DEFAULT_RULESET_PATH.read_text()


def publish(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def version(v: str, hold: int = 60) -> str:
    return DEFAULT.replace('version = "default-2026.11.3"', f'version = "{v}"').replace(
        "hold_score = 60", f"hold_score = {hold}"
    )


def test_hot_swap_under_load(settings: Settings, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    publish(rules, version("v1"))
    s = settings.replace(rules_file=str(rules))
    docs = [d for d, _ in generate(FeedConfig(parcels=4000, seed=17))]
    producer = make_producer(s.kafka_bootstrap, linger_ms=0)
    dec = msgspec.json.Decoder(Decision)

    def offer(batch: list[dict[str, Any]]) -> None:  # about 1,300 parcels/s as single records
        for i, d in enumerate(batch):
            producer.send(s.topic_manifests, key=d["shipper"]["id"].encode(), value=orjson.dumps(d))
            if i % 100 == 99:
                producer.flush()
                time.sleep(0.075)
        producer.flush()

    with run_worker(s, tmp_path) as worker:
        # wait until the worker scores with v1
        offer(docs[:50])
        read_all(s.kafka_bootstrap, [s.topic_decisions],
                 lambda g: bool(g[s.topic_decisions]), 60, alive(worker, tmp_path))  # fmt: skip
        sender = threading.Thread(target=offer, args=(docs[50:],))
        sender.start()
        time.sleep(1.0)
        publish(rules, version("v2", hold=45))
        time.sleep(1.5)
        publish(rules, DEFAULT.replace("weight = 25", 'weight = "heavy"'))  # invalid
        sender.join()

        def done(g: dict[str, list[tuple[bytes | None, bytes]]]) -> bool:
            return sum(v.count(b"\n") + 1 for _k, v in g[s.topic_decisions]) >= len(docs)

        got = read_all(s.kafka_bootstrap, [s.topic_decisions], done, 120, alive(worker, tmp_path))
        port = metrics_port(s, worker, tmp_path)
        reloads = metric(port, "parcel_stream_ruleset_reloads_total{")
        info = metric(port, "parcel_stream_ruleset_info{")
        assert worker.poll() is None
    producer.close()

    records = [[dec.decode(x) for x in v.split(b"\n")] for _k, v in got[s.topic_decisions]]
    decisions = [d for r in records for d in r]
    counts = Counter(d.parcel_id for d in decisions)
    assert set(counts) == {d["parcel_id"] for d in docs} and max(counts.values()) == 1
    # both versions scored parcels, and v2 ran on after the invalid file was refused
    assert {d.ruleset_version for d in decisions} == {"v1", "v2"}
    assert reloads == {'parcel_stream_ruleset_reloads_total{result="ok"}': 1.0,
                       'parcel_stream_ruleset_reloads_total{result="error"}': 1.0}  # fmt: skip
    assert any('version="v2"' in k for k in info)
    # the switch happens at a batch boundary: one version per decisions record, and per
    # input partition no v1 decision after a v2 one
    assert all(len({d.ruleset_version for d in r}) == 1 for r in records)
    by_part: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for d in decisions:
        _topic, part, offset = d.source.rsplit("/", 2)
        by_part[part].append((int(offset), d.ruleset_version))
    for seq in by_part.values():
        versions = [v for _o, v in sorted(seq)]
        assert versions == sorted(versions), "v1 after v2 on one partition"
