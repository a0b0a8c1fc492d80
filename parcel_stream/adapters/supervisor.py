"""`parcel-stream worker --processes N`: one worker process per core, in one consumer group.

The parent starts N ``parcel-stream worker`` children with the same settings except their
data directory (``PARCEL_DATA_DIR/<i>``) and metrics port (``PARCEL_METRICS_PORT + i``;
0 stays 0: each child binds a free port and writes it to its own data directory). The
group shares the partitions out among them as among workers on separate machines, with
the same guarantees (each child commits only what it has applied).

SIGTERM or SIGINT to the parent goes to every child; the parent waits for them to finish
their batch and exit. A child that exits on its own is restarted after a pause, unless
children exit ``MAX_RESTARTS`` times within ``RESTART_WINDOW_S``: then the parent stops
the others and exits with status 1 (a configuration or environment problem, not a crash
to ride out).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from parcel_stream.settings import Settings

log = logging.getLogger("parcel_stream.supervisor")
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
RESTART_PAUSE_S = 2.0
PID_FILE = "worker.pid"


def child_env(settings: Settings, index: int) -> dict[str, str]:
    """The environment of child ``index``: the parent's settings, its own data directory
    and metrics port."""
    port = settings.metrics_port
    child = settings.replace(
        data_dir=str(Path(settings.data_dir) / str(index)),
        metrics_port=port + index if port > 0 else port,
    )
    return {**os.environ, **child.as_env()}


class Supervisor:
    def __init__(self, settings: Settings, processes: int) -> None:
        self.settings, self.processes = settings, processes
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.exits: list[float] = []
        self.stopping = False

    def _start(self, index: int) -> None:
        env = child_env(self.settings, index)
        Path(env["PARCEL_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "parcel_stream.cli", "worker"], env=env,
                                stdin=subprocess.DEVNULL)  # fmt: skip
        Path(env["PARCEL_DATA_DIR"], PID_FILE).write_text(f"{proc.pid}\n")
        self.children[index] = proc
        log.info("worker %d started (pid %d)", index, proc.pid)

    def _signal_all(self, sig: int) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(sig)

    def run(self) -> int:
        def stop(signum: int, _frame: object) -> None:
            self.stopping = True
            self._signal_all(signal.SIGTERM)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for i in range(self.processes):
            self._start(i)
        status = 0
        while self.children:
            for i, proc in list(self.children.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self.children[i]
                if self.stopping:
                    log.info("worker %d stopped (status %d)", i, code)
                    continue
                now = time.monotonic()
                self.exits = [t for t in self.exits if now - t < RESTART_WINDOW_S] + [now]
                if len(self.exits) >= MAX_RESTARTS:
                    log.error("workers exited %d times within %.0f s (the last: worker %d, "
                              "status %d): stopping all", len(self.exits), RESTART_WINDOW_S,
                              i, code)  # fmt: skip
                    self.stopping, status = True, 1
                    self._signal_all(signal.SIGTERM)
                    continue
                log.warning("worker %d exited (status %d); restarting it in %.0f s", i, code,
                            RESTART_PAUSE_S)  # fmt: skip
                deadline = time.monotonic() + RESTART_PAUSE_S
                while time.monotonic() < deadline and not self.stopping:
                    time.sleep(0.1)
                if not self.stopping:
                    self._start(i)
            time.sleep(0.2)
        return status


def supervise(settings: Settings, processes: int) -> int:
    import logging.config

    from parcel_stream.logjson import logging_config

    config = logging_config(settings.log_level, settings.log_format)
    if config is not None:
        logging.config.dictConfig(config)
    else:
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    return Supervisor(settings, processes).run()
