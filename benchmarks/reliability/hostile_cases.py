"""Hostile manifests: malformed and adversarial variants of valid ones, with an
independent oracle (Python's json module in strict mode + the published JSON Schema)
that says whether the contract accepts each."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import orjson

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "parcel-manifest.v1.json"


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    return jsonschema.Draft202012Validator(schema)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def oracle_accepts(raw: bytes) -> bool:
    """True when ``raw`` is one manifest the contract accepts: strict UTF-8, strict JSON
    (no NaN/Infinity, no raw control characters, no unpaired surrogate escapes such as
    ``"\\ud800"``, which I-JSON forbids and UTF-8 cannot carry), an object valid against
    the schema. Duplicate keys: the last one counts (as in the worker's decoder and most
    parsers)."""
    try:
        text = raw.decode("utf-8", errors="strict")
        doc = json.loads(text, parse_constant=_no_constants)
        json.dumps(doc, ensure_ascii=False).encode("utf-8")  # unpaired surrogates fail
    except (UnicodeError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and _validator().is_valid(doc)


Mutation = Callable[[dict[str, Any], bytes, random.Random], bytes]


def _set(path: list[Any], value: Any) -> Mutation:
    def go(doc: dict[str, Any], _raw: bytes, _rng: random.Random) -> bytes:
        d = json.loads(json.dumps(doc))
        node = d
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return json.dumps(d, allow_nan=True, separators=(",", ":")).encode()

    return go


def _drop(path: list[Any]) -> Mutation:
    def go(doc: dict[str, Any], _raw: bytes, _rng: random.Random) -> bytes:
        d = json.loads(json.dumps(doc))
        node = d
        for k in path[:-1]:
            node = node[k]
        node.pop(path[-1], None)
        return orjson.dumps(d)

    return go


def _truncate(_doc: dict[str, Any], raw: bytes, rng: random.Random) -> bytes:
    return raw[: rng.randrange(1, len(raw))]


def _bad_utf8(_doc: dict[str, Any], raw: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(1, len(raw) - 1)
    return (
        raw[:i]
        + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        + raw[i:]
    )


def _control_char(_doc: dict[str, Any], raw: bytes, rng: random.Random) -> bytes:
    i = raw.index(b'"parcel_id":"') + len(b'"parcel_id":"')
    return raw[:i] + bytes([rng.choice([0, 1, 8, 9, 10, 13, 27, 31])]) + raw[i:]


def _escaped_control(doc: dict[str, Any], _raw: bytes, rng: random.Random) -> bytes:
    d = dict(doc)
    d["carrier"] = "dhl\u0000\u001b[31m\u2028x"  # escaped: valid JSON, a legal string
    return orjson.dumps(d)


def _deep(depth: int) -> Mutation:
    def go(doc: dict[str, Any], raw: bytes, _rng: random.Random) -> bytes:
        return raw[:-1] + b',"extra":' + b"[" * depth + b"]" * depth + b"}"

    return go


def _duplicate_key(_doc: dict[str, Any], raw: bytes, rng: random.Random) -> bytes:
    value = rng.choice([b"-1", b"1e12", b'"x"', b"99.5", b"0"])
    return raw[:-1] + b',"declared_value":' + value + b"}"


def _proto_keys(_doc: dict[str, Any], raw: bytes, rng: random.Random) -> bytes:
    extra = rng.choice(
        [
            b'"__proto__":{"isAdmin":true}',
            b'"constructor":{"prototype":{"x":1}}',
            b'"__class__":"os.system"',
            b'"$where":"1==1"',
            b'"toString":null',
        ]
    )
    return raw[:-1] + b"," + extra + b"}"


def _huge_string(n: int, field: str) -> Mutation:
    def go(doc: dict[str, Any], _raw: bytes, rng: random.Random) -> bytes:
        d = dict(doc)
        d[field] = "A" * n
        return orjson.dumps(d)

    return go


def _huge_array(n: int) -> Mutation:
    def go(doc: dict[str, Any], _raw: bytes, _rng: random.Random) -> bytes:
        d = dict(doc)
        d["items"] = d["items"] * n
        return orjson.dumps(d)

    return go


def _not_object(_doc: dict[str, Any], raw: bytes, rng: random.Random) -> bytes:
    return rng.choice([b"[" + raw + b"]", b"null", b"42", b'"manifest"', b"true", b"[]"])


def _garbage(_doc: dict[str, Any], _raw: bytes, rng: random.Random) -> bytes:
    return bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 200))).replace(b"\n", b" ")


MUTATIONS: dict[str, Mutation] = {
    "truncated": _truncate,
    "invalid_utf8": _bad_utf8,
    "raw_control_char": _control_char,
    "escaped_control_chars": _escaped_control,
    "deep_nesting_64": _deep(64),
    "deep_nesting_5000": _deep(5000),
    "duplicate_key": _duplicate_key,
    "prototype_keys": _proto_keys,
    "huge_string_id": _huge_string(10_000, "parcel_id"),
    "huge_string_carrier": _huge_string(20_000, "carrier"),
    "huge_items_array": _huge_array(501),
    "not_an_object": _not_object,
    "garbage": _garbage,
    "nan": _set(["declared_value"], float("nan")),
    "infinity": _set(["declared_value"], float("inf")),
    "value_1e308": _set(["declared_value"], 1e308),
    "value_negative": _set(["declared_value"], -0.01),
    "value_neg_zero": _set(["declared_value"], -0.0),
    "qty_2pow63": _set(["items", 0, "quantity"], 2**63),
    "qty_zero": _set(["items", 0, "quantity"], 0),
    "ts_negative": _set(["manifest_ts_ms"], -1),
    "ts_far_future": _set(["manifest_ts_ms"], 10**15),
    "weight_zero": _set(["gross_weight_kg"], 0),
    "weight_string": _set(["gross_weight_kg"], "0.5"),
    "value_bool": _set(["declared_value"], True),
    "items_empty": _set(["items"], []),
    "items_null": _set(["items"], None),
    "currency_unknown": _set(["currency"], "XYZ"),
    "country_unknown": _set(["origin_country"], "ZZ"),
    "country_lower": _set(["origin_country"], "cn"),
    "hs_code_letters": _set(["items", 0, "hs_code"], "61O9.10"),
    "missing_parcel_id": _drop(["parcel_id"]),
    "missing_shipper": _drop(["shipper"]),
    "missing_items": _drop(["items"]),
    "empty_parcel_id": _set(["parcel_id"], ""),
    "shipper_wrong_type": _set(["shipper"], ["SHP1"]),
}


HEAVY = {"huge_items_array", "huge_string_carrier", "deep_nesting_5000", "huge_string_id"}
OVERSIZE_EVERY = 10_000  # one record over the 1 MiB limit per this many cases


def oversize(doc: dict[str, Any]) -> bytes:
    """A manifest padded past the default 1 MiB record limit (an unknown field)."""
    d = dict(doc)
    d["padding"] = "x" * (1 << 20)
    return orjson.dumps(d)


def cases(
    base_docs: list[dict[str, Any]], n: int, seed: int = 0
) -> Iterator[tuple[str, bytes, bool]]:
    """``n`` hostile manifests: (mutation name, bytes, oracle verdict), cycling over the
    mutations (the heavy ones a third as often), each applied to a random valid manifest;
    parcel ids made unique. Every ``OVERSIZE_EVERY``-th is an oversize record (name
    ``oversize_record``; only valid as a record of its own)."""
    rng = random.Random(seed)
    names = [m for m in sorted(MUTATIONS) for _ in range(1 if m in HEAVY else 3)]
    for i in range(n):
        doc = dict(rng.choice(base_docs))
        doc["parcel_id"] = f"H{seed:02d}{i:08d}"
        if i % OVERSIZE_EVERY == OVERSIZE_EVERY - 1:
            yield "oversize_record", oversize(doc), False
            continue
        name = names[i % len(names)]
        out = MUTATIONS[name](doc, orjson.dumps(doc), rng)
        out = out.replace(b"\n", b" ")  # one manifest per line; a newline would split it
        yield name, out, oracle_accepts(out)
