"""/healthz and /readyz on the metrics port: ready once the worker runs and Redis
answers; not ready (but alive) while Redis is frozen; ready again by itself."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks.reliability.harness import OwnRedis, Worker
from parcel_stream.settings import Settings


def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except OSError:
        return 0, {}


def wait_for(port: int, path: str, status: int, timeout_s: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    got: tuple[int, dict[str, object]] = (0, {})
    while time.monotonic() < deadline:
        got = get(port, path)
        if got[0] == status:
            return got[1]
        time.sleep(0.3)
    raise AssertionError(f"{path}: wanted {status}, last {got}")


def test_liveness_and_readiness(settings: Settings, tmp_path: Path) -> None:
    redis = OwnRedis(tmp_path / "redis")
    redis.start()
    s = settings.replace(redis_url=redis.url)
    worker = Worker(s, tmp_path / "worker.log")
    worker.start()
    try:
        assert wait_for(s.metrics_port, "/readyz", 200)["ok"] is True
        assert wait_for(s.metrics_port, "/healthz", 200)["ok"] is True
        with urllib.request.urlopen(f"http://127.0.0.1:{s.metrics_port}/metrics", timeout=5) as r:
            assert b"parcel_stream_parcels_total" in r.read()
        redis.pause()
        try:
            body = wait_for(s.metrics_port, "/readyz", 503, timeout_s=30)
            assert "redis unreachable" in body["reasons"]  # type: ignore[operator]
            assert get(s.metrics_port, "/healthz")[0] == 200  # alive: no restart wanted
        finally:
            redis.resume()
        wait_for(s.metrics_port, "/readyz", 200, timeout_s=30)
        assert worker.alive()
    finally:
        worker.stop()
        redis.kill()
