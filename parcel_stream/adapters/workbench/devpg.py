"""A throwaway PostgreSQL server on loopback, for tests and benchmarks of the case store.

Uses Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``). ``initdb`` and
``pg_ctl`` refuse to run as root, so as root they run as the ``postgres`` user (``runuser``)
with a data directory that user owns. ``start`` picks a free port and tries the next one
if another process took it meanwhile; ``stop`` stops the server and removes its directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


class PostgresError(RuntimeError):
    """PostgreSQL cannot be started here; the message says what to install."""


@dataclass(frozen=True)
class DevPostgres:
    data_dir: str
    port: int
    bindir: str

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def _bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if found:
        return str(Path(found[0]).parent)
    which = shutil.which("pg_ctl")
    if which:
        return str(Path(which).resolve().parent)
    raise PostgresError("PostgreSQL is not installed: apt-get install -y postgresql "
                        "(or run `make setup`)")  # fmt: skip


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(parent: str | None = None, attempts: int = 5) -> DevPostgres:
    bindir = _bindir()
    root = tempfile.mkdtemp(prefix="parcel-stream-pg-", dir=parent)
    data = os.path.join(root, "data")
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    init = subprocess.run(
        _as_owner([f"{bindir}/initdb", "-D", data, "-U", "postgres", "-A", "trust",
                   "--no-sync", "-E", "UTF8", "--locale=C"]),
        capture_output=True, text=True,
    )  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresError(f"initdb failed: {init.stderr.strip()[-500:]}")
    last = ""
    for _ in range(attempts):
        port = _free_port()
        opts = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        run = subprocess.run(
            _as_owner([f"{bindir}/pg_ctl", "-D", data, "-o", opts, "-l",
                       os.path.join(root, "log"), "-w", "-t", "60", "start"]),
            capture_output=True, text=True,
        )  # fmt: skip
        if run.returncode == 0:
            return DevPostgres(root, port, bindir)
        last = Path(root, "log").read_text()[-500:] if Path(root, "log").exists() else run.stderr
    shutil.rmtree(root, ignore_errors=True)
    raise PostgresError(f"PostgreSQL did not start: {last.strip()}")


def stop(pg: DevPostgres) -> None:
    subprocess.run(
        _as_owner([f"{pg.bindir}/pg_ctl", "-D", os.path.join(pg.data_dir, "data"), "-m",
                   "immediate", "-w", "stop"]),
        capture_output=True,
    )  # fmt: skip
    shutil.rmtree(pg.data_dir, ignore_errors=True)


def alive(pg: DevPostgres) -> bool:
    pid_file = Path(pg.data_dir, "data", "postmaster.pid")
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        return True
    except (OSError, ValueError, IndexError):
        return False
