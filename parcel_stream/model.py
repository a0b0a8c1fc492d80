"""Message types: the code side of the contracts in ``schemas/`` (see ``contracts.py``).

The JSON Schema files under ``schemas/`` are generated from these types
(``parcel-stream schemas export``) and a contract test keeps them identical, so the
decoder that validates input and the published schema cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from parcel_stream.countries import Country
from parcel_stream.currency import Currency

SCHEMA_VERSION = 1

Text = Annotated[str, msgspec.Meta(max_length=512)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
TsMs = Annotated[
    int,
    msgspec.Meta(ge=0, le=32503680000000, description="Unix time in milliseconds (UTC)"),
]
MoneyValue = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
HsCode = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^([0-9]{4}(\.?[0-9]{2}){0,3})?$",
        description="HS/HTS code, 4 to 10 digits, dots allowed; empty when unknown",
    ),
]


class Address(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    """A postal address. Personal data: never logged, never a metric label."""

    lines: Annotated[list[Text], msgspec.Meta(min_length=1, max_length=6)]
    country: Country
    city: Text = ""
    postal_code: Annotated[str, msgspec.Meta(max_length=16)] = ""


class Shipper(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    id: Id
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    address: Address
    country: Country


class Consignee(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    address: Address
    country: Country


class Seller(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    id: Id
    name: Text = ""
    marketplace: Text = ""


class Item(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    description: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    hs_code: HsCode
    quantity: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    value: Annotated[MoneyValue, msgspec.Meta(description="line value in the parcel currency")]
    origin_country: Country | None = None


TransportMode = Literal["air", "sea", "road", "rail", "postal", "multimodal", "other"]
AttributeKey = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[a-z][a-z0-9_.-]{0,31}$",
        description="lower-case name, up to 32 of a-z 0-9 _ . -",
    ),
]
AttributeValue = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
MAX_ATTRIBUTES = 16


class Manifest(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    """One parcel of a low-value (de minimis) entry, as a hub declares it."""

    parcel_id: Annotated[Id, msgspec.Meta(description="parcel or waybill number")]
    carrier: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    hub: Annotated[
        str, msgspec.Meta(min_length=1, max_length=32, description="hub or port of arrival")
    ]
    shipper: Shipper
    consignee: Consignee
    items: Annotated[list[Item], msgspec.Meta(min_length=1, max_length=500)]
    declared_value: Annotated[MoneyValue, msgspec.Meta(description="total, in `currency`")]
    currency: Currency
    gross_weight_kg: Annotated[float, msgspec.Meta(gt=0, le=100_000)]
    origin_country: Country
    manifest_ts_ms: Annotated[TsMs, msgspec.Meta(description="when the hub filed the data")]
    seller: Seller | None = None
    shipped_ts_ms: TsMs | None = None
    master_waybill: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    transit_countries: Annotated[
        list[Country], msgspec.Meta(max_length=10, description="countries the parcel transits")
    ] = []
    declarant: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=64,
            description="who files the entry: the customs broker or express operator (its id)",
        ),
    ] | None = None  # fmt: skip
    entry_type: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=32,
            description="the entry's type as the filer's customs service names it (for "
            "example de minimis, informal, formal, postal)",
        ),
    ] | None = None  # fmt: skip
    transport_mode: TransportMode | None = None
    attributes: Annotated[
        dict[AttributeKey, AttributeValue],
        msgspec.Meta(
            max_length=MAX_ATTRIBUTES,
            description="extra categorical fields the learned risk model uses without code "
            "changes (a customs office, a platform, a payment method); no personal data",
        ),
    ] = {}
    schema_version: Literal[1] = 1


Lane = Literal["release", "review", "hold"]
LearnerVersion = Annotated[
    int, msgspec.Meta(ge=0, description="learner state applied to the score (0: none)")
]
Selection = Literal["risk", "random", "exploration"]


class Reason(msgspec.Struct):
    code: str
    text: str
    rule_weight: Annotated[float, msgspec.Meta(description="the rule's weight in the rule set")]
    learned_points: Annotated[
        float,
        msgspec.Meta(
            description="points the adaptive learner added to the score for this rule "
            "(0 unless the learner is on)"
        ),
    ] = 0.0


class LearnedReason(msgspec.Struct):
    """One of the learned model's strongest contributions to a parcel's probability."""

    key: Annotated[str, msgspec.Meta(description="the learned key, e.g. hs6:293399|o:IN")]
    text: Annotated[
        str,
        msgspec.Meta(description="in words, e.g. HS 2933.99 from IN: 38 % violations in 212 "
                     "examinations"),
    ]  # fmt: skip
    rate: Annotated[float, msgspec.Meta(description="the key's smoothed violation rate")]
    examinations: Annotated[
        float, msgspec.Meta(description="examinations behind it (decayed, selection-weighted)")
    ]
    contribution: Annotated[
        float, msgspec.Meta(description="what it adds to the log-odds of a violation")
    ]


Probability = Annotated[
    float,
    msgspec.Meta(ge=0, le=1, description="the learned model's probability of a violation "
                 "(null when the model is off)"),
]  # fmt: skip
SelectionProbability = Annotated[
    float,
    msgspec.Meta(ge=0, le=1, description="the probability with which the parcel was selected "
                 "for its lane (1 for a risk selection to review or hold; the sampling rate "
                 "for a random audit or exploration; for a released parcel, the chance it "
                 "had of a random audit)"),
]  # fmt: skip


class Hold(msgspec.Struct):
    """A parcel sent for examination; key on the holds topic = parcel id."""

    parcel_id: str
    shipper_id: str
    hub: str
    score: float
    lane: Lane
    reasons: list[Reason]
    ruleset_version: str
    event_ts_ms: Annotated[int, msgspec.Meta(description="manifest_ts_ms of the parcel")]
    decision_ts_ms: int
    source: Annotated[str, msgspec.Meta(description="topic/partition/offset[/line]")]
    selection: Annotated[
        Selection,
        msgspec.Meta(description="risk (score), random (compliance sample) or exploration"),
    ] = "risk"
    learner_version: LearnerVersion = 0
    amends: Annotated[
        str | None,
        msgspec.Meta(
            description="set when the parcel was amended: the source of the "
            "decision this hold replaces"
        ),
    ] = None
    probability: Probability | None = None
    selection_probability: SelectionProbability | None = None
    learned_reasons: Annotated[
        list[LearnedReason],
        msgspec.Meta(description="the learned model's strongest contributions, strongest first"),
    ] = []
    manifest: Annotated[
        Manifest | None,
        msgspec.Meta(description="the parcel's manifest as scored, for the officer who "
                     "examines it (personal data: the consignee)"),
    ] = None  # fmt: skip
    schema_version: Literal[1] = 1


class Decision(msgspec.Struct):
    """Every parcel's decision (audit trail); one line per parcel on the decisions topic."""

    parcel_id: str
    shipper_id: str
    score: float
    lane: Lane
    reason_codes: list[str]
    ruleset_version: str
    event_ts_ms: int
    decision_ts_ms: int
    source: str
    selection: Selection = "risk"
    learner_version: LearnerVersion = 0
    repeat_of: Annotated[
        str | None,
        msgspec.Meta(
            description="set on a parcel id seen before with identical content: the source of "
            "the original decision, emitted again here unchanged (safe to drop by parcel id)"
        ),
    ] = None
    amends: Annotated[
        str | None,
        msgspec.Meta(
            description="set on a parcel id seen before with other content: the source of the "
            "decision this one replaces (the parcel was scored again)"
        ),
    ] = None
    probability: Probability | None = None
    selection_probability: SelectionProbability | None = None
    schema_version: Literal[1] = 1


