import base64
import copy
from collections.abc import Sequence

import msgspec
import orjson
import pytest

from parcel_stream.model import Manifest
from parcel_stream.parse import BOM, InRecord, Limits, ParsedBatch, parse_batch
from tests.unit.samples import BASE, line, manifest

NOW = 1_790_000_100_000


def rec(value: bytes, offset: int = 0, content_type: bytes | None = None) -> InRecord:
    return InRecord(value=value, topic="m", partition=1, offset=offset, content_type=content_type)


def test_single_record_parses() -> None:
    out = parse_batch([rec(line())], Limits(), NOW)
    assert len(out) == 1 and not out.rejections
    m = out.manifests[0]
    assert isinstance(m, Manifest) and m.parcel_id == "PX0001" and m.items[0].quantity == 2
    assert out.sources == ["m/1/0"]


def test_batch_record_keeps_good_parcels_and_rejects_bad_ones() -> None:
    lines = [
        line(parcel_id="A"),
        b'{"parcel_id": "B", ',
        line(parcel_id="C", currency="XYZ"),
        line(parcel_id="D"),
    ]
    out = parse_batch([rec(b"\n".join(lines), offset=5)], Limits(), NOW)
    assert [m.parcel_id for m in out.manifests] == ["A", "D"]
    assert out.sources == ["m/1/5/0", "m/1/5/3"]
    reasons = [(r.reason, r.path, r.source, r.parcel_id) for r in out.rejections]
    assert reasons == [
        ("invalid_json", "$", "m/1/5/1", None),
        ("unknown_currency", "$.currency", "m/1/5/2", "C"),
    ]
    assert base64.b64decode(out.rejections[0].raw_b64) == lines[1]


def _without(path: list[str]) -> bytes:
    doc = copy.deepcopy(BASE)
    target = doc
    for p in path[:-1]:
        target = target[p]
    del target[path[-1]]
    return orjson.dumps(doc)


def test_records_parsed_one_by_one_join_into_the_batch_parse() -> None:
    """``ParsedBatch.joined`` of each record's parse is the parse of all at once (the
    worker parses the next batch a record at a time while Redis applies the one before)."""
    lines = [line(parcel_id="A"), b'{"parcel_id": "B", ', line(parcel_id="C", currency="XYZ")]
    records = [rec(b"\n".join(lines), offset=5), rec(line(parcel_id="D"), offset=6),
               rec(b"", offset=7), rec(b"\n".join([line(parcel_id="E"), line(parcel_id="F")]),
                                       offset=8)]  # fmt: skip
    whole = parse_batch(records, Limits(), NOW)
    joined = ParsedBatch.joined([parse_batch([r], Limits(), NOW) for r in records])
    assert joined == whole and joined.record_index == [0, 1, 3, 3]
    assert [m.parcel_id for m in joined.manifests] == ["A", "D", "E", "F"]
    assert len(joined.rejections) == 3 and joined.records == 4


@pytest.mark.parametrize(
    ("raw", "reason", "path"),
    [
        (line(declared_value="12"), "wrong_type", "$.declared_value"),
        (line(declared_value=-1), "out_of_range", "$.declared_value"),
        (b'{"declared_value": 1e999}', "out_of_range", "$.declared_value"),
        (line(gross_weight_kg=0), "out_of_range", "$.gross_weight_kg"),
        (line(currency="XXX"), "unknown_currency", "$.currency"),
        (line(origin_country="China"), "unknown_country", "$.origin_country"),
        (line(origin_country="ZZ"), "unknown_country", "$.origin_country"),
        (line(items=[]), "invalid_value", "$.items"),
        (
            line(items=[{"description": "x", "hs_code": "61", "quantity": 1, "value": 1}]),
            "invalid_value",
            "$.items[0].hs_code",
        ),
        (
            line(items=[{"description": "x", "hs_code": "6109", "quantity": 0, "value": 1}]),
            "out_of_range",
            "$.items[0].quantity",
        ),
        (_without(["parcel_id"]), "missing_field", "$.parcel_id"),
        (_without(["consignee", "address"]), "missing_field", "$.consignee.address"),
        (b'{"parcel_id": NaN}', "invalid_json", "$"),
        (b"[1, 2]", "not_an_object", "$"),
        (b'{"parcel_id": "\xff"}', "invalid_utf8", "$"),
        (b'"just a string"', "not_an_object", "$"),
        (line(transport_mode="boat"), "invalid_value", "$.transport_mode"),
        (line(declarant=""), "invalid_value", "$.declarant"),
        (line(attributes={"Office No": "1"}), "invalid_value", "$.attributes"),
        (line(attributes={"office": ""}), "invalid_value", "$.attributes[...]"),
        (line(attributes={"office": 7}), "wrong_type", "$.attributes[...]"),
        (line(attributes={f"k{i}": "v" for i in range(17)}), "invalid_value", "$.attributes"),
    ],
)
def test_malformed_parcels_get_reason_and_path(raw: bytes, reason: str, path: str) -> None:
    out = parse_batch([rec(raw)], Limits(), NOW)
    assert not out.manifests
    (rej,) = out.rejections
    assert (rej.reason, rej.path) == (reason, path), rej.detail
    assert rej.source == "m/1/0" and rej.rejected_ts_ms == NOW and rej.raw_bytes == len(raw)


