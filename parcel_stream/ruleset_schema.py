"""The rule-set file format as types: the source of ``schemas/ruleset.v1.json``.

The compiler in :mod:`parcel_stream.rules` does the same checks with messages that name
the file, the rule and the field; a contract test keeps the two in agreement.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from parcel_stream.feature_catalog import FEATURES

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


class RuleSetDoc(msgspec.Struct, forbid_unknown_fields=True):
    """A parcel-stream rule set (TOML or JSON)."""

    version: Annotated[str, msgspec.Meta(min_length=1)]
    rules: Annotated[list[RuleDoc], msgspec.Meta(min_length=1, max_length=62)]
    description: str = ""
    lanes: Lanes = msgspec.field(default_factory=Lanes)
    threshold: Threshold = msgspec.field(default_factory=Threshold)
    sampling: Sampling = msgspec.field(default_factory=Sampling)
    tables: Tables = msgspec.field(default_factory=Tables)
