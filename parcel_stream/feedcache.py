"""The backtest's columnar cache: a feed's parsed batches, so that the next backtest of
the same feed skips JSON.

The first backtest of a feed parses it as the worker does (decode, validation, content
hashes, the index of its entities, the columns) and writes what that gave, chunk by
chunk, to one cache file. A later backtest of the same feed, with any rule set, learner
or model settings, reads the chunks back instead: numbers as arrays, text as lists, no
JSON and no per-parcel objects. Decisions are identical (``tests/unit/test_feedcache.py``).

What a chunk keeps, per parcel: its source, content hash, the columns of
``columns.Columns`` and its entities' positions in the chunk's index; per record: topic,
partition, offset and time; the rejections as the parse made them; and the records'
bytes, read only if a stage asks for the decoded manifests (the learned model's keys,
encoded outputs). The shipper-address pairs are not kept: they depend on the rule set's
split threshold and are rebuilt from the index (``features.with_pairs``).

The cache is keyed by the feed file's content (the 128-bit XXH3 of its bytes: 0.13 µs a
parcel, where BLAKE2b took 1.4, a tenth of a backtest from the cache), the input limits,
the chunking, this format's version and the source of the modules whose code decides
what a parse gives. Any change to one of them makes a new entry; nothing stale is read.
An entry is written to a temporary file and renamed when complete, so an interrupted
backtest leaves no partial entry. The directory is ``PARCEL_BACKTEST_CACHE_DIR`` (default
``$XDG_CACHE_HOME/parcel-stream/backtest`` or ``~/.cache/parcel-stream/backtest``);
deleting it is always safe.

File layout: frames of ``u64 length (little-endian) + MessagePack + 16-byte XXH3-128``;
per chunk, the columns frame then the records' bytes frame (skipped unless read); then a
trailer, ``u64 0 + u64 chunk count``. A damaged entry (cut short, a checksum that does
not match) stops the backtest with :class:`CacheError`, whenever the damage is read.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import numpy as np
import numpy.typing as npt
import xxhash

import parcel_stream
from parcel_stream.columns import Columns
from parcel_stream.features import ShipperIndex, with_pairs
from parcel_stream.model import Manifest, Rejection
from parcel_stream.parse import InRecord, LazyManifests, Limits, ParsedBatch, parse_batch
from parcel_stream.pipeline import Prepared

FORMAT = 4  # 4: XXH3-128 digests (3: BLAKE2b)
_DIGEST = 16  # digest bytes after each frame
# the modules whose code decides what a parse gives (a change to one: a new cache entry)
_CODE = ("parse", "model", "columns", "features", "repeats", "currency", "countries",
         "rules", "pipeline", "feed", "feedcache")  # fmt: skip
_LEN = struct.Struct("<Q")


def default_dir(setting: str = "") -> Path:
    """``setting`` (``PARCEL_BACKTEST_CACHE_DIR``) if given, else the user's cache."""
    if setting:
        return Path(setting)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "parcel-stream" / "backtest"


def _code_digest() -> str:
    h = hashlib.blake2b(digest_size=16)
    root = Path(parcel_stream.__file__).parent
    for name in _CODE:
        h.update((root / f"{name}.py").read_bytes())
    return h.hexdigest()


def feed_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, xxhash.xxh3_128).hexdigest()


class _Chunk(msgspec.Struct, array_like=True):
    """One parsed chunk (``Prepared`` without its records' bytes and pairs). Arrays are
    little-endian int64 bytes; ``columns`` and ``index`` hold the fields of ``Columns``
    and ``ShipperIndex`` in their order (:func:`_fields_out`), so a field added to either
    is cached with no change here."""

    topics: list[str]
    keys: list[bytes | None]
    content_types: list[bytes | None]
    partitions: bytes
    offsets: bytes
    timestamps: bytes
    sources: list[str]
    record_index: bytes
    rejections: list[Rejection]
    hashes: list[str]
    columns: list[Any]
    index: list[Any]


def _fields_out(obj: Any) -> list[Any]:
    """A dataclass's fields in order; arrays as {dtype, little-endian bytes}."""
    out: list[Any] = []
    for f in fields(obj):
        v = getattr(obj, f.name)
        out.append({"dtype": v.dtype.newbyteorder("<").str, "data": _b(v)}
                   if isinstance(v, np.ndarray) else v)  # fmt: skip
    return out


