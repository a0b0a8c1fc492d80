"""Learned risk (risk.py) and the test-then-train protocol (protocol.py)."""

from __future__ import annotations

import random

import msgspec
import numpy as np
import orjson

from parcel_stream.feed import RawRecord
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.model import Manifest
from parcel_stream.protocol import ProtocolConfig, _select, figures, last_share, run_protocol
from parcel_stream.risk import (
    DAY_MS,
    FEATURE_NAMES,
    FIRST_GROUP,
    GROUPS,
    OnlineModel,
    RiskRef,
    RiskTable,
    _logit,
    decode_ref,
    encode_ref,
    parcel_keys,
)
from parcel_stream.risk_keys import part_id
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings
from tests.unit.samples import manifest

RS = default_ruleset(Settings())
T0 = 1_790_000_000_000


def parcel(**changes: object) -> Manifest:
    import msgspec

    return msgspec.convert(manifest(**changes), Manifest)


def test_keys_cover_codes_crosses_parties_and_attributes() -> None:
    m = parcel(declarant="BRK1", transport_mode="air", attributes={"office": "2720"},
               transit_countries=["HK"])  # fmt: skip
    keys = parcel_keys(m, "a1b2", 40.0)
    by_group = dict(zip(GROUPS, keys.groups, strict=True))
    assert by_group["declarant"] == (("declarant:BRK1", ""),)
    assert by_group["transport_mode"] == (("mode:air", ""),)
    assert by_group["attribute"] == (("attr:office=2720", ""),)
    assert by_group["departure"] == (("departure:HK", ""),)
    assert by_group["address"] == (("addr:a1b2", ""),)
    assert by_group["entry_type"] == ()  # not declared: no key
    hs6 = [k for k, _p in by_group["hs"] if k.startswith("hs6:")]
    assert hs6 and all(p.startswith("hs4:") for k, p in by_group["hs"] if k.startswith("hs6:"))
    assert all("|d:HK" in k for k, _p in by_group["hs6_origin_departure"])


def test_rates_back_off_to_the_parent_and_learn_from_examinations() -> None:
    table = RiskTable(prior=10.0)
    hs2, hs4, hs6 = part_id("hs2:61"), part_id("hs4:6109"), part_id("hs6:610910")
    for i in range(200):  # the world: 10 % violations
        table.update([hs2, hs4], i % 10 == 0, 1.0, T0, ["hs2:61", "hs4:6109"])
    g = table.global_rate(T0)
    rate2 = table.rate(hs2, g, T0)[0]
    assert abs(rate2 - 0.1) < 0.01
    unseen, n = table.rate(hs6, rate2, T0)
    assert unseen == rate2 and n == 0  # an unseen code reads as its parent
    for _ in range(50):  # this code: every examination a violation
        table.update([hs6], True, 1.0, T0, ["hs6:610910"])
    learned = table.rate(hs6, rate2, T0)[0]
    assert learned > 0.8
    assert table.strongest(1, T0)[0][0] == "hs6:610910"
    # and it fades: a year later the counts weigh a quarter (half-life 180 days)
    later = table.rate(hs6, rate2, T0 + 365 * DAY_MS)[0]
    assert rate2 < later < learned


def test_features_are_deviations_from_the_global_rate() -> None:
    table = RiskTable()
    m = parcel(declarant="BRK1")
    keys = parcel_keys(m, "a1", 40.0)
    x0 = table.features(keys, 30.0, T0)
    assert x0[0] == 1.0 and x0[-1] == 0.3 and not x0[1:-1].any()  # nothing known yet
    assert table.features(keys, 50.0, T0)[-1] == 0.2  # against the mean score before it
    brk1 = part_id("declarant:BRK1")
    for i in range(100):
        table.update([part_id(f"declarant:OTHER{i}")], False, 1.0, T0)
        table.update([brk1], i % 2 == 0, 1.0, T0)
    x1 = table.features(keys, 30.0, T0)
    assert x1[1] == _logit(table.global_rate(T0))
    j = FIRST_GROUP + GROUPS.index("declarant")
    assert x1[j] > 0.9  # about half violations against a quarter overall
    assert abs(x1[j] - (_logit(table.rate(brk1, table.global_rate(T0), T0)[0])
                        - _logit(table.global_rate(T0)))) < 1e-12  # fmt: skip


