"""The published contracts: message type per schema file in ``schemas/``."""

from __future__ import annotations

import inspect
from typing import Any

import msgspec

from parcel_stream.feed import FeedRecord
from parcel_stream.model import Decision, DecisionBatch, ExamResult, Hold, Manifest, Rejection
from parcel_stream.ruleset_schema import RuleSetDoc

CONTRACTS: dict[str, type[msgspec.Struct]] = {
    "parcel-manifest.v1.json": Manifest,
    "hold.v1.json": Hold,
    "decision.v1.json": Decision,
    "decision-batch.v1.json": DecisionBatch,
    "rejection.v1.json": Rejection,
    "feed-record.v1.json": FeedRecord,
    "ruleset.v1.json": RuleSetDoc,
    "exam-result.v1.json": ExamResult,
}


def json_schema(kind: type[msgspec.Struct]) -> dict[str, object]:
    """The published JSON Schema (draft 2020-12) for one message type. Descriptions taken
    from docstrings are dedented (``inspect.cleandoc``), as msgspec 0.23 does and 0.22 did
    not, so that the published files do not depend on the installed version."""
    schema: dict[str, object] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **msgspec.json.schema(kind),
    }
    out: dict[str, object] = _cleaned(schema)
    return out


def _cleaned(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: inspect.cleandoc(v) if k == "description" and isinstance(v, str)
                else _cleaned(v) for k, v in node.items()}  # fmt: skip
    if isinstance(node, list):
        return [_cleaned(v) for v in node]
    return node