def test_oversize_and_too_many_parcels_and_empty() -> None:
    limits = Limits(max_record_bytes=2048, max_parcels_per_record=2)
    big = rec(b"{" + b" " * 3000 + b"}")
    many = rec(b"\n".join([line(parcel_id=str(i)) for i in range(3)]), offset=1)
    empty = rec(b"  ", offset=2)
    out = parse_batch([big, many, empty], limits, NOW)
    assert [r.reason for r in out.rejections] == [
        "oversize_record",
        "too_many_parcels",
        "empty_record",
    ]
    assert not out.manifests


def test_pretty_printed_single_object_is_one_parcel() -> None:
    pretty = orjson.dumps(manifest(), option=orjson.OPT_INDENT_2)
    out = parse_batch([rec(pretty)], Limits(), NOW)
    assert len(out) == 1 and not out.rejections


def test_ndjson_header_makes_a_single_line_a_batch() -> None:
    out = parse_batch([rec(line() + b"\n", content_type=b"application/x-ndjson")], Limits(), NOW)
    assert out.sources == ["m/1/0/0"]


def test_filer_entry_mode_and_attributes_are_read() -> None:
    raw = line(declarant="BRK0042", entry_type="de minimis", transport_mode="postal",
               attributes={"customs_office": "2720", "platform": "shopfast"})  # fmt: skip
    (m,) = parse_batch([rec(raw)], Limits(), NOW).manifests
    assert (m.declarant, m.entry_type, m.transport_mode) == ("BRK0042", "de minimis", "postal")
    assert m.attributes == {"customs_office": "2720", "platform": "shopfast"}
    (bare,) = parse_batch([rec(line())], Limits(), NOW).manifests  # all optional
    assert bare.declarant is None and bare.transport_mode is None and bare.attributes == {}


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    out = parse_batch([rec(line(extra_field={"a": 1}))], Limits(), NOW)
    assert len(out) == 1


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_good = line()


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(st.binary(max_size=300), st.just(_good), st.just(_good[:-7])), max_size=8)
)
def test_parser_never_raises_and_accounts_for_every_line(chunks: list[bytes]) -> None:
    value = b"\n".join(c.replace(b"\n", b" ") for c in chunks)
    out = parse_batch([rec(value, content_type=b"application/x-ndjson")], Limits(), NOW)
    body = value.strip()
    if body.startswith(BOM):  # a leading byte order mark is ignored (RFC 8259)
        body = body[3:].lstrip()
    non_empty = sum(1 for c in body.split(b"\n") if c.strip()) if body else 0
    assert len(out.manifests) + len(out.rejections) == max(non_empty, 1 if not body else 0)
    assert all(r.path.startswith("$") and r.reason for r in out.rejections)


def test_chunk_records_bounds_bytes_and_keeps_order() -> None:
    from parcel_stream.parse import chunk_records

    recs = [rec(b"x" * n, offset=i) for i, n in enumerate([400, 400, 300, 2000, 10, 10])]
    chunks = chunk_records(recs, 1000)
    assert [[r.offset for r in c] for c in chunks] == [[0, 1], [2], [3], [4, 5]]
    assert chunk_records([], 1000) == []


def test_leading_bom_is_ignored() -> None:
    single = rec(b"\xef\xbb\xbf" + line(parcel_id="bom-1"))
    batch = rec(b"\xef\xbb\xbf" + line(parcel_id="bom-2") + b"\n" + line(parcel_id="bom-3"), 1)
    out = parse_batch([single, batch], Limits(), NOW)
    assert not out.rejections
    assert [m.parcel_id for m in out.manifests] == ["bom-1", "bom-2", "bom-3"]


def test_oversize_record_lists_its_parcel_ids() -> None:
    lines = [line(parcel_id=f"big-{i}") for i in range(40)]
    raw = b"\n".join(lines)
    limits = Limits(max_record_bytes=len(raw) - 1, max_parcels_per_record=1000)
    (rej,) = parse_batch([rec(raw)], limits, NOW).rejections
    assert rej.reason == "oversize_record"
    assert rej.parcel_ids == [f"big-{i}" for i in range(40)]
    assert "PARCEL_MAX_RECORD_BYTES" in rej.detail


