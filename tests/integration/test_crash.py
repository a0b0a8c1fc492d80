"""The crash suite at CI size (benchmarks/reliability/crash.py runs the full one): the
worker is killed with SIGKILL three times, each at a random moment after it has started
deciding, while a paced feed of batch and single records arrives; every parcel is decided or rejected, duplicates are
identical to the first decision, reputation counts are exact."""

from __future__ import annotations

import random
import time
from pathlib import Path

from benchmarks.reliability.faults import wait_for_decisions
from benchmarks.reliability.harness import (
    Worker,
    account,
    check_reputation,
    collect,
    make_feed,
    pace,
)
from parcel_stream.settings import Settings


def test_sigkill_at_random_moments_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    rng = random.Random(5)
    feed = make_feed(12_000, seed=5)
    worker = Worker(settings, tmp_path / "worker.log")
    sender = pace(settings, feed, 500.0)
    try:
        for _ in range(3):
            worker.start()
            # once this worker decides: amid the backlog of its restart, or mid-batch
            wait_for_decisions(worker.metrics_port, 1)
            time.sleep(rng.uniform(0.0, 1.5))
            worker.kill()
        worker.start()
        sender.join()
        out = collect(settings, feed, timeout_s=180, progress=False)
        assert worker.alive()
    finally:
        worker.stop()
    acc = account(feed, out)
    assert acc.missing == 0 and acc.unexpected == 0, acc
    assert acc.rejected == acc.sent_bad == 24, acc
    assert acc.conflicting_duplicates == 0, acc
    checked, mismatched = check_reputation(settings, feed, out)
    assert checked > 1000 and mismatched == 0
