"""Rule sets as data: load a TOML or JSON rule-set file, validate it, compile it to tables.

A rule is a list of conditions over named features (``"value_to_threshold >= 0.85"``), all
of which must hold, a weight, an optional feature that scales the weight
(``scale_by = "hs_risk"``), an enabled flag and effective dates. The compiled
:class:`RuleSet` holds flat numpy tables that the generic kernel in
:mod:`parcel_stream.kernels` evaluates; bit ``i`` of a parcel's fired mask is rule ``i``.
Validation errors name the file, the rule and the field.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from parcel_stream.countries import COUNTRIES
from parcel_stream.feature_catalog import FEATURE_INDEX, FEATURES
from parcel_stream.settings import Settings

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

MAX_RULES = 62
OPS = ("<", "<=", ">", ">=", "==", "!=")
_COND = re.compile(
    r"^\s*([a-z_][a-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
_RULE_ID = re.compile(r"^[A-Z][A-Z0-9_]{1,47}$")
NEVER_MS = 2**62


class RuleSetError(ValueError):
    """A rule set is invalid; the message names the file, the rule and the field."""


@dataclass(frozen=True)
class Rule:
    code: str
    text: str
    weight: float
    conditions: tuple[tuple[str, str, float], ...] = ()
    scale_by: str | None = None
    enabled: bool = True
    effective_from_ms: int = 0
    effective_until_ms: int = NEVER_MS


@dataclass(frozen=True)
class RuleSet:
    """A compiled rule set: everything the kernel and the feature builder need."""

    version: str
    rules: tuple[Rule, ...]
    weights: F64
    rule_start: I64  # first condition of each rule
    rule_count: I64  # number of conditions of each rule
    rule_scale: I64  # feature index scaling the weight, -1 = none
    cond_feature: I64
    cond_op: I64
    cond_value: F64
    review_score: float
    hold_score: float
    threshold_usd: float
    random_rate: float
    exploration_rate: float
    heading_risk: F64  # [10000] by 4-digit HS heading
    chapter_min_usd_per_kg: F64  # [100] by HS chapter
    origin_risk: F64  # [676] by country index
    transit_risk: F64  # [676] by country index
    vague_words: frozenset[str]
    watchlist: frozenset[str]
    watch_trigrams: tuple[frozenset[str], ...]
    placeholder_names: frozenset[str]
    known_shippers: frozenset[str]
    keyword_chapters: tuple[tuple[str, frozenset[int]], ...]
    source: str = "<built-in>"
    # per-rule-set memo of description checks (not part of the rule set's identity)
    memo: dict[tuple[str, str], tuple[Any, bool]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @property
    def split_min_usd(self) -> float | None:
        """Smallest parcel value that opens or extends a split-shipment window (a fifth of
        the threshold); None when there is no threshold to split around."""
        return self.threshold_usd * 0.2 if self.threshold_usd > 0 else None

    def reason_codes(self, mask: int) -> list[str]:
        return [r.code for i, r in enumerate(self.rules) if mask >> i & 1]

    def active(self, now_ms: int) -> I64:
        """1 for rules that are enabled and in effect at ``now_ms``."""
        return np.fromiter(
            (
                int(r.enabled and r.effective_from_ms <= now_ms < r.effective_until_ms)
                for r in self.rules
            ),
            dtype=np.int64,
            count=len(self.rules),
        )

    def with_rules(self, **changes: dict[str, Any]) -> RuleSet:
        """A copy with some rules changed, e.g. ``with_rules(HIGH_RISK_HS={"enabled": False})``."""
        rules = tuple(replace(r, **changes[r.code]) if r.code in changes else r for r in self.rules)
        unknown = set(changes) - {r.code for r in self.rules}
        if unknown:
            raise RuleSetError(f"unknown rule(s): {', '.join(sorted(unknown))}")
        return replace(self, rules=rules, weights=np.array([r.weight for r in rules]))


def country_index(code: str) -> int:
    """ISO alpha-2 code -> 0..675 (the index into origin tables); -1 if not A-Z."""
    if len(code) != 2:
        return -1
    a, b = ord(code[0]) - 65, ord(code[1]) - 65
    if not (0 <= a < 26 and 0 <= b < 26):
        return -1
    return a * 26 + b


_PUNCT = str.maketrans({c: " " for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\t\r\n"})


def trigrams(name: str) -> frozenset[str]:
    """Character trigrams of a normalised name (padded), for fuzzy watchlist matching."""
    padded = f"  {name} "
    return frozenset(padded[i : i + 3] for i in range(len(padded) - 2))


def normalise_name(name: str) -> str:
    """Lower case, punctuation to spaces, single spaces: the watchlist match key."""
    return " ".join(name.lower().translate(_PUNCT).split())


# -- loading ---------------------------------------------------------------------------


def load_document(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise RuleSetError(f"{p}: no such file") from None
    except OSError as exc:
        raise RuleSetError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        if p.suffix == ".json":
            doc = json.loads(raw)
        else:
            doc = tomllib.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RuleSetError(
            f"{p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {exc}"
        ) from None
    if not isinstance(doc, dict):
        raise RuleSetError(f"{p}: expected a table/object at the top level")
    return doc


DEFAULT_RULESET_PATH = Path(__file__).with_name("rulesets") / "default.toml"


def default_document() -> dict[str, Any]:
    return tomllib.loads(DEFAULT_RULESET_PATH.read_text(encoding="utf-8"))


def load_ruleset(path: str | Path) -> RuleSet:
    return compile_ruleset(load_document(path), str(path))


def default_ruleset(settings: Settings | None = None) -> RuleSet:
    """The rule set named by ``PARCEL_RULES_FILE``, or the built-in default; lane and
    threshold settings, when given, override the file's."""
    s = settings or Settings()
    if s.rules_file:
        rs = load_ruleset(s.rules_file)
    else:
        rs = compile_ruleset(default_document(), "<built-in default>")
    if s.duty_free_threshold_usd is not None:
        rs = replace(rs, threshold_usd=s.duty_free_threshold_usd)
    if s.review_score is not None:
        rs = replace(rs, review_score=s.review_score)
    if s.hold_score is not None:
        rs = replace(rs, hold_score=s.hold_score)
    if not 0 <= rs.review_score <= rs.hold_score:
        raise RuleSetError(
            "PARCEL_REVIEW_SCORE/PARCEL_HOLD_SCORE: the review score must be <= the hold score"
        )
    return rs


