"""Shared pieces of the reliability suites: the dev stack, worker processes that can be
killed, a paced producer, and the accounting of every parcel sent."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec
import orjson
from kafka import KafkaConsumer, TopicPartition

from parcel_stream.adapters import devstack
from parcel_stream.adapters.health import PORT_FILE, read_port_file
from parcel_stream.adapters.kafka_io import make_producer
from parcel_stream.adapters.security import kafka_client_options
from parcel_stream.demo import isolated_settings
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.settings import Settings

T = TypeVar("T")


@contextmanager
def dev_stack(state_dir: Path) -> Iterator[devstack.StackInfo]:
    info = devstack.up(Settings(), state_dir)
    try:
        yield info
    finally:
        devstack.down(state_dir)


def suite_settings(info: devstack.StackInfo, work: Path, **overrides: object) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return isolated_settings(info, tag, work / f"worker-data-{tag}").replace(**overrides)


class CpuLimit:
    """A CPU quota for the worker, as a container's CPU limit sets it (Kubernetes
    ``resources.limits.cpu``): a cgroup whose CFS quota is ``cpus`` of one core. Needs a
    writable cgroup ``cpu`` controller (v1 or v2), as root has here."""

    def __init__(self, cpus: float) -> None:
        if not 0.05 <= cpus <= (os.cpu_count() or 1):
            raise SystemExit(f"--worker-cpus {cpus}: give a share between 0.05 and the core count")
        period = 100_000
        quota = int(cpus * period)
        name = f"parcel-stream-{os.getpid()}"
        v1 = Path("/sys/fs/cgroup/cpu")
        try:
            if (v1 / "cpu.cfs_quota_us").exists():
                self.dir = v1 / name
                self.dir.mkdir(exist_ok=True)
                (self.dir / "cpu.cfs_period_us").write_text(str(period))
                (self.dir / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                self.dir = Path("/sys/fs/cgroup") / name
                self.dir.mkdir(exist_ok=True)
                (self.dir / "cpu.max").write_text(f"{quota} {period}")
        except OSError as e:
            raise SystemExit(
                f"cannot set a CPU limit ({e.strerror}): run as root with a writable cgroup "
                "cpu controller, or leave out --worker-cpus"
            ) from e
        self.cpus = cpus

    def enter(self) -> None:
        """Move the calling process into the cgroup (run in the child before exec)."""
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def close(self) -> None:
        try:
            self.dir.rmdir()
        except OSError:
            pass


class WorkerExited(AssertionError):
    """The worker process ended while something waited on it (the message has its log)."""


def log_tail(path: Path, lines: int = 20) -> str:
    """The end of a worker's log, after its last error lines (Faust's shutdown messages
    would otherwise push the cause out of the tail)."""
    rows = (path.read_text(errors="replace") if path.exists() else "").splitlines()
    errors = [r for r in rows[:-lines] if "[ERROR]" in r or "Error" in r][-5:]
    return "\n".join([*errors, "...", *rows[-lines:]] if errors else rows[-lines:]) or "(empty)"


def wait_alive(proc: subprocess.Popen[bytes], log: Path, ready: Callable[[], T | None],
               timeout_s: float, what: str, interval_s: float = 0.2) -> T:  # fmt: skip
    """Poll ``ready`` until it returns a value other than None/False; fail at once, with
    the tail of the worker's log, if the worker exits meanwhile (never wait out a dead one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise WorkerExited(
                f"worker exited with status {proc.returncode} while waiting for {what}; "
                f"the end of {log}:\n{log_tail(log)}"
            )
        got = ready()
        if got is not None and got is not False:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s:g} s; the end of {log}:\n"
                               f"{log_tail(log)}")  # fmt: skip
        time.sleep(interval_s)


def bound_metrics_port(settings: Settings, proc: subprocess.Popen[bytes], log: Path,
                       timeout_s: float = 90) -> int:  # fmt: skip
    """The metrics port the worker bound (it reports it in its data dir; with
    PARCEL_METRICS_PORT=0 the OS picks a free one, so nothing races for it)."""
    return wait_alive(proc, log, lambda: read_port_file(settings.data_dir), timeout_s,
                      "the worker's metrics port")  # fmt: skip


