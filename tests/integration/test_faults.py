"""Fault scenarios at CI size (benchmarks/reliability/faults.py runs them with 60,000
parcels and 30 s outages): the broker frozen mid-stream, and Redis coming back empty.
One worker recovers from each without a restart; every parcel is decided."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reliability.faults import passed, scenario
from parcel_stream.adapters import devstack


@pytest.mark.parametrize("name", ["broker-paused", "redis-empty"])
def test_fault_mid_stream(name: str, stack: devstack.StackInfo, tmp_path: Path) -> None:
    r = scenario(name, 6000, 1500.0, outage_s=6.0, broker_pause_s=6.0, work=tmp_path, info=stack)
    assert passed(r), r
    assert r["missing"] == 0 and r["worker_survived_without_restart"]
    if name == "redis-empty":
        errors, mismatches = r["redis_errors_counted"], r["reputation_mismatches"]
        assert isinstance(errors, int | float) and isinstance(mismatches, int | float)
        assert errors >= 1 and mismatches > 0  # by design
    else:
        assert r["conflicting_duplicates"] == 0 and r["reputation_mismatches"] == 0
