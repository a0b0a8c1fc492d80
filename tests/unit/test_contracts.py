"""The code's message types and the JSON Schema files in schemas/ agree."""

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from parcel_stream.contracts import CONTRACTS, json_schema

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES = sorted((SCHEMAS / "examples").glob("*.json"))


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def contract_of(example: Path) -> str:
    stem = example.name.split(".v1")[0]
    return f"{stem}.v1.json"


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_schema_file_is_generated_from_the_code(name: str) -> None:
    assert load(SCHEMAS / name) == json_schema(CONTRACTS[name]), (
        f"schemas/{name} is stale: run `parcel-stream schemas`"
    )


def test_every_contract_has_an_example() -> None:
    assert {contract_of(e) for e in EXAMPLES} == set(CONTRACTS)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_schema_and_decode_with_the_code(example: Path) -> None:
    name = contract_of(example)
    doc = load(example)
    jsonschema.Draft202012Validator(load(SCHEMAS / name)).validate(doc)
    msgspec.json.decode(example.read_bytes(), type=CONTRACTS[name])


def _set(doc: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    target = out
    for p in path[:-1]:
        target = target[p]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


_DELETE = object()
MUTATIONS = [
    (["declared_value"], -1),
    (["declared_value"], "12.5"),
    (["currency"], "XXX"),
    (["parcel_id"], _DELETE),
    (["parcel_id"], ""),
    (["parcel_id"], " padded "),
    (["origin_country"], "cn"),
    (["gross_weight_kg"], 0),
    (["items"], []),
    (["items", 0, "quantity"], 0),
    (["items", 0, "hs_code"], "12"),
    (["items", 0, "description"], _DELETE),
    (["shipper", "address", "lines"], []),
    (["consignee", "country"], "USA"),
    (["manifest_ts_ms"], -5),
    (["schema_version"], 2),
    (["seller"], {"name": "no id"}),
    (["shipped_ts_ms"], None),
    (["seller"], None),
    (["items", 0, "origin_country"], None),
    (["unknown_extension"], {"x": 1}),
    (["declarant"], ""),
    (["declarant"], "x" * 65),
    (["declarant"], None),
    (["entry_type"], "x" * 33),
    (["transport_mode"], "boat"),
    (["transport_mode"], "postal"),
    (["attributes"], {}),
    (["attributes"], {f"k{i}": "v" for i in range(17)}),
    (["attributes"], {f"k{i}": "v" for i in range(16)}),
    (["attributes", "Customs Office"], "2720"),
    (["attributes", "9office"], "2720"),
    (["attributes", "office"], ""),
    (["attributes", "office"], "x" * 65),
    (["attributes", "office"], 2720),
    (["attributes"], _DELETE),
]


@pytest.mark.parametrize(("path", "value"), MUTATIONS, ids=lambda x: str(x))
def test_schema_and_decoder_agree_on_mutations(path: list[Any], value: Any) -> None:
    base = load(SCHEMAS / "examples" / "parcel-manifest.v1.full.json")
    doc = _set(base, path, value)
    schema_ok = jsonschema.Draft202012Validator(load(SCHEMAS / "parcel-manifest.v1.json")).is_valid(
        doc
    )
    try:
        msgspec.json.decode(json.dumps(doc).encode(), type=CONTRACTS["parcel-manifest.v1.json"])
        code_ok = True
    except msgspec.ValidationError:
        code_ok = False
    assert schema_ok == code_ok, f"schema says {schema_ok}, decoder says {code_ok}"


def _ruleset_mutations() -> list[tuple[str, Any]]:
    return [
        ("rules.0.weight", "high"),
        ("rules.0.wieght", 3),
        ("rules.0.when", ["valeu_usd < 5"]),
        ("rules.0.when", []),
        ("rules.0.id", "near"),
        ("rules.0.scale_by", "nope"),
        ("rules.0.effective_from", "soon"),
        ("tables.hs_risk.2933", 1.5),
        ("tables.origin_risk.cn", 0.5),
        ("colour", "blue"),
        ("rules.0.weight", 99),
        ("rules.0.enabled", False),
        ("rules.0.effective_from", "2026-01-01"),
        ("rules.0.when", ["hs_risk >= 0.4", "value_usd!=3"]),
    ]


@pytest.mark.parametrize(("path", "value"), _ruleset_mutations(), ids=lambda x: str(x))
def test_ruleset_schema_and_compiler_agree(path: str, value: Any) -> None:
    from parcel_stream.rules import RuleSetError, compile_ruleset, default_document

    doc = default_document()
    target: Any = doc
    parts = path.split(".")
    for p in parts[:-1]:
        target = target[int(p)] if p.isdigit() else target[p]
    target[parts[-1]] = value
    schema_ok = jsonschema.Draft202012Validator(load(SCHEMAS / "ruleset.v1.json")).is_valid(doc)
    try:
        compile_ruleset(doc, "t")
        code_ok = True
    except RuleSetError:
        code_ok = False
    assert schema_ok == code_ok, f"schema says {schema_ok}, compiler says {code_ok}"
