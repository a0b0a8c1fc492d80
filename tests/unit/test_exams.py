import orjson

from parcel_stream.exams import parse_exam_records, trace
from parcel_stream.parse import InRecord, Limits
from parcel_stream.pipeline import run_in_memory
from parcel_stream.reputation import InMemoryStore
from parcel_stream.rules import default_ruleset
from tests.unit.samples import line

RS = default_ruleset()
NOW = 1_790_000_100_000


def exam(exam_id: str, parcel_id: str, outcome: str = "seized") -> bytes:
    return orjson.dumps({"exam_id": exam_id, "parcel_id": parcel_id, "outcome": outcome,
                         "examined_ts_ms": NOW, "finding": "precursor"})  # fmt: skip


def test_exam_results_move_reputation_once_and_change_later_scores() -> None:
    store = InMemoryStore()
    held = line(
        parcel_id="H1",
        items=[{"description": "sample", "hs_code": "2933.39", "quantity": 1, "value": 24.0}],
    )
    r = run_in_memory([InRecord(held, "m", 0, 0)], store, RS, Limits(), NOW)
    assert r.lanes.tolist() == [2] and "H1" in store.parcels
    recs = [
        InRecord(
            b"\n".join([exam("E1", "H1"), exam("E1", "H1"), exam("E2", "NOPE"), b"{bad"]), "x", 0, 0
        )
    ]
    batch = parse_exam_records(recs, NOW)
    assert len(batch.results) == 3 and [x.reason for x in batch.rejections] == ["invalid_json"]
    deltas, unknown = trace(
        batch.results, store.lookup_parcels([x.parcel_id for x in batch.results])
    )
    assert [u.parcel_id for u in unknown] == ["NOPE"]
    assert store.apply_exams(deltas) == [True, False]  # the repeat of E1 is a duplicate
    st = store.shippers["SHP000001"]
    assert (st.exams, st.violations) == (1, 1)
    # a later, ordinary parcel from the same shipper now carries the exam history
    later = run_in_memory([InRecord(line(parcel_id="L1"), "m", 0, 1)], store, RS, Limits(), NOW)
    codes = RS.reason_codes(int(later.masks[0]))
    assert "EXAM_VIOLATIONS" in codes and "ADDRESS_EXAM_VIOLATIONS" in codes


def test_known_shipper_benefit_is_suspended_after_a_violation() -> None:
    from dataclasses import replace

    rs = replace(RS, known_shippers=frozenset({"SHP000001"}))
    store = InMemoryStore()
    first = run_in_memory([InRecord(line(parcel_id="K1"), "m", 0, 0)], store, rs, Limits(), NOW)
    assert "KNOWN_SHIPPER" in rs.reason_codes(int(first.masks[0]))
    held = line(
        parcel_id="K2",
        items=[{"description": "sample", "hs_code": "2933.39", "quantity": 1, "value": 24.0}],
    )
    assert run_in_memory([InRecord(held, "m", 0, 1)], store, rs, Limits(), NOW).lanes.tolist() == [
        2
    ]
    batch = parse_exam_records([InRecord(exam("E9", "K2", "violation"), "x", 0, 0)], NOW)
    deltas, _ = trace(batch.results, store.lookup_parcels(["K2"]))
    assert store.apply_exams(deltas) == [True]
    later = run_in_memory([InRecord(line(parcel_id="K3"), "m", 0, 2)], store, rs, Limits(), NOW)
    codes = rs.reason_codes(int(later.masks[0]))
    assert "KNOWN_SHIPPER_SUSPENDED" in codes and "KNOWN_SHIPPER" not in codes
