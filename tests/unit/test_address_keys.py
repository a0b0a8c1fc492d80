"""A batch's consignee address keys, normalised together, are each address's own key."""

import random

from parcel_stream.features import address_key, address_keys
from parcel_stream.model import Address

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
