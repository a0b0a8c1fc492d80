"""The learned risk model in the batch step and the exam step, on the in-memory twin: the
probability, the selection probability and the learned reasons in decisions and holds;
shadow decides as the rules; exam results train on the features a parcel had when it was
scored; redelivery rebuilds the same outputs; mode "on" takes its lanes from the
probability."""

from __future__ import annotations

import asyncio
import dataclasses

import msgspec
import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from parcel_stream.adapters.metrics import WorkerMetrics
from parcel_stream.adapters.worker import BatchProcessor
from parcel_stream.exams import apply_exam_batch, trace
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.hidden_risk import with_hidden_risk
from parcel_stream.learner import LearnerConfig
from parcel_stream.model import Decision, ExamResult, Hold, Manifest
from parcel_stream.parse import InRecord, Limits
from parcel_stream.pipeline import BatchResult
from parcel_stream.reputation import InMemoryStore
from parcel_stream.risk import FEATURE_NAMES, RiskConfig, RiskState, as_ref, train_state
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings
from parcel_stream.state import AsyncTwin
from parcel_stream.step import run_sync

RS = default_ruleset()
LIMITS = Limits()
LEARNER = LearnerConfig(mode="off")
SHADOW = RiskConfig(mode="shadow")


def hidden_feed(parcels: int, seed: int = 3) -> tuple[list[InRecord], dict[str, bool]]:
    cfg = FeedConfig(parcels=parcels, seed=seed, duration_s=6 * 86_400.0, shippers=300)
    records, labels = [], {}
    for n, (doc, label) in enumerate(with_hidden_risk(generate(cfg), cfg)):
        records.append(InRecord(orjson.dumps(doc), "manifests", 0, n, doc["manifest_ts_ms"]))
        labels[doc["parcel_id"]] = label is not None
    return records, labels


def decisions(result: BatchResult) -> list[Decision]:
    return [msgspec.json.decode(line, type=Decision)
            for _k, v in result.outputs.decisions for line in v.split(b"\n")]  # fmt: skip


def holds(result: BatchResult) -> list[Hold]:
    return [msgspec.json.decode(v, type=Hold) for _k, v in result.outputs.holds]


def run(
    records: list[InRecord], labels: dict[str, bool], risk: RiskConfig | None, batch: int = 250
) -> tuple[InMemoryStore, list[BatchResult]]:
    """Batches through the step; after each, the held parcels' outcomes come back and
    train the learner state the next batch is scored with."""
    store = InMemoryStore()
    results = []
    for lo in range(0, len(records), batch):
        chunk = records[lo : lo + batch]
        now = chunk[-1].timestamp_ms
        state = store.read_learner()
        r = run_sync(chunk, store, RS, LIMITS, now,
                     risk=(risk, state.risk or RiskState()) if risk else None)  # fmt: skip
        results.append(r)
        held = [h.parcel_id for h in holds(r)]
        exams = [ExamResult(f"E-{p}", p, "violation" if labels[p] else "clean", now)
                 for p in held]  # fmt: skip
        deltas, _unknown = trace(exams, store.lookup_parcels(held))
        apply_exam_batch(store, deltas, LEARNER, 60.0, now, risk)
    return store, results


def test_shadow_reports_a_probability_and_learned_reasons_but_decides_as_the_rules() -> None:
    records, labels = hidden_feed(3000)
    _, off = run(records, labels, None)
    store, shadow = run(records, labels, SHADOW)
    for a, b in zip(off, shadow, strict=True):
        assert a.lanes.tolist() == b.lanes.tolist() and a.scores.tolist() == b.scores.tolist()
    ds = [d for r in shadow for d in decisions(r)]
    assert all(d.probability is not None and 0 <= d.probability <= 1 for d in ds)
    assert all(d.selection_probability is not None for d in ds)
    assert {d.selection_probability for d in ds if d.lane == "hold" and d.selection == "risk"} == {
        1.0
    }
    assert all(d.probability is None for r in off for d in decisions(r))
    # the model learned from the outcomes: later holds give learned reasons in words
    state = store.read_learner().risk
    assert state is not None and state.trained > 0 and store.risk_rows
    late = [h for r in shadow[-4:] for h in holds(r)]
    reasons = [w for h in late for w in h.learned_reasons]
    assert reasons, "no learned reasons in the last holds"
    why = next(w for w in reasons if "violations in" in w.text)
    assert why.contribution > 0 and 0 <= why.rate <= 1
    # the value norms are learned in the worker too, from every parcel
    assert any(w.key == "undervalued" and "standard deviations under" in w.text
               for w in reasons)  # fmt: skip
    assert all("consignee" not in w.text or "address" in w.text
               for h in late for w in h.learned_reasons)  # fmt: skip