def test_the_model_learns_which_feature_predicts() -> None:
    rng = np.random.default_rng(1)
    x = np.zeros((4000, len(FEATURE_NAMES)))
    x[:, 0] = 1.0
    x[:, FIRST_GROUP : FIRST_GROUP + len(GROUPS)] = rng.normal(0, 1, (4000, len(GROUPS)))
    y = (rng.random(4000) < 1 / (1 + np.exp(-(2.0 * x[:, 4] - 2.0)))).astype(float)
    model = OnlineModel(learning_rate=0.05)
    model.train(x, y, np.ones(4000))
    w = model.weights()
    assert w[FEATURE_NAMES[4]] > 1.0 and abs(w[FEATURE_NAMES[6]]) < 0.3
    assert model.trained == 4000


def test_selection_spends_the_capacity_per_hub_and_records_probabilities() -> None:
    rng = random.Random(3)
    scores = np.array([float(i) for i in range(200)])
    hubs = ["A"] * 100 + ["B"] * 100
    chosen, prob = _select(scores, hubs, 0.1, 0.2, rng)
    for hub in ("A", "B"):
        idx = [i for i, h in enumerate(hubs) if h == hub]
        assert sum(1 for i in idx if chosen[i]) == 10
        assert sum(1 for i in idx if chosen[i] == 1) == 8  # the riskiest 8
        assert all(prob[i] == 1.0 for i in sorted(idx, key=lambda i: -scores[i])[:8])
        explored = [i for i in idx if chosen[i] == 2]
        assert len(explored) == 2 and all(abs(prob[i] - 2 / 92) < 1e-12 for i in explored)


def _feed(n: int, days: float) -> tuple[list[RawRecord], dict[str, str | None]]:
    recs, labels = [], {}
    cfg = FeedConfig(parcels=n, seed=4, duration_s=days * 86_400.0)
    for i, (doc, label) in enumerate(generate(cfg)):
        recs.append(RawRecord(doc["manifest_ts_ms"], "m", 0, i, None, orjson.dumps(doc)))
        labels[doc["parcel_id"]] = label
    return recs, labels


def test_outcomes_train_on_the_features_their_parcel_was_scored_with() -> None:
    """Train-serve parity: every row the model trains on is the parcel's feature vector
    at scoring time, and arrives only after the outcome delay."""
    recs, labels = _feed(3000, 4)
    cfg = ProtocolConfig(capacity_pct=5, feedback="all", outcome_delay_ms=DAY_MS)
    run = run_protocol(recs, RS, labels, cfg, keep_features=True)
    assert run.features is not None and run.trained is not None and run.trained
    for pid, x in run.trained:
        assert np.array_equal(x, run.features[pid])
    # the features did move as outcomes arrived: later parcels saw learned rates
    xs = np.array(list(run.features.values()))
    assert np.abs(xs[:, FIRST_GROUP : FIRST_GROUP + len(GROUPS)]).sum() > 0
    first_day = [x for pid, x in run.features.items()
                 if run.periods[run.parcel_ids.index(pid)] == 0]  # fmt: skip
    assert not np.abs(
        np.array(first_day)[:, FIRST_GROUP : FIRST_GROUP + len(GROUPS)]
    ).any()  # nothing known on day 1


