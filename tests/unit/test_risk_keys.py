"""The learned model's keys built in columns (``risk_keys.key_batch``) are the keys
``risk.parcel_keys`` names, and the compiled features over a batch are the reference
features of one parcel at a time."""

from __future__ import annotations

import msgspec
import numpy as np
import orjson

from parcel_stream.currency import USD_PER_UNIT
from parcel_stream.features import address_key, index_shippers
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.hidden_risk import with_hidden_risk
from parcel_stream.model import Manifest
from parcel_stream.pipeline import _key_names
from parcel_stream.risk import (
    GROUPS,
    RULE_GROUP,
    RiskRef,
    RiskTable,
    decode_ref,
    encode_ref,
    explain,
    explain_strongest,
    features_batch,
    key_parts,
    parcel_keys,
    reason_candidates,
    strongest_entries,
    to_entries,
)
from parcel_stream.risk_keys import (
    Entities,
    KeyBatch,
    _mix,
    combine,
    distinct_spans,
    key_batch,
    part_id,
    rule_ids,
    with_rules,
)

T0 = 1_790_000_000_000


def manifests(n: int, seed: int) -> list[Manifest]:
    cfg = FeedConfig(parcels=n, seed=seed, duration_s=3 * 86_400.0, shippers=200)
    out = [msgspec.convert(doc, Manifest) for doc, _ in with_hidden_risk(generate(cfg), cfg)]
    # and the shapes the generator rarely makes: several items of other origins, codes of
    # four digits or too short, transit, sellers, many attributes
    extra = orjson.loads(orjson.dumps(msgspec.to_builtins(out[0])))
    extra.update(parcel_id="X1", transit_countries=["HK", "AE"], origin_country="CN",
                 seller={"id": "S|9", "marketplace": "shop"},
                 attributes={"b": "2|x", "a": "1", "office": "OFF 7"},
                 items=[{"description": "a", "hs_code": "6109", "quantity": 1, "value": 3.0},
                        {"description": "b", "hs_code": "2933.99", "quantity": 2, "value": 9.0,
                         "origin_country": "IN"},
                        {"description": "c", "hs_code": "", "quantity": 1, "value": 1.0}])  # fmt: skip
    return [*out, msgspec.convert(extra, Manifest)]


def columns(ms: list[Manifest]) -> tuple[list[str], np.ndarray]:
    addresses = [address_key(m.consignee.address) for m in ms]
    value = np.array([m.declared_value * USD_PER_UNIT[m.currency] for m in ms])
    return addresses, value


def rules_fired(
    rng: np.random.Generator, n: int, rules: int, share: tuple[float, float], second: int
) -> tuple[np.ndarray, list[str], list[list[str]]]:
    """Which of ``rules`` rules fired per parcel: rule 0 for a ``share[0]`` of the parcels,
    rule ``second`` for a ``share[1]``: the masks, the codes, each parcel's codes."""
    masks = (rng.random(n) < share[0]).astype(np.int64) | (rng.random(n) < share[1]) << second
    codes = [f"R{b}" for b in range(rules)]
    return masks, codes, [[c for b, c in enumerate(codes) if int(mk) >> b & 1]
                          for mk in masks.tolist()]  # fmt: skip


def test_the_compiled_mix_is_the_python_one() -> None:
    rng = np.random.default_rng(0)
    for a, b in rng.integers(0, 2**63, (200, 2), dtype=np.uint64).tolist():
        assert combine(a, b) == int(_mix(np.uint64(a), np.uint64(b)))
    assert combine(part_id("hs6:293399"), part_id("o:IN")) != combine(
        part_id("o:IN"), part_id("hs6:293399")
    )