def test_an_outcome_trains_on_the_features_its_parcel_had_when_it_was_scored() -> None:
    records, labels = hidden_feed(2000, seed=5)
    store, _ = run(records[:1000], labels, SHADOW)
    # parcels scored now (sent to review or hold), their outcomes held back
    late = run_sync(records[1000:], store, RS, LIMITS, records[-1].timestamp_ms,
                    risk=(SHADOW, store.read_learner().risk or RiskState()))  # fmt: skip
    held = [pid for pid, _ref in late.update.examinable]
    assert len(held) > 5
    pid = held[0]
    as_scored = as_ref(dict(late.update.examinable)[pid].risk)
    assert as_scored is not None and len(as_scored.x) == len(FEATURE_NAMES)
    # meanwhile other outcomes move the counts of its keys
    others = held[1:]
    now = records[-1].timestamp_ms
    deltas, _ = trace([ExamResult(f"X-{p}", p, "violation", now) for p in others],
                      store.lookup_parcels(others))  # fmt: skip
    apply_exam_batch(store, deltas, LEARNER, 60.0, now, SHADOW)
    before = store.read_learner().risk
    assert before is not None
    # its outcome arrives: the model trains on the stored features, not on today's
    (delta,), _ = trace([ExamResult("E-late", pid, "violation", now + 1)],
                        store.lookup_parcels([pid]))  # fmt: skip
    assert delta.risk == as_scored
    apply_exam_batch(store, [delta], LEARNER, 60.0, now + 1, SHADOW)
    after = store.read_learner().risk
    assert after is not None
    expected = train_state(before, [(as_scored, True, now + 1)], SHADOW, now + 1)
    assert np.allclose(after.theta, expected.theta, rtol=0, atol=1e-12)
    # a repeat of the result changes nothing
    apply_exam_batch(store, [delta], LEARNER, 60.0, now + 2, SHADOW)
    assert store.read_learner().risk == after


def test_a_redelivered_batch_gets_the_same_probabilities_and_learned_reasons_back() -> None:
    records, labels = hidden_feed(1500, seed=7)
    store, _ = run(records[:1200], labels, SHADOW)
    settings = Settings(risk_model="shadow", learner_mode="off")
    sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(topic: str, key: bytes | None, value: bytes) -> asyncio.Future[object]:
        sent.append((topic, key, value))
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def worker() -> BatchProcessor:
        return BatchProcessor(settings, RS, AsyncTwin(store), send,
                              WorkerMetrics(CollectorRegistry()))  # fmt: skip

    def lines() -> list[bytes]:  # decisions records group lines by partition, or by record
        return sorted(x for _t, _k, v in sent for x in v.split(b"\n"))

    asyncio.run(worker().handle(records[1200:]))
    first = lines()
    assert any(b'"learned_reasons":[{' in v for t, _k, v in sent if t == settings.topic_holds)
    assert any(b'"probability":0.' in x for x in first)
    sent.clear()
    asyncio.run(worker().handle(records[1200:]))  # after a crash before the commit
    assert lines() == first


