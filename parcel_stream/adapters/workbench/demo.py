"""`parcel-stream workbench demo`: the dev stack, a worker, a synthetic feed and the
workbench with demo accounts, until Ctrl-C (or ``stop_after_s``); then it stops all of
it. The accounts' passwords are made up for the run and printed."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

from parcel_stream.adapters import devstack
from parcel_stream.adapters.kafka_io import make_producer, produce_parcels
from parcel_stream.adapters.workbench.service import PORT_FILE, open_store
from parcel_stream.demo import dev_settings, feed_lines, running_worker, stop_process
from parcel_stream.generate import HUBS
from parcel_stream.settings import Settings


def run_workbench_demo(
    base: Settings, parcels: int = 20_000, port: int = 8080, state_dir: str = "",
    stop_after_s: float = 0.0,
) -> int:  # fmt: skip
    state = Path(state_dir or ".parcel-stream/workbench-demo").resolve()
    state.mkdir(parents=True, exist_ok=True)
    stack = state / "stack"
    print(f"starting the dev stack (broker + redis-server) in {stack}")
    info = devstack.up(base, stack)
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    wb_proc: subprocess.Popen[bytes] | None = None
    wb_log: BinaryIO | None = None
    try:
        db = state / "workbench.db"
        db.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        settings = dev_settings(info, base, workbench_db=f"sqlite:///{db}",
                                workbench_port=port, risk_model="shadow")  # fmt: skip
        _store, users = open_store(settings)
        accounts = {"officer": secrets.token_urlsafe(9), "supervisor": secrets.token_urlsafe(9)}
        users.add("officer", accounts["officer"], "officer", list(HUBS))
        users.add("supervisor", accounts["supervisor"], "supervisor", [])
        with running_worker(settings, stack) as worker:
            wb_log = open(state / "workbench.log", "ab")  # noqa: SIM115 - closed below
            wb_proc = subprocess.Popen(
                [sys.executable, "-m", "parcel_stream.cli", "workbench", "serve",
                 "--state-dir", str(state)],
                env={**os.environ, **settings.as_env()}, stdout=wb_log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            (stack / "workbench.pid").write_text(f"{wb_proc.pid}\n")
            port_file = state / PORT_FILE
            port_file.unlink(missing_ok=True)
            deadline = time.monotonic() + 60
            while not port_file.exists():
                if wb_proc.poll() is not None or time.monotonic() > deadline:
                    print(f"the workbench did not start; see {state}/workbench.log")
                    return 1
                time.sleep(0.1)
            url = f"http://{settings.workbench_host}:{port_file.read_text().strip()}/"
            lines, _labels, _bad = feed_lines(parcels, seed=7, malformed_every=0)
            producer = make_producer(info.bootstrap)
            produce_parcels(producer, settings.topic_manifests, lines, batch_size=500)
            producer.close()
            print(f"worker (pid {worker.pid}) is scoring {parcels:,} synthetic parcels; "
                  "held parcels reach the workbench as they are decided")  # fmt: skip
            print(f"\n  workbench:  {url}")
            print(f"  officer:    officer / {accounts['officer']}   (all demo hubs)")
            print(f"  supervisor: supervisor / {accounts['supervisor']}")
            print("\nCtrl-C stops the workbench, the worker and the dev stack.", flush=True)
            started = time.monotonic()
            try:
                while not stopping.is_set():
                    if worker.poll() is not None or wb_proc.poll() is not None:
                        print(f"a process exited; logs in {state}")
                        return 1
                    if stop_after_s and time.monotonic() - started > stop_after_s:
                        break
                    stopping.wait(0.5)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        print("\nstopping the workbench, the worker and the dev stack")
        if wb_proc is not None:
            stop_process(wb_proc)
        if wb_log is not None:
            wb_log.close()
        devstack.down(stack)