class Worker:
    """``parcel-stream worker`` in a child process that can be killed or paused, optionally
    under a CPU limit."""

    def __init__(self, settings: Settings, log: Path, cpu: CpuLimit | None = None) -> None:
        self.settings = settings
        self.log_path = log
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def metrics_port(self) -> int:
        """The bound metrics port, waited for (the worker reports it once started)."""
        if self._port is None:
            assert self.proc is not None, "start the worker first"
            self._port = bound_metrics_port(self.settings, self.proc, self.log_path)
        return self._port

    def wait(self, ready: Callable[[], T | None], timeout_s: float, what: str) -> T:
        """``wait_alive`` on this worker."""
        assert self.proc is not None, "start the worker first"
        return wait_alive(self.proc, self.log_path, ready, timeout_s, what)

    def check(self) -> None:
        """Raise ``WorkerExited`` (with the log's tail) if the worker has exited."""
        self.wait(lambda: True, 0, "a running worker")

    def start(self) -> None:
        # a port reported by an earlier run must not be mistaken for this one's
        (Path(self.settings.data_dir) / PORT_FILE).unlink(missing_ok=True)
        self._port = None
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parcel_stream.cli", "worker"],
            env={**os.environ, **self.settings.as_env()},
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=self.cpu.enter if self.cpu else None,
        )  # fmt: skip
        log.close()

    def cpu_seconds(self) -> float:
        """User + system CPU time the worker has used so far."""
        assert self.proc is not None
        return devstack.cpu_seconds(self.proc.pid)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def redelivered(self) -> tuple[int, int]:
        """(resent, skipped) redelivered records, summed over the log of every run."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        resent = skipped = 0
        for m in re.finditer(r"redelivered records: (\d+) resent .*?, (\d+) already", text):
            resent += int(m.group(1))
            skipped += int(m.group(2))
        return resent, skipped


@dataclass
class Feed:
    """A generated feed as Kafka values: batch records and single records, with a share
    of malformed manifests mixed in. ``ids`` are the valid parcels, ``bad`` the count of
    malformed ones."""

    values: list[tuple[bytes | None, bytes]]
    ids: set[str]
    per_shipper: Counter[str]
    value_by_shipper: dict[str, float] = field(default_factory=dict)
    bad: int = 0


def make_feed(parcels: int, seed: int = 3, batch_share: float = 0.5, batch_size: int = 250,
              bad_every: int = 500, shippers: int = 2000) -> Feed:  # fmt: skip
    """``batch_share`` of the parcels in NDJSON batch records, the rest one per record;
    every ``bad_every``-th parcel replaced by a truncated (malformed) one."""
    docs = [d for d, _ in generate(FeedConfig(parcels=parcels, seed=seed, shippers=shippers))]
    ids: set[str] = set()
    per_shipper: Counter[str] = Counter()
    bad = 0
    lines: list[tuple[bytes, bytes]] = []
    for n, d in enumerate(docs):
        raw = orjson.dumps(d)
        if bad_every and n % bad_every == bad_every - 1:
            lines.append((b"", raw[: len(raw) // 2]))
            bad += 1
            continue
        ids.add(d["parcel_id"])
        per_shipper[d["shipper"]["id"]] += 1
        lines.append((d["shipper"]["id"].encode(), raw))
    cut = int(len(lines) * batch_share)
    batch = [(None, b"\n".join(v for _k, v in lines[i : i + batch_size]))
             for i in range(0, cut, batch_size)]  # fmt: skip
    single = [(k or None, v) for k, v in lines[cut:]]
    # interleave the two kinds so that every stretch of the run sees both
    mixed: list[tuple[bytes | None, bytes]] = []
    step = max(1, len(single) // max(1, len(batch)))
    for i, b in enumerate(batch):
        mixed.append(b)
        mixed += single[i * step : (i + 1) * step]
    mixed += single[len(batch) * step :]
    return Feed(mixed, ids, per_shipper, bad=bad)


def pace(settings: Settings, feed: Feed, parcels_per_s: float,
         stop: threading.Event | None = None,
         gate: tuple[int, threading.Event] | None = None) -> threading.Thread:  # fmt: skip
    """Produce the feed at about ``parcels_per_s`` in a background thread. ``gate`` =
    (n, go): after the first n parcels, wait for ``go`` before the rest (a fault is then
    sure to meet parcels still arriving, however fast the worker drains the first)."""

    def run() -> None:
        producer = make_producer(
            settings.kafka_bootstrap, linger_ms=5, **kafka_client_options(settings)
        )
        t0 = time.monotonic()
        sent = 0
        for key, value in feed.values:
            if stop is not None and stop.is_set():
                break
            if gate is not None and sent >= gate[0] and not gate[1].is_set():
                producer.flush()
                gate[1].wait()
                t0, sent = time.monotonic(), 0
            producer.send(settings.topic_manifests, key=key, value=value)
            sent += value.count(b"\n") + 1
            ahead = sent / parcels_per_s - (time.monotonic() - t0)
            if ahead > 0.05:
                producer.flush()
                time.sleep(ahead)
        producer.flush()
        producer.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def from_start(bootstrap: str, topics: list[str], fetch_max_bytes: int = 64 << 20,
               partition_bytes: int = 16 << 20, **options: object) -> KafkaConsumer:  # fmt: skip
    """A consumer (no group) assigned to every partition of ``topics``, at the start
    (``options``: kafka-python security options, see kafka_client_options)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_bytes=fetch_max_bytes,
                             max_partition_fetch_bytes=partition_bytes, **options)  # fmt: skip
    parts = [TopicPartition(t, p) for t in topics
             for p in sorted(consumer.partitions_for_topic(t) or ())]  # fmt: skip
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    return consumer


