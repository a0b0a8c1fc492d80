"""Repeats and amendments: a parcel id seen before, in this batch or within the window.

Hubs resend: a producer retry without idempotence, a file sent twice, the same parcel in
two batch records. Every scored parcel is remembered by id for ``repeat_window_days``
(default 14) with a hash of its content, its decision and what it added to the state:

- same id, same content: a **repeat**. Its original decision is emitted again unchanged,
  marked ``repeat_of`` (the original's source); no state changes.
- same id, other content: an **amendment**. It is scored again, marked ``amends``, and its
  original's contribution to every state is taken back first, so the parcel counts once.

The content hash covers the decoded manifest (unknown fields dropped, key order and
whitespace irrelevant, the ``attributes`` map's order too), so a resend that only
re-serialises the JSON is still a repeat. It is the 64-bit XXH3 of the manifest's
MessagePack (keys in a fixed order): half the cost of the BLAKE2b of it hashed before. A
parcel remembered by an earlier version carries the BLAKE2b of its MessagePack or of its
JSON (``legacy_hashes``): a resend is compared by those too, so a rolling upgrade keeps
its repeats. (A downgrade would not: the older version takes a resend of a parcel that
this one scored for an amendment, which rescores it and takes its first contribution
back, so the state still counts it once.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import numpy as np
import xxhash

from parcel_stream.model import Manifest
from parcel_stream.sequence import AMEND, NEW, REPEAT, Contribution

_ENC = msgspec.msgpack.Encoder(order="deterministic")
_LEGACY_ENC = msgspec.json.Encoder()
HASH_CHARS = 16


def content_hash(m: Manifest) -> str:
    """16 hex digits identifying a manifest's content."""
    return _XXH3(_ENC.encode(m))


def content_hashes(manifests: Sequence[Manifest]) -> list[str]:
    """``content_hash`` of each manifest."""
    return list(map(_XXH3, map(_ENC.encode, manifests)))


_XXH3 = xxhash.xxh3_64_hexdigest


def legacy_hashes(m: Manifest) -> tuple[str, str]:
    """The content hashes of earlier versions, which parcels remembered by them carry:
    the BLAKE2b of the manifest's MessagePack, and before it of its JSON."""
    return (hashlib.blake2b(_ENC.encode(m), digest_size=8).hexdigest(),
            hashlib.blake2b(_LEGACY_ENC.encode(m), digest_size=8).hexdigest())  # fmt: skip


class Remembered(msgspec.Struct, array_like=True):
    """What is kept of a scored parcel (msgpack, after its content hash, in the store)."""

    source: str  # where its decision came from: topic/partition/offset[/line]
    score: float
    lane: int  # final lane (0 release, 1 review, 2 hold)
    selection: int
    codes: list[str]
    version: str  # rule set
    learner_version: int
    decision_ts_ms: int
    event_ts_ms: int
    shipper_id: str
    seller: str  # seller key, "" when none
    pair: str  # split-window pair key, "" when not kept
    value_usd: float
    held: bool  # risk hold: counted against the shipper
    probability: float = -1.0  # the learned model's (-1: off)
    propensity: float = 1.0  # the probability of its selection


_MP_ENC = msgspec.msgpack.Encoder()
_MP_DEC = msgspec.msgpack.Decoder(Remembered)


# A row of Remembered's fields, in order, as a tuple encodes exactly as the struct does
# (array_like): the batch step encodes its rows so, without building the structs.
REMEMBERED_ENCODE = _MP_ENC.encode


def encode_remembered(content: str, r: Remembered) -> bytes:
    return content.encode("ascii") + _MP_ENC.encode(r)


def decode_remembered(raw: bytes) -> tuple[str, Remembered]:
    return raw[:HASH_CHARS].decode("ascii"), _MP_DEC.decode(raw[HASH_CHARS:])


@dataclass(slots=True)
class Classified:
    """Per parcel of a batch: status and what it repeats or amends."""

    contrib: Contribution
    hashes: list[str]
    # per parcel: the stored parcel it repeats or amends (None: new, or an in-batch one)
    stored: list[Remembered | None]
    # the stored hash each parcel id is expected to have when the update is applied ("": none)
    expected: dict[str, str]


def classify(
    parcel_ids: list[str],
    hashes: list[str],
    stored: dict[str, tuple[str, Remembered]],
    manifests: Sequence[Manifest] = (),
) -> Classified:
    """Walk the batch in input order: a parcel id seen earlier in the batch refers to
    that parcel, else to the stored one; same hash = repeat, other = amendment. With the
    batch's ``manifests``, a stored hash of an earlier version (``legacy_hashes``) that
    matches is a repeat too."""
    n = len(parcel_ids)
    contrib = Contribution.none(n)
    refs: list[Remembered | None] = [None] * n
    if not stored and len(set(parcel_ids)) == n:  # the usual batch: all new, none twice
        return Classified(contrib, hashes, refs, dict.fromkeys(parcel_ids, ""))
    last: dict[str, int] = {}  # parcel id -> its latest scored parcel in this batch
    for i, (pid, h) in enumerate(zip(parcel_ids, hashes, strict=True)):
        j = last.get(pid)
        if j is not None:
            contrib.prior[i] = j
            same = hashes[j] == h
        elif pid in stored:
            old_hash, refs[i] = stored[pid]
            same = old_hash == h or (bool(manifests) and old_hash in legacy_hashes(manifests[i]))
        else:
            last[pid] = i
            continue
        contrib.status[i] = REPEAT if same else AMEND
        if not same:
            last[pid] = i
    expected = {pid: stored[pid][0] if pid in stored else "" for pid in last}
    return Classified(contrib, hashes, refs, expected)


def statuses(classified: Classified) -> tuple[int, int, int]:
    """(new, repeats, amendments) of a batch."""
    st = classified.contrib.status
    return (int(np.count_nonzero(st == NEW)), int(np.count_nonzero(st == REPEAT)),
            int(np.count_nonzero(st == AMEND)))  # fmt: skip
