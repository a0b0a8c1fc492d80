"""Recorded feeds: Kafka records as NDJSON lines (optionally gzip), replayable byte for byte.

One line per record: ``ts_ms``, ``topic``, ``partition``, ``offset``, the key and value
(``key``/``value`` as text when they are valid UTF-8, else ``key_b64``/``value_b64``), and
``headers`` as ``[name, base64 value]`` pairs. Schema: ``schemas/feed-record.v1.json``.
A file whose name ends in ``.gz`` is gzip-compressed. A plain manifests file (one parcel
JSON per line, as ``parcel-stream generate`` writes) is read as a feed too: each line
becomes a single-parcel record.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated

import msgspec

from parcel_stream.parse import InRecord


class FeedRecord(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    """One recorded Kafka record."""

    ts_ms: Annotated[int, msgspec.Meta(ge=0, description="record timestamp, Unix ms")]
    topic: str
    partition: Annotated[int, msgspec.Meta(ge=0)]
    offset: Annotated[int, msgspec.Meta(ge=0)]
    key: str | None = None
    key_b64: str | None = None
    value: str | None = None
    value_b64: str | None = None
    headers: list[tuple[str, str]] = []
    schema_version: int = 1


@dataclass(slots=True)
class RawRecord:
    """A Kafka record's bytes and coordinates, as recorded or to be replayed."""

    ts_ms: int
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    def to_in_record(self) -> InRecord:
        ctype = next((v for k, v in self.headers if k == "content-type"), None)
        return InRecord(
            value=self.value,
            topic=self.topic,
            partition=self.partition,
            offset=self.offset,
            key=self.key,
            timestamp_ms=self.ts_ms,
            content_type=ctype,
        )


NDJSON_TYPE = b"application/x-ndjson"


class FeedError(ValueError):
    """A feed file is unreadable; the message names the file and line."""


_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(FeedRecord)


def _text_or_b64(data: bytes | None) -> tuple[str | None, str | None]:
    if data is None:
        return None, None
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, base64.b64encode(data).decode("ascii")


def encode_record(rec: RawRecord) -> bytes:
    key, key_b64 = _text_or_b64(rec.key)
    value, value_b64 = _text_or_b64(rec.value)
    line = FeedRecord(
        ts_ms=rec.ts_ms,
        topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        key=key,
        key_b64=key_b64,
        value=value,
        value_b64=value_b64,
        headers=[(k, base64.b64encode(v).decode("ascii")) for k, v in rec.headers],
    )
    return _ENC.encode(line)


def decode_record(line: bytes) -> RawRecord:
    fr = _DEC.decode(line)
    if fr.value is not None:
        value = fr.value.encode("utf-8")
    elif fr.value_b64 is not None:
        value = base64.b64decode(fr.value_b64, validate=True)
    else:
        raise msgspec.ValidationError("a feed record needs `value` or `value_b64`")
    key: bytes | None = None
    if fr.key is not None:
        key = fr.key.encode("utf-8")
    elif fr.key_b64 is not None:
        key = base64.b64decode(fr.key_b64, validate=True)
    headers = tuple((k, base64.b64decode(v, validate=True)) for k, v in fr.headers)
    return RawRecord(fr.ts_ms, fr.topic, fr.partition, fr.offset, key, value, headers)


def open_feed(path: str | Path, mode: str = "rb") -> IO[bytes]:
    p = Path(path)
    try:
        if p.suffix == ".gz":
            return gzip.open(p, mode)  # type: ignore[return-value]
        return open(p, mode)  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise FeedError(f"{path}: no such file") from None
    except OSError as exc:
        raise FeedError(f"{path}: cannot be read ({exc.strerror})") from None


class _ShipperOnly(msgspec.Struct, forbid_unknown_fields=False):
    id: str = ""


class _KeyOnly(msgspec.Struct, forbid_unknown_fields=False):
    parcel_id: str = ""
    manifest_ts_ms: int = 0
    shipper: _ShipperOnly = msgspec.field(default_factory=_ShipperOnly)


_KEY_DEC = msgspec.json.Decoder(_KeyOnly)


def manifest_key(line: bytes) -> tuple[bytes | None, int]:
    """(shipper id as key, manifest time) of a parcel line; (None, 0) if unreadable."""
    try:
        k = _KEY_DEC.decode(line)
    except (msgspec.MsgspecError, UnicodeDecodeError):
        return None, 0
    return (k.shipper.id.encode() if k.shipper.id else None), k.manifest_ts_ms


def read_feed(
    path: str | Path, topic: str = "parcel-manifests", group_lines: int = 1
) -> Iterator[RawRecord]:
    """Records of a feed file. A plain manifests file yields one record per parcel line,
    or, with ``group_lines`` > 1, NDJSON batch records of that many lines (backtests:
    the same parse, without per-record overhead)."""
    with open_feed(path) as f:
        first = True
        is_feed = False
        group: list[bytes] = []
        n = 0
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if first:
                first = False
                is_feed = line.lstrip().startswith(b'{"ts_ms"')
            if is_feed:
                try:
                    yield decode_record(line)
                except (msgspec.MsgspecError, ValueError) as exc:
                    raise FeedError(f"{path}:{n}: not a feed record ({exc})") from None
            elif group_lines > 1:
                group.append(line.rstrip(b"\r\n"))
                if len(group) >= group_lines:
                    yield _group_record(group, topic, n)
                    group = []
            else:
                body = line.rstrip(b"\r\n")
                key, ts = manifest_key(body)
                yield RawRecord(ts, topic, 0, n - 1, key, body)
        if group:
            yield _group_record(group, topic, n)


def _group_record(lines: list[bytes], topic: str, last_line: int) -> RawRecord:
    _key, ts = manifest_key(lines[-1])
    value = b"\n".join(lines)
    return RawRecord(ts, topic, 0, last_line, None, value, (("content-type", NDJSON_TYPE),))


def write_feed(path: str | Path, records: Iterable[RawRecord]) -> int:
    n = 0
    with open_feed(path, "wb") as f:
        for rec in records:
            f.write(encode_record(rec) + b"\n")
            n += 1
    return n
