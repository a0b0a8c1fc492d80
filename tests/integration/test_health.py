"""/healthz and /readyz on the metrics port: ready once the worker runs and Redis
answers; not ready (but alive) while Redis is frozen; ready again by itself. The worker
binds its port itself (PARCEL_METRICS_PORT=0) and reports it in its data dir."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from benchmarks.reliability.harness import OwnRedis, Worker, WorkerExited
from parcel_stream.settings import Settings


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


def wait_for(worker: Worker, path: str, status: int, timeout_s: float = 60) -> dict[str, object]:
    """Poll the worker's ``path`` until it answers ``status``; fails at once if the worker
    exits (with its log), instead of waiting out the timeout."""
    last: list[tuple[int, dict[str, object]]] = [(0, {})]

    def answered() -> dict[str, object] | None:
        last[0] = get(worker.metrics_port, path)
        return last[0][1] if last[0][0] == status else None

    try:
        return worker.wait(answered, timeout_s, f"{path} {status}")
    except TimeoutError as exc:
        raise AssertionError(f"{path}: wanted {status}, last {last[0]}\n{exc}") from None


def test_liveness_and_readiness(settings: Settings, tmp_path: Path) -> None:
    redis = OwnRedis(tmp_path / "redis")
    redis.start()
    s = settings.replace(redis_url=redis.url)
    worker = Worker(s, tmp_path / "worker.log")
    worker.start()
    try:
        assert wait_for(worker, "/readyz", 200)["ok"] is True
        assert wait_for(worker, "/healthz", 200)["ok"] is True
        port = worker.metrics_port
        assert (Path(s.data_dir) / "metrics.port").read_text() == f"{port}\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert b"parcel_stream_parcels_total" in r.read()
        redis.pause()
        try:
            body = wait_for(worker, "/readyz", 503, timeout_s=30)
            assert "redis unreachable" in body["reasons"]  # type: ignore[operator]
            assert get(port, "/healthz")[0] == 200  # alive: no restart wanted
        finally:
            redis.resume()
        wait_for(worker, "/readyz", 200, timeout_s=30)
        assert worker.alive()
    finally:
        worker.stop()
        redis.kill()


def test_a_port_in_use_fails_fast_with_the_fix(settings: Settings, tmp_path: Path) -> None:
    """A fixed port someone else holds: the worker exits and says which setting to change;
    the wait for its port ends with the worker's log, not at the timeout."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        worker = Worker(settings.replace(metrics_port=taken.getsockname()[1]), tmp_path / "w.log")
        worker.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(WorkerExited, match="set PARCEL_METRICS_PORT"):
                assert worker.metrics_port  # waits up to 90 s for a live worker
        finally:
            worker.stop()
    assert time.monotonic() - t0 < 80  # loose: a dead worker is not waited out