def test_the_closed_loop_runs_and_reports_per_period() -> None:
    recs, labels = _feed(3000, 4)
    run = run_protocol(recs, RS, labels, ProtocolConfig(capacity_pct=5))
    figs = figures(run)
    assert len(figs) >= 4 and sum(f.parcels for f in figs) == len(run.parcel_ids)
    assert all(abs(f.examined - 0.05 * f.parcels) <= 0.05 * f.parcels * 0.5 + 4 for f in figs)
    hit_rate, ranking = last_share(figs)
    assert 0.0 <= hit_rate <= 1.0 and 0.0 <= ranking <= 1.0
    assert run.outcomes <= sum(1 for s in run.selected if s)


def test_hidden_risk_adds_fields_and_labels_the_rules_do_not_see() -> None:
    from parcel_stream.hidden_risk import with_hidden_risk

    cfg = FeedConfig(parcels=6000, seed=5, duration_s=4 * 86_400.0)
    plain = list(generate(cfg))
    hidden = list(with_hidden_risk(generate(cfg), cfg))
    assert len(hidden) == len(plain)
    kinds = {label for _doc, label in hidden if label}
    assert {"hidden_hs_origin", "risky_declarant"} <= kinds
    for (doc, label), (orig, orig_label) in zip(hidden, plain, strict=True):
        assert doc["declarant"].startswith("BRK") and doc["transport_mode"] in ("air", "postal")
        assert set(doc["attributes"]) == {"platform", "payment"}
        msgspec.convert(doc, Manifest)  # valid against the contract
        if orig_label:  # the generator's own labels stay
            assert label == orig_label
        # hidden risk changes no value, weight, party or code the rules read
        assert {k: v for k, v in doc.items() if k not in HIDDEN_FIELDS} == orig
    again = list(with_hidden_risk(generate(cfg), cfg))
    assert again == hidden  # deterministic per seed


HIDDEN_FIELDS = ("declarant", "transport_mode", "entry_type", "attributes")


def test_the_declarations_feed_is_valid_and_about_a_fifth_violations() -> None:
    from parcel_stream.declarations import DeclarationsConfig, generate_declarations

    rows = list(generate_declarations(DeclarationsConfig(parcels=5000, seed=3)))
    share = sum(label is not None for _doc, label in rows) / len(rows)
    assert 0.12 < share < 0.35
    times = [doc["manifest_ts_ms"] for doc, _label in rows]
    assert times == sorted(times)
    for doc, _label in rows[:500]:
        m = msgspec.convert(doc, Manifest)
        assert m.declarant and m.entry_type and set(m.attributes) == {"office", "tax_rate"}
    assert rows == list(generate_declarations(DeclarationsConfig(parcels=5000, seed=3)))


def test_value_norms_are_learned_from_every_parcel_and_flag_the_cheap() -> None:
    table = RiskTable(norm_min=20)
    rng = random.Random(2)
    for _ in range(200):  # t-shirts around 60 USD per kg
        m = parcel(items=[{"description": "t-shirt", "hs_code": "6109.10", "quantity": 1,
                           "value": 12.0}], gross_weight_kg=0.2 * rng.uniform(0.8, 1.25))  # fmt: skip
        table.features(parcel_keys(m, "a", 12.0), 0.0, T0)
    cheap = parcel(items=[{"description": "t-shirt", "hs_code": "6109.10", "quantity": 1,
                           "value": 1.0}], gross_weight_kg=0.2)  # fmt: skip
    fair = parcel(items=[{"description": "t-shirt", "hs_code": "6109.10", "quantity": 1,
                          "value": 12.0}], gross_weight_kg=0.2)  # fmt: skip
    assert table.features(parcel_keys(cheap, "a", 1.0), 0.0, T0)[-2] == 5.0  # clipped
    assert abs(table.features(parcel_keys(fair, "a", 12.0), 0.0, T0)[-2]) < 1.0
    other = parcel(items=[{"description": "x", "hs_code": "6109.90", "quantity": 1,
                           "value": 1.0}], gross_weight_kg=0.2)  # fmt: skip
    # an unseen HS6 backs off to its HS4's norm
    assert table.features(parcel_keys(other, "a", 1.0), 0.0, T0)[-2] == 5.0


