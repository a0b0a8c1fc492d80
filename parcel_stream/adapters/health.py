"""Liveness and readiness, served next to the metrics on ``PARCEL_METRICS_PORT``.

- ``/healthz`` (liveness): 200 while the worker's event loop keeps turning (a task beats
  every second; no beat for ``stale_s`` means the loop is stuck: restart the process).
- ``/readyz`` (readiness): 200 once the worker has started its agents and Redis answered
  a PING within ``stale_s``; 503 otherwise, with the reasons as JSON.
- anything else: the Prometheus metrics.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app


@dataclass
class Health:
    stale_s: float = 10.0
    started: bool = False
    heartbeat: float = field(default_factory=time.monotonic)
    redis_ok_at: float = float("-inf")

    def beat(self) -> None:
        self.heartbeat = time.monotonic()

    def redis_ok(self) -> None:
        self.redis_ok_at = time.monotonic()

    def live(self) -> tuple[bool, list[str]]:
        age = time.monotonic() - self.heartbeat
        return age < self.stale_s, (
            [] if age < self.stale_s else [f"event loop stalled {age:.0f}s"]
        )

    def ready(self) -> tuple[bool, list[str]]:
        reasons = []
        if not self.started:
            reasons.append("starting")
        if time.monotonic() - self.redis_ok_at >= self.stale_s:
            reasons.append("redis unreachable")
        ok, why = self.live()
        return ok and not reasons, reasons + why


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


PORT_FILE = "metrics.port"


def write_port_file(data_dir: str | Path, port: int) -> Path:
    """Record the bound metrics port in ``data_dir`` (atomically: a reader never sees half
    a number), so whoever started the worker with port 0 can find it."""
    directory = Path(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PORT_FILE
    tmp = path.with_name(f".{PORT_FILE}.{os.getpid()}")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)
    return path


def read_port_file(data_dir: str | Path) -> int | None:
    """The port a worker with this data dir reported, or None if it has not yet."""
    try:
        return int((Path(data_dir) / PORT_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def serve(port: int, registry: CollectorRegistry, health: Health) -> WSGIServer:
    """Serve health and metrics on ``port`` (0: any free port; ``server_port`` tells
    which) from a daemon thread."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok, reasons = health.live() if path == "/healthz" else health.ready()
            body = json.dumps({"ok": ok, "reasons": reasons}).encode()
            start("200 OK" if ok else "503 Service Unavailable",
                  [("Content-Type", "application/json")])  # fmt: skip
            return [body]
        result: Iterable[bytes] = metrics_app(environ, start)
        return result

    server = make_server("0.0.0.0", port, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
