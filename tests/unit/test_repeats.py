"""The content hash that tells a repeat from an amendment."""

from __future__ import annotations

import msgspec

from parcel_stream.model import Manifest
from parcel_stream.repeats import (
    Remembered,
    classify,
    content_hash,
    decode_remembered,
    encode_remembered,
    legacy_hash,
)
from parcel_stream.sequence import AMEND, NEW, REPEAT
from tests.unit.samples import manifest


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
    assert len(content_hash(a)) == 16 and len(legacy_hash(a)) == 16


def test_a_parcel_remembered_with_an_earlier_versions_hash_is_still_a_repeat() -> None:
    """Parcels remembered before the hash changed carry the hash of their JSON: a resend
    of the same content is a repeat, other content an amendment, new ids new."""
    same, changed, fresh = parcel(parcel_id="P1"), parcel(parcel_id="P2"), parcel(parcel_id="P3")
    stored = {"P1": remembered(legacy_hash(same)),
              "P2": remembered(legacy_hash(parcel(parcel_id="P2", declared_value=1.0)))}  # fmt: skip
    batch = [same, changed, fresh]
    hashes = [content_hash(m) for m in batch]
    assert hashes[0] != stored["P1"][0]
    got = classify([m.parcel_id for m in batch], hashes, stored, batch)
    assert got.contrib.status.tolist() == [REPEAT, AMEND, NEW]
    # and with the current hash stored, as every parcel scored from now on
    now = {"P1": remembered(hashes[0])}
    assert classify(["P1"], hashes[:1], now, batch[:1]).contrib.status.tolist() == [REPEAT]
