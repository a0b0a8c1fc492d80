"""Fault suite: Redis and the broker fail mid-stream while a paced feed of batch and
single records flows through one worker, which must recover without a restart.

    python benchmarks/reliability/faults.py [SCENARIO ...] [--parcels 60000] [--rate 1500]
                                            [--outage-s 30] [--broker-pause-s 15]

Scenarios (all by default):
  redis-down       redis-server killed, back after --outage-s from its append-only file
  redis-paused     redis-server frozen (SIGSTOP) for --outage-s: calls time out
  redis-empty      redis-server killed, back after --outage-s with no data at all
  broker-paused    the broker frozen (SIGSTOP) for --broker-pause-s, then resumed

Prints, per scenario: parcels sent, decided, missing (must be 0), rejections, duplicate
decisions and whether any differs from the first, reputation mismatches (must be 0
except after redis-empty, where reputation restarts from nothing by design), Redis
errors counted, whether the worker process survived.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.reliability.harness import (
    OwnRedis,
    Worker,
    account,
    check_reputation,
    collect,
    dev_stack,
    make_feed,
    metrics,
    pace,
    suite_settings,
)

SCENARIOS = ("redis-down", "redis-paused", "redis-empty", "broker-paused")


def wait_for_decisions(port: int, at_least: float, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            m = metrics(port)
            if (
                sum(v for k, v in m.items() if k.startswith("parcel_stream_parcels_total{"))
                >= at_least
            ):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the worker did not start deciding")


def scenario(name: str, parcels: int, rate: float, outage_s: float, broker_pause_s: float,
             work: Path, info: object) -> dict[str, object]:  # fmt: skip
    redis = OwnRedis(work / f"redis-{name}")
    redis.start()
    s = suite_settings(info, work, redis_url=redis.url)  # type: ignore[arg-type]
    feed = make_feed(parcels, seed=sum(name.encode()) % 1000, bad_every=400)
    worker = Worker(s, work / f"worker-{name}.log")
    worker.start()
    pid = worker.proc.pid if worker.proc else 0
    # a quarter of the feed first; the rest is sent once the fault has begun
    go = threading.Event()
    sender = pace(s, feed, rate, gate=(parcels // 4, go))
    wait_for_decisions(s.metrics_port, min(500, parcels // 4))
    t_fault = time.monotonic()
    if name == "redis-down":
        redis.kill()
        go.set()
        time.sleep(outage_s)
        redis.start()
    elif name == "redis-empty":
        redis.kill()
        go.set()
        time.sleep(outage_s)
        redis.start(empty=True)
    elif name == "redis-paused":
        redis.pause()
        go.set()
        time.sleep(outage_s)
        redis.resume()
    else:
        os.kill(info.broker_pid, signal.SIGSTOP)  # type: ignore[attr-defined]
        go.set()
        time.sleep(broker_pause_s)
        os.kill(info.broker_pid, signal.SIGCONT)  # type: ignore[attr-defined]
    go.set()
    fault_s = time.monotonic() - t_fault
    sender.join()
    out = collect(s, feed, timeout_s=600, progress=False)
    recovered_s = time.monotonic() - t_fault
    m = metrics(s.metrics_port) if worker.alive() else {}
    survived = worker.alive() and worker.proc is not None and worker.proc.pid == pid
    worker.stop()
    acc = account(feed, out)
    checked, mismatched = check_reputation(s, feed, out)
    redis.kill()
    return {
        "scenario": name,
        **asdict(acc),
        "fault_s": round(fault_s, 1),
        "all_decided_after_s": round(recovered_s, 1),
        "redis_errors_counted": m.get('parcel_stream_errors_total{component="redis"}', 0.0),
        "produce_errors_counted": m.get('parcel_stream_errors_total{component="produce"}', 0.0),
        "worker_survived_without_restart": survived,
        "shippers_checked": checked,
        "reputation_mismatches": mismatched,
    }


def passed(r: dict[str, object]) -> bool:
    ok = (r["missing"] == 0 and r["rejected"] == r["sent_bad"] and r["unexpected"] == 0
          and r["worker_survived_without_restart"])  # fmt: skip
    if r["scenario"] != "redis-empty":
        ok = ok and r["conflicting_duplicates"] == 0 and r["reputation_mismatches"] == 0
    return bool(ok)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    ap.add_argument("--parcels", type=int, default=60_000)
    ap.add_argument("--rate", type=float, default=1500.0)
    ap.add_argument("--outage-s", type=float, default=30.0)
    ap.add_argument("--broker-pause-s", type=float, default=15.0)
    args = ap.parse_args()
    unknown = [x for x in args.scenarios if x not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="ps-faults-") as tmp,
        dev_stack(Path(tmp) / "stack") as info,
    ):
        for name in args.scenarios or SCENARIOS:
            print(f"== {name}", flush=True)
            r = scenario(name, args.parcels, args.rate, args.outage_s, args.broker_pause_s,
                         Path(tmp), info)  # fmt: skip
            for k, v in r.items():
                print(f"  {k:34} {v}")
            print("  RESULT", "PASS" if passed(r) else "FAIL", flush=True)
            results.append(r)
    return 0 if all(passed(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