def test_exploration_where_the_model_is_least_certain_records_its_probabilities() -> None:
    rng = random.Random(5)
    scores = np.linspace(0.0, 1.0, 1000)
    uncertainty = scores * (1 - scores)
    chosen, prob = _select(scores, ["A"] * 1000, 0.1, 0.5, rng, uncertainty)
    rest = [i for i in range(1000) if chosen[i] != 1]
    assert sum(1 for i in range(1000) if chosen[i] == 1) == 50  # the risk half
    assert abs(sum(prob[i] for i in rest) - 50) < 1e-9 and max(prob[i] for i in rest) <= 1.0
    # the most uncertain (scores near 0.5) are far likelier than the near-certain
    assert prob[500] > 20 * prob[1] and prob[1] > 0
    assert 30 <= sum(1 for i in rest if chosen[i] == 2) <= 70


def test_refs_round_trip_exactly_and_refs_stored_as_json_still_read() -> None:
    """A parcel's ref (what its exam result trains on) reads back bit for bit: the ids
    over the whole 64 bits, the features as scored. Refs stored as JSON by earlier
    versions still read."""
    rng = random.Random(5)
    keys = parcel_keys(parcel(), "a" * 16, 42.0)
    x = [rng.uniform(-3, 3) for _ in FEATURE_NAMES]
    for ref in (RiskRef.of(keys, x, 0.05),
                RiskRef([], x, 1.0, [rng.getrandbits(64) for _ in range(30)] + [2**64 - 1])):  # fmt: skip
        raw = encode_ref(ref)
        assert raw[:1] != b"["
        assert decode_ref(raw) == ref
        legacy = msgspec.json.encode(ref)
        assert decode_ref(legacy) == ref
        assert decode_ref(legacy.decode()) == ref
    assert decode_ref(b"") is None and decode_ref(None) is None


def test_refs_encoded_in_columns_read_as_the_refs_they_stand_for() -> None:
    """A batch's review refs, written as MessagePack in one pass (``encode_refs``), read
    back as the struct would: every bit of the features and the propensity, ids over 64
    bits, id lists short and long (the MessagePack array headers)."""
    from parcel_stream.risk import encode_refs

    gen = np.random.default_rng(3)
    x = gen.normal(size=(5, len(FEATURE_NAMES)))
    x[0, 0], x[1, 1], x[2, 2] = -0.0, 1e300, 5e-324
    prop = np.array([1.0, 0.02, 0.5, 1e-9, 1.0])
    lens = [0, 3, 15, 16, 70_000]
    at = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ids = gen.integers(0, 2**63, size=int(at[-1]), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    ids[0] = np.uint64(2**64 - 1)
    raw = encode_refs(x, prop, ids, at)
    assert len(raw) == 5
    for r, got in enumerate(raw):
        want = RiskRef([], x[r].tolist(), float(prop[r]), ids[at[r] : at[r + 1]].tolist())
        assert decode_ref(got) == want
        assert encode_ref(got) == got and encode_ref(want) == got  # what the struct writes
    assert encode_refs(np.zeros((0, len(FEATURE_NAMES))), np.zeros(0), ids[:0], at[:1]) == []


def test_a_model_learned_before_the_rule_group_keeps_its_weights() -> None:
    """A learner state stored before the rules became keys has one weight fewer: its
    weights are kept, the rule group's starts at its prior."""
    from parcel_stream.risk import N_FEATURES, RULE_GROUP, RiskConfig, RiskState

    old = [float(k) for k in range(N_FEATURES - 1)]
    theta = RiskState(theta=old).model(RiskConfig(mode="shadow")).theta.tolist()
    at = FIRST_GROUP + RULE_GROUP
    assert len(theta) == N_FEATURES and theta[at] == 1.0 / len(GROUPS)
    assert theta[:at] + theta[at + 1 :] == old
    assert FEATURE_NAMES[at] == "rule"