def test_keys_in_columns_are_the_named_keys() -> None:
    ms = manifests(1500, 3)
    addresses, value = columns(ms)
    kb = key_batch(ms, addresses, value)
    idx = index_shippers(ms)  # the same keys from the batch's index of its entities
    entities = Entities(idx.ids, idx.parcel_shipper, idx.sellers, idx.parcel_seller,
                        idx.addresses, idx.parcel_address)  # fmt: skip
    other = key_batch(ms, None, value, entities=entities)
    for name in ("start", "group", "ids", "parent", "norm_ids", "log_usd_per_kg"):
        assert np.array_equal(getattr(kb, name), getattr(other, name)), name
    named = [parcel_keys(m, a, v) for m, a, v in zip(ms, addresses, value.tolist(), strict=True)]
    ref = to_entries(named)
    assert len(kb.start) == len(ms) + 1
    for p in range(len(ms)):

        def triples(b: object, p: int = p) -> set[tuple[int, int, int]]:
            s, g, i, par = b.start, b.group, b.ids, b.parent  # type: ignore[attr-defined]
            return {(int(g[e]), int(i[e]), int(i[par[e]]) if par[e] >= 0 else 0)
                    for e in range(s[p], s[p + 1])}  # fmt: skip

        assert triples(kb) == triples(ref), ms[p].parcel_id
        # parents come first within a parcel
        for e in range(kb.start[p], kb.start[p + 1]):
            assert kb.parent[e] < e
    x1 = next(k for m, k in zip(ms, named, strict=True) if m.parcel_id == "X1")
    assert "attr:b=2|x" in x1.all_keys() and "seller:S|9@shop" in x1.all_keys()
    assert "o:IN|hs4:2933" in x1.all_keys() and "hs4:6109|o:CN|d:AE" in x1.all_keys()


def test_compiled_features_are_the_reference_features() -> None:
    ms = manifests(3000, 5)
    addresses, value = columns(ms)
    named = [parcel_keys(m, a, v) for m, a, v in zip(ms, addresses, value.tolist(), strict=True)]
    table = RiskTable()
    rng = np.random.default_rng(2)
    for k, m in zip(named[:2000], ms[:2000], strict=True):  # outcomes of the first parcels
        keys = k.named()
        table.update(list(keys.values()), bool(rng.random() < 0.2), float(rng.uniform(1, 5)),
                     float(m.manifest_ts_ms), list(keys))  # fmt: skip
    scores = rng.uniform(0, 100, len(ms))
    table.track_scores = False  # a live view: no running mean, no norms learned
    table.score_mean = 41.5
    later = np.array([float(m.manifest_ts_ms) + 30 * 86_400_000 for m in ms])
    want = np.array([table.features(k, s, t)
                     for k, s, t in zip(named, scores.tolist(), later.tolist(), strict=True)])  # fmt: skip
    kb = key_batch(ms, addresses, value)
    uniq, pos = kb.unique()
    got = features_batch(kb, pos, table.rows(uniq), table.total, later, scores,
                         np.full(len(ms), 41.5), np.zeros(len(ms)), table.half_life_ms,
                         table.prior)  # fmt: skip
    assert got.shape == want.shape and np.abs(want[:, 2:-2]).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_value_norms_in_columns_are_the_reference_norms() -> None:
    ms = manifests(3000, 7)
    addresses, value = columns(ms)
    named = [parcel_keys(m, a, v) for m, a, v in zip(ms, addresses, value.tolist(), strict=True)]
    ts = np.array([float(m.manifest_ts_ms) for m in ms])
    ref = RiskTable(norm_min=5.0)
    want = np.array([ref._undervalued(k, t) for k, t in zip(named, ts.tolist(), strict=True)])
    kb = key_batch(ms, addresses, value)
    np.testing.assert_allclose(kb.log_usd_per_kg, [k.log_usd_per_kg for k in named], rtol=1e-15)
    got_table = RiskTable(norm_min=5.0)
    got = np.concatenate([  # in batches, the norms carried between them
        got_table.undervalued_batch(
            KeyBatch(kb.start, kb.group, kb.ids, kb.parent, kb.norm_ids[lo : lo + 700],
                     kb.log_usd_per_kg[lo : lo + 700]), ts[lo : lo + 700])
        for lo in range(0, len(ms), 700)])  # fmt: skip
    assert (want != 0).sum() > 1000  # most parcels have a norm to be measured against
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert set(got_table.norms) == set(ref.norms)
    for k, row in ref.norms.items():
        np.testing.assert_allclose(got_table.norms[k], row, rtol=1e-9)


def test_the_route_and_hs_caches_start_afresh_between_batches_only(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import parcel_stream.risk_keys as rk

    ms = manifests(300, 4)
    addresses, value = columns(ms)
    want = key_batch(ms, addresses, value)
    monkeypatch.setattr(rk, "_CACHE_MAX", 3)  # over it within the batch, and before the next
    for _ in range(2):
        got = key_batch(ms, addresses, value)
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.group, want.group)


