"""Same feed, same decisions: batch boundaries, repeats and the backtest change nothing."""

from __future__ import annotations

import random

import msgspec
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parcel_stream.backtest import run_backtest
from parcel_stream.feed import RawRecord
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.model import Decision
from parcel_stream.parse import InRecord, Limits
from parcel_stream.reputation import InMemoryStore
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings
from parcel_stream.step import run_in_memory

RS = default_ruleset(Settings())
DEC = msgspec.json.Decoder(Decision)


def feed(seed: int, parcels: int, amend: bool = True) -> list[InRecord]:
    """A generated feed on one partition: single and NDJSON records, with resent parcels
    (in other records and inside one record) and amended ones (same id, new value)."""
    rng = random.Random(seed)
    cfg = FeedConfig(parcels=parcels, shippers=max(parcels // 25, 3), consignees=parcels // 4,
                     seed=seed, duration_s=3 * 86_400.0)  # fmt: skip
    docs = [doc for doc, _label in generate(cfg)]
    lines: list[bytes] = []
    for doc in docs:
        lines.append(orjson.dumps(doc))
        roll = rng.random()
        if roll < 0.03:
            lines.append(orjson.dumps(doc))  # resent as it was
        elif roll < 0.045 and amend:
            lines.append(orjson.dumps({**doc, "declared_value": doc["declared_value"] + 100}))
        elif roll < 0.05 and amend and len(docs) > 1:  # amended to another shipper
            other = docs[rng.randrange(len(docs))]
            lines.append(orjson.dumps({**doc, "shipper": other["shipper"]}))
        elif roll < 0.06 and len(lines) > 50:
            lines.append(lines[rng.randrange(len(lines) - 50)])  # resent much later
    records: list[InRecord] = []
    at = 0
    while at < len(lines):
        take = 1 if rng.random() < 0.5 else rng.randint(2, 40)
        value = b"\n".join(lines[at : at + take])
        ctype = b"application/x-ndjson" if take > 1 else None
        ts = orjson.loads(lines[at])["manifest_ts_ms"]
        records.append(InRecord(value, "m", 0, len(records), None, ts, ctype))
        at += take
    return records


def decisions(outputs: list[bytes]) -> list[tuple[object, ...]]:
    """Every decision, processing time aside, in output order."""
    out: list[tuple[object, ...]] = []
    for value in outputs:
        for line in value.split(b"\n"):
            d = DEC.decode(line)
            out.append((d.parcel_id, d.score, d.lane, tuple(d.reason_codes), d.source,
                        d.selection, d.repeat_of, d.amends))  # fmt: skip
    return out


def score_in_batches(
    records: list[InRecord], size: int
) -> tuple[list[tuple[object, ...]], InMemoryStore]:
    store = InMemoryStore()
    outputs: list[bytes] = []
    for lo in range(0, len(records), size):
        chunk = records[lo : lo + size]
        now = max(r.timestamp_ms for r in chunk) + 1000
        result = run_in_memory(chunk, store, RS, Limits(), now)
        outputs += [v for _k, v in result.outputs.decisions]
    return decisions(outputs), store


def state_of(store: InMemoryStore) -> dict[str, object]:
    return {
        "shippers": {
            k: (v.row(), v.newest_day, sorted(v.days.items())) for k, v in store.shippers.items()
        },
        "sellers": {k: v.row() for k, v in store.sellers.items()},
        "pairs": {k: v[:3] for k, v in store.pairs.items()},
        "addresses": {k: sorted(v) for k, v in store.addresses.items()},
    }


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000))
def test_batch_size_changes_no_decision_and_no_state(seed: int) -> None:
    records = feed(seed, 1500)
    reference, ref_store = score_in_batches(records, 10_000)
    assert len(reference) > 1500
    kinds = [(r[6] is not None, r[7] is not None) for r in reference]
    assert any(k[0] for k in kinds) and any(k[1] for k in kinds)  # repeats and amendments
    for size in (1, 7, 200):
        got, store = score_in_batches(records, size)
        assert got == reference, f"batch size {size}"
        assert state_of(store) == state_of(ref_store), f"batch size {size}"
    run = run_backtest(as_feed(records), RS, encode=True, chunk_bytes=20_000)
    assert decisions([v for out in run.outputs for _k, v in out.decisions]) == reference


def as_feed(records: list[InRecord]) -> list[RawRecord]:
    return [
        RawRecord(r.timestamp_ms, "m", 0, r.offset, r.key, r.value,
                  (("content-type", r.content_type),) if r.content_type else ())
        for r in records
    ]  # fmt: skip


def test_backtest_gives_the_live_decisions() -> None:
    records = feed(11, 1200)
    live, _store = score_in_batches(records, 200)
    run = run_backtest(as_feed(records), RS, encode=True, chunk_bytes=50_000)
    by_id_live = {d[0]: d[1:4] for d in live}
    assert run.parcels == len(live)
    got = {pid: (round(s, 2), ["release", "review", "hold"][lane])
           for pid, s, lane in zip(run.parcel_ids, run.scores, run.lanes, strict=True)}  # fmt: skip
    assert got == {pid: (v[0], v[1]) for pid, v in by_id_live.items()}
    backtest = decisions([v for out in run.outputs for _k, v in out.decisions])
    assert [d[:4] for d in backtest] == [d[:4] for d in live]


def test_repeat_changes_no_state_and_reemits_the_decision() -> None:
    records = feed(3, 300, amend=False)
    store = InMemoryStore()
    first = run_in_memory(records, store, RS, Limits(), 1)
    before = state_of(store)
    again = [
        InRecord(r.value, r.topic, 1, r.offset, r.key, r.timestamp_ms, r.content_type)
        for r in records
    ]
    second = run_in_memory(again, store, RS, Limits(), 2)
    assert state_of(store) == before
    assert second.repeats == second.parcels and not second.outputs.holds
    one = decisions([v for _k, v in first.outputs.decisions])
    two = decisions([v for _k, v in second.outputs.decisions])
    assert [d[:4] for d in one] == [d[:4] for d in two]
    assert all(d[6] is not None for d in two)
