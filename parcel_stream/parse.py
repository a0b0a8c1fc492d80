"""bytes -> typed manifests | rejections.

A Kafka record on the manifests topic holds either one parcel (compact JSON) or a batch
(NDJSON: one parcel per line; also announced by the header ``content-type:
application/x-ndjson``). Each malformed parcel becomes a :class:`Rejection` with a reason
code and a JSON path; the good parcels of the same record still flow. Nothing here raises
on input.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Annotated, cast, overload

import msgspec

from parcel_stream.model import (
    MAX_ATTRIBUTES,
    AttributeKey,
    AttributeValue,
    HsCode,
    Item,
    Manifest,
    Rejection,
    RejectReason,
)

NDJSON = b"application/x-ndjson"
RAW_KEEP_BYTES = 64 * 1024
BOM = b"\xef\xbb\xbf"  # UTF-8 byte order mark: RFC 8259 lets a parser ignore it
# A cheap scan for the parcel ids of a record too large to parse (the hub resends them).
_ID_SCAN = re.compile(rb'"parcel_id"\s*:\s*"([^"\\]{1,64})"')


@dataclass(slots=True)
class InRecord:
    """One Kafka record as the core sees it (no client types)."""

    value: bytes
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    timestamp_ms: int = 0
    content_type: bytes | None = None


class LazyManifests(Sequence[Manifest]):
    """The manifests of a batch whose columns came from elsewhere (the backtest's cache,
    ``feedcache.py``): decoded by ``load`` the first time a stage reads one, so a stage
    that reads only the columns costs no decoding."""

    __slots__ = ("_n", "_load", "_items")

    def __init__(self, n: int, load: Callable[[], Sequence[Manifest]]) -> None:
        self._n, self._load = n, load
        self._items: Sequence[Manifest] | None = None

    def _all(self) -> Sequence[Manifest]:
        if self._items is None:
            items = self._load()
            if len(items) != self._n:
                raise RuntimeError(f"{len(items)} manifests decoded where {self._n} were kept")
            self._items = items
        return self._items

    @property
    def decoded(self) -> bool:
        return self._items is not None

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> Manifest: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Manifest]: ...
    def __getitem__(self, i: int | slice) -> Manifest | Sequence[Manifest]:
        return self._all()[i]

    def __iter__(self) -> Iterator[Manifest]:
        return iter(self._all())


@dataclass(slots=True)
class ParsedBatch:
    """The good parcels of a batch, in input order, plus the rejections."""

    manifests: Sequence[Manifest] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    record_index: list[int] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    records: int = 0

    def __len__(self) -> int:
        return len(self.manifests)

    @classmethod
    def joined(cls, parts: list[ParsedBatch]) -> ParsedBatch:
        """One batch from the parses of consecutive records, in order (``record_index``
        counted across them): what ``parse_batch`` gives for all the records at once."""
        out, manifests = cls(), cast(list[Manifest], [])
        out.manifests = manifests
        for part in parts:
            manifests += part.manifests
            out.sources += part.sources
            out.record_index += [out.records + i for i in part.record_index]
            out.rejections += part.rejections
            out.records += part.records
        return out

    def add(self, parsed: Manifest | Rejection, source: str, record_index: int) -> None:
        if isinstance(parsed, Manifest):
            cast(list[Manifest], self.manifests).append(parsed)
            self.sources.append(source)
            self.record_index.append(record_index)
        else:
            self.rejections.append(parsed)


@dataclass(frozen=True, slots=True)
class Limits:
    max_record_bytes: int = 4 * 1024 * 1024
    max_parcels_per_record: int = 20_000


_DECODER = msgspec.json.Decoder(Manifest)


# The decode of the hot paths: the contract's types without their two regular
# expressions (an item's HS code, an attribute's name), which msgspec runs through
# Python's ``re`` once per value: 2 µs an item, a third of the whole decode. Those values
# are checked afterwards against each distinct value's verdict (``_Verdicts``: the same
# expressions, ``search`` as msgspec runs them), and a parcel with one that fails is
# decoded again by the contract's own decoder, which rejects it as it always has (the
# first error in document order, its reason, path and detail). Everything else is
# validated as declared: the twins below change nothing but those two annotations.
class _LeanItem(Item, forbid_unknown_fields=False, gc=False):
    hs_code: str


class _LeanManifest(Manifest, forbid_unknown_fields=False, gc=False):
    items: Annotated[list[_LeanItem], msgspec.Meta(min_length=1, max_length=500)]  # type: ignore[assignment]
    attributes: Annotated[
        dict[str, AttributeValue], msgspec.Meta(max_length=MAX_ATTRIBUTES)
    ] = {}  # fmt: skip


_LEAN_DECODER = msgspec.json.Decoder(_LeanManifest)


class _Verdicts(dict[str, bool]):
    """Whether each distinct value matches ``pattern`` (as msgspec checks it)."""

    limit = 200_000

    def __init__(self, annotated: object) -> None:
        super().__init__()
        (meta,) = (m for m in getattr(annotated, "__metadata__", ()) if m.pattern)
        self._search = re.compile(meta.pattern).search

    def __missing__(self, value: str) -> bool:
        ok = self._search(value) is not None
        if len(value) <= 64:  # (a hostile producer's long values are not kept)
            if len(self) >= self.limit:
                self.clear()
            self[value] = ok
        return ok


_HS_OK = _Verdicts(HsCode)
_KEY_OK = _Verdicts(AttributeKey)
_ITEMS = attrgetter("items")
_HS = attrgetter("hs_code")
_ATTRIBUTES = attrgetter("attributes")


def _all_valid(manifests: Sequence[Manifest]) -> bool:
    """Whether every HS code and attribute name of these leanly decoded manifests is as
    the contract's patterns require (in columns: one lookup a value)."""
    if not all(map(_HS_OK.__getitem__, map(_HS, chain.from_iterable(map(_ITEMS, manifests))))):
        return False
    attrs = [a for a in map(_ATTRIBUTES, manifests) if a]
    return all(map(_KEY_OK.__getitem__, chain.from_iterable(attrs)))