def _fields_in(cls: Any, parts: list[Any], **given: Any) -> Any:
    """The dataclass back from :func:`_fields_out` (``given``: fields set instead)."""
    values = {}
    for f, v in zip(fields(cls), parts, strict=True):
        if f.name in given:
            values[f.name] = given[f.name]
        elif isinstance(v, dict):  # an array (no field is a dict)
            dtype = np.dtype(v["dtype"])
            values[f.name] = np.frombuffer(v["data"], dtype=dtype).astype(dtype.newbyteorder("="))
        else:
            values[f.name] = v
    return cls(**values)


_ENC = msgspec.msgpack.Encoder()
_CHUNK = msgspec.msgpack.Decoder(_Chunk)
_VALUES = msgspec.msgpack.Decoder(list[bytes])


def _b(a: npt.NDArray[np.generic]) -> bytes:
    return np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def _i64(b: bytes) -> npt.NDArray[np.int64]:
    return np.frombuffer(b, dtype="<i8").astype(np.int64)


def _frame(f: BinaryIO, payload: bytes) -> None:
    """Length, payload, then its digest (checked whenever the payload is read)."""
    f.write(_LEN.pack(len(payload)))
    f.write(payload)
    f.write(_digest(payload))


def _digest(payload: bytes) -> bytes:
    return xxhash.xxh3_128_digest(payload)


@dataclass(frozen=True)
class FeedCache:
    """The cache entry of one feed under ``root``, for these limits and this chunking."""

    root: Path
    feed: Path
    limits: Limits
    chunk_bytes: int
    group_lines: int

    @property
    def key(self) -> str:
        parts = [str(FORMAT), _code_digest(), feed_digest(self.feed), str(self.chunk_bytes),
                 str(self.group_lines), str(self.limits.max_record_bytes),
                 str(self.limits.max_parcels_per_record)]  # fmt: skip
        return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()

    def entry(self) -> CacheEntry:
        """The entry for the feed as it is now (hashes the whole file once)."""
        return CacheEntry(self.root / f"{self.key}.cache")


@dataclass(frozen=True)
class CacheEntry:
    path: Path

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    def writer(self) -> CacheWriter:
        return CacheWriter(self.path)

    def read(self, limits: Limits, split_min_usd: float | None, with_values: bool = False
             ) -> Iterator[Prepared]:  # fmt: skip
        """The chunks in feed order. ``with_values``: the records' bytes loaded at once
        (for encoded outputs); else only if a stage reads the decoded manifests."""
        with self.path.open("rb") as f:
            end = os.fstat(f.fileno()).st_size
            chunks = 0
            while True:
                size = self._length(f, end)
                if size == 0:  # the trailer: how many chunks the complete entry has
                    count = f.read(_LEN.size)
                    if len(count) < _LEN.size or _LEN.unpack(count)[0] != chunks or f.read(1):
                        raise self._damaged("its chunk count does not match")
                    return
                c = _CHUNK.decode(self._checked(f, size))
                length = self._length(f, end)  # the records' bytes: read only if needed
                at = f.tell()
                f.seek(length + _DIGEST, os.SEEK_CUR)
                chunks += 1

                def values(at: int = at, length: int = length) -> list[bytes]:
                    with self.path.open("rb") as g:
                        g.seek(at)
                        return _VALUES.decode(self._checked(g, length))

                records = _shells(c)
                if with_values:
                    records = [replace(r, value=v) for r, v in zip(records, values(),
                                                                   strict=True)]  # fmt: skip
                yield _prepared(c, values, limits, split_min_usd, records)

    def _damaged(self, why: str) -> CacheError:
        return CacheError(f"{self.path}: the cache entry is damaged ({why}); delete it, or "
                          "backtest with --no-cache")  # fmt: skip

    def _length(self, f: BinaryIO, end: int) -> int:
        head = f.read(_LEN.size)
        if len(head) < _LEN.size:
            raise self._damaged("it is cut short")
        (size,) = _LEN.unpack(head)
        if f.tell() + size + _DIGEST > end and size != 0:
            raise self._damaged("it is cut short")
        return int(size)

    def _checked(self, f: BinaryIO, size: int) -> bytes:
        """A frame's payload, checked against the digest that follows it."""
        payload, digest = f.read(size), f.read(_DIGEST)
        if _digest(payload) != digest:
            raise self._damaged("a checksum does not match")
        return payload