def test_mode_on_takes_the_lanes_from_the_probability() -> None:
    records, labels = hidden_feed(2000, seed=9)
    store, _ = run(records[:1500], labels, SHADOW)
    on = dataclasses.replace(SHADOW, mode="on", hold_probability=0.3, review_probability=0.2)
    r = run_sync(records[1500:], store, RS, LIMITS, records[-1].timestamp_ms,
                 risk=(on, store.read_learner().risk or RiskState()))  # fmt: skip
    assert r.probability is not None
    for d in decisions(r):
        assert d.probability is not None
        if d.selection == "risk" and d.repeat_of is None:
            want = "hold" if d.probability >= 0.3 else "review" if d.probability >= 0.2 else (
                "release")  # fmt: skip
            assert d.lane == want, d


def test_lanes_by_capacity_hold_the_share_per_hub_however_the_feed_is_batched() -> None:
    records, labels = hidden_feed(8000, seed=11)
    trained, _ = run(records[:1000], labels, SHADOW)
    state = trained.read_learner().risk or RiskState()
    # a start far from the share: every parcel would be held at a probability of 1 %
    cap = dataclasses.replace(SHADOW, mode="on", capacity_pct=5.0, hold_probability=0.01,
                              review_probability=0.01)  # fmt: skip
    rest = records[1000:]
    lanes: list[list[str]] = []
    for size in (7000, 170):
        store = InMemoryStore(risk_rows={k: list(v) for k, v in trained.risk_rows.items()})
        out: list[str] = []
        for lo in range(0, len(rest), size):
            r = run_sync(rest[lo : lo + size], store, RS, LIMITS, rest[-1].timestamp_ms,
                         risk=(cap, state))  # fmt: skip
            out += [f"{d.parcel_id}:{d.lane}:{d.selection}" for d in decisions(r)]
        lanes.append(sorted(out))
    assert lanes[0] == lanes[1]  # the thresholds are stored per partition, not per batch
    by_hub: dict[str, list[bool]] = {}
    hub_of = {orjson.loads(r.value)["parcel_id"]: orjson.loads(r.value)["hub"] for r in rest}
    for line in lanes[0]:
        pid, lane, how = line.split(":")
        if how == "risk":
            by_hub.setdefault(hub_of[pid], []).append(lane == "hold")
    for hub, held in by_hub.items():
        tail = held[len(held) // 3 :]  # once the threshold has settled
        assert 0.03 <= sum(tail) / len(tail) <= 0.08, (hub, sum(tail) / len(tail))


def test_rules_marked_always_hold_hold_whatever_the_probability() -> None:
    records, labels = hidden_feed(1500, seed=13)
    store, _ = run(records[:1000], labels, SHADOW)
    on = dataclasses.replace(SHADOW, mode="on", hold_probability=0.99, review_probability=0.98)
    doc = orjson.loads(records[1000].value)
    doc["shipper"]["name"] = "Golden Peak Chemical Trading Co"  # on the default watchlist
    rec = InRecord(orjson.dumps(doc), "manifests", 0, 1000, doc["manifest_ts_ms"])
    r = run_sync([rec, *records[1001:1100]], store, RS, LIMITS, rec.timestamp_ms,
                 risk=(on, store.read_learner().risk or RiskState()))  # fmt: skip
    by_id = {d.parcel_id: d for d in decisions(r)}
    flagged = by_id[doc["parcel_id"]]
    assert "WATCHLIST_SHIPPER" in flagged.reason_codes
    assert flagged.probability is not None and flagged.probability < 0.99
    assert flagged.lane == "hold" and flagged.selection == "risk"
    assert RS.always_mask("hold") and not RS.always_mask("review")


def test_the_demo_summary_shows_a_holds_probability_and_learned_reasons() -> None:
    from parcel_stream.demo import DemoResult, print_summary
    from parcel_stream.model import LearnedReason, Reason

    why = LearnedReason("hs6:293399|o:IN", "HS 2933.99 from IN: 38% violations in 212 "
                        "examinations", 0.38, 212.0, 0.21)  # fmt: skip
    hold = Hold("P1", "S1", "HUB", 70.0, "hold", [Reason("HIGH_RISK_HS", "risky goods", 60.0)],
                "v1", 1, 2, "m/0/1", probability=0.62, learned_reasons=[why])  # fmt: skip
    d = Decision("P1", "S1", 70.0, "hold", ["HIGH_RISK_HS"], "v1", 1, 2, "m/0/1")
    lines: list[str] = []
    print_summary(DemoResult(1, 0, [d], [hold], [], {"P1": None}, 1.0), lines.append)
    shown = next(x for x in lines if x.startswith("  P1"))
    assert "probability 62%" in shown and "learned: HS 2933.99 from IN: 38%" in shown
    # the throughput from the worker's time in batches, when its metrics gave it
    assert next(x for x in lines if x.startswith("throughput")) == (
        "throughput: 1/s wall (including worker start and group join)")  # fmt: skip
    lines.clear()
    print_summary(DemoResult(1, 0, [d], [hold], [], {"P1": None}, 4.0, 0.25), lines.append)
    assert next(x for x in lines if x.startswith("throughput")).startswith(
        "throughput: 4 parcels/s in the worker's batches, 0/s wall")  # fmt: skip


def test_learned_reasons_name_only_keys_riskier_than_the_whole() -> None:
    from parcel_stream.risk import FIRST_GROUP, GROUPS, RiskTable, explain, parcel_keys
    from parcel_stream.risk_keys import part_id
    from tests.unit.samples import manifest

    m = msgspec.convert(manifest(declarant="BRK1", transport_mode="air"), Manifest)
    keys = parcel_keys(m, "a1", 40.0)
    table = RiskTable()
    t = float(m.manifest_ts_ms)
    for i in range(200):  # 20 % overall; the declarant clean, the mode mostly violations
        table.update([part_id(f"declarant:OTHER{i}")], i % 5 == 0, 1.0, t)
        table.update([part_id("declarant:BRK1")], False, 1.0, t)
        table.update([part_id("mode:air")], i % 2 == 0, 1.0, t)
    x = table.features(keys, 30.0, t)
    theta = np.zeros(len(x))
    d, mode = FIRST_GROUP + GROUPS.index("declarant"), FIRST_GROUP + GROUPS.index("transport_mode")
    assert x[d] < 0 < x[mode]
    theta[d], theta[mode] = -1.0, 1.0  # both add to the log-odds
    why = explain(table, keys, x, theta, t, 5)
    assert [w[0] for w in why] == ["mode:air"]  # not the clean declarant


def test_the_backtest_scores_with_the_learned_model_as_the_worker_does() -> None:
    from parcel_stream.backtest import run_backtest
    from parcel_stream.feed import RawRecord

    records, labels = hidden_feed(2000, seed=17)
    raw = [RawRecord(r.timestamp_ms, r.topic, r.partition, r.offset, None, r.value)
           for r in records]  # fmt: skip
    outcomes = {pid: ("v" if bad else None) for pid, bad in labels.items()}
    off = run_backtest(raw, RS, exam_outcomes=outcomes, chunk_bytes=64 << 10)
    on = dataclasses.replace(SHADOW, mode="on", hold_probability=0.2, review_probability=0.1)
    shadow = run_backtest(raw, RS, exam_outcomes=outcomes, chunk_bytes=64 << 10, risk=SHADOW)
    model = run_backtest(raw, RS, exam_outcomes=outcomes, chunk_bytes=64 << 10, risk=on)
    assert shadow.lanes == off.lanes  # shadow decides as the rules
    assert shadow.learner is not None and shadow.learner.risk is not None
    assert shadow.learner.risk.trained > 0
    assert model.lanes != off.lanes  # on: the lanes follow the probability


def test_an_untrained_model_decides_no_lane_even_when_on() -> None:
    records, _ = hidden_feed(600, seed=19)
    on = dataclasses.replace(SHADOW, mode="on")
    fresh = run_sync(records, InMemoryStore(), RS, LIMITS, records[-1].timestamp_ms,
                     risk=(on, RiskState()))  # fmt: skip
    rules = run_sync(records, InMemoryStore(), RS, LIMITS, records[-1].timestamp_ms)
    assert fresh.lanes.tolist() == rules.lanes.tolist()
    assert fresh.probability is not None  # still reported