LaneCode = Annotated[int, msgspec.Meta(ge=0, le=2, description="0 release, 1 review, 2 hold")]
SelectionCode = Annotated[
    int, msgspec.Meta(ge=0, le=2, description="0 risk, 1 random, 2 exploration")
]


class RepeatedDecision(msgspec.Struct, forbid_unknown_fields=False):
    """In a decision batch: a parcel seen before with identical content, whose original
    decision is emitted again (its reasons are in the batch's columns)."""

    index: Annotated[int, msgspec.Meta(ge=0, description="the parcel's place in the batch")]
    repeat_of: Annotated[str, msgspec.Meta(description="the source of the original decision")]
    ruleset_version: str
    learner_version: LearnerVersion
    decision_ts_ms: int


class AmendedDecision(msgspec.Struct, forbid_unknown_fields=False):
    """In a decision batch: a parcel seen before with other content, scored again."""

    index: Annotated[int, msgspec.Meta(ge=0, description="the parcel's place in the batch")]
    amends: Annotated[str, msgspec.Meta(description="the source of the decision it replaces")]


class DecisionBatch(msgspec.Struct, forbid_unknown_fields=False):
    """The decisions of one input partition's batch in columns (``PARCEL_DECISIONS_FORMAT=
    columns``): one JSON object per decisions record instead of one line per parcel. Every
    per-parcel field is a list in input order; parcel ``i`` is the i-th entry of each. It
    says what the per-parcel form says (``decide.read_decisions`` reads a record of either
    form as :class:`Decision` values), in a fifth of the bytes."""

    kind: Literal["decision-batch"]
    ruleset_version: str
    learner_version: LearnerVersion
    decision_ts_ms: int
    reason_sets: Annotated[
        list[list[str]],
        msgspec.Meta(description="the distinct lists of reason codes; ``reasons`` points in"),
    ]
    parcel_id: list[str]
    shipper_id: list[str]
    score: list[float]
    lane: list[LaneCode]
    reasons: Annotated[
        list[Annotated[int, msgspec.Meta(ge=0)]],
        msgspec.Meta(description="per parcel, its reason codes' index in ``reason_sets``"),
    ]
    event_ts_ms: list[int]
    source: list[str]
    selection: list[SelectionCode]
    probability: list[Probability | None] | None = None  # null: the model is off
    selection_probability: list[SelectionProbability | None] | None = None
    repeats: list[RepeatedDecision] = []
    amended: list[AmendedDecision] = []
    schema_version: Literal[1] = 1


