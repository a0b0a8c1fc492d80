"""Decision digests: outputs of an applied record rebuilt byte for byte."""

import dataclasses

import numpy as np
import orjson

from parcel_stream.generate import FeedConfig, generate
from parcel_stream.learner import LearnerConfig, LearnerState
from parcel_stream.outbox import rebuild
from parcel_stream.parse import InRecord, Limits
from parcel_stream.pipeline import prepare, read_batch, score_prepared
from parcel_stream.reputation import InMemoryStore, ReputationUpdate
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings

RS = default_ruleset(Settings())
NOW = 1_790_000_100_000


def records() -> list[InRecord]:
    docs = [orjson.dumps(d) for d, _ in generate(FeedConfig(parcels=1200, seed=5, shippers=40))]
    recs = [InRecord(b"\n".join(docs[i : i + 300]), "m", 0, i // 300) for i in range(0, 600, 300)]
    recs += [InRecord(d, "m", 1, n) for n, d in enumerate(docs[600:])]
    recs.append(InRecord(b'{"parcel_id": "BROKEN", ', "m", 1, 600))
    return recs


def lines(out: list[tuple[bytes | None, bytes]]) -> list[bytes]:
    return sorted(x for _k, v in out for x in v.split(b"\n"))


def test_rebuilt_outputs_equal_the_first_ones() -> None:
    store = InMemoryStore()
    recs = records()
    batch = read_batch(prepare(recs, Limits(), NOW, RS.split_min_usd), store)
    state = LearnerState(version=3, theta={"NEW_SHIPPER": 0.7})
    adjust = state.adjustments(LearnerConfig(mode="on"), [r.code for r in RS.rules])
    first = score_prepared(batch, RS, NOW, adjust=adjust, learner_version=3)
    assert len(first.update.outbox) == len(recs)
    assert store.apply(first.update)
    wanted = [((r.topic, r.partition), r.offset) for r in recs]
    again, resent, skipped = rebuild(recs, store.read_outbox(wanted), Limits())
    assert (resent, skipped) == (len(recs), 0)
    assert lines(again.decisions) == lines(first.outputs.decisions)
    assert sorted(again.holds) == sorted(first.outputs.holds) and first.outputs.holds
    assert again.rejections == first.outputs.rejections and len(again.rejections) == 1
    # the records' digests go once their outputs are acknowledged
    prune = {("m", 0): 1, ("m", 1): 300}
    assert store.apply(ReputationUpdate({}, prune=prune))
    left, resent, skipped = rebuild(recs, store.read_outbox(wanted), Limits())
    assert (resent, skipped) == (len(recs) - 303, 303)


def test_records_below_the_watermark_get_no_new_digest() -> None:
    store = InMemoryStore()
    recs = records()
    prep = prepare(recs, Limits(), NOW, RS.split_min_usd)
    assert store.apply(score_prepared(read_batch(prep, store), RS, NOW).update)
    again = score_prepared(read_batch(prep, store), RS, NOW)
    assert again.update.outbox == [] and len(again.update.shippers) == 0


def test_rebuilt_outputs_of_repeats_and_amendments_equal_the_first_ones() -> None:
    from tests.unit.test_same_feed import feed

    store = InMemoryStore()
    recs = feed(9, 600)
    first = score_prepared(
        read_batch(prepare(recs, Limits(), NOW, RS.split_min_usd), store), RS, NOW
    )
    assert first.repeats and first.amendments
    assert store.apply(first.update)
    wanted = [((r.topic, r.partition), r.offset) for r in recs]
    again, resent, skipped = rebuild(recs, store.read_outbox(wanted), Limits())
    assert (resent, skipped) == (len(recs), 0)
    assert lines(again.decisions) == lines(first.outputs.decisions)
    assert sorted(again.holds) == sorted(first.outputs.holds)


def test_rule_features_built_with_the_parse_score_as_features_built_after_it() -> None:
    """The worker builds its next batch's rule features with its parse, while Redis applies
    the current one (``prepare(..., ruleset=)``). Scored with that rule set, its outputs
    are those of features built when it is scored, also when it is scored again (a
    conflict's retry); scored with another rule set (swapped meanwhile), its features are
    built again for that one."""
    recs = records()
    # another rule set with other features: no HS heading is risky (HIGH_RISK_HS)
    other = dataclasses.replace(RS, heading_risk=np.zeros_like(RS.heading_risk))
    ahead = prepare(recs, Limits(), NOW, RS.split_min_usd, ruleset=RS)
    assert ahead.features is not None and ahead.features_of is RS
    for rs in (RS, other):
        want = score_prepared(read_batch(prepare(recs, Limits(), NOW, rs.split_min_usd),
                                         InMemoryStore()), rs, NOW)  # fmt: skip
        for _ in range(2):
            got = score_prepared(read_batch(ahead, InMemoryStore()), rs, NOW)
            assert lines(got.outputs.decisions) == lines(want.outputs.decisions)
            assert sorted(got.outputs.holds) == sorted(want.outputs.holds)
    assert lines(want.outputs.decisions) != lines(
        score_prepared(read_batch(ahead, InMemoryStore()), RS, NOW).outputs.decisions
    )  # the two rule sets decide differently
