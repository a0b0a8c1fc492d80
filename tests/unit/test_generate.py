from collections import Counter

import orjson

from parcel_stream.currency import USD_PER_UNIT
from parcel_stream.generate import SCENARIOS, TURNED_BAD, FeedConfig, generate
from parcel_stream.parse import InRecord, Limits, parse_batch


def test_same_seed_same_feed_and_different_seed_differs() -> None:
    a = list(generate(FeedConfig(parcels=300, seed=3)))
    b = list(generate(FeedConfig(parcels=300, seed=3)))
    c = list(generate(FeedConfig(parcels=300, seed=4)))
    assert a == b and a != c


def test_feed_is_valid_realistic_and_labelled() -> None:
    feed = list(generate(FeedConfig(parcels=20_000, seed=11)))
    docs = [d for d, _ in feed]
    parsed = parse_batch(
        [
            InRecord(
                value=b"\n".join(orjson.dumps(d) for d in docs), topic="t", partition=0, offset=0
            )
        ],
        Limits(max_record_bytes=64 << 20, max_parcels_per_record=50_000),
        0,
    )
    assert not parsed.rejections and len(parsed) == 20_000
    # heavy-tailed shipper volumes: the top 5% of shippers send a large share
    volumes = sorted(Counter(d["shipper"]["id"] for d in docs).values(), reverse=True)
    top = volumes[: max(1, len(volumes) // 20)]
    assert sum(top) / len(docs) > 0.3
    # labelled bad behaviour at a few percent, every scenario present
    labels = Counter(label for _, label in feed if label)
    share = sum(labels.values()) / len(docs)
    assert 0.015 < share < 0.06 and set(labels) == set(SCENARIOS) | {TURNED_BAD}
    # most declared values sit well below the threshold, parcels ids are unique
    values = sorted(m.declared_value for m in parsed.manifests if m.currency == "USD")
    assert values[len(values) // 2] < 200
    assert len({d["parcel_id"] for d in docs}) == len(docs)
    # consignee addresses are reused
    addrs = Counter(tuple(d["consignee"]["address"]["lines"]) for d in docs)
    assert addrs.most_common(1)[0][1] > 5


def test_split_shipments_cross_the_threshold_together() -> None:
    feed = list(generate(FeedConfig(parcels=30_000, seed=2)))
    groups: dict[tuple[str, str], list[float]] = {}
    for doc, label in feed:
        if label == "split_shipment":
            key = (doc["shipper"]["id"], doc["consignee"]["address"]["lines"][0])
            usd = doc["declared_value"] * USD_PER_UNIT[doc["currency"]]
            groups.setdefault(key, []).append(usd)
    assert groups
    for values in groups.values():
        assert len(values) >= 2 and all(v < 800 for v in values) and sum(values) > 800


def test_turned_bad_shippers_comply_first_half() -> None:
    cfg = FeedConfig(parcels=30_000, seed=3)
    feed = list(generate(cfg))
    mid = cfg.start_ms + cfg.duration_s * 500
    turned = [doc["manifest_ts_ms"] for doc, label in feed if label == TURNED_BAD]
    assert turned and min(turned) > mid
