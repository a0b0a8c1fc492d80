"""Two workers in one consumer group on the dev broker: the manifest partitions split
between them (each reports lag only for its own), both score, and every parcel is scored
exactly once (the workers' counts add up to the parcels sent; Redis counts are exact)."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.reliability.harness import (
    Worker,
    account,
    check_reputation,
    collect,
    make_feed,
    metrics,
    pace,
)
from parcel_stream.settings import Settings
from tests.integration.test_health import wait_for


def own_partitions(port: int, topic: str) -> set[str]:
    prefix = 'parcel_stream_consumer_lag_records{partition="'
    return {
        k[len(prefix) :].split('"', 1)[0]
        for k in metrics(port)
        if k.startswith(prefix) and f'topic="{topic}"' in k
    }


def scored(port: int) -> float:
    return sum(v for k, v in metrics(port).items() if k.startswith("parcel_stream_parcels_total{"))


def test_two_workers_split_partitions_and_score_each_parcel_once(
    settings: Settings, tmp_path: Path
) -> None:
    assert settings.partitions >= 2
    a = Worker(settings, tmp_path / "a.log")
    b = Worker(settings.replace(data_dir=str(tmp_path / "b-data")), tmp_path / "b.log")
    a.start()
    b.start()
    try:
        for w in (a, b):
            wait_for(w, "/readyz", 200)
        time.sleep(2 * settings.broker_rebalance_timeout_s)  # let the group settle
        feed = make_feed(8000, seed=31, bad_every=0, shippers=800)
        pace(settings, feed, 2000).join()
        out = collect(settings, feed, timeout_s=120, progress=False, workers=(a, b))
        acc = account(feed, out)
        assert acc.missing == 0 and acc.unexpected == 0
        assert acc.conflicting_duplicates == 0
        time.sleep(6)  # one lag-metric period after the last batch
        pa = own_partitions(a.metrics_port, settings.topic_manifests)
        pb = own_partitions(b.metrics_port, settings.topic_manifests)
        assert pa and pb, (pa, pb)  # both got partitions
        assert not pa & pb  # and never the same one
        assert pa | pb == {str(p) for p in range(settings.partitions)}
        sa, sb = scored(a.metrics_port), scored(b.metrics_port)
        assert sa > 0 and sb > 0
        assert sa + sb == len(feed.ids)  # scored once: no parcel counted by both
        shippers, mismatches = check_reputation(settings, feed, out)
        assert shippers > 100 and mismatches == 0
        assert a.alive() and b.alive()
    finally:
        a.stop()
        b.stop()
