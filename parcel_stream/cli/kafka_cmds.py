"""Moving records in and out of Kafka: produce, record, replay."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from parcel_stream.adapters.security import kafka_client_options
from parcel_stream.cli.common import positive_int, speed, time_ms
from parcel_stream.cli.errors import UsageError
from parcel_stream.settings import Settings

if TYPE_CHECKING:
    from parcel_stream.cli.common import Subcommands


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from parcel_stream.adapters.kafka_io import make_producer, produce_parcels
    from parcel_stream.progress import Progress

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
    producer = make_producer(settings.kafka_bootstrap, **kafka_client_options(settings))
    progress = Progress("producing", total=len(pairs), unit="parcels")
    stats = produce_parcels(
        producer, settings.topic_manifests, pairs, args.batch_size, progress=progress
    )
    producer.close()
    rate = stats.parcels / max(stats.seconds, 1e-9)
    print(f"sent {stats.parcels} manifests in {stats.records} records ({rate:,.0f}/s)")
    return 0


def cmd_record(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.adapters.kafka_io import RecordRange, consumer_options, record_topics
    from parcel_stream.progress import Progress

    rng = RecordRange(args.from_offset, args.to_offset, args.since, args.until, args.follow)
    if rng.since_ms is not None and rng.until_ms is not None and rng.since_ms > rng.until_ms:
        raise UsageError("--since is after --until; swap them")
    topics = args.topics or [settings.topic_manifests]
    try:
        n = record_topics(
            settings.kafka_bootstrap,
            topics,
            args.out,
            rng,
            Progress("recording", unit="records"),
            options=consumer_options(settings),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {n} records from {', '.join(topics)} to {args.out}")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.adapters.kafka_io import ReplayPlan, make_producer, replay_feed
    from parcel_stream.feed import FeedError, read_feed
    from parcel_stream.progress import Progress

    if not Path(args.file).exists():
        raise UsageError(f"{args.file}: no such file; record one with `parcel-stream record`")
    plan = ReplayPlan(
        topic=args.topic or settings.topic_manifests,
        speed=args.speed,
        mode=args.mode,
        batch_size=args.batch_size,
        keep_partitions=args.keep_partitions,
    )
    unit = "parcels" if plan.mode != "recorded" else "records"
    progress = Progress(f"replaying to {plan.topic}", unit=unit)
    producer = make_producer(settings.kafka_bootstrap, **kafka_client_options(settings))
    try:
        sent = replay_feed(producer, read_feed(args.file, plan.topic), plan, progress)
    except FeedError as exc:
        raise UsageError(str(exc)) from None
    finally:
        producer.close()
    print(f"sent {sent} records to {plan.topic} ({progress.rate():,.0f} {unit}/s)")
    return 0


def add_produce(sub: Subcommands) -> None:
    pr = sub.add_parser("produce", help="send an NDJSON feed file to the manifests topic")
    pr.add_argument("file")
    pr.add_argument("--batch-size", type=positive_int, default=1, help="parcels per record")
    pr.set_defaults(func=cmd_produce)


def add_record(sub: Subcommands) -> None:
    rec = sub.add_parser(
        "record", help="copy topic records (an offset or time range) into a feed file"
    )
    rec.add_argument("topics", nargs="*", help="topics to record (default: the manifests topic)")
    rec.add_argument("--out", required=True, help="feed file (.ndjson, or .ndjson.gz)")
    rec.add_argument("--from-offset", type=int, help="first offset per partition")
    rec.add_argument("--to-offset", type=int, help="last offset per partition (inclusive)")
    rec.add_argument("--since", type=time_ms, help="Unix ms or ISO 8601; earlier records skipped")
    rec.add_argument("--until", type=time_ms, help="Unix ms or ISO 8601; later records skipped")
    rec.add_argument("--follow", action="store_true", help="keep recording until Ctrl-C")
    rec.set_defaults(func=cmd_record)


def add_replay(sub: Subcommands) -> None:
    rp = sub.add_parser("replay", help="send a feed file to the manifests topic at any pace")
    rp.add_argument("file", help="feed file written by `record`, or a manifests NDJSON file")
    rp.add_argument("--topic", help="target topic (default: the manifests topic)")
    rp.add_argument(
        "--speed", type=speed, default=0.0, help="max (default), 1 = recorded pace, N = N× faster"
    )
    rp.add_argument(
        "--as",
        dest="mode",
        choices=["recorded", "single", "batch"],
        default="recorded",
        help="send records as recorded, one parcel per record, or as NDJSON batch records",
    )
    rp.add_argument("--batch-size", type=positive_int, default=1000, help="parcels per batch")
    rp.add_argument("--keep-partitions", action="store_true", help="send to recorded partitions")
    rp.set_defaults(func=cmd_replay)