def test_a_batch_record_parses_as_its_lines_one_by_one() -> None:
    """The batch path decodes the lines of a valid UTF-8 record directly and hands any
    other line to parse_one: the result is the one parse_one gives line by line."""
    from parcel_stream.parse import parse_one

    good = line()
    bad_value = line(declared_value=-1)
    deep = b"[" * 5000 + b"]" * 5000
    lines = [good, b"", b"  ", bad_value, BOM + good, b"{not json", b" " + good + b" \t", deep,
             b'{"parcel_id": "X"}', good.replace(b"{", b"\x0b{", 1)]  # fmt: skip
    for body in (b"\n".join(lines), b"\n".join([*lines, b'{"parcel_id": "\xff"}'])):
        got = parse_batch([InRecord(body, "m", 1, 7, content_type=b"application/x-ndjson")],
                          Limits(), 5)  # fmt: skip
        want_ok: list[tuple[str, object]] = []
        want_bad: list[tuple[str, object]] = []
        for n, raw in enumerate(body.strip().split(b"\n")):
            if raw.strip():
                r = parse_one(raw, f"m/1/7/{n}", 5)
                (want_ok if isinstance(r, Manifest) else want_bad).append((f"m/1/7/{n}", r))
        assert list(zip(got.sources, got.manifests, strict=True)) == want_ok
        assert got.rejections == [r for _, r in want_bad]
        assert got.record_index == [0] * len(want_ok)


HS_CODES = ["6109.10", "610910", "6109", "6109.10.00.10", "6109101", "61", "", "6109.1",
            "6109..10", "6109\n", "6109.10\n", "\n6109", "٦١٠٩", "6109 ", "abcd", "6109.10.00.10.00"]  # fmt: skip
ATTRIBUTE_KEYS = ["platform", "a", "a.b-c_d9", "Platform", "9a", "", "a" * 32, "a" * 33, "plat\n",
                  "pl at", "é"]  # fmt: skip


def test_the_lean_decode_rejects_exactly_as_the_contracts_decoder() -> None:
    """The hot path decodes without the HS code and attribute name patterns and checks
    those values afterwards: every parcel is accepted or rejected exactly as by the
    contract's decoder, with the same reason, path and detail, in line order, including
    a bad HS code before or after another error in the document."""
    from parcel_stream.parse import _parse_strict, parse_one

    def item(hs: str) -> dict[str, object]:
        return {**BASE["items"][0], "hs_code": hs}

    docs = []
    for hs in HS_CODES:
        docs.append(manifest(items=[item("6109.10"), item(hs)]))
        docs.append(manifest(items=[item(hs)], declared_value=-1))  # items come first
        docs.append({"declared_value": -1, **manifest(items=[item(hs)])})  # ... or after
    for key in ATTRIBUTE_KEYS:
        docs.append(manifest(attributes={"platform": "x", key: "y"}))
        docs.append(manifest(attributes={key: ""}))
    raws = [orjson.dumps(d) for d in docs]
    lines = [orjson.dumps(manifest(parcel_id=f"OK{i}")) for i in range(3)] + raws
    want = [_parse_strict(r, r, f"m/1/0/{n}", NOW) for n, r in enumerate(lines)]
    assert any(isinstance(w, Manifest) for w in want[3:]), "some patterns accepted"
    assert {w.reason for w in want if not isinstance(w, Manifest)} >= {
        "invalid_value",
        "out_of_range",
    }

    def same(xs: Sequence[object]) -> list[tuple[bool, bytes]]:  # (the lean types are the
        return [(isinstance(x, Manifest), msgspec.json.encode(x)) for x in xs]  # contract's)

    assert same([parse_one(r, f"m/1/0/{n}", NOW) for n, r in enumerate(lines)]) == same(want)
    got = parse_batch([rec(b"\n".join(lines), content_type=b"application/x-ndjson")],
                      Limits(), NOW)  # fmt: skip
    assert same(list(got.manifests)) == same([w for w in want if isinstance(w, Manifest)])
    assert got.sources == [f"m/1/0/{n}" for n, w in enumerate(want) if isinstance(w, Manifest)]
    assert got.rejections == [w for w in want if not isinstance(w, Manifest)]


def test_the_lean_types_are_the_contracts_but_for_the_two_patterns() -> None:
    """The lean twins decode every field as the contract declares it: their JSON Schema
    is the contract's once the HS code and attribute name patterns are taken out (a
    constraint added to ``Manifest`` or ``Item`` and not to the twins fails here)."""
    import json

    from parcel_stream.parse import _LeanManifest

    def without_patterns(x: object) -> object:
        if isinstance(x, dict):
            x = {k: without_patterns(v) for k, v in x.items() if k not in ("description", "title")}
            x.pop("pattern", None)
            return {k: v for k, v in x.items() if not (k == "propertyNames" and v == {})}
        return [without_patterns(v) for v in x] if isinstance(x, list) else x

    lean = json.dumps(msgspec.json.schema(_LeanManifest), sort_keys=True)
    lean = lean.replace('"_LeanManifest"', '"Manifest"').replace('"_LeanItem"', '"Item"')
    lean = lean.replace("/_LeanManifest", "/Manifest").replace("/_LeanItem", "/Item")
    contract = msgspec.json.schema(Manifest)
    assert "pattern" in json.dumps(contract)
    assert without_patterns(json.loads(lean)) == without_patterns(contract)
