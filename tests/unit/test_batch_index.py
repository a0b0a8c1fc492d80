"""The batch's index of its entities, built in columns, against one parcel at a time."""

import random

import msgspec
import numpy as np

from parcel_stream.features import address_key, address_keys, index_shippers, seller_key
from parcel_stream.model import Address, Manifest
from tests.unit.samples import manifest

# whitespace of several kinds (str.split's), punctuation, case that lowers by context
# (a final sigma), and the separators the batch's pass joins fields with
CHARS = ["a", "B", " ", "  ", "\t", "\n", "-", ".", "|", "Σ", "É", "\u00a0", "\u2003",
         "\x1f", "x", "9", "Ⅷ", "ß", "İ", "\x00", "\x01", "/"]  # fmt: skip


def test_address_keys_of_a_batch_are_each_addresss_key() -> None:
    rng = random.Random(3)

    def text(k: int) -> str:
        return "".join(rng.choice(CHARS) for _ in range(rng.randint(0, k)))

    for _ in range(2000):
        batch = [Address(lines=[text(8) for _ in range(rng.randint(0, 3))], postal_code=text(5),
                         country=rng.choice(["GB", "US", "DE"]))
                 for _ in range(rng.randint(0, 6))]  # fmt: skip
        batch += batch[: rng.randint(0, 2)]  # the same address again
        assert address_keys(batch) == [address_key(a) for a in batch]


def test_an_address_keeps_its_key_whatever_else_is_in_the_batch() -> None:
    a = Address(lines=["1 High St.", "Flat  2"], postal_code="ab1 2cd", country="GB")
    b = Address(lines=["1 high st", "flat 2"], postal_code="AB1 2CD", country="GB")
    key = address_keys([a])[0]
    assert address_keys([b, a, Address(lines=["x\x00y"], country="GB")]) == [key, key,
        address_key(Address(lines=["x\x00y"], country="GB"))]  # fmt: skip
    assert address_keys([Address(lines=["1 High St"], country="US")])[0] != key


def one_at_a_time(manifests: list[Manifest]) -> tuple[list[str], list[int], list[str],
                                                    list[int], list[str], list[int]]:  # fmt: skip
    shippers: dict[str, int] = {}
    addresses: dict[str, int] = {}
    sellers: dict[str, int] = {}
    s_idx, a_idx, l_idx = [], [], []
    for m in manifests:
        s_idx.append(shippers.setdefault(m.shipper.id, len(shippers)))
        l_idx.append(sellers.setdefault(seller_key(m.seller), len(sellers))
                     if m.seller is not None else -1)  # fmt: skip
        a_idx.append(addresses.setdefault(address_key(m.consignee.address), len(addresses)))
    return list(shippers), s_idx, list(addresses), a_idx, list(sellers), l_idx


def test_the_index_in_columns_is_the_index_parcel_by_parcel() -> None:
    rng = random.Random(7)
    for _ in range(300):
        batch = []
        for k in range(rng.randint(0, 30)):
            doc = manifest(parcel_id=f"P{k}")
            doc["shipper"]["id"] = f"S{rng.randint(0, 5)}"
            doc["consignee"]["address"]["lines"] = [f"{rng.randint(0, 6)} Main St"]
            if rng.random() < 0.3:
                doc.pop("seller", None)
            else:
                doc["seller"] = {"id": f"L{rng.randint(0, 4)}",
                                 "marketplace": rng.choice(["shop", "mall"])}  # fmt: skip
            batch.append(msgspec.convert(doc, Manifest))
        idx = index_shippers(batch)
        want = one_at_a_time(batch)
        got = (list(idx.ids), idx.parcel_shipper.tolist(), list(idx.addresses),
               idx.parcel_address.tolist(), list(idx.sellers), idx.parcel_seller.tolist())  # fmt: skip
        assert got == want
        assert idx.parcel_shipper.dtype == np.int64 and idx.parcel_seller.dtype == np.int64