class _IdOnly(msgspec.Struct, forbid_unknown_fields=False):
    parcel_id: str | None = None


_ID_DECODER = msgspec.json.Decoder(_IdOnly)
_AT = re.compile(r"^(.*?)(?: - at `(key` in `)?(\$[^`]*)`)?$", re.S)
_MISSING = re.compile(r"Object missing required field `([^`]*)`")


def classify_validation_error(message: str) -> tuple[RejectReason, str, str]:
    """Map a msgspec validation message to (reason, JSON path, detail)."""
    match = _AT.match(message)
    detail, path = (match.group(1), match.group(3) or "$") if match else (message, "$")
    if match and match.group(2):  # a map's key, not its value
        detail = f"a key: {detail}"
    missing = _MISSING.match(detail)
    if missing:
        sub = missing.group(1)
        return "missing_field", f"{path}.{sub}", detail
    if path == "$" and detail.startswith("Expected `object`"):
        return "not_an_object", path, detail
    if detail.startswith("Invalid enum value"):
        if path.endswith(".currency"):
            return "unknown_currency", path, detail
        if path.endswith("country"):
            return "unknown_country", path, detail
        return "invalid_value", path, detail
    if "out of range" in detail or re.search(r"` [<>]=? ", detail) and "length" not in detail:
        return "out_of_range", path, detail
    if "length" in detail or "matching regex" in detail:
        return "invalid_value", path, detail
    return "wrong_type", path, detail


def _reject(
    reason: RejectReason,
    path: str,
    detail: str,
    source: str,
    raw: bytes,
    now_ms: int,
    parcel_id: str | None = None,
    parcel_ids: list[str] | None = None,
) -> Rejection:
    keep = raw if len(raw) <= RAW_KEEP_BYTES else b""
    return Rejection(
        reason=reason,
        path=path,
        detail=detail[:300],
        source=source,
        rejected_ts_ms=now_ms,
        parcel_id=parcel_id,
        raw_b64=base64.b64encode(keep).decode("ascii"),
        raw_bytes=len(raw),
        parcel_ids=parcel_ids or [],
    )


def scan_parcel_ids(raw: bytes, limit: int) -> list[str]:
    """The distinct parcel ids a record mentions, in order (at most ``limit``), found by a
    byte scan rather than a parse: for the rejection of a record too large to parse."""
    seen: dict[str, None] = {}
    for match in _ID_SCAN.finditer(raw):
        try:
            seen.setdefault(match.group(1).decode("utf-8"), None)
        except UnicodeDecodeError:
            continue
        if len(seen) >= limit:
            break
    return list(seen)


def _parcel_id_of(raw: bytes) -> str | None:
    try:
        pid = _ID_DECODER.decode(raw).parcel_id
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        return None
    return pid[:64] if isinstance(pid, str) else None


def parse_one(raw: bytes, source: str, now_ms: int) -> Manifest | Rejection:
    """Decode and validate one parcel document (surrounding whitespace is ignored)."""
    doc = raw.strip()
    if doc.startswith(BOM):
        doc = doc[3:].lstrip()
    try:
        # The decoder skips unknown fields without checking their UTF-8: check it all
        # (about 0.1 µs per manifest), so that no invalid byte passes anywhere.
        doc.decode("utf-8")
        m = _LEAN_DECODER.decode(doc)
        if _all_valid((m,)):
            return m
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        pass
    return _parse_strict(doc, raw, source, now_ms)


def _parse_strict(doc: bytes, raw: bytes, source: str, now_ms: int) -> Manifest | Rejection:
    """``parse_one`` by the contract's own decoder: a parcel the lean decode refused, so
    that its rejection (the first error in document order) is the contract's."""
    try:
        doc.decode("utf-8")
        return _DECODER.decode(doc)
    except msgspec.ValidationError as exc:
        reason, path, detail = classify_validation_error(str(exc))
        return _reject(reason, path, detail, source, raw, now_ms, _parcel_id_of(doc))
    except msgspec.DecodeError as exc:
        return _reject("invalid_json", "$", str(exc), source, raw, now_ms)
    except UnicodeDecodeError as exc:
        detail = f"invalid UTF-8 at byte {exc.start}"
        return _reject("invalid_utf8", "$", detail, source, raw, now_ms)
    except RecursionError:  # the decoder's nesting limit; the record is hostile
        return _reject("too_deep", "$", "JSON nested too deeply", source, raw, now_ms)


