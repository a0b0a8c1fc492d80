"""A throwaway Redis Cluster on loopback: 3 masters and 3 replicas from Debian's
``redis-server``, created with ``redis-cli --cluster create``. The cluster tests and the
cluster benchmark start one; it is also handy to try ``PARCEL_REDIS_CLUSTER`` by hand:

    python -m parcel_stream.adapters.devcluster /tmp/ps-cluster     # prints the URL
    python -m parcel_stream.adapters.devcluster /tmp/ps-cluster --down
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from parcel_stream.adapters.devstack import (
    DevStackError,
    _alive,
    _redis_ping,
    _spawn,
    _stop_pid,
    free_port,
    redis_binary,
)


@dataclass(frozen=True)
class ClusterInfo:
    state_dir: str
    ports: list[int]  # every node's port; the first ``masters`` were created as masters
    pids: list[int]
    masters: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"


def _cli(port: int, *args: str, timeout_s: float = 30) -> str:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise DevStackError("redis-cli not found on PATH: apt-get install redis-tools")
    done = subprocess.run(
        [cli, "-p", str(port), *args], capture_output=True, text=True, timeout=timeout_s,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise DevStackError(f"redis-cli {' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


def cluster_ok(port: int) -> bool:
    try:
        info = _cli(port, "cluster", "info", timeout_s=5)
    except (DevStackError, subprocess.TimeoutExpired):
        return False
    return "cluster_state:ok" in info


def _wait(ok: Callable[[], bool], what: str, pids: list[int], timeout_s: float) -> None:
    """Poll ``ok`` until true; fail at once when a node has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ok():
            return
        dead = [pid for pid in pids if not _alive(pid)]
        if dead:
            raise DevStackError(f"{what}: redis-server (pid {dead[0]}) exited; see its redis.log")
        time.sleep(0.05)
    raise DevStackError(f"{what} not ready after {timeout_s:.0f} s")


def up(
    state: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000,
    appendfsync: str | None = None, timeout_s: float = 60,
) -> ClusterInfo:  # fmt: skip
    """Start ``masters * (1 + replicas)`` nodes and create the cluster; waits until every
    node reports ``cluster_state:ok``. ``appendfsync`` turns AOF on (``always``,
    ``everysec``)."""
    redis_bin = redis_binary()
    down(state)
    state.mkdir(parents=True, exist_ok=True)
    n = masters * (1 + replicas)
    ports = [free_port() for _ in range(n)]
    procs = []
    for port in ports:
        node = state / str(port)
        node.mkdir(exist_ok=True)
        # the cluster bus port defaults to port + 10000, which may not exist: set it
        argv = [
            redis_bin,
            "--port",
            str(port),
            "--cluster-port",
            str(free_port()),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(node),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout_ms),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "",
            "--cluster-replica-validity-factor",
            "0",
        ]
        if appendfsync:
            argv += ["--appendonly", "yes", "--appendfsync", appendfsync]
        else:
            argv += ["--appendonly", "no"]  # fmt: skip
        procs.append(_spawn(argv, node / "redis.log", node / "redis.pid"))
    info = ClusterInfo(str(state), ports, [p.pid for p in procs], masters)
    (state / "cluster.json").write_text(json.dumps(asdict(info)))
    try:
        for port in ports:
            _wait(partial(_redis_ping, port), f"redis-server on {port}", info.pids, timeout_s)
        _cli(ports[0], "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", str(replicas), "--cluster-yes", timeout_s=timeout_s)  # fmt: skip
        for port in ports:
            _wait(partial(cluster_ok, port), f"cluster node {port}", info.pids, timeout_s)
    except BaseException:
        down(state)
        raise
    return info


def masters_of(info: ClusterInfo) -> list[int]:
    """The ports of the nodes that are masters now (after a failover, too)."""
    out = []
    for port, pid in zip(info.ports, info.pids, strict=True):
        if not _alive(pid):
            continue
        try:
            role = _cli(port, "role", timeout_s=5).split()[0]
        except (DevStackError, subprocess.TimeoutExpired):
            continue
        if role == "master":
            out.append(port)
    return out


def down(state: Path) -> None:
    """Stop every node of a cluster started in ``state`` and remove its files."""
    meta = state / "cluster.json"
    if meta.exists():
        for pid in json.loads(meta.read_text())["pids"]:
            _stop_pid(int(pid), 5.0)
    if state.exists():
        shutil.rmtree(state, ignore_errors=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: python -m parcel_stream.adapters.devcluster STATE_DIR [--down]",
              file=sys.stderr)  # fmt: skip
        return 2
    state = Path(argv[0])
    if "--down" in argv[1:]:
        down(state)
        return 0
    info = up(state)
    print(info.url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
