"""Produce parcel manifests to parcel-stream with confluent-kafka (librdkafka).

Sends a few parcels one per record (key = shipper id, partitioned as the Java client
does) and a few as one NDJSON batch record, idempotent and compressed; with
``--transactional`` all of them in one transaction. Prints the parcel ids it sent.

    python produce_confluent.py BOOTSTRAP [--topic parcel-manifests] [--prefix CF]
                                [--compression zstd] [--transactional]
"""

from __future__ import annotations

import argparse
import json
import time

from confluent_kafka import KafkaError, Message, Producer


def manifest(parcel_id: str, shipper_id: str, value_usd: float) -> dict[str, object]:
    """One parcel, as schemas/parcel-manifest.v1.json describes it."""
    now_ms = int(time.time() * 1000)
    return {
        "parcel_id": parcel_id,
        "carrier": "dhl",
        "hub": "LEJ-DHL",
        "shipper": {
            "id": shipper_id,
            "name": "Trading Ltd",
            "address": {"lines": ["8 Harbour Rd"], "city": "Hong Kong", "country": "HK"},
            "country": "HK",
        },
        "consignee": {
            "name": "Sam Lee",
            "address": {"lines": ["3 Elm St"], "postal_code": "60601", "country": "US"},
            "country": "US",
        },
        "items": [
            {
                "description": "cotton t-shirt",
                "hs_code": "6109.10",
                "quantity": 2,
                "value": value_usd,
            },
        ],
        "declared_value": value_usd,
        "currency": "USD",
        "gross_weight_kg": 0.5,
        "origin_country": "HK",
        "manifest_ts_ms": now_ms,
    }


failures: list[str] = []


def delivered(err: KafkaError | None, msg: Message) -> None:
    """Called from poll()/flush() once per record: written, or failed for good."""
    if err is not None:
        failures.append(f"{msg.topic()} key {msg.key()!r}: {err}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bootstrap", help="Kafka bootstrap address, e.g. 127.0.0.1:9092")
    ap.add_argument("--topic", default="parcel-manifests")
    ap.add_argument("--prefix", default="CF", help="parcel id prefix")
    ap.add_argument(
        "--compression", default="zstd", choices=["none", "gzip", "snappy", "lz4", "zstd"]
    )
    ap.add_argument("--transactional", action="store_true", help="send all in one transaction")
    args = ap.parse_args()

    # --8<-- [start:producer]
    config: dict[str, object] = {
        "bootstrap.servers": args.bootstrap,
        # librdkafka's default partitioner (consistent_random, CRC32) puts a key on another
        # partition than the Java client, kafka-python and aiokafka (murmur2) do. This one
        # matches them, so one shipper's parcels stay on one partition, in order, whichever
        # client a hub uses.
        "partitioner": "murmur2_random",
        "enable.idempotence": True,  # acks=all; retries never duplicate or reorder
        "compression.type": args.compression,  # gzip, snappy, lz4 and zstd are all accepted
        "linger.ms": 20,
        # one record must stay under the worker's PARCEL_MAX_RECORD_BYTES (default 1 MiB)
        "message.max.bytes": 1_048_576,
    }
    if args.transactional:
        # A transactional id per producer instance (stable across its restarts).
        config["transactional.id"] = f"hub-example-{args.prefix}"
    producer = Producer(config)
    # --8<-- [end:producer]

    if args.transactional:
        # --8<-- [start:transaction]
        producer.init_transactions(30)
        producer.begin_transaction()
        # --8<-- [end:transaction]

    sent: list[str] = []
    # --8<-- [start:single]
    for n in range(1, 4):
        doc = manifest(f"{args.prefix}-S{n:03d}", "SHP-CF-1", value_usd=15.0 * n)
        producer.produce(
            args.topic,
            key="SHP-CF-1",  # the shipper id
            value=json.dumps(doc, separators=(",", ":")).encode(),
            on_delivery=delivered,
        )
        producer.poll(0)  # serve delivery callbacks
        sent.append(str(doc["parcel_id"]))
    # --8<-- [end:single]

    # --8<-- [start:batch]
    docs = [manifest(f"{args.prefix}-B{n:03d}", "SHP-CF-2", value_usd=30.0) for n in range(1, 6)]
    producer.produce(
        args.topic,
        key="SHP-CF-2",
        value=b"\n".join(json.dumps(d, separators=(",", ":")).encode() for d in docs),
        headers=[("content-type", b"application/x-ndjson")],
        on_delivery=delivered,
    )
    sent += [str(d["parcel_id"]) for d in docs]
    # --8<-- [end:batch]

    if args.transactional:
        # --8<-- [start:commit]
        producer.commit_transaction(30)  # the worker (read_committed) sees them only now
        # --8<-- [end:commit]
    left = producer.flush(30)
    if left or failures:
        raise SystemExit(f"not delivered: {left} records still queued; {failures}")
    for parcel_id in sent:
        print(f"sent {parcel_id}")


if __name__ == "__main__":
    main()
