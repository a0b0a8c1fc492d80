"""`parcel-stream worker --processes 2`: two worker processes in one consumer group under
one parent. Both get partitions and score, every parcel is decided once; a child that dies
is restarted; SIGTERM to the parent stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from benchmarks.reliability.harness import account, collect, make_feed, metrics, pace, wait_alive
from parcel_stream.adapters.health import read_port_file
from parcel_stream.adapters.supervisor import PID_FILE
from parcel_stream.settings import Settings
from tests.integration.test_scaling import own_partitions


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def child_pid(settings: Settings, i: int) -> int | None:
    try:
        return int((Path(settings.data_dir) / str(i) / PID_FILE).read_text())
    except (OSError, ValueError):
        return None


def test_two_processes_share_the_partitions_restart_and_stop(
    settings: Settings, tmp_path: Path
) -> None:
    log = tmp_path / "parent.log"
    with log.open("wb") as sink:
        parent = subprocess.Popen(
            [sys.executable, "-m", "parcel_stream.cli", "worker", "--processes", "2"],
            env={**os.environ, **settings.as_env()}, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def port_of(i: int) -> int:
            return wait_alive(parent, log, lambda: read_port_file(Path(settings.data_dir) / str(i)),
                              120, f"worker {i}'s metrics port")  # fmt: skip

        ports = [port_of(0), port_of(1)]
        feed = make_feed(4000, seed=41, bad_every=0, shippers=400)
        pace(settings, feed, 2000).join()
        out = collect(settings, feed, timeout_s=120, progress=False)
        acc = account(feed, out)
        assert acc.missing == 0 and acc.unexpected == 0 and acc.conflicting_duplicates == 0

        def split() -> tuple[set[str], set[str]] | None:
            a, b = (own_partitions(p, settings.topic_manifests) for p in ports)
            return (a, b) if a and b and not a & b else None

        a, b = wait_alive(parent, log, split, 60, "the partitions split between the two")
        assert a | b == {str(p) for p in range(settings.partitions)}
        for port in ports:  # both scored
            assert sum(v for k, v in metrics(port).items()
                       if k.startswith("parcel_stream_parcels_total{")) > 0  # fmt: skip

        # a child that dies is started again
        first = child_pid(settings, 0)
        assert first is not None and alive(first)
        os.kill(first, signal.SIGKILL)

        def restarted() -> int | None:
            p = child_pid(settings, 0)
            return p if p is not None and p != first and alive(p) else None

        again = wait_alive(parent, log, restarted, 60, "worker 0 restarted")
        assert "worker 0 exited" in log.read_text()

        # SIGTERM to the parent stops both children and the parent
        children = [again, child_pid(settings, 1)]
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 0
        assert not any(p is not None and alive(p) for p in children)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
