import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parcel_stream.adapters import devstack


def _alive(pid: int) -> bool:
    return devstack._alive(pid)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parcel_stream.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_up_status_down_leaves_nothing(tmp_path: Path) -> None:
    state = str(tmp_path / "dev")
    up = _cli("dev", "up", "--state-dir", state)
    assert up.returncode == 0, up.stderr
    info = devstack.read_info(state)
    assert info is not None and _alive(info.broker_pid) and _alive(info.redis_pid)
    assert devstack._redis_ping(info.redis_port) and devstack._broker_ready(info.broker_port)
    assert f"PARCEL_KAFKA_BOOTSTRAP={info.bootstrap}" in up.stdout
    again = _cli("dev", "up", "--state-dir", state)
    assert again.returncode == 1 and "already running" in again.stderr
    down = _cli("dev", "down", "--state-dir", state)
    assert down.returncode == 0 and "stopped 2" in down.stdout
    assert not _alive(info.broker_pid) and not _alive(info.redis_pid)
    assert not list(Path(state).glob("*.pid"))


def test_down_after_the_starter_was_killed_midway(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    starter = subprocess.Popen(
        [sys.executable, "-m", "parcel_stream.cli", "dev", "up", "--state-dir", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (state / "redis.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(starter.pid, signal.SIGKILL)
    starter.wait()
    pids = [int((state / f).read_text()) for f in ("broker.pid", "redis.pid")]
    assert all(_alive(p) for p in pids)
    devstack.down(state)
    assert not any(_alive(p) for p in pids)


def test_a_private_redis_answers_inside_and_is_stopped_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The benchmarks' redis-server of their own answers once yielded and is gone on
    leaving; one that exits at its start fails at once, naming it, rather than waiting
    out its timeout."""
    with devstack.private_redis(tmp_path / "r") as port:
        assert devstack._redis_ping(port)
        pid = int((tmp_path / "r" / "redis.pid").read_text())
    assert not _alive(pid) and not devstack._redis_ping(port)
    monkeypatch.setattr(devstack, "redis_binary", lambda: "/bin/false")
    t0 = time.monotonic()
    with pytest.raises(devstack.DevStackError, match="redis-server exited with code 1"):
        with devstack.private_redis(tmp_path / "dead", timeout_s=60):
            pass
    assert time.monotonic() - t0 < 30
