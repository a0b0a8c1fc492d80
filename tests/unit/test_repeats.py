"""The content hash that tells a repeat from an amendment."""

from __future__ import annotations

import msgspec
import pytest

from parcel_stream.currency import USD_PER_UNIT
from parcel_stream.model import Manifest
from parcel_stream.parse import Limits, parse_batch
from parcel_stream.repeats import (
    Remembered,
    classify,
    content_hash,
    content_hashes,
    decode_remembered,
    encode_remembered,
    legacy_hashes,
)
from parcel_stream.reputation import InMemoryStore
from parcel_stream.risk import RiskConfig, RiskState
from parcel_stream.rules import default_ruleset
from parcel_stream.sequence import AMEND, NEW, REPEAT
from parcel_stream.settings import Settings
from parcel_stream.step import run_sync
from tests.unit.samples import manifest
from tests.unit.test_same_feed import feed


def parcel(**changes: object) -> Manifest:
    return msgspec.convert(manifest(**changes), Manifest)


def remembered(h: str) -> tuple[str, Remembered]:
    r = Remembered("m/0/1", 12.0, 0, 0, [], "v1", 0, 1, 1, "S1", "", "", 20.0, False)
    return decode_remembered(encode_remembered(h, r))


def test_the_hash_ignores_how_the_json_was_written_attribute_order_included() -> None:
    a = parcel(attributes={"office": "LHR", "platform": "shop"})
    b = parcel(attributes={"platform": "shop", "office": "LHR"})
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(parcel(attributes={"office": "LGW", "platform": "shop"}))
    assert len(content_hash(a)) == 16 and all(len(h) == 16 for h in legacy_hashes(a))
    assert content_hashes([a, b]) == [content_hash(a), content_hash(b)]


@pytest.mark.parametrize("version", [0, 1], ids=["blake2b-msgpack", "blake2b-json"])
def test_a_parcel_remembered_with_an_earlier_versions_hash_is_still_a_repeat(version: int
                                                                             ) -> None:  # fmt: skip
    """Parcels remembered before the hash changed carry the BLAKE2b of their MessagePack
    or, earlier, of their JSON: a resend of the same content is a repeat, other content an
    amendment, new ids new."""
    same, changed, fresh = parcel(parcel_id="P1"), parcel(parcel_id="P2"), parcel(parcel_id="P3")
    stored = {"P1": remembered(legacy_hashes(same)[version]),
              "P2": remembered(legacy_hashes(parcel(parcel_id="P2", declared_value=1.0))[version])}  # fmt: skip
    batch = [same, changed, fresh]
    hashes = [content_hash(m) for m in batch]
    assert hashes[0] != stored["P1"][0]
    got = classify([m.parcel_id for m in batch], hashes, stored, batch)
    assert got.contrib.status.tolist() == [REPEAT, AMEND, NEW]
    # and with the current hash stored, as every parcel scored from now on
    now = {"P1": remembered(hashes[0])}
    assert classify(["P1"], hashes[:1], now, batch[:1]).contrib.status.tolist() == [REPEAT]


@pytest.mark.parametrize("mode", ["off", "shadow"])
def test_what_the_batch_step_remembers_is_each_parcels_latest_version_as_the_struct_encodes(
    mode: str,
) -> None:
    """The step encodes the remembered rows column by column, without building structs:
    each blob is byte for byte what ``encode_remembered`` gives for the struct, and holds
    the latest scored version of its parcel id (resends and amendments in the feed)."""
    records = feed(23, 600)
    rs = default_ruleset(Settings())
    risk = (RiskConfig(mode="shadow"), RiskState()) if mode == "shadow" else None
    store = InMemoryStore()
    now = max(r.timestamp_ms for r in records) + 1
    result = run_sync(records, store, rs, Limits(), now, risk=risk)
    parsed = parse_batch(records, Limits(), now)
    latest = {m.parcel_id: (i, m) for i, m in enumerate(parsed.manifests)
              if result.parcel_ids[i] == m.parcel_id}  # fmt: skip
    assert len(store.remembered) == len(latest) > 500
    held = checked = 0
    for pid, raw in store.remembered.items():
        h, r = decode_remembered(raw)
        assert encode_remembered(h, r) == raw
        i, m = latest[pid]
        if h != content_hash(m):  # a resend of the same content: the first one is kept
            continue
        assert r.source == parsed.sources[i] or r.source in parsed.sources
        assert r.shipper_id == m.shipper.id and r.event_ts_ms == m.manifest_ts_ms
        seller = f"{m.seller.id}@{m.seller.marketplace}" if m.seller is not None else ""
        assert r.seller == seller and r.version == rs.version and r.decision_ts_ms == now
        assert r.value_usd == m.declared_value * USD_PER_UNIT[m.currency]
        assert (r.probability >= 0) == (mode != "off") and 0 < r.propensity <= 1
        held += r.held
        checked += 1
    assert held > 0 and checked > 500
