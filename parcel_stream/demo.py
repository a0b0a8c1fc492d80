"""The demo: dev stack up, worker started, synthetic feed streamed, holds shown, all stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import orjson

from parcel_stream.adapters import devstack
from parcel_stream.adapters.kafka_io import make_producer, produce_parcels, read_all
from parcel_stream.adapters.metrics import metric_total
from parcel_stream.decide import decision_count, read_decisions
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.model import Decision, Hold, Rejection
from parcel_stream.settings import Settings

_HOLD = msgspec.json.Decoder(Hold)
_REJ = msgspec.json.Decoder(Rejection)


def dev_settings(info: devstack.StackInfo, base: Settings, **overrides: object) -> Settings:
    """Settings for a worker on the dev stack: fast group joins, its own data dir."""
    values: dict[str, object] = {
        "kafka_bootstrap": info.bootstrap,
        "redis_url": info.redis_url,
        **devstack.DEV_GROUP_TIMING,
        "commit_interval_s": 0.5,
        "metrics_port": devstack.free_port(),
        "data_dir": str(Path(info.state_dir) / "worker-data"),
    }
    values.update(overrides)
    return base.replace(**values)


def isolated_settings(info: devstack.StackInfo, tag: str, data_dir: str | Path,
                      base: Settings | None = None) -> Settings:  # fmt: skip
    """Dev-stack settings (from ``base``, default the defaults) with their own topics, group
    and key prefix (tests, benchmarks); the topics are created."""
    s = dev_settings(
        info,
        base if base is not None else Settings(),
        app_id=f"ps-{tag}",
        topic_manifests=f"manifests-{tag}",
        topic_holds=f"holds-{tag}",
        topic_decisions=f"decisions-{tag}",
        topic_rejects=f"rejects-{tag}",
        topic_exam_results=f"exams-{tag}",
        redis_key_prefix=f"ps{tag}",
        data_dir=str(data_dir),
    )
    devstack.create_topics(info.bootstrap, s)
    return s


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM, wait up to ``grace_s`` for it to finish its work, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def running_worker(settings: Settings, state_dir: str | Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``parcel-stream worker`` in a child process; its pid file lets `dev down` stop it."""
    state = Path(state_dir)
    env = {**os.environ, **settings.as_env()}
    log = open(state / "worker.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "parcel_stream.cli", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    (state / "worker.pid").write_text(f"{proc.pid}\n")
    try:
        yield proc
    finally:
        stop_process(proc)
        log.close()
        (state / "worker.pid").unlink(missing_ok=True)


MALFORMED: tuple[bytes, ...] = (
    b'{"parcel_id": "BAD-JSON", "carrier": ',
    b'{"parcel_id": "BAD-NEG", "declared_value": -5}',
    b"[1, 2, 3]",
    b'{"parcel_id": "BAD\xff\xfe"}',
)


@dataclass
class DemoResult:
    sent_parcels: int
    malformed: int
    decisions: list[Decision]
    holds: list[Hold]
    rejections: list[Rejection]
    labels: dict[str, str | None]
    wall_s: float
    scoring_s: float = float("nan")  # the worker's time in batches (its metrics)


def feed_lines(
    parcels: int, seed: int, malformed_every: int
) -> tuple[list[tuple[bytes | None, bytes]], dict[str, str | None], int]:
    lines: list[tuple[bytes | None, bytes]] = []
    labels: dict[str, str | None] = {}
    bad = 0
    for n, (doc, label) in enumerate(generate(FeedConfig(parcels=parcels, seed=seed))):
        labels[doc["parcel_id"]] = label
        lines.append((doc["shipper"]["id"].encode(), orjson.dumps(doc)))
        if malformed_every and n % malformed_every == malformed_every - 1:
            lines.append((None, MALFORMED[bad % len(MALFORMED)]))
            bad += 1
    return lines, labels, bad


def run_demo(
    parcels: int = 20_000,
    batch_size: int = 500,
    single_every: int = 10,
    seed: int = 7,
    timeout_s: float = 300.0,
    base: Settings | None = None,
    out: Callable[[str], None] = print,
) -> DemoResult:
    base = base or Settings.from_env()
    state = Path(tempfile.mkdtemp(prefix="parcel-stream-demo-"))
    out(f"starting dev stack (Tansu broker + redis-server) in {state}")
    info = devstack.up(base, state)
    try:
        settings = dev_settings(info, base)
        out(f"  broker {info.bootstrap}, redis {info.redis_url}, {base.partitions} partitions")
        lines, labels, malformed = feed_lines(parcels, seed, malformed_every=1000)
        out(f"generated {parcels} parcels (seed {seed}) + {malformed} malformed manifests")
        with running_worker(settings, state) as worker:
            out(f"worker started (pid {worker.pid}), metrics on :{settings.metrics_port}")
            producer = make_producer(info.bootstrap)
            t0 = time.perf_counter()
            stats = produce_parcels(
                producer, settings.topic_manifests, lines, batch_size, single_every
            )
            producer.close()
            out(
                f"produced {stats.parcels} manifests in {stats.records} records "
                f"({batch_size}-parcel NDJSON batches, every {single_every}th parcel alone)"
            )
            expected = len(lines)
            counted = {"n": 0}

            def accounted(got: dict[str, list[tuple[bytes | None, bytes]]]) -> int:
                n = sum(decision_count(v) for _k, v in got[settings.topic_decisions])
                return n + len(got[settings.topic_rejects])

            def progress(got: dict[str, list[tuple[bytes | None, bytes]]]) -> None:
                n = accounted(got)
                if n - counted["n"] >= 5000 or (n == expected and counted["n"] != n):
                    counted["n"] = n
                    out(f"  {n}/{expected} manifests decided or rejected")
                if worker.poll() is not None:
                    raise RuntimeError(
                        f"the worker exited (code {worker.returncode}); see {state}/worker.log"
                    )

            got = read_all(
                info.bootstrap,
                [settings.topic_decisions, settings.topic_holds, settings.topic_rejects],
                lambda g: accounted(g) >= expected,
                timeout_s,
                on_poll=progress,
            )
            wall = time.perf_counter() - t0
            try:  # the worker's own time in batches, from its metrics
                scoring = metric_total(settings.metrics_port,
                                       "parcel_stream_batch_duration_seconds_sum")  # fmt: skip
            except (OSError, KeyError):
                scoring = float("nan")
        decisions = [d for _k, v in got[settings.topic_decisions] for d in read_decisions(v)]
        result = DemoResult(
            sent_parcels=parcels,
            malformed=malformed,
            decisions=decisions,
            holds=[_HOLD.decode(v) for _k, v in got[settings.topic_holds]],
            rejections=[_REJ.decode(v) for _k, v in got[settings.topic_rejects]],
            labels=labels,
            wall_s=wall,
            scoring_s=scoring,
        )
        print_summary(result, out)
        return result
    finally:
        out("stopping worker, broker and redis-server")
        devstack.down(state)


def print_summary(r: DemoResult, out: Callable[[str], None] = print) -> None:
    lanes = Counter(d.lane for d in r.decisions)
    n = len(r.decisions)
    out("")
    out("== summary ==")
    out(f"parcels scored   {n} of {r.sent_parcels} sent; rejections {len(r.rejections)} "
        f"of {r.malformed} malformed sent")  # fmt: skip
    for reason, c in Counter(x.reason for x in r.rejections).most_common():
        out(f"  rejected {reason:<18} {c}")
    for lane in ("release", "review", "hold"):
        out(f"lane {lane:<8} {lanes[lane]:>8}  ({100 * lanes[lane] / max(n, 1):.2f}%)")
    by_selection = Counter(h.selection for h in r.holds)
    out(
        "holds by selection: "
        + ", ".join(f"{k} {by_selection[k]}" for k in ("risk", "random", "exploration"))
    )
    risk_holds = [h for h in r.holds if h.selection == "risk"]
    held_bad = sum(1 for h in risk_holds if r.labels.get(h.parcel_id))
    bad_total = sum(1 for v in r.labels.values() if v)
    out(f"risk holds that carry an injected violation: {held_bad}/{len(risk_holds)}; "
        f"violations held on risk: {held_bad}/{bad_total}")  # fmt: skip
    if r.decisions:
        # the worker's time in its batches (a batch waits for the broker's acknowledgement
        # of its outputs while the next one starts, so this counts some time twice)
        busy = f"{n / r.scoring_s:,.0f} parcels/s in the worker's batches, " if (
            r.scoring_s > 0) else ""  # fmt: skip
        out(f"throughput: {busy}{n / r.wall_s:,.0f}/s wall (including worker start and group "
            "join)")  # fmt: skip
    out("")
    out("example holds:")
    for h in sorted(r.holds, key=lambda h: -h.score)[:5]:
        reasons = "; ".join(f"{x.code} ({x.text})" for x in h.reasons)
        learned = "; ".join(x.text for x in h.learned_reasons)
        p = f", probability {h.probability:.0%}" if h.probability is not None else ""
        out(f"  {h.parcel_id} shipper {h.shipper_id} hub {h.hub} score {h.score:.0f}{p}: "
            f"{reasons}{'; learned: ' + learned if learned else ''}")  # fmt: skip