RejectReason = Literal[
    "invalid_json",
    "invalid_utf8",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "invalid_value",
    "unknown_currency",
    "unknown_country",
    "oversize_record",
    "too_many_parcels",
    "empty_record",
    "too_deep",
    # the Kafka record itself could not be decoded (unknown codec, corrupt record batch):
    # no manifest was read; ``source`` names its topic/partition/offset
    "undecodable_record",
]


class Rejection(msgspec.Struct):
    """A manifest that could not be scored; nothing is dropped silently."""

    reason: RejectReason
    path: Annotated[str, msgspec.Meta(description="JSON path of the offending value, e.g. $.x")]
    detail: Annotated[str, msgspec.Meta(max_length=300)]
    source: str
    rejected_ts_ms: int
    parcel_id: str | None = None
    raw_b64: Annotated[
        str, msgspec.Meta(description="the rejected bytes, base64; empty when over 64 KiB")
    ] = ""
    raw_bytes: Annotated[int, msgspec.Meta(ge=0, description="length of the rejected input")] = 0
    parcel_ids: Annotated[
        list[str],
        msgspec.Meta(
            description="oversize records: the parcel ids found in the record by a byte scan "
            "(not a parse), so the hub can resend them in smaller records"
        ),
    ] = []
    schema_version: Literal[1] = 1


Outcome = Literal["seized", "violation", "clean"]
Finding = Literal[
    "undervaluation", "misdescription", "counterfeit", "prohibited", "precursor",
    "controlled_substance", "split_shipment", "other", "none",
]  # fmt: skip


class ExamResult(msgspec.Struct, forbid_unknown_fields=False):
    """An officer's examination outcome for a held or reviewed parcel."""

    exam_id: Annotated[Id, msgspec.Meta(description="unique per examination; repeats are ignored")]
    parcel_id: Id
    outcome: Outcome
    examined_ts_ms: TsMs
    finding: Finding = "none"
    notes: Annotated[
        str, msgspec.Meta(max_length=2000, description="officer-facing; never logged")
    ] = ""
    recovered_usd: Annotated[
        float, msgspec.Meta(ge=0, description="duty or value recovered by the examination, USD")
    ] = 0.0
    schema_version: Literal[1] = 1