@dataclass
class Outcome:
    decisions: dict[str, list[bytes]]  # parcel id -> every decision line seen for it
    rejections: int
    rejection_sources: Counter[str]


_ID = re.compile(rb'"parcel_id":"([^"]+)"')


def collect(settings: Settings, feed: Feed, timeout_s: float, progress: bool = True,
            workers: Sequence[Worker] = ()) -> Outcome:  # fmt: skip
    """Read decisions and rejections from the start until every valid parcel has a
    decision and every malformed one a rejection (or the timeout). With ``workers``, stop
    at once if one of them exits (leave out workers a suite kills on purpose)."""
    consumer = from_start(
        settings.kafka_bootstrap,
        [settings.topic_decisions, settings.topic_rejects],
        **kafka_client_options(settings),
    )
    decisions: dict[str, list[bytes]] = defaultdict(list)
    rej_sources: Counter[str] = Counter()
    rejections = 0
    try:
        deadline = time.monotonic() + timeout_s
        last = 0.0
        covered = 0
        while time.monotonic() < deadline:
            for w in workers:
                w.check()
            for tp, msgs in consumer.poll(timeout_ms=300, max_records=100_000).items():
                for m in msgs:
                    if tp.topic == settings.topic_decisions:
                        for line in m.value.split(b"\n"):
                            hit = _ID.search(line)
                            assert hit is not None, line[:200]
                            pid = hit.group(1).decode()
                            if pid not in decisions and pid in feed.ids:
                                covered += 1
                            decisions[pid].append(line)
                    else:
                        rejections += 1
                        src = msgspec.json.decode(m.value)["source"]
                        rej_sources[src] += 1
            if progress and time.monotonic() - last > 5:
                print(f"  collected: {covered:,}/{len(feed.ids):,} decided, "
                      f"{len(rej_sources):,}/{feed.bad:,} rejected", flush=True)  # fmt: skip
                last = time.monotonic()
            if covered >= len(feed.ids) and len(rej_sources) >= feed.bad:
                break
    finally:
        consumer.close()
    return Outcome(dict(decisions), rejections, rej_sources)


@dataclass
class Accounting:
    sent_valid: int
    sent_bad: int
    decided: int
    missing: int
    rejected: int
    duplicated_parcels: int
    duplicate_lines: int
    conflicting_duplicates: int  # a parcel decided twice with different content
    unexpected: int  # decisions for parcels never sent


def account(feed: Feed, out: Outcome) -> Accounting:
    decided = sum(1 for p in feed.ids if p in out.decisions)
    dup = {p: v for p, v in out.decisions.items() if len(v) > 1}
    return Accounting(
        sent_valid=len(feed.ids),
        sent_bad=feed.bad,
        decided=decided,
        missing=len(feed.ids) - decided,
        rejected=len(out.rejection_sources),
        duplicated_parcels=len(dup),
        duplicate_lines=sum(len(v) - 1 for v in dup.values()),
        conflicting_duplicates=sum(1 for v in dup.values() if len(set(v)) > 1),
        unexpected=sum(1 for p in out.decisions if p not in feed.ids),
    )


def check_reputation(settings: Settings, feed: Feed, out: Outcome) -> tuple[int, int]:
    """Redis state against the truth: every shipper's ``seen`` equals the parcels sent,
    and its ``holds`` the distinct parcels the decisions put in hold on risk. Returns
    (shippers checked, mismatches)."""
    import asyncio

    from parcel_stream.adapters.redis_store import RedisReputationStore

    holds: Counter[str] = Counter()
    for lines in out.decisions.values():
        d = orjson.loads(lines[0])
        if d["lane"] == "hold" and d.get("selection", "risk") == "risk":
            holds[d["shipper_id"]] += 1

    async def run() -> int:
        store = RedisReputationStore.from_settings(settings)
        bad = 0
        try:
            for sid, n in feed.per_shipper.items():
                st = await store.shipper(sid)
                if st is None or st.seen != n or st.holds != holds[sid]:
                    bad += 1
                    if bad <= 5:
                        print(f"  mismatch {sid}: state {st and (st.seen, st.holds)}, "
                              f"expected {(n, holds[sid])}")  # fmt: skip
        finally:
            await store.close()
        return bad

    return len(feed.per_shipper), asyncio.run(run())


class OwnRedis:
    """A redis-server of the suite's own (AOF on, ``appendfsync always``), restartable
    on the same port, with its data kept (``start``) or wiped (``start(empty=True)``)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = devstack.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, empty: bool = False) -> None:
        if empty:
            for p in self.dir.glob("*"):
                if p.is_dir():
                    import shutil

                    shutil.rmtree(p)
                elif p.suffix in (".aof", ".rdb", ".manifest") or p.name.startswith("appendonly"):
                    p.unlink()
        argv = [devstack.redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
                "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not devstack._redis_ping(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


def metrics(port: int) -> dict[str, float]:
    """The worker's Prometheus samples (name{labels} -> value)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
