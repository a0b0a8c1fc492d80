"""The crash suite at CI size (benchmarks/reliability/crash.py runs the full one): the
worker is killed with SIGKILL three times, each at a random moment after it has started
deciding, while a paced feed of batch and single records arrives (a quarter of it after
each start); every parcel is decided or rejected, duplicates are identical to the first
decision, reputation counts are exact."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

from benchmarks.reliability.faults import wait_for_decisions
from benchmarks.reliability.harness import (
    Feed,
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
    # a quarter of the feed per worker: each one meets parcels of its own, however fast
    # the earlier ones drained theirs
    cut = [len(feed.values) * k // 4 for k in range(5)]
    parts = [Feed(feed.values[cut[k] : cut[k + 1]], set(), Counter()) for k in range(4)]
    worker = Worker(settings, tmp_path / "worker.log")
    senders = []
    try:
        for k in range(3):
            worker.start()
            senders.append(pace(settings, parts[k], 1500.0))
            # once this worker decides: amid its backlog, mid-batch, or between batches
            wait_for_decisions(worker.metrics_port, 1)
            time.sleep(rng.uniform(0.0, 1.5))
            worker.kill()
        worker.start()
        senders.append(pace(settings, parts[3], 1500.0))
        for sender in senders:
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
