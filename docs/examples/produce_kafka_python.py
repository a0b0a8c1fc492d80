"""Produce parcel manifests to parcel-stream with kafka-python.

Sends a few parcels one per record (key = shipper id) and a few more as one NDJSON batch
record, idempotent and compressed, then prints the parcel ids it sent.

    python produce_kafka_python.py BOOTSTRAP [--topic parcel-manifests] [--prefix KP]
"""

from __future__ import annotations

import argparse
import json
import time

from kafka import KafkaProducer


def manifest(parcel_id: str, shipper_id: str, value_usd: float) -> dict[str, object]:
    """One parcel, as schemas/parcel-manifest.v1.json describes it."""
    now_ms = int(time.time() * 1000)
    return {
        "parcel_id": parcel_id,
        "carrier": "ups",
        "hub": "CVG-DHL",
        "shipper": {
            "id": shipper_id,
            "name": "Export Co",
            "address": {"lines": ["1 Industrial Rd"], "city": "Shenzhen", "country": "CN"},
            "country": "CN",
        },
        "consignee": {
            "name": "Alex Smith",
            "address": {"lines": ["12 Main St"], "postal_code": "10001", "country": "US"},
            "country": "US",
        },
        "items": [
            {
                "description": "phone case",
                "hs_code": "3926.90.99",
                "quantity": 3,
                "value": value_usd,
            },
        ],
        "declared_value": value_usd,
        "currency": "USD",
        "gross_weight_kg": 0.4,
        "origin_country": "CN",
        "manifest_ts_ms": now_ms,
        "shipped_ts_ms": now_ms - 3_600_000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bootstrap", help="Kafka bootstrap address, e.g. 127.0.0.1:9092")
    ap.add_argument("--topic", default="parcel-manifests")
    ap.add_argument("--prefix", default="KP", help="parcel id prefix")
    args = ap.parse_args()

    # --8<-- [start:producer]
    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap,
        # Keys are bytes (the shipper id, UTF-8). kafka-python hashes them with murmur2, as
        # the Java client and aiokafka do, so a shipper's records land on the same
        # partition whichever of them wrote them.
        acks="all",
        enable_idempotence=True,  # a retried send is not written twice
        compression_type="gzip",  # gzip, snappy, lz4 and zstd are all accepted
        linger_ms=20,
        # one record must stay under the worker's PARCEL_MAX_RECORD_BYTES (default 1 MiB)
        max_request_size=1_048_576,
    )
    # --8<-- [end:producer]

    sent: list[str] = []
    futures = []
    # --8<-- [start:single]
    # One parcel per record: compact JSON, key = the shipper id.
    for n in range(1, 4):
        doc = manifest(f"{args.prefix}-S{n:03d}", "SHP-KP-1", value_usd=12.0 * n)
        value = json.dumps(doc, separators=(",", ":")).encode()
        futures.append(producer.send(args.topic, key=b"SHP-KP-1", value=value))
        sent.append(str(doc["parcel_id"]))
    # --8<-- [end:single]

    # --8<-- [start:batch]
    # A batch record: NDJSON, one parcel per line, marked by its content-type header. Key
    # it by the shipper when all its parcels are that shipper's.
    docs = [manifest(f"{args.prefix}-B{n:03d}", "SHP-KP-2", value_usd=20.0) for n in range(1, 6)]
    lines = [json.dumps(d, separators=(",", ":")).encode() for d in docs]
    futures.append(
        producer.send(
            args.topic,
            key=b"SHP-KP-2",
            value=b"\n".join(lines),
            headers=[("content-type", b"application/x-ndjson")],
        )
    )
    sent += [str(d["parcel_id"]) for d in docs]
    # --8<-- [end:batch]

    producer.flush()
    for future in futures:
        future.get(timeout=30)  # raises if the record was not written
    producer.close()
    for parcel_id in sent:
        print(f"sent {parcel_id}")


if __name__ == "__main__":
    main()