def _is_batch(record: InRecord, value: bytes) -> bool:
    if record.content_type is not None:
        return record.content_type.split(b";")[0].strip().lower() == NDJSON
    newline = value.find(b"\n")
    # A pretty-printed single object starts with a line holding only "{".
    return newline != -1 and value[:newline].strip() != b"{"


def parse_batch(records: list[InRecord], limits: Limits, now_ms: int) -> ParsedBatch:
    """Parse a batch of Kafka records into manifests and rejections, keeping input order."""
    out = ParsedBatch(records=len(records))
    rejections = out.rejections
    for index, record in enumerate(records):
        value = record.value
        base = f"{record.topic}/{record.partition}/{record.offset}"
        if len(value) > limits.max_record_bytes:
            ids = scan_parcel_ids(value, limits.max_parcels_per_record)
            detail = (
                f"record is {len(value)} bytes; the limit is {limits.max_record_bytes} "
                f"(PARCEL_MAX_RECORD_BYTES); {len(ids)} parcel ids listed: resend them in "
                "smaller records"
            )
            rejections.append(_reject("oversize_record", "$", detail, base, value, now_ms,
                                      parcel_ids=ids))  # fmt: skip
            continue
        stripped = value.strip()
        if stripped.startswith(BOM):
            stripped = stripped[3:].lstrip()
        if not stripped:
            rejections.append(
                _reject("empty_record", "$", "record has no value", base, b"", now_ms)
            )
            continue
        if not _is_batch(record, stripped):
            out.add(parse_one(value, base, now_ms), base, index)
            continue
        lines = stripped.split(b"\n")
        if len(lines) > limits.max_parcels_per_record:
            detail = f"{len(lines)} lines; the limit is {limits.max_parcels_per_record} parcels"
            rejections.append(_reject("too_many_parcels", "$", detail, base, value, now_ms))
            continue
        try:  # valid UTF-8 as a whole: so is every line (a newline never splits a character)
            stripped.decode("utf-8")
        except UnicodeDecodeError:
            _parse_lines(out, lines, base, index, now_ms)
            continue
        manifests = cast(list[Manifest], out.manifests)
        sources, record_index = out.sources, out.record_index
        first, rejected = len(manifests), len(rejections)
        for line_no, line in enumerate(lines):
            try:  # the common case first; anything else takes parse_one's whole path
                m = _LEAN_DECODER.decode(line)
            except (msgspec.MsgspecError, RecursionError):
                _parse_lines(out, [line], base, index, now_ms, line_no)
                continue
            manifests.append(m)
            sources.append(f"{base}/{line_no}")
            record_index.append(index)
        if not _all_valid(manifests[first:]):
            _recheck(out, first, rejected, lines, now_ms)
    return out


def _recheck(out: ParsedBatch, first: int, rejected: int, lines: list[bytes], now_ms: int
             ) -> None:  # fmt: skip
    """A record's parcels (from ``first``) of which one holds a value against a pattern:
    those go through ``parse_one`` (the contract's decoder) and are rejected as they
    always were, the record's rejections (from ``rejected``) kept in line order."""
    manifests = cast(list[Manifest], out.manifests)
    rows = list(zip(manifests[first:], out.sources[first:], out.record_index[first:],
                    strict=True))  # fmt: skip
    del manifests[first:], out.sources[first:], out.record_index[first:]
    for m, source, index in rows:
        if _all_valid((m,)):
            manifests.append(m)
            out.sources.append(source)
            out.record_index.append(index)
        else:
            out.add(parse_one(lines[_line_no(source)], source, now_ms), source, index)
    out.rejections[rejected:] = sorted(out.rejections[rejected:], key=_line_no_of)


def _line_no(source: str) -> int:
    return int(source.rsplit("/", 1)[1])


def _line_no_of(r: Rejection) -> int:
    return _line_no(r.source)


def _parse_lines(out: ParsedBatch, lines: list[bytes], base: str, index: int, now_ms: int,
                 first: int = 0) -> None:  # fmt: skip
    """Lines of a batch record, each through :func:`parse_one` (blank lines skipped)."""
    for line_no, line in enumerate(lines, first):
        if not line.strip():
            continue
        src = f"{base}/{line_no}"
        out.add(parse_one(line, src, now_ms), src, index)


def chunk_records(records: list[InRecord], max_bytes: int) -> list[list[InRecord]]:
    """Split a batch into consecutive chunks of at most ``max_bytes`` of values (a record
    larger than that is a chunk of its own), so memory stays bounded per chunk."""
    chunks: list[list[InRecord]] = []
    current: list[InRecord] = []
    size = 0
    for r in records:
        if current and size + len(r.value) > max_bytes:
            chunks.append(current)
            current, size = [], 0
        current.append(r)
        size += len(r.value)
    if current:
        chunks.append(current)
    return chunks
