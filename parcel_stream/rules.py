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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from parcel_stream.countries import COUNTRIES
from parcel_stream.feature_catalog import FEATURE_INDEX
from parcel_stream.ruleset_schema import MAX_RULES as MAX_RULES
from parcel_stream.ruleset_schema import OPS as OPS
from parcel_stream.ruleset_schema import Lanes, RuleDoc, decode_ruleset
from parcel_stream.ruleset_schema import RuleSetError as RuleSetError
from parcel_stream.settings import Settings

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_COND = re.compile(
    r"^\s*([a-z_][a-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
NEVER_MS = 2**62


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
    always: str | None = None  # "hold" or "review" with the learned model on


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

    @cached_property
    def watch_index(self) -> tuple[dict[str, npt.NDArray[np.int64]], F64]:
        """Per trigram the watchlist entries that have it, and each entry's number of
        trigrams: a name is compared with the entries that share a trigram with it, not
        with the whole list (``features.watchlist_similarity``)."""
        postings: dict[str, list[int]] = {}
        for j, entry in enumerate(self.watch_trigrams):
            for gram in entry:
                postings.setdefault(gram, []).append(j)
        sizes = np.array([len(e) for e in self.watch_trigrams], dtype=np.float64)
        return {g: np.array(v, dtype=np.int64) for g, v in postings.items()}, sizes

    @property
    def split_min_usd(self) -> float | None:
        """Smallest parcel value that opens or extends a split-shipment window (a fifth of
        the threshold); None when there is no threshold to split around."""
        return self.threshold_usd * 0.2 if self.threshold_usd > 0 else None

    def reason_codes(self, mask: int) -> list[str]:
        return [r.code for i, r in enumerate(self.rules) if mask >> i & 1]

    def always_mask(self, lane: str) -> int:
        """The rules marked ``always = lane`` as a fired-rule mask."""
        return sum(1 << i for i, r in enumerate(self.rules) if r.always == lane)

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


PUNCTUATION_TO_SPACE = str.maketrans({c: " " for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\t\r\n"})


def trigrams(name: str) -> frozenset[str]:
    """Character trigrams of a normalised name (padded), for fuzzy watchlist matching."""
    padded = f"  {name} "
    return frozenset(padded[i : i + 3] for i in range(len(padded) - 2))


def normalise_name(name: str) -> str:
    """Lower case, punctuation to spaces, single spaces: the watchlist match key."""
    return " ".join(name.lower().translate(PUNCTUATION_TO_SPACE).split())


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


# -- compilation: what the schema types cannot say ---------------------------------------


def compile_ruleset(doc: dict[str, Any], source: str = "<rule set>") -> RuleSet:
    """Validate a rule-set document and compile it; errors name ``source``, rule, field.

    Types, ranges and required fields are checked by decoding into the schema types of
    :mod:`parcel_stream.ruleset_schema`; here only cross-references and orderings."""
    spec = decode_ruleset(doc, source)
    review, hold = _lanes(spec.lanes, source)
    rules = _compile_rules(spec.rules, source)
    t = spec.tables
    return RuleSet(
        version=_version(spec.version, source),
        rules=rules,
        **_kernel_tables(rules),
        review_score=review,
        hold_score=hold,
        threshold_usd=spec.threshold.duty_free_usd,
        random_rate=spec.sampling.random_rate,
        exploration_rate=spec.sampling.exploration_rate,
        heading_risk=_risk_table(f"{source}: tables.hs_risk", t.hs_risk, 10_000, _heading_key),
        chapter_min_usd_per_kg=_chapter_norms(t.chapter_min_usd_per_kg, source),
        origin_risk=_risk_table(f"{source}: tables.origin_risk", t.origin_risk, 676, _country_key),
        transit_risk=_risk_table(
            f"{source}: tables.transit_risk", t.transit_risk, 676, _country_key
        ),
        vague_words=frozenset(normalise_name(w) for w in t.vague_words),
        watchlist=frozenset(normalise_name(w) for w in t.watchlist),
        watch_trigrams=tuple(trigrams(normalise_name(w)) for w in t.watchlist),
        placeholder_names=frozenset(normalise_name(w) for w in t.placeholder_names),
        known_shippers=frozenset(t.known_shippers),
        keyword_chapters=tuple(
            (normalise_name(word), frozenset(chapters))
            for word, chapters in t.description_keywords.items()
        ),
        source=source,
    )


def _version(version: str, source: str) -> str:
    if not version.strip():
        raise RuleSetError(f"{source}: version: a non-empty string is required")
    return version.strip()


def _lanes(lanes: Lanes, source: str) -> tuple[float, float]:
    if lanes.review_score > lanes.hold_score:
        raise RuleSetError(f"{source}: lanes: review_score must be >= 0 and <= hold_score")
    return lanes.review_score, lanes.hold_score


def _risk_table(
    where: str, table: dict[str, float], size: int, key_of: Callable[[str], int | None]
) -> F64:
    out = np.zeros(size, dtype=np.float64)
    for code, risk in table.items():
        idx = key_of(code)
        if idx is None:
            raise RuleSetError(f"{where}.{code}: unknown code")
        out[idx] = risk
    return out


def _heading_key(code: str) -> int | None:
    digits = code.replace(".", "")
    return int(digits[:4]) if len(digits) >= 4 and digits[:4].isdigit() else None


def _country_key(code: str) -> int | None:
    return country_index(code) if code in COUNTRIES else None


def _chapter_norms(norms: dict[str, float], source: str) -> F64:
    chapter = np.full(100, norms.get("default", 2.0))
    for ch, norm in norms.items():
        if ch == "default":
            continue
        if not 1 <= int(ch) <= 99:
            raise RuleSetError(
                f"{source}: tables.chapter_min_usd_per_kg.{ch}: not an HS chapter (01-99)"
            )
        chapter[int(ch)] = norm
    return chapter


def _compile_rules(docs: list[RuleDoc], source: str) -> tuple[Rule, ...]:
    seen: set[str] = set()
    for r in docs:
        if r.id in seen:
            raise RuleSetError(f"{source}: rule {r.id}: id: duplicate rule id")
        seen.add(r.id)
    return tuple(_compile_rule(r, f"{source}: rule {r.id}") for r in docs)


def _compile_rule(r: RuleDoc, where: str) -> Rule:
    if r.weight != r.weight:
        raise RuleSetError(f"{where}: weight: expected a number, got nan")
    start_ms = _date_ms(f"{where}: effective_from", r.effective_from, 0)
    until_ms = _date_ms(f"{where}: effective_until", r.effective_until, NEVER_MS)
    if until_ms <= start_ms:
        raise RuleSetError(f"{where}: effective_until: must be after effective_from")
    conditions = tuple(_condition(c, f"{where}: when[{k}]") for k, c in enumerate(r.when))
    return Rule(r.id, r.description, r.weight, conditions, r.scale_by, r.enabled,
                start_ms, until_ms, r.always)  # fmt: skip


def _condition(text: str, where: str) -> tuple[str, str, float]:
    m = _COND.match(text)
    if m is None:  # the schema's pattern admits only conditions this parses
        raise RuleSetError(f"{where}: {text!r} is not 'feature op number' (ops: {' '.join(OPS)})")
    return m.group(1), m.group(2), float(m.group(3))


def _date_ms(where: str, value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise RuleSetError(f"{where}: {value!r} is not an ISO date, e.g. 2026-12-01") from None
    dt = dt if dt.tzinfo else dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _kernel_tables(rules: tuple[Rule, ...]) -> dict[str, Any]:
    """The flat tables the kernel reads: rule ``i``'s conditions are ``cond_*[start:start+count]``."""
    conds = [c for r in rules for c in r.conditions]
    counts = [len(r.conditions) for r in rules]
    return {
        "weights": np.array([r.weight for r in rules], dtype=np.float64),
        "rule_start": np.array(np.cumsum([0, *counts[:-1]]), dtype=np.int64),
        "rule_count": np.array(counts, dtype=np.int64),
        "rule_scale": np.array(
            [FEATURE_INDEX[r.scale_by] if r.scale_by else -1 for r in rules], dtype=np.int64
        ),
        "cond_feature": np.array([FEATURE_INDEX[f] for f, _, _ in conds], dtype=np.int64),
        "cond_op": np.array([OPS.index(op) for _, op, _ in conds], dtype=np.int64),
        "cond_value": np.array([v for _, _, v in conds], dtype=np.float64),
    }