def test_distinct_spans_are_each_spans_first_met_ids() -> None:
    rng = np.random.default_rng(4)
    ids = rng.integers(1, 12, size=400).astype(np.uint64)  # many repeats within a span
    cuts = np.sort(rng.choice(np.arange(1, 400), size=60, replace=False))
    lo = np.concatenate([[0], cuts]).astype(np.int64)
    hi = np.concatenate([cuts, [400]]).astype(np.int64)
    pick = rng.permutation(len(lo))[:40]  # some spans, in any order, one empty
    lo, hi = lo[pick], hi[pick]
    hi[0] = lo[0]
    flat, at = distinct_spans(ids, lo, hi)
    for k in range(len(lo)):
        want = list(dict.fromkeys(ids[lo[k] : hi[k]].tolist()))
        assert flat[at[k] : at[k + 1]].tolist() == want


def test_the_rules_that_fired_are_keys_in_columns_with_the_reference_features() -> None:
    """The rules that fired for a parcel are keys of a group of their own ("rule:CODE"),
    added to the batch's keys once the batch is scored (``with_rules``): the same keys and
    the same features as the named keys of one parcel at a time."""
    ms = manifests(2500, 11)
    addresses, value = columns(ms)
    rng = np.random.default_rng(4)
    masks = np.zeros(len(ms), dtype=np.int64)
    for b in (0, 3, 7, 39):  # some parcels none, some several, bit 39 included
        masks |= (rng.random(len(ms)) < 0.3).astype(np.int64) << b
    masks[-1] = -(2**63)  # the top bit of the mask: rule 63 (of 64)
    codes64 = [f"R{b}" for b in range(64)]
    named = [parcel_keys(m, a, v, [c for b, c in enumerate(codes64) if int(mk) >> b & 1])
             for m, a, v, mk in zip(ms, addresses, value.tolist(), masks.tolist(), strict=True)]  # fmt: skip
    assert "rule:R63" in named[-1].all_keys() and "rule:R3" not in named[-1].all_keys()
    table = RiskTable()
    for k, m in zip(named[:1500], ms[:1500], strict=True):
        keys = k.named()
        table.update(list(keys.values()), bool(rng.random() < 0.25), 1.0,
                     float(m.manifest_ts_ms), list(keys))  # fmt: skip
    table.track_scores = False
    table.score_mean = 30.0
    later = np.array([float(m.manifest_ts_ms) + 86_400_000 for m in ms])
    scores = rng.uniform(0, 100, len(ms))
    want = np.array([table.features(k, s, t)
                     for k, s, t in zip(named, scores.tolist(), later.tolist(), strict=True)])  # fmt: skip
    kb = key_batch(ms, addresses, value)
    uniq, pos = kb.unique()
    ids = rule_ids(codes64)
    uniq = np.concatenate([uniq, ids])  # the rules' counts read after the batch's keys
    merged, rows_at = with_rules(kb, pos, masks, ids, len(uniq) - len(ids))
    for p in (0, 1, len(ms) - 1):
        got_ids = set(merged.ids[merged.start[p] : merged.start[p + 1]].tolist())
        assert got_ids == set(named[p].all_ids())
        for e in range(merged.start[p], merged.start[p + 1]):
            assert merged.parent[e] < e and uniq[rows_at[e]] == merged.ids[e]
    got = features_batch(merged, rows_at, table.rows(uniq), table.total, later, scores,
                         np.full(len(ms), 30.0), np.zeros(len(ms)), table.half_life_ms,
                         table.prior)  # fmt: skip
    assert np.abs(want[:, 2 + RULE_GROUP]).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # no rule fired: the keys as they were
    same, same_pos = with_rules(kb, pos, np.zeros(len(ms), dtype=np.int64), ids, len(uniq))
    assert same is kb and same_pos is pos


