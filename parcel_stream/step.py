"""The batch step, written once for the worker, the backtest and the in-memory runner.

Read the remembered parcels and the state of the batch's entities; leave out the records
already applied (a redelivery after a crash or a rebalance), whose outputs come back from
their stored digests; score the rest; apply the update with compare-and-set; when the
state moved meanwhile, back off and start over on the state as it is now.

The step does no I/O itself: it is a generator that yields each store call it needs
(:class:`Call`) and receives the reply. :func:`run_step` answers from a synchronous store
(tests, backtests); the worker answers from the async Redis store, with its retries,
backoff and metrics around each call (``adapters/worker.py``). So the order of the calls,
the redelivery rule and the retry rule are the same everywhere, and the step is tested
on the in-memory twin (``tests/unit/test_batch_step.py``).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson

from parcel_stream.decide import Outputs
from parcel_stream.features import Combos, ShipperIndex
from parcel_stream.outbox import rebuild
from parcel_stream.parse import InRecord, Limits
from parcel_stream.pipeline import (
    DEFAULT_STATE,
    F64,
    Batch,
    BatchResult,
    Norms,
    Prepared,
    RiskInput,
    StateConfig,
    partition_index,
    prepare,
    recognise,
    risk_keys,
    score_prepared,
)
from parcel_stream.reputation import InMemoryStore, Partition, ReputationUpdate
from parcel_stream.risk import (
    N_FEATURES,
    OnlineModel,
    RiskConfig,
    RiskState,
    encode_refs,
    norm_slots,
    strongest_entries,
    track_capacity,
)
from parcel_stream.risk_keys import KeyBatch, distinct_spans, rule_ids, with_rules
from parcel_stream.rules import RuleSet
from parcel_stream.sequence import StoredState
from parcel_stream.state import StateStore


@dataclass(frozen=True, slots=True)
class Call:
    """A store call the step needs: ``op`` is a method of the store contract
    (``state.StateStore``), or ``"backoff"``: the write lost a race, wait before the
    next attempt (``args`` = (attempt,))."""

    op: str
    args: tuple[Any, ...] = ()


@dataclass(slots=True)
class StepResult:
    result: BatchResult  # the scored records (none when all were applied before)
    outputs: Outputs  # every output to produce: the scored and the replayed records'
    fresh: int  # records scored
    resent: int = 0  # records applied before whose outputs came back from their digests
    skipped: int = 0  # records applied before whose outputs were acknowledged already
    attempts: int = 1


Step = Generator[Call, Any, StepResult]


@dataclass(frozen=True, slots=True)
class EarlyRead:
    """A batch's state read made ahead of its turn, both calls at once: its remembered
    parcels and the stored state of ``index``'s entities (not yet those of amended
    parcels' stored originals, which the remembered parcels name)."""

    index: ShipperIndex
    combos: Combos
    remembered: dict[str, bytes]
    stored: StoredState
    watermarks: dict[Partition, int]


def resume_read(prep: Prepared, early: EarlyRead) -> Generator[Call, Any, Batch]:
    """``read_state`` from an early read: the entities amended parcels add to the index,
    when there are, are read now (their state and the rest's, again)."""
    prep, classified = recognise(prep, early.remembered)
    if prep.shippers is early.index:
        return Batch(prep, classified, early.stored, early.watermarks, early.combos)
    combos = Combos.of(prep.shippers)
    stored, marks = yield Call("read", (prep.shippers, prep.partitions, combos))
    return Batch(prep, classified, stored, marks, combos)


def read_state(prep: Prepared) -> Generator[Call, Any, Batch]:
    """A prepared batch's state read: its remembered parcels, then its entities' state."""
    remembered = yield Call("read_parcels", (prep.parcel_ids,))
    prep, classified = recognise(prep, remembered)
    combos = Combos.of(prep.shippers)
    stored, marks = yield Call("read", (prep.shippers, prep.partitions, combos))
    return Batch(prep, classified, stored, marks, combos)


