"""Fuzz target for the parser (hypothesis), bounded for CI: PARCEL_FUZZ_EXAMPLES sets
the examples per target (default 1500; the hostile suite under benchmarks/ runs 100,000
generated cases). The parser never raises, and it accepts a manifest exactly when an
independent oracle (strict JSON + the published JSON Schema) does."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.reliability.hostile_cases import oracle_accepts
from parcel_stream.model import Manifest
from parcel_stream.parse import BOM, InRecord, Limits, parse_batch, parse_one
from tests.unit.samples import manifest

EXAMPLES = int(os.environ.get("PARCEL_FUZZ_EXAMPLES", "1500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)  # fmt: skip


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


BASE = manifest()
PATHS = paths(BASE)


def encode(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True, separators=(",", ":")).encode()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    doc = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        node = doc
        try:
            for k in path[:-1]:
                node = node[k]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                node[path[-1]] = draw(json_values)
            elif action == "delete" and isinstance(node, dict):
                node.pop(path[-1], None)
            elif isinstance(node, dict):
                node[draw(st.text(max_size=12))] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation changed the shape
    raw = encode(doc)
    if draw(st.booleans()):  # byte-level damage on top
        i = draw(st.integers(0, len(raw)))
        raw = raw[:i] + draw(st.binary(max_size=6)) + raw[i + draw(st.integers(0, 3)) :]
    return raw


@FUZZ
@given(mutated())
def test_parser_agrees_with_the_oracle(raw: bytes) -> None:
    got = parse_one(raw, "fuzz", 0)
    doc = raw.strip()
    if doc.startswith(BOM):  # a leading byte order mark is ignored (RFC 8259 allows it)
        doc = doc[3:].lstrip()
    assert isinstance(got, Manifest) == oracle_accepts(doc), (raw, got)


# an example here is up to 8 lines, so a third of the examples still checks more lines
# than the one-line targets do (the oracle's checks are most of this suite's time)
@settings(FUZZ, max_examples=max(EXAMPLES // 3, 1))
@given(st.lists(mutated() | st.binary(max_size=300), min_size=1, max_size=8))
def test_batch_records_account_for_every_line(lines: list[bytes]) -> None:
    lines = [x.replace(b"\n", b" ") for x in lines]
    value = b"\n".join(lines)
    out = parse_batch([InRecord(value, "m", 0, 0)], Limits(), 0)
    stripped = value.strip()
    if stripped.startswith(BOM):  # a leading byte order mark is ignored
        stripped = stripped[3:].strip()
    if not stripped:
        assert [r.reason for r in out.rejections] == ["empty_record"]
        return
    first = stripped.split(b"\n", 1)[0]
    if b"\n" not in stripped or first.strip() == b"{":  # a single (maybe pretty) record
        assert len(out) + len(out.rejections) == 1
        return
    non_empty = [x for x in stripped.split(b"\n") if x.strip()]
    assert len(out) + len(out.rejections) == len(non_empty)
    assert len(out) == sum(oracle_accepts(x.strip()) for x in non_empty)
