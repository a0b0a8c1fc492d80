"""Integration tests run against the real dev broker and a real redis-server.

They start their own on free loopback ports and stop them afterwards. They never skip:
a missing binary is a test failure with the fix in the message.

Workers bind their metrics port themselves (PARCEL_METRICS_PORT=0) and report it in their
data dir; ``metrics_port`` waits for it. Every wait on a worker fails at once, with the
tail of its log, when the worker has exited (``benchmarks.reliability.harness.wait_alive``).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from benchmarks.reliability.harness import bound_metrics_port, wait_alive
from parcel_stream.adapters import devcluster, devstack
from parcel_stream.adapters.health import PORT_FILE
from parcel_stream.demo import isolated_settings, running_worker
from parcel_stream.settings import Settings


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devstack.StackInfo]:
    state = tmp_path_factory.mktemp("stack")
    info = devstack.up(Settings(), state)
    try:
        yield info
    finally:
        devstack.down(state)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devcluster.ClusterInfo]:
    """A Redis Cluster of 3 masters and 3 replicas (real redis-servers on loopback)."""
    state = tmp_path_factory.mktemp("cluster")
    info = devcluster.up(state)
    try:
        yield info
    finally:
        devcluster.down(state)


@pytest.fixture
def settings(stack: devstack.StackInfo, tmp_path: Path) -> Settings:
    """Fresh topics, group and key prefix per test, so tests do not see each other; the
    worker picks its own metrics port (read it with ``metrics_port``)."""
    s = isolated_settings(stack, uuid.uuid4().hex[:8], tmp_path / "worker-data")
    return s.replace(metrics_port=0)


@contextmanager
def run_worker(settings: Settings, state_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``running_worker`` (log in ``state_dir/worker.log``), without the port an earlier
    worker of the same data dir reported."""
    (Path(settings.data_dir) / PORT_FILE).unlink(missing_ok=True)
    with running_worker(settings, state_dir) as proc:
        yield proc


def metrics_port(
    settings: Settings, proc: subprocess.Popen[bytes], state_dir: Path, timeout_s: float = 90
) -> int:
    """The metrics port a worker started by ``run_worker(settings, state_dir)`` bound."""
    return bound_metrics_port(settings, proc, state_dir / "worker.log", timeout_s)


def alive(proc: subprocess.Popen[bytes], state_dir: Path) -> Callable[[object], None]:
    """An ``on_poll`` for ``read_all``: stop reading at once if the worker has exited."""
    log = state_dir / "worker.log"

    def check(_got: object) -> None:
        wait_alive(proc, log, lambda: True, 0, "a running worker")

    return check