def batch_step(
    records: list[InRecord],
    ruleset: RuleSet,
    limits: Limits,
    now_ms: int,
    encode: bool = True,
    adjust: F64 | None = None,
    learner_version: int = 0,
    config: StateConfig = DEFAULT_STATE,
    prune: dict[Partition, int] | None = None,
    risk: tuple[RiskConfig, RiskState] | None = None,
    prepared: Prepared | None = None,
    decisions: str = "lines",
    read: EarlyRead | None = None,
) -> Step:
    """One batch, start to end (see the module's docstring). ``prune``: outputs produced
    up to these offsets, whose digests go with this batch's update. ``risk``: the learned
    model's config and state (from the learner state), when it is not off: the batch's
    keys' counts are read after its state, and its parcels scored with them.
    ``prepared``: these records already parsed (:func:`prepare`, a pure function of the
    records, the limits, ``now_ms`` and the split threshold), for every attempt.
    ``decisions``: the decisions records' form (``decide.DECISIONS_FORMATS``). ``read``:
    ``prepared``'s state read, made already (``EarlyRead``), for the first attempt."""
    attempt = 0
    while True:
        attempt += 1
        prep = prepared if prepared is not None else prepare(
            records, limits, now_ms, ruleset.split_min_usd)  # fmt: skip
        if attempt == 1 and read is not None:
            batch = yield from resume_read(prep, read)
        else:
            batch = yield from read_state(prep)
        marks = batch.watermarks

        def applied(r: InRecord, marks: dict[Partition, int] = marks) -> bool:
            return r.offset <= marks.get((r.topic, r.partition), -1)

        old = [r for r in records if applied(r)]
        replayed, resent, skipped = Outputs(), 0, 0
        fresh = records
        if old:
            wanted = [((r.topic, r.partition), r.offset) for r in old]
            digests = yield Call("read_outbox", (wanted,))
            replayed, resent, skipped = rebuild(old, digests, limits, decisions)
            fresh = [r for r in records if not applied(r)]
            batch = yield from read_state(prepare(fresh, limits, now_ms, ruleset.split_min_usd))
        risk_in = None
        if risk is not None and risk[0].scores:
            # computed with the parse, or now (an amendment's stored entities, appended
            # to the index, change no parcel's keys)
            keys, value_usd = batch.prep.keys or risk_keys(batch.prep)
            uniq, pos = keys.unique()
            rules = rule_ids([r.code for r in ruleset.rules])  # their counts too, read last
            uniq = np.concatenate([uniq, rules])
            rows = yield Call("read_risk", (uniq,))
            slots, per_part = norm_slots(keys.norm_ids, partition_index(batch.prep))
            learned_norms = {batch.prep.partitions[p]: ids for p, ids in per_part}
            got = yield Call("read_norms", (learned_norms,))
            norms = Norms(slots, [(batch.prep.partitions[p], ids) for p, ids in per_part],
                          np.concatenate([got[batch.prep.partitions[p]] for p, _ in per_part])
                          if per_part else np.zeros((0, 4)))  # fmt: skip
            lanes = {}
            if risk[0].decides and risk[0].capacity_pct > 0:
                lanes = yield Call("read_lanes", (batch.prep.partitions,))
            risk_in = RiskInput(risk[0], risk[1], keys, uniq, pos, rows, value_usd, lanes, norms,
                                rules)  # fmt: skip
        result = score_prepared(batch, ruleset, now_ms, encode, adjust, learner_version, config,
                                risk_in, decisions)  # fmt: skip
        update = result.update
        if prune:
            update = replace(update, prune=prune)
        if not fresh:  # nothing to write but the pruning
            update = ReputationUpdate({}, prune=prune or {})
        if (yield Call("apply", (update,))):
            outputs = result.outputs
            outputs.decisions += replayed.decisions
            outputs.holds += replayed.holds
            outputs.rejections += replayed.rejections
            return StepResult(result, outputs, len(fresh), resent, skipped, attempt)
        # A watermark moved (another worker applied some of these records meanwhile: a
        # rebalance), or a version (exam results, another partition's worker touched the
        # same shipper), or a cluster shard is held by another batch: start over.
        yield Call("backoff", (attempt,))


