"""Crash suite: a paced feed while the worker is killed with SIGKILL at random moments
and restarted; then every parcel is accounted for.

    python benchmarks/reliability/crash.py [--parcels 200000] [--kills 10] [--rate 2500]

Prints: parcels sent (valid, malformed), decided, rejected, missing (must be 0),
duplicated decisions (must all be identical to the first), and shippers whose Redis
reputation differs from the truth (must be 0: ``seen`` = parcels sent, ``holds`` = the
distinct parcels the decisions held on risk, each counted once).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.reliability.harness import (
    Accounting,
    Worker,
    account,
    check_reputation,
    collect,
    dev_stack,
    make_feed,
    pace,
    suite_settings,
)


def run(
    parcels: int, kills: int, rate: float, seed: int, work: Path
) -> tuple[Accounting, dict[str, object]]:
    rng = random.Random(seed)
    feed = make_feed(parcels, seed=seed)
    with dev_stack(work / "stack") as info:
        s = suite_settings(info, work)
        worker = Worker(s, work / "worker.log")
        t0 = time.monotonic()
        sender = pace(s, feed, rate)
        done = 0
        while done < kills:
            worker.start()
            # random moments: during group join, mid-batch, between batches
            time.sleep(rng.uniform(2.0, 9.0))
            worker.kill()
            done += 1
            print(f"  kill {done}/{kills} at {time.monotonic() - t0:.1f}s "
                  f"(producer {'running' if sender.is_alive() else 'done'})", flush=True)  # fmt: skip
        worker.start()
        sender.join()
        out = collect(s, feed, timeout_s=max(300.0, parcels / 500))
        elapsed = time.monotonic() - t0
        alive = worker.alive()
        worker.stop()
        acc = account(feed, out)
        checked, mismatched = check_reputation(s, feed, out)
        resent, skipped = worker.redelivered()
    extra = {"kills": kills, "elapsed_s": round(elapsed, 1), "worker_alive_at_end": alive,
             "redelivered_resent": resent, "redelivered_skipped": skipped,
             "shippers_checked": checked, "reputation_mismatches": mismatched}  # fmt: skip
    return acc, extra


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parcels", type=int, default=200_000)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--rate", type=float, default=2500.0, help="offered parcels/s")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ps-crash-") as tmp:
        acc, extra = run(args.parcels, args.kills, args.rate, args.seed, Path(tmp))
    for k, v in {**asdict(acc), **extra}.items():
        print(f"{k:28} {v}")
    ok = (acc.missing == 0 and acc.conflicting_duplicates == 0 and acc.unexpected == 0
          and acc.rejected == acc.sent_bad and extra["reputation_mismatches"] == 0)  # fmt: skip
    print("RESULT", "PASS: nothing lost" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