class CacheError(Exception):
    """A cache entry that cannot be read; the message names the file and the fix."""


def _shells(c: _Chunk) -> list[InRecord]:
    """The chunk's records without their bytes."""
    partitions, offsets = _i64(c.partitions).tolist(), _i64(c.offsets).tolist()
    return [InRecord(b"", t, p, o, k, ts, ct) for t, p, o, k, ts, ct in
            zip(c.topics, partitions, offsets, c.keys, _i64(c.timestamps).tolist(),
                c.content_types, strict=True)]  # fmt: skip


def decode_chunk(chunk: bytes, records: list[InRecord], limits: Limits,
                 split_min_usd: float | None) -> Prepared:  # fmt: skip
    """A chunk encoded by :func:`encode_chunk` (in a parse process), for ``records``, the
    chunk's records with their bytes, which the receiving process has already."""
    c = _CHUNK.decode(chunk)
    return _prepared(c, lambda: [r.value for r in records], limits, split_min_usd, records)


def _prepared(c: _Chunk, values: Callable[[], list[bytes]], limits: Limits,
              split_min_usd: float | None, records: list[InRecord]) -> Prepared:  # fmt: skip
    """The chunk as ``prepare`` gave it, for ``records`` (with or without their bytes);
    ``values()``: the records' bytes, read only if a stage decodes the manifests."""
    now_ms = max((r.timestamp_ms for r in records), default=0)
    shells = records

    def manifests() -> list[Manifest]:
        full = [InRecord(v, r.topic, r.partition, r.offset, r.key, r.timestamp_ms, r.content_type)
                for v, r in zip(values(), shells, strict=True)]  # fmt: skip
        return list(parse_batch(full, limits, now_ms).manifests)

    cols: Columns = _fields_in(Columns, c.columns)
    n = len(cols.parcel_ids)
    # the pairs depend on the rule set's threshold: rebuilt below
    idx = _fields_in(ShipperIndex, c.index, pairs=[],
                     parcel_pair=np.full(n, -1, dtype=np.int64))  # fmt: skip
    parsed = ParsedBatch(LazyManifests(n, manifests), c.sources, _i64(c.record_index).tolist(),
                         c.rejections, len(records))  # fmt: skip
    return Prepared(records, parsed, with_pairs(idx, cols.value_usd, split_min_usd),
                    sorted({(r.topic, r.partition) for r in records}), c.hashes, cols)  # fmt: skip


def encode_chunk(prep: Prepared) -> bytes:
    """A parsed chunk without its records' bytes (:func:`decode_chunk`)."""
    recs, p = prep.records, prep.parsed
    i64 = np.int64
    return _ENC.encode(_Chunk(
        [r.topic for r in recs], [r.key for r in recs], [r.content_type for r in recs],
        _b(np.array([r.partition for r in recs], dtype=i64)),
        _b(np.array([r.offset for r in recs], dtype=i64)),
        _b(np.array([r.timestamp_ms for r in recs], dtype=i64)), list(p.sources),
        _b(np.array(p.record_index, dtype=i64)), list(p.rejections), list(prep.hashes),
        _fields_out(prep.columns),
        _fields_out(replace(prep.shippers, pairs=[], parcel_pair=np.zeros(0, dtype=i64))),
    ))  # fmt: skip


class CacheWriter:
    """Writes an entry chunk by chunk; ``commit`` makes it visible (atomic rename), and
    leaving the ``with`` block without it removes the partial file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: BinaryIO = self.tmp.open("wb")
        self.chunks = 0

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._f.closed:
            self._f.close()
            self.tmp.unlink(missing_ok=True)

    def add(self, prep: Prepared, encoded: bytes | None = None) -> None:
        """Append a chunk (``encoded``: its :func:`encode_chunk`, when a parse process made
        it already)."""
        _frame(self._f, encoded if encoded is not None else encode_chunk(prep))
        _frame(self._f, _ENC.encode([r.value for r in prep.records]))
        self.chunks += 1

    def commit(self) -> None:
        """The trailer (a zero length, then the chunk count: an entry without it was cut
        short), then the entry made visible."""
        self._f.write(_LEN.pack(0) + _LEN.pack(self.chunks))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)