def run_step(step: Step, store: StateStore, max_attempts: int = 3) -> StepResult:
    """Drive ``step`` against a synchronous store; gives up after ``max_attempts`` writes
    in a row lost a race (with one writer per store that never happens)."""
    reply: Any = None
    try:
        call = next(step)
        while True:
            if call.op == "backoff":
                if call.args[0] >= max_attempts:
                    raise RuntimeError(
                        f"state conflict {max_attempts} times in a row: is another writer using it?"
                    )
                reply = None
            else:
                reply = getattr(store, call.op)(*call.args)
            call = step.send(reply)
    except StopIteration as done:
        out: StepResult = done.value
        return out


def run_sync(
    records: list[InRecord],
    store: StateStore,
    ruleset: RuleSet,
    limits: Limits,
    now_ms: int,
    encode: bool = True,
    adjust: F64 | None = None,
    learner_version: int = 0,
    config: StateConfig = DEFAULT_STATE,
    risk: tuple[RiskConfig, RiskState] | None = None,
    prepared: Prepared | None = None,
    decisions: str = "lines",
) -> BatchResult:
    """The batch step against a synchronous store (tests, backtests); the outputs include
    those of records applied before (from their digests). ``prepared``, ``decisions``: as
    for :func:`batch_step`."""
    step = batch_step(records, ruleset, limits, now_ms, encode, adjust, learner_version, config,
                      risk=risk, prepared=prepared, decisions=decisions)  # fmt: skip
    return run_step(step, store).result


def run_in_memory(
    records: list[InRecord],
    store: InMemoryStore,
    ruleset: RuleSet,
    limits: Limits,
    now_ms: int,
    encode: bool = True,
    adjust: F64 | None = None,
    learner_version: int = 0,
) -> BatchResult:
    """The batch step against an in-memory store (its own windows)."""
    config = StateConfig(store.window_ms, store.half_life_ms)
    return run_sync(records, store, ruleset, limits, now_ms, encode, adjust, learner_version,
                    config)  # fmt: skip


def warm_up_scoring(ruleset: RuleSet, risk: RiskConfig | None = None) -> None:
    """Compile (or load from the cache) every compiled function of the batch step before
    the first batch arrives: a few generated parcels through the step against an
    in-memory store, with the learned model when it scores, and its counts' copy. Loading
    them lazily cost the first batches about 0.4 s (``benchmarks/RESULTS.md``)."""
    from parcel_stream.adapters.risk_replica import RiskReplica
    from parcel_stream.generate import FeedConfig, generate
    from parcel_stream.kernels import warm_up

    warm_up(ruleset)
    docs = [orjson.dumps(d) for d, _ in generate(FeedConfig(parcels=8, seed=1))]
    records = [InRecord(b"\n".join(docs), "warm-up", 0, 0, None, 0, b"application/x-ndjson")]
    now = max(orjson.loads(d)["manifest_ts_ms"] for d in docs) + 1
    model = (risk, RiskState()) if risk is not None and risk.scores else None
    run_sync(records, InMemoryStore(), ruleset, Limits(), now, risk=model)
    if model is not None:
        replica = RiskReplica()
        ids = np.array([3, 5], dtype=np.uint64)
        replica.load(ids, np.ones((2, 3)), 0)
        replica.apply(ids[:1], np.full((1, 3), np.nan), 1)
        replica.lookup(ids)
        distinct_spans(ids, np.zeros(1, dtype=np.int64), np.full(1, 2, dtype=np.int64))
        one = np.zeros(2, dtype=np.int64)
        kb = KeyBatch(np.array([0, 2]), one, ids, np.full(2, -1), np.zeros((1, 3), np.uint64),
                      np.zeros(1))  # fmt: skip
        with_rules(kb, one, np.ones(1, dtype=np.int64), ids, 2)
        encode_refs(np.zeros((1, 2)), np.ones(1), ids, np.array([0, 2], dtype=np.int64))
        # what the few parcels above may not reach: a held parcel's reasons, the lanes by
        # capacity, training on an exam result
        parcel = np.zeros(1, dtype=np.int64)
        strongest_entries(kb, one, np.ones((2, 3)), [1.0, 0.5, 0.0], np.zeros(1), parcel, 1.0,
                          1.0)  # fmt: skip
        track_capacity(np.zeros(1), parcel, np.zeros(1, dtype=np.bool_), np.zeros(1), 0.05, 0.01)
        OnlineModel().train(np.zeros((1, N_FEATURES)), np.zeros(1), np.ones(1))
