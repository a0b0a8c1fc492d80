"""The rule-set file format as types: the source of ``schemas/ruleset.v1.json``.

:func:`decode_ruleset` validates a rule-set document through these types (one check, the
same one the published schema describes) and turns msgspec's validation errors into
one-line :class:`RuleSetError` messages that name the file, the rule and the field. The
compiler in :mod:`parcel_stream.rules` checks only what types cannot say.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import msgspec

from parcel_stream.feature_catalog import FEATURES

MAX_RULES = 62  # the fired mask is 64-bit
OPS = ("<", "<=", ">", ">=", "==", "!=")

_NUMBER = r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
CONDITION_PATTERN = rf"^\s*({'|'.join(FEATURES)})\s*(<=|>=|==|!=|<|>)\s*{_NUMBER}\s*$"
Risk = Annotated[float, msgspec.Meta(ge=0, le=1)]
Condition = Annotated[
    str,
    msgspec.Meta(
        pattern=CONDITION_PATTERN, description='"feature op number", e.g. "hs_risk >= 0.4"'
    ),
]
IsoDate = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}", description="ISO date")]


class Lanes(msgspec.Struct, forbid_unknown_fields=True):
    review_score: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    hold_score: Annotated[float, msgspec.Meta(ge=0)] = 60.0


class Threshold(msgspec.Struct, forbid_unknown_fields=True):
    duty_free_usd: Annotated[float, msgspec.Meta(ge=0, description="0 = no exemption")] = 800.0


class Sampling(msgspec.Struct, forbid_unknown_fields=True):
    random_rate: Annotated[
        float, msgspec.Meta(ge=0, le=1, description="share of release-lane parcels held at random")
    ] = 0.0
    exploration_rate: Annotated[
        float, msgspec.Meta(ge=0, le=1, description="share of review-lane parcels held at random")
    ] = 0.0


class Tables(msgspec.Struct, forbid_unknown_fields=True):
    hs_risk: dict[Annotated[str, msgspec.Meta(pattern=r"^\d{4}")], Risk] = {}
    chapter_min_usd_per_kg: dict[
        Annotated[str, msgspec.Meta(pattern=r"^(default|\d{1,2})$")],
        Annotated[float, msgspec.Meta(ge=0)],
    ] = {}
    origin_risk: dict[Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")], Risk] = {}
    transit_risk: dict[Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")], Risk] = {}
    vague_words: list[str] = []
    watchlist: list[str] = []
    placeholder_names: list[str] = []
    known_shippers: Annotated[
        list[str], msgspec.Meta(description="shipper ids enrolled in the known-shipper programme")
    ] = []
    description_keywords: dict[str, list[Annotated[int, msgspec.Meta(ge=1, le=99)]]] = {}


class RuleDoc(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Z][A-Z0-9_]{1,47}$")]
    description: Annotated[str, msgspec.Meta(min_length=1)]
    when: Annotated[list[Condition], msgspec.Meta(min_length=1)]
    weight: float
    scale_by: Annotated[str, msgspec.Meta(pattern=rf"^({'|'.join(FEATURES)})$")] | None = None
    enabled: bool = True
    effective_from: IsoDate | None = None
    effective_until: IsoDate | None = None
    always: Annotated[
        Literal["hold", "review"],
        msgspec.Meta(description="with the learned model deciding the lanes "
                     "(PARCEL_RISK_MODEL=on): a parcel this rule fires for goes at least to "
                     "this lane, whatever its probability"),
    ] | None = None  # fmt: skip


class RuleSetDoc(msgspec.Struct, forbid_unknown_fields=True):
    """A parcel-stream rule set (TOML or JSON)."""

    version: Annotated[str, msgspec.Meta(min_length=1)]
    rules: Annotated[list[RuleDoc], msgspec.Meta(min_length=1, max_length=MAX_RULES)]
    description: str = ""
    lanes: Lanes = msgspec.field(default_factory=Lanes)
    threshold: Threshold = msgspec.field(default_factory=Threshold)
    sampling: Sampling = msgspec.field(default_factory=Sampling)
    tables: Tables = msgspec.field(default_factory=Tables)


# -- validation with messages for people -------------------------------------------------


class RuleSetError(ValueError):
    """A rule set is invalid; the message names the file, the rule and the field."""


def decode_ruleset(doc: dict[str, Any], source: str) -> RuleSetDoc:
    """``doc`` (a parsed TOML or JSON rule set) as typed structs, or a RuleSetError."""
    doc = _dates_as_text(doc)
    try:
        return msgspec.convert(doc, RuleSetDoc)
    except msgspec.ValidationError as exc:
        try:
            message = _explain(str(exc), doc, source)
        except (LookupError, TypeError, AttributeError):  # a wording this does not know
            message = f"{source}: {exc}"
        raise RuleSetError(message) from None


def _dates_as_text(doc: dict[str, Any]) -> dict[str, Any]:
    """TOML dates and date-times in ``effective_*`` as the ISO text a JSON file would hold."""
    rules = doc.get("rules")
    if not isinstance(rules, list):
        return doc

    def text(key: str, value: Any) -> Any:
        return (
            value.isoformat() if key.startswith("effective_") and isinstance(value, date) else value
        )

    return {**doc, "rules": [
        {k: text(k, v) for k, v in r.items()} if isinstance(r, dict) else r for r in rules
    ]}  # fmt: skip


Step = tuple[str, Any]  # ("field", name) | ("index", i) | ("key" | "bad key", dict key)
_MISSING: Any = object()
_ERROR = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<key>key` in `)?\$(?P<path>[^`]*)`)?$", re.S)
_STEP = re.compile(r"\.(\w+)|\[(\d+|\.\.\.)\]")
_NAMES = {"float": "a number", "int": "an integer", "str": "a string", "array": "a list",
          "object": "a table", "bool": "true or false", "null": "nothing"}  # fmt: skip


def _explain(message: str, doc: dict[str, Any], source: str) -> str:
    """One msgspec validation error as ``source: where: what``."""
    m = _ERROR.match(message)
    assert m is not None  # the pattern matches any text
    msg = m["msg"]
    steps, value, tp = _walk(doc, _STEP.findall(m["path"] or ""))
    if m["key"]:
        key = _first_bad(value, get_args(_bare(tp))[0], keys=True)
        steps, value = [*steps, ("bad key", key)], _MISSING
    field = re.match(r"Object (contains unknown|missing required) field `(\w+)`", msg)
    if field and field[1] == "missing required":
        steps, value = [*steps, ("field", field[2])], _MISSING
    elif field:
        known = ", ".join(sorted(_bare(tp).__struct_fields__))
        detail = f"unknown {'top-level key' if not steps else 'field'} {field[2]!r}; known: {known}"
        return _where(source, doc, steps, detail)
    hint = _HINTS.get(_pattern(steps))
    detail = (hint(value) if hint else None) or _plain(msg, value)
    return _where(source, doc, steps, detail)


def _where(source: str, doc: dict[str, Any], steps: list[Step], detail: str) -> str:
    """``source: rule ID: when[0]: detail`` -- rules by their id (or #n), fields by path."""
    head = []
    if len(steps) >= 2 and steps[0] == ("field", "rules") and steps[1][0] == "index":
        rule = doc["rules"][steps[1][1]]
        rid = rule.get("id") if isinstance(rule, dict) else None
        name = rid if isinstance(rid, str) and rid else f"#{steps[1][1] + 1}"
        head, steps = [f"rule {name}"], steps[2:]
    path = "".join(f"[{v}]" if kind == "index" else f".{v}" for kind, v in steps).lstrip(".")
    return ": ".join([source, *head, *([path] if path else []), detail])


def _walk(doc: Any, tokens: list[tuple[str, str]]) -> tuple[list[Step], Any, Any]:
    """Follow msgspec's error path through the document and the types; a dict entry shown
    as ``[...]`` is found again as the first one that does not convert."""
    steps: list[Step] = []
    value, tp = doc, RuleSetDoc
    for name, index in tokens:
        bare = _bare(tp)
        if name:
            steps.append(("field", name))
            value, tp = value.get(name, _MISSING), get_type_hints(bare, include_extras=True)[name]
        elif index == "...":
            key = _first_bad(value, get_args(bare)[1], keys=False)
            steps.append(("key", key))
            value, tp = value[key], get_args(bare)[1]
        else:
            steps.append(("index", int(index)))
            value, tp = value[int(index)], get_args(bare)[0]
    return steps, value, tp


def _first_bad(table: dict[Any, Any], tp: Any, keys: bool) -> Any:
    """The first key of ``table`` whose key (or value) does not convert to ``tp``."""
    for key, value in table.items():
        try:
            msgspec.convert(key if keys else value, tp)
        except msgspec.ValidationError:
            return key
    raise LookupError("no entry fails")


def _bare(tp: Any) -> Any:
    """The type without Annotated metadata and without ``| None``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, UnionType):
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


def _pattern(steps: list[Step]) -> str:
    """``rules[].when[]``, ``tables.hs_risk.*`` (a value), ``tables.hs_risk.<key>``."""
    kinds = {"field": ".{}", "index": "[]", "key": ".*", "bad key": ".<key>"}
    return "".join(kinds[kind].format(v) for kind, v in steps).lstrip(".")


def _plain(msg: str, value: Any) -> str:
    """msgspec's wording made plain: "Expected `float` >= 0.0" -> "expected a number >= 0.0"."""
    if msg.startswith("Object missing required field"):
        return "required"
    text = re.sub(r"`(\w+)`", lambda t: _NAMES.get(t[1], t[1]), msg)
    text = re.sub(r", got .*$", "", text[0].lower() + text[1:])
    return text if value is _MISSING else f"{text}, got {value!r}"


_ANY_CONDITION = re.compile(rf"^\s*([a-z_][a-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*{_NUMBER}\s*$")


def _condition(value: Any) -> str:
    generic = _ANY_CONDITION.match(value) if isinstance(value, str) else None
    if generic is None:
        return f"{value!r} is not 'feature op number' (ops: {' '.join(OPS)})"
    return f"unknown feature {generic[1]!r}; known: {', '.join(FEATURES)}"


def _iso_date(value: Any) -> str:
    if isinstance(value, str):
        return f"{value!r} is not an ISO date, e.g. 2026-12-01"
    return f"expected an ISO date, got {value!r}"


def _rules_count(value: Any) -> str:
    if isinstance(value, list) and len(value) > MAX_RULES:
        return f"at most {MAX_RULES} rules (the fired mask is 64-bit)"
    return "at least one [[rules]] entry is required"


def _says(text: str) -> Callable[[Any], str]:
    return lambda _value: text


def _must(text: str) -> Callable[[Any], str]:
    return lambda value: f"{text}, got {value!r}"


_RISK = _must("risk must be between 0 and 1")
_STRINGS = _says("expected a list of strings")
_HINTS: dict[str, Callable[[Any], str | None]] = {
    "version": _says("a non-empty string is required"),
    "rules": _rules_count,
    "rules[].id": _says("use UPPER_SNAKE_CASE, 2-48 characters"),
    "rules[].description": _says("required (officers read it in holds)"),
    "rules[].when": _says('a list of conditions like "value_usd < 5" is required'),
    "rules[].when[]": _condition,
    "rules[].weight": lambda v: "a number is required" if v is _MISSING else None,
    "rules[].scale_by": lambda v: f"unknown feature {v!r}" if isinstance(v, str) else None,
    "rules[].effective_from": _iso_date,
    "rules[].effective_until": _iso_date,
    "threshold.duty_free_usd": _must("must be a number >= 0 (0 = no exemption)"),
    "sampling.random_rate": _must("must be a number between 0 and 1"),
    "sampling.exploration_rate": _must("must be a number between 0 and 1"),
    "tables.hs_risk.<key>": _says("unknown code (expected a 4-digit HS heading)"),
    "tables.origin_risk.<key>": _says("unknown code (expected a country code like CN)"),
    "tables.transit_risk.<key>": _says("unknown code (expected a country code like CN)"),
    "tables.hs_risk.*": _RISK,
    "tables.origin_risk.*": _RISK,
    "tables.transit_risk.*": _RISK,
    "tables.chapter_min_usd_per_kg.<key>": _says("not an HS chapter (01-99)"),
    "tables.description_keywords.*": _says("expected a list of HS chapters (1-99)"),
    "tables.description_keywords.*[]": _must("expected an HS chapter (1-99)"),
    **{f"tables.{name}": _STRINGS for name in
       ("vague_words", "watchlist", "placeholder_names", "known_shippers")},
}  # fmt: skip