def test_the_strongest_keys_in_columns_are_the_reasons_explain_gives() -> None:
    """A held parcel's learned reasons from its entries' rates (``strongest_entries``, the
    worker's pass over the held parcels) are those ``explain`` gives from its named keys,
    ties included: the attributes, whose entries keep the manifest's order, are chosen
    among equal rates in the order of their names."""
    ms = manifests(2500, 12)
    addresses, value = columns(ms)
    rng = np.random.default_rng(8)
    masks, codes, fired = rules_fired(rng, len(ms), 8, (0.4, 0.3), 5)
    parts = [key_parts(m, a, v, f)
             for m, a, v, f in zip(ms, addresses, value.tolist(), fired, strict=True)]  # fmt: skip
    named = [parcel_keys(m, a, v, f)
             for m, a, v, f in zip(ms, addresses, value.tolist(), fired, strict=True)]  # fmt: skip
    table = RiskTable()
    for k, m in zip(named[:300], ms[:300], strict=True):  # many keys of the rest unseen
        keys = k.named()
        table.update(list(keys.values()), bool(rng.random() < 0.4), 1.0,
                     float(m.manifest_ts_ms), list(keys))  # fmt: skip
    # the last parcel's three attributes (listed b, a, office): the same counts, all risky
    attrs = [k for k in named[-1].all_keys() if k.startswith("attr:")]
    assert attrs == ["attr:a=1", "attr:b=2|x", "attr:office=OFF 7"]
    for _ in range(9):
        table.update([part_id(k) for k in attrs], True, 1.0, float(ms[-1].manifest_ts_ms), attrs)
    # and its HS 2933.99 unseen under a risky HS 2933: the two rates tie, the first shows
    table.counts.pop(part_id("hs6:293399"), None)
    for _ in range(9):
        table.update([part_id("hs4:2933")], True, 1.0, float(ms[-1].manifest_ts_ms), ["hs4:2933"])
    later = np.array([float(m.manifest_ts_ms) + 86_400_000 for m in ms])
    kb = key_batch(ms, addresses, value)
    uniq, pos = kb.unique()
    ids = rule_ids(codes)
    uniq = np.concatenate([uniq, ids])
    merged, rows_at = with_rules(kb, pos, masks, ids, len(uniq) - len(ids))
    rows = table.rows(uniq)
    x = features_batch(merged, rows_at, rows, table.total, later, np.zeros(len(ms)),
                       np.zeros(len(ms)), np.zeros(len(ms)), table.half_life_ms, table.prior)  # fmt: skip
    theta = np.asarray(rng.uniform(-0.2, 1.0, x.shape[1]), dtype=np.float64)
    theta[2 + GROUPS.index("hs")] = theta[2 + GROUPS.index("attribute")] = 1.0
    held = np.arange(len(ms))
    best, b_rate, b_exams, rate = strongest_entries(merged, rows_at, rows, table.total, later,
                                                    held, table.half_life_ms, table.prior)  # fmt: skip
    candidates = reason_candidates(best, b_rate, b_exams, x[held], theta)
    shown = 0
    for q, p in enumerate(held.tolist()):
        row = x[p]
        want = explain(table, named[p], row, theta, float(later[p]), 5)
        name_of = _key_names(parts[p], merged, rate, ms[p], p)
        got = explain_strongest(candidates[q], row.tolist(), theta.tolist(), name_of, 5)
        assert got == want
        shown += len(got)
    assert shown > len(held)
    assert {"attr:a=1", "hs4:2933"} <= {r[0] for r in want}  # the last parcel: ties' first


def test_a_held_parcels_ref_names_its_keys_from_its_parts() -> None:
    """A held parcel's ref keeps its keys as the worker's ids (each distinct key of its
    entries, the rules that fired included) and what names them (``KeyParts``): once
    stored and read back, it names every key as ``parcel_keys`` does, and each group's
    keys are named one at a time as the learned reasons name them."""
    ms = manifests(800, 14)
    addresses, value = columns(ms)
    masks, codes, fired = rules_fired(np.random.default_rng(3), len(ms), 5, (0.5, 0.2), 3)
    kb = key_batch(ms, addresses, value)
    uniq, pos = kb.unique()
    ids = rule_ids(codes)
    merged, _rows = with_rules(kb, pos, masks, ids, len(uniq))
    flat, at = distinct_spans(merged.ids, merged.start[:-1], merged.start[1:])
    for p, m in enumerate(ms):
        want = parcel_keys(m, addresses[p], float(value[p]), fired[p]).named()
        parts = key_parts(m, addresses[p], float(value[p]), fired[p])
        ref = decode_ref(encode_ref(RiskRef([], [0.5], 0.2, flat[at[p] : at[p + 1]].tolist(),
                                            parts)))  # fmt: skip
        assert ref is not None and ref.parts == parts
        assert sorted(zip(ref.ids, ref.names(), strict=True)) == sorted(
            (i, k) for k, i in want.items()
        )
        for g in GROUPS:
            for (key, parent), (kid, pid) in zip(*parts.group(g), strict=True):
                assert parts.name_of(g, kid) == key and want[key] == kid
                if parent:
                    assert parts.name_of(g, pid) == parent
    # refs stored with their names read as before
    old = RiskRef(["hs2:29", "o:IN"], [0.5], 1.0, [part_id("hs2:29"), part_id("o:IN")])
    assert decode_ref(encode_ref(old)) == old and old.names() == ["hs2:29", "o:IN"]
