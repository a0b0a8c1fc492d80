"""Running the service: worker, dev (the embedded stack), demo, schemas."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from parcel_stream.cli.common import positive_int
from parcel_stream.settings import Settings

if TYPE_CHECKING:
    from parcel_stream.cli.common import Subcommands


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    if args.processes > 1:
        from parcel_stream.adapters.supervisor import supervise

        return supervise(settings, args.processes)

    import faust

    from agents.app import create_app
    from parcel_stream.logjson import logging_config

    app = create_app(settings)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        quiet=True,
        logging_config=logging_config(settings.log_level, settings.log_format),
    )
    worker.execute_from_commandline()
    return 0


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.adapters import devstack

    if args.action == "up":
        info = devstack.up(settings, args.state_dir)
        print(f"broker {info.bootstrap}  redis {info.redis_url}  (state in {info.state_dir})")
        print("use it with:")
        for k, v in info.env().items():
            print(f"  export {k}={v}")
    elif args.action == "down":
        stopped = devstack.down(args.state_dir)
        print(f"stopped {len(stopped)} process(es)" if stopped else "nothing was running")
    elif args.action in ("status", "env"):
        found = devstack.read_info(args.state_dir)
        if found is None:
            print("no dev stack in " + args.state_dir + "; start one with `parcel-stream dev up`")
            return 1
        if args.action == "env":
            for k, v in found.env().items():
                print(f"export {k}={v}")
        else:
            print(json.dumps({**found.__dict__, "bootstrap": found.bootstrap}, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.demo import run_demo

    result = run_demo(
        parcels=args.parcels,
        batch_size=args.batch_size,
        single_every=args.single_every,
        seed=args.seed,
        base=settings,
    )
    expected = result.sent_parcels + result.malformed
    accounted = len(result.decisions) + len(result.rejections)
    if accounted != expected:
        print(f"error: {expected - accounted} manifests have no decision or rejection")
        return 1
    return 0


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.contracts import CONTRACTS, json_schema

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, kind in CONTRACTS.items():
        text = json.dumps(json_schema(kind), indent=2, sort_keys=True) + "\n"
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


def processes(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of processes from 1 to 256, "
                                         f"e.g. {os.cpu_count() or 2} (one per core)")  # fmt: skip
    return n


def add_worker(sub: Subcommands) -> None:
    w = sub.add_parser("worker", help="run the scoring worker (Faust) until stopped")
    w.add_argument("--processes", type=processes, default=1,
                   help="worker processes in one consumer group, e.g. one per core "
                   "(each with PARCEL_DATA_DIR/<i> and PARCEL_METRICS_PORT + i)")  # fmt: skip
    w.set_defaults(func=cmd_worker)


def add_dev(sub: Subcommands) -> None:
    d = sub.add_parser("dev", help="start/stop the embedded broker and redis-server")
    d.add_argument("action", choices=["up", "down", "status", "env"])
    d.add_argument("--state-dir", default=".parcel-stream/dev", help="pid files and logs")
    d.set_defaults(func=cmd_dev)


def add_demo(sub: Subcommands) -> None:
    demo = sub.add_parser("demo", help="run the whole pipeline on a synthetic feed and stop")
    demo.add_argument("--parcels", type=positive_int, default=20_000)
    demo.add_argument("--batch-size", type=positive_int, default=500, help="parcels per record")
    demo.add_argument("--single-every", type=int, default=10, help="every Nth parcel alone")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=cmd_demo)


def add_schemas(sub: Subcommands) -> None:
    s = sub.add_parser("schemas", help="write the JSON Schemas generated from the code")
    s.add_argument("dir", nargs="?", default="schemas")
    s.set_defaults(func=cmd_schemas)
