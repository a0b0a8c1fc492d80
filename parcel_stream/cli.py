"""The ``parcel-stream`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from parcel_stream.settings import ConfigError, Settings


class UsageError(Exception):
    """A bad argument: printed as one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, e.g. 1000") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import gc

    import faust

    from agents.app import create_app

    # A batch allocates ~10 objects per parcel that live until the batch ends; with the
    # default thresholds the collector rescans them over and over (half the parse time).
    gc.set_threshold(50_000, 20, 100)
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
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


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from parcel_stream.generate import FeedConfig, generate

    cfg = FeedConfig(
        parcels=args.parcels,
        seed=args.seed,
        threshold_usd=settings.duty_free_threshold_usd,
    )
    out = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
    labels = open(args.labels, "wb") if args.labels else None  # noqa: SIM115
    try:
        for doc, label in generate(cfg):
            out.write(orjson.dumps(doc) + b"\n")
            if labels is not None:
                labels.write(orjson.dumps({"parcel_id": doc["parcel_id"], "label": label}) + b"\n")
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        if labels is not None:
            labels.close()
    return 0


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from parcel_stream.adapters.kafka_io import make_producer, produce_parcels

    path = Path(args.file)
    if not path.exists():
        raise UsageError(
            f"{path}: no such file; create one with `parcel-stream generate --out {path}`"
        )
    pairs: list[tuple[bytes | None, bytes]] = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            key = str(orjson.loads(line)["shipper"]["id"]).encode()
        except Exception:
            key = None  # malformed lines are sent as they are: the worker rejects them
        pairs.append((key, line))
    producer = make_producer(settings.kafka_bootstrap)
    stats = produce_parcels(producer, settings.topic_manifests, pairs, args.batch_size)
    producer.close()
    rate = stats.parcels / max(stats.seconds, 1e-9)
    print(f"sent {stats.parcels} manifests in {stats.records} records ({rate:,.0f}/s)")
    return 0


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.model import CONTRACTS, json_schema

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, kind in CONTRACTS.items():
        text = json.dumps(json_schema(kind), indent=2, sort_keys=True) + "\n"
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="parcel-stream",
        description="Risk-score e-commerce parcel manifests as they stream through Kafka. "
        "Configuration comes from PARCEL_* environment variables (see README).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    w = sub.add_parser("worker", help="run the scoring worker (Faust) until stopped")
    w.set_defaults(func=cmd_worker)

    d = sub.add_parser("dev", help="start/stop the embedded broker and redis-server")
    d.add_argument("action", choices=["up", "down", "status", "env"])
    d.add_argument("--state-dir", default=".parcel-stream/dev", help="pid files and logs")
    d.set_defaults(func=cmd_dev)

    demo = sub.add_parser("demo", help="run the whole pipeline on a synthetic feed and stop")
    demo.add_argument("--parcels", type=_positive_int, default=20_000)
    demo.add_argument("--batch-size", type=_positive_int, default=500, help="parcels per record")
    demo.add_argument("--single-every", type=int, default=10, help="every Nth parcel alone")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=cmd_demo)

    g = sub.add_parser("generate", help="write a seeded synthetic feed as NDJSON")
    g.add_argument("--parcels", type=_positive_int, default=10_000)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--out", default="-", help="file, or - for stdout")
    g.add_argument("--labels", help="also write ground-truth labels (NDJSON) to this file")
    g.set_defaults(func=cmd_generate)

    pr = sub.add_parser("produce", help="send an NDJSON feed file to the manifests topic")
    pr.add_argument("file")
    pr.add_argument("--batch-size", type=_positive_int, default=1, help="parcels per record")
    pr.set_defaults(func=cmd_produce)

    s = sub.add_parser("schemas", help="write the JSON Schemas generated from the code")
    s.add_argument("dir", nargs="?", default="schemas")
    s.set_defaults(func=cmd_schemas)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        return int(args.func(args, settings))
    except (ConfigError, UsageError) as exc:
        print(f"parcel-stream: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("parcel-stream: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from parcel_stream.adapters.devstack import DevStackError

        if isinstance(exc, DevStackError):
            print(f"parcel-stream: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
