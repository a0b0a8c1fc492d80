"""Decisions in columns (``PARCEL_DECISIONS_FORMAT=columns``): one record per input
partition's batch that says what the per-parcel lines say."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jsonschema
import msgspec
import numpy as np
import pytest

from parcel_stream.decide import decision_count, decisions_of, is_decision_batch, read_decisions
from parcel_stream.model import Decision, DecisionBatch
from parcel_stream.outbox import rebuild
from parcel_stream.parse import InRecord, Limits
from parcel_stream.reputation import InMemoryStore
from parcel_stream.risk import RiskState
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings
from parcel_stream.step import run_sync
from tests.unit.test_same_feed import feed

SETTINGS = Settings().replace(risk_model="shadow")
RS = default_ruleset(SETTINGS)
NOW = 1_790_000_100_000
SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "decision-batch.v1.json").read_text()
)
Out = list[tuple[bytes | None, bytes]]


def records() -> list[InRecord]:
    """Repeats, amendments and rejections over three partitions, single and batch records."""
    recs = feed(4, 900)
    recs.append(InRecord(b'{"parcel_id": "BROKEN", ', "m", 0, len(recs)))
    return [InRecord(r.value, "m", n % 3, n // 3, r.key, r.timestamp_ms, r.content_type)
            for n, r in enumerate(recs)]  # fmt: skip


def run(form: str) -> list[tuple[Out, Out, Out]]:
    """The feed in batches of 20 records: the first half with the model off, the rest in
    shadow (so repeats of the first half carry no probability), in the given form."""
    store, out = InMemoryStore(), []
    recs = records()
    half = len(recs) // 2
    for lo in range(0, len(recs), 20):
        risk = (SETTINGS.risk_config(), RiskState()) if lo >= half else None
        got = run_sync(recs[lo : lo + 20], store, RS, Limits(), NOW + lo, risk=risk,
                       decisions=form).outputs  # fmt: skip
        out.append((got.decisions, got.holds, got.rejections))
    return out


def test_columns_say_what_the_lines_say_in_a_fraction_of_the_bytes() -> None:
    lines, columns = run("lines"), run("columns")
    decided = [d for batch in lines for _k, v in batch[0] for d in read_decisions(v)]
    assert any(d.repeat_of for d in decided) and any(d.amends for d in decided)
    assert any(d.probability is None for d in decided) and any(d.probability for d in decided)
    assert len({d.source.split("/")[1] for d in decided}) == 3
    for (l_dec, l_holds, l_rej), (c_dec, c_holds, c_rej) in zip(lines, columns, strict=True):
        assert [k for k, _v in c_dec] == [k for k, _v in l_dec]  # one record per partition
        assert all(v.startswith(b'{"kind":"decision-batch"') for _k, v in c_dec)
        assert [read_decisions(v) for _k, v in c_dec] == [read_decisions(v) for _k, v in l_dec]
        assert (c_holds, c_rej) == (l_holds, l_rej)
    size = {form: sum(len(v) for batch in out for _k, v in batch[0])
            for form, out in (("lines", lines), ("columns", columns))}  # fmt: skip
    assert size["columns"] < 0.4 * size["lines"], size


def test_columns_records_validate_against_the_published_schema() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for batch in run("columns")[-4:]:
        for _k, v in batch[0]:
            validator.validate(json.loads(v))


def test_rebuilt_columns_records_say_what_the_first_ones_said() -> None:
    """After a crash, the outputs of applied records come from their digests: in columns
    too (one record per input record then)."""
    store = InMemoryStore()
    recs = records()[:60]
    first = run_sync(recs, store, RS, Limits(), NOW, decisions="columns").outputs
    wanted = [((r.topic, r.partition), r.offset) for r in recs]
    again, resent, _skipped = rebuild(recs, store.read_outbox(wanted), Limits(), "columns")
    assert resent == len(recs)

    def by_source(out: Out) -> list[Decision]:
        return sorted((d for _k, v in out for d in read_decisions(v)), key=lambda d: d.source)

    assert by_source(again.decisions) == by_source(first.decisions) and first.decisions
    assert sorted(again.holds) == sorted(first.holds)


def batch(**change: object) -> DecisionBatch:
    doc = json.loads(
        (Path(__file__).resolve().parents[2] / "schemas" / "examples" / "decision-batch.v1.json")
        .read_text()
    )  # fmt: skip
    doc.update(change)
    return msgspec.json.decode(json.dumps(doc), type=DecisionBatch)


def test_the_published_example_reads_as_three_decisions() -> None:
    got = decisions_of(batch())
    assert [d.lane for d in got] == ["hold", "release", "review"]
    assert got[0].reason_codes == ["HIGH_RISK_HS", "NEW_SHIPPER"]
    assert got[1].amends == "parcel-manifests/2/980/3" and got[2].repeat_of
    assert got[2].decision_ts_ms == 1789990000000 and got[0].decision_ts_ms == 1790000100000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"score": [1.0, 2.0]}, "differ in length"),
        ({"reasons": [0, 0, 3]}, "past its 3 reason_sets"),
        ({"selection_probability": None}, "one of probability"),
        ({"amended": [{"index": 3, "amends": "x"}]}, "past its 3 parcels"),
    ],
)
def test_an_inconsistent_batch_is_refused_with_a_reason(change: dict[str, object],
                                                        message: str) -> None:  # fmt: skip
    with pytest.raises(ValueError, match=message):
        decisions_of(batch(**change))


def test_numbers_keep_their_values() -> None:
    """Scores and probabilities go out as the per-parcel form has them (float64 printed
    shortest, read back equal)."""
    docs = [json.loads(v) for decisions, _h, _r in run("columns") for _k, v in decisions]
    for doc in docs:
        assert doc["score"] == [round(x, 2) for x in doc["score"]]
        assert all(isinstance(t, int) for t in doc["event_ts_ms"])
    probs = [p for doc in docs for p in doc["probability"] or [] if p is not None]
    assert probs and np.all(np.isfinite(probs)) and 0 < min(probs) <= max(probs) < 1


def test_the_guides_reader_reads_columns_as_the_lines() -> None:
    """``docs/examples/read_decisions.py`` (quoted in docs/producers.md) turns a record in
    columns into the dicts the same decisions' lines decode to."""
    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "read_decisions.py"
    spec = importlib.util.spec_from_file_location("read_decisions_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    lines, columns = run("lines"), run("columns")
    for (l_dec, _lh, _lr), (c_dec, _ch, _cr) in zip(lines, columns, strict=True):
        for (_k, lv), (_k2, cv) in zip(l_dec, c_dec, strict=True):
            want = [json.loads(x) for x in lv.splitlines()]
            assert example.from_columns(json.loads(cv)) == want


def test_a_batch_is_known_by_its_kind_however_it_is_laid_out() -> None:
    """The published example is pretty-printed: still a batch; a single decision line,
    and NDJSON of several, are not."""
    example = (Path(__file__).resolve().parents[2] / "schemas" / "examples"
               / "decision-batch.v1.json").read_bytes()  # fmt: skip
    assert is_decision_batch(example) and len(read_decisions(example)) == 3
    assert decision_count(example) == 3
    lines = [v for batch in run("lines")[:2] for _k, v in batch[0]]
    assert not any(is_decision_batch(v) for v in lines)
    one = lines[0].split(b"\n")[0]
    assert not is_decision_batch(one) and len(read_decisions(one)) == 1
    assert decision_count(lines[0]) == lines[0].count(b"\n") + 1


def test_an_unknown_form_is_refused() -> None:
    recs = records()[:3]
    with pytest.raises(ValueError, match="one of lines, columns"):
        run_sync(recs, InMemoryStore(), RS, Limits(), NOW, decisions="csv")