# -- validation and compilation --------------------------------------------------------

_TOP = {"version", "description", "lanes", "threshold", "sampling", "tables", "rules"}
_RULE_KEYS = {"id", "description", "when", "weight", "scale_by", "enabled",
              "effective_from", "effective_until"}  # fmt: skip


def _num(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise RuleSetError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _date_ms(where: str, value: Any) -> int:
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise RuleSetError(f"{where}: {value!r} is not an ISO date, e.g. 2026-12-01") from None
        dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    else:
        raise RuleSetError(f"{where}: expected an ISO date, got {value!r}")
    return int(dt.timestamp() * 1000)


def _risk_table(where: str, table: Any, size: int, key_of: Any) -> F64:
    out = np.zeros(size, dtype=np.float64)
    if not isinstance(table, dict):
        raise RuleSetError(f"{where}: expected a table of code = risk")
    for code, risk in table.items():
        idx = key_of(str(code))
        if idx is None:
            raise RuleSetError(f"{where}.{code}: unknown code")
        value = _num(f"{where}.{code}", risk)
        if not 0 <= value <= 1:
            raise RuleSetError(f"{where}.{code}: risk must be between 0 and 1")
        out[idx] = value
    return out


def _heading_key(code: str) -> int | None:
    digits = code.replace(".", "")
    return int(digits[:4]) if len(digits) >= 4 and digits[:4].isdigit() else None


def _country_key(code: str) -> int | None:
    return country_index(code) if code in COUNTRIES else None


def compile_ruleset(doc: dict[str, Any], source: str = "<rule set>") -> RuleSet:
    """Validate a rule-set document and compile it; errors name ``source``, rule, field."""
    for key in doc:
        if key not in _TOP:
            raise RuleSetError(
                f"{source}: unknown top-level key {key!r}; known: {', '.join(sorted(_TOP))}"
            )
    version = doc.get("version")
    if not isinstance(version, str) or not version.strip():
        raise RuleSetError(f"{source}: version: a non-empty string is required")
    lanes = doc.get("lanes", {})
    review = _num(f"{source}: lanes.review_score", lanes.get("review_score", 30))
    hold = _num(f"{source}: lanes.hold_score", lanes.get("hold_score", 60))
    if not 0 <= review <= hold:
        raise RuleSetError(f"{source}: lanes: review_score must be >= 0 and <= hold_score")
    threshold = _num(
        f"{source}: threshold.duty_free_usd", doc.get("threshold", {}).get("duty_free_usd", 800)
    )
    if threshold < 0:
        raise RuleSetError(f"{source}: threshold.duty_free_usd: must be >= 0 (0 = no exemption)")
    sampling = doc.get("sampling", {})
    random_rate = _num(f"{source}: sampling.random_rate", sampling.get("random_rate", 0.0))
    exploration_rate = _num(
        f"{source}: sampling.exploration_rate", sampling.get("exploration_rate", 0.0)
    )
    for name, rate in (("random_rate", random_rate), ("exploration_rate", exploration_rate)):
        if not 0 <= rate <= 1:
            raise RuleSetError(f"{source}: sampling.{name}: must be between 0 and 1")
    tables = doc.get("tables", {})
    heading = _risk_table(
        f"{source}: tables.hs_risk", tables.get("hs_risk", {}), 10_000, _heading_key
    )
    origin = _risk_table(
        f"{source}: tables.origin_risk", tables.get("origin_risk", {}), 676, _country_key
    )
    transit = _risk_table(
        f"{source}: tables.transit_risk", tables.get("transit_risk", {}), 676, _country_key
    )
    norms_doc = tables.get("chapter_min_usd_per_kg", {})
    chapter = np.full(
        100, _num(f"{source}: tables.chapter_min_usd_per_kg.default", norms_doc.get("default", 2.0))
    )
    for ch, norm in norms_doc.items():
        if ch == "default":
            continue
        if not (str(ch).isdigit() and 1 <= int(ch) <= 99):
            raise RuleSetError(
                f"{source}: tables.chapter_min_usd_per_kg.{ch}: not an HS chapter (01-99)"
            )
        chapter[int(ch)] = _num(f"{source}: tables.chapter_min_usd_per_kg.{ch}", norm)
    vague = tables.get("vague_words", [])
    watch = tables.get("watchlist", [])
    placeholders = tables.get("placeholder_names", [])
    known = tables.get("known_shippers", [])
    for name, value in (("vague_words", vague), ("watchlist", watch),
                        ("placeholder_names", placeholders), ("known_shippers", known)):  # fmt: skip
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise RuleSetError(f"{source}: tables.{name}: expected a list of strings")
    kw_doc = tables.get("description_keywords", {})
    keyword_chapters = []
    for word, chapters in kw_doc.items():
        if not isinstance(chapters, list) or not all(
            isinstance(c, int) and 1 <= c <= 99 for c in chapters
        ):
            raise RuleSetError(
                f"{source}: tables.description_keywords.{word}: expected a list of HS chapters"
            )
        keyword_chapters.append((normalise_name(word), frozenset(chapters)))

    rules_doc = doc.get("rules")
    if not isinstance(rules_doc, list) or not rules_doc:
        raise RuleSetError(f"{source}: rules: at least one [[rules]] entry is required")
    if len(rules_doc) > MAX_RULES:
        raise RuleSetError(f"{source}: rules: at most {MAX_RULES} rules (the fired mask is 64-bit)")
    rules: list[Rule] = []
    cond_f: list[int] = []
    cond_o: list[int] = []
    cond_v: list[float] = []
    starts, counts, scales = [], [], []
    seen: set[str] = set()
    for n, r in enumerate(rules_doc):
        rid = r.get("id") if isinstance(r, dict) else None
        where = f"{source}: rule {rid or '#' + str(n + 1)}"
        if not isinstance(r, dict):
            raise RuleSetError(f"{where}: expected a table")
        for key in r:
            if key not in _RULE_KEYS:
                raise RuleSetError(
                    f"{where}: unknown field {key!r}; known: {', '.join(sorted(_RULE_KEYS))}"
                )
        if not isinstance(rid, str) or not _RULE_ID.match(rid):
            raise RuleSetError(f"{where}: id: use UPPER_SNAKE_CASE, 2-48 characters")
        if rid in seen:
            raise RuleSetError(f"{where}: id: duplicate rule id")
        seen.add(rid)
        text = r.get("description", "")
        if not isinstance(text, str) or not text:
            raise RuleSetError(f"{where}: description: required (officers read it in holds)")
        weight = _num(f"{where}: weight", r.get("weight"))
        when = r.get("when")
        if not isinstance(when, list) or not when:
            raise RuleSetError(
                f'{where}: when: a list of conditions like "value_usd < 5" is required'
            )
        conds = []
        starts.append(len(cond_f))
        for k, c in enumerate(when):
            m = _COND.match(c) if isinstance(c, str) else None
            if m is None:
                raise RuleSetError(
                    f"{where}: when[{k}]: {c!r} is not 'feature op number' (ops: {' '.join(OPS)})"
                )
            feat, op, value = m.group(1), m.group(2), float(m.group(3))
            if feat not in FEATURE_INDEX:
                raise RuleSetError(
                    f"{where}: when[{k}]: unknown feature {feat!r}; known: {', '.join(FEATURES)}"
                )
            cond_f.append(FEATURE_INDEX[feat])
            cond_o.append(OPS.index(op))
            cond_v.append(value)
            conds.append((feat, op, value))
        counts.append(len(conds))
        scale = r.get("scale_by")
        if scale is not None and scale not in FEATURE_INDEX:
            raise RuleSetError(f"{where}: scale_by: unknown feature {scale!r}")
        scales.append(FEATURE_INDEX[scale] if scale else -1)
        enabled = r.get("enabled", True)
        if not isinstance(enabled, bool):
            raise RuleSetError(f"{where}: enabled: expected true or false")
        start_ms = (
            _date_ms(f"{where}: effective_from", r["effective_from"])
            if "effective_from" in r
            else 0
        )
        until_ms = (
            _date_ms(f"{where}: effective_until", r["effective_until"])
            if "effective_until" in r
            else NEVER_MS
        )
        if until_ms <= start_ms:
            raise RuleSetError(f"{where}: effective_until: must be after effective_from")
        rules.append(Rule(rid, text, weight, tuple(conds), scale, enabled, start_ms, until_ms))
    return RuleSet(
        version=version.strip(),
        rules=tuple(rules),
        weights=np.array([r.weight for r in rules], dtype=np.float64),
        rule_start=np.array(starts, dtype=np.int64),
        rule_count=np.array(counts, dtype=np.int64),
        rule_scale=np.array(scales, dtype=np.int64),
        cond_feature=np.array(cond_f, dtype=np.int64),
        cond_op=np.array(cond_o, dtype=np.int64),
        cond_value=np.array(cond_v, dtype=np.float64),
        review_score=review,
        hold_score=hold,
        threshold_usd=threshold,
        random_rate=random_rate,
        exploration_rate=exploration_rate,
        heading_risk=heading,
        chapter_min_usd_per_kg=chapter,
        origin_risk=origin,
        transit_risk=transit,
        vague_words=frozenset(normalise_name(w) for w in vague),
        watchlist=frozenset(normalise_name(w) for w in watch),
        watch_trigrams=tuple(trigrams(normalise_name(w)) for w in watch),
        placeholder_names=frozenset(normalise_name(w) for w in placeholders),
        known_shippers=frozenset(known),
        keyword_chapters=tuple(keyword_chapters),
        source=source,
    )
