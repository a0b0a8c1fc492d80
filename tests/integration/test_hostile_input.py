"""Hostile input through a live worker at CI size (benchmarks/reliability/hostile.py runs
100,000 cases): mixed into valid traffic, every case the contract refuses is rejected
with a reason and a path, every parcel it accepts is decided, the metrics count every
rejection, and the worker stays up."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.reliability.harness import Worker
from benchmarks.reliability.hostile import read_outputs, rejection_metrics, send_mixed
from parcel_stream.settings import Settings


def test_hostile_manifests_mixed_into_traffic(settings: Settings, tmp_path: Path) -> None:
    worker = Worker(settings, tmp_path / "worker.log")
    worker.start()
    try:
        must, refused, due, kinds = send_mixed(settings, 3000, 2000, seed=4)
        decided, rejections = read_outputs(settings, len(must), due, timeout_s=180)
        time.sleep(1.0)
        metric = rejection_metrics(worker.metrics_port)
        assert worker.alive()
    finally:
        worker.stop()
    assert len(kinds) >= 36 and due > 1000
    assert must <= decided and not (refused & decided)
    assert len(rejections) == due == metric
    assert all(r.reason and r.path for r in rejections)
    assert not must & {r.parcel_id for r in rejections if r.parcel_id}
