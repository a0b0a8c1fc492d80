"""The batch step with its I/O: read reputation, score, produce outputs, update reputation.

The caller (the Faust agent) acks the batch's events only after :meth:`handle` returns,
that is after every output has been acknowledged by the broker and the reputation update
has been applied. Failures of Redis or of producing are retried with backoff (the worker
stops consuming meanwhile); nothing is acked that was not finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

from redis.exceptions import RedisError

from parcel_stream.adapters.metrics import WorkerMetrics
from parcel_stream.adapters.rules_watch import RuleSetWatcher
from parcel_stream.adapters.sinks import SendFn, output_sinks
from parcel_stream.decide import LANES, Outputs, encode_rejection, hold_reason_counts
from parcel_stream.exams import applied_flags, exam_step, parse_exam_records, trace, trains
from parcel_stream.features import Combos
from parcel_stream.kernels import warm_up
from parcel_stream.learner import LearnerCache
from parcel_stream.parse import InRecord, Limits, ParsedBatch, parse_batch
from parcel_stream.pipeline import BatchResult, Prepared, prepare
from parcel_stream.reputation import ExamDelta, Partition
from parcel_stream.risk import RiskState
from parcel_stream.rules import RuleSet, RuleSetError
from parcel_stream.settings import Settings
from parcel_stream.state import AsyncStateStore
from parcel_stream.step import EarlyRead, StepResult, batch_step

log = logging.getLogger("parcel_stream.worker")
T = TypeVar("T")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Backoff:
    first_s: float = 0.1
    max_s: float = 5.0
    current_s: float = 0.0

    async def wait(self) -> None:
        self.current_s = min(self.max_s, self.current_s * 2 if self.current_s else self.first_s)
        await asyncio.sleep(self.current_s)

    def reset(self) -> None:
        self.current_s = 0.0


class BatchProcessor:
    def __init__(
        self,
        settings: Settings,
        ruleset: RuleSet,
        store: AsyncStateStore,
        send: SendFn,
        metrics: WorkerMetrics,
    ) -> None:
        self.settings = settings
        self.ruleset = ruleset
        self.store = store
        self.send = send
        self.sinks = output_sinks(settings)
        self.metrics = metrics
        self.limits = Limits(settings.max_record_bytes, settings.max_parcels_per_record)
        self.watcher = RuleSetWatcher(settings, ruleset)
        metrics.ruleset.info({"version": ruleset.version})
        self.learner_cfg = settings.learner_config()
        self.risk_cfg = settings.risk_config()
        self.state_config = settings.state_config()
        self.learner = LearnerCache()
        # per input partition: outputs acknowledged up to this offset (digests to delete)
        self.pending_prune: dict[Partition, int] = {}
        # per input partition: the next offset to process (for the lag metric)
        self.positions: dict[Partition, int] = {}
        self.applied: dict[Partition, int] = {}  # last offset applied, per partition
        # the next batch, parsed while Redis applied the one before: (its records, their
        # parse, its decision time, the split threshold it was parsed with)
        self._ahead: tuple[list[InRecord], Prepared, int, float | None] | None = None
        # that batch's state read, made as soon as the one before was applied: (the parse
        # it reads for, the read)
        self._reading: tuple[Prepared, asyncio.Future[EarlyRead]] | None = None
        metrics.learner_applied.set(int(self.learner_cfg.adjusts))

    async def refresh_learner(self) -> None:
        """Between batches, at most every ``learner_refresh_s``: fetch the learner state.
        A failure keeps the state held (the scoring path retries Redis on its own)."""
        if not trains(self.learner_cfg, self.risk_cfg):
            return
        now = time.monotonic()
        if now - self.learner.fetched_at < self.settings.learner_refresh_s:
            return
        self.learner.fetched_at = now
        try:
            state = await self.store.read_learner()
        except (RedisError, OSError) as exc:
            self._redis_failed("learner read", exc)
            return
        if state.version != self.learner.state.version:
            log.info("learner state version %d (mode %s)", state.version, self.learner_cfg.mode)
        self.learner.state = state
        self.metrics.learner_version.set(state.version)
        points = state.points(self.learner_cfg).values()
        self.metrics.learner_max_adjust.set(max((abs(p) for p in points), default=0.0))

    def maybe_reload(self) -> None:
        """Between batches: switch to a changed rule-set file if it is valid."""
        try:
            new = self.watcher.poll()
        except RuleSetError:
            self.metrics.ruleset_reloads["error"].inc()
            self.metrics.ruleset_error.set(1)
            return
        if new is not None:
            warm_up(new)
            self.ruleset = new
            self.metrics.ruleset_reloads["ok"].inc()
            self.metrics.ruleset_error.set(0)
            self.metrics.ruleset.info({"version": new.version})

    async def _redis(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """A Redis call, retried with backoff until it succeeds (not consuming meanwhile)."""
        backoff = Backoff()
        while True:
            try:
                t0 = time.perf_counter()
                result = await call()
                self.metrics.redis_seconds.labels(op=op).observe(time.perf_counter() - t0)
                self.metrics.redis_up.set(1)
                return result
            except (RedisError, OSError) as exc:
                self._redis_failed(op, exc)
                await backoff.wait()

    def _check_kept(self, marks: dict[Partition, int], partitions: list[Partition]) -> None:
        """Count records this worker applied and acknowledged whose state the store lost
        (their partition's watermark went back): a failover that lost acknowledged writes,
        or a Redis restarted without persistence. Watermarks never go back otherwise."""
        for part in partitions:
            applied = self.applied.get(part)
            have = marks.get(part, -1)
            if applied is not None and have < applied:
                self.metrics.state_lost.inc(applied - have)
                log.error("the state store lost %d applied records of %s[%d] (watermark %d, "
                          "applied %d): a Redis failover or a restart without persistence; "
                          "see docs/operations.md", applied - have, part[0], part[1], have,
                          applied)  # fmt: skip
                self.applied[part] = have

    def _redis_failed(self, op: str, exc: BaseException) -> None:
        self.metrics.redis_errors.inc()
        self.metrics.redis_up.set(0)
        log.warning(
            "redis %s failed (%s); retrying, not consuming meanwhile", op, type(exc).__name__
        )

    async def _send(self, out: Outputs) -> list[Awaitable[object]] | None:
        """Hand a batch's outputs to the producer, in order; their acknowledgements to
        wait for (None: handing them over failed, :meth:`_acked` sends them again)."""
        try:
            return [await self.send(sink.topic, key, value)
                    for sink in self.sinks for key, value in sink.pick(out)]  # fmt: skip
        except Exception as exc:
            self.metrics.produce_errors.inc()
            log.warning("producing outputs failed (%s); resending", type(exc).__name__)
            return None

    async def _acked(self, out: Outputs, acks: list[Awaitable[object]] | None) -> None:
        """Wait until the broker acknowledged every output of the batch; on any failure
        send the whole batch again (repeats are identical)."""
        backoff = Backoff()
        while True:
            if acks is not None:
                got = await asyncio.gather(*acks, return_exceptions=True)
                failed = [x for x in got if isinstance(x, BaseException)]
                if not failed:
                    return
                # any producer failure: resend the whole batch
                self.metrics.produce_errors.inc()
                log.warning("producing outputs failed (%s); resending", type(failed[0]).__name__)
            await backoff.wait()
            acks = await self._send(out)

    async def handle(self, records: list[InRecord]) -> BatchResult | None:
        """Process one batch completely; returns only when it is safe to ack it."""
        return await (await self.start(records))

    async def start(
        self, records: list[InRecord], upcoming: list[InRecord] | None = None
    ) -> Awaitable[BatchResult | None]:
        """Process one batch up to its outputs handed to the producer; returns what to
        await before the batch may be acked: the broker's acknowledgement of its outputs.

        The batch step (``step.py``) reads the state, scores, and applies the reputation
        update together with the records' decision digests (one atomic write); then the
        outputs are produced. A crash anywhere leaves each redelivered record either
        unapplied (scored as new) or applied with its digest (its outputs resent
        identically). Each store call is retried with backoff while Redis fails.

        The next batch may start while this one's outputs wait for the broker (its state
        is applied, so the next batch reads it): the wait for ``acks=all`` overlaps the
        next batch's work instead of adding to every batch. Outputs keep their order:
        the producer sends them in the order handed over.

        ``upcoming``: the batch that will come next, when the caller knows it. It is parsed
        (decoded, validated, hashed, its rule features and the learned model's keys built:
        no state involved) while Redis applies this one, so that the two processes work at
        the same time; its turn then starts from its state read. Its decision time is when
        that parse began."""
        t0 = time.perf_counter()
        await self.refresh_learner()
        rs, cfg, state = self.ruleset, self.learner_cfg, self.learner.state
        adjust = state.adjustments(cfg, [r.code for r in rs.rules]) if cfg.adjusts else None
        risk = (self.risk_cfg, state.risk or RiskState()) if self.risk_cfg.scores else None
        # the digests of outputs acknowledged so far go with this batch's update; those
        # of batches acknowledged meanwhile, with the next
        prune, self.pending_prune = self.pending_prune, {}
        decided_ms, prepared = now_ms(), None
        ahead, self._ahead = self._ahead, None
        reading, self._reading = self._reading, None
        read = None
        if ahead is not None and ahead[0] is records and ahead[3] == rs.split_min_usd:
            prepared, decided_ms = ahead[1], ahead[2]
            if reading is not None and reading[0] is prepared:
                read, reading = await reading[1], None
        if reading is not None:
            reading[1].cancel()
        step = batch_step(records, rs, self.limits, decided_ms, True, adjust, state.version,
                          self.state_config, prune, risk, prepared,
                          self.settings.decisions_format, read)  # fmt: skip
        conflicts = Backoff(first_s=0.005, max_s=1.0)
        t_apply = 0.0
        try:
            call = next(step)
            while True:
                reply: Any = None
                if call.op == "backoff":
                    log.info("state moved meanwhile; starting the batch over")
                    await conflicts.wait()
                else:
                    waited_from = time.perf_counter()
                    pending: Awaitable[Any] = self._redis(
                        call.op, partial(getattr(self.store, call.op), *call.args))  # fmt: skip
                    if call.op == "apply" and upcoming:
                        # the next batch is parsed while Redis applies this one
                        task = asyncio.ensure_future(pending)
                        try:
                            self._ahead = await self._prepare_ahead(upcoming, rs.split_min_usd)
                        except BaseException:  # stopping: the apply goes with it
                            task.cancel()
                            raise
                        upcoming = None
                        pending = task
                        waited_from = time.perf_counter()  # the wait for the apply: from here
                    reply = await pending
                    if call.op == "read":
                        self._check_kept(reply[1], call.args[1])
                    elif call.op == "apply":
                        t_apply += time.perf_counter() - waited_from
                        if reply:
                            for part, (_old, new) in call.args[0].watermarks.items():
                                self.applied[part] = max(self.applied.get(part, -1), new)
                            if self._ahead is not None:  # read while this one's outputs go
                                self._reading = (self._ahead[1], asyncio.ensure_future(
                                    self._read_ahead(self._ahead[1])))  # fmt: skip
                call = step.send(reply)
        except StopIteration as done:
            out: StepResult = done.value
        if out.resent or out.skipped:
            self.metrics.redelivered["resent"].inc(out.resent)
            self.metrics.redelivered["skipped"].inc(out.skipped)
            log.info("redelivered records: %d resent from their digests, %d already "
                     "acknowledged", out.resent, out.skipped)  # fmt: skip
        t2 = time.perf_counter()
        acks = await self._send(out.outputs)
        return self._finish(records, out, acks, (t0, t2, t_apply))

    async def _read_ahead(self, prep: Prepared) -> EarlyRead:
        """The next batch's state read, made as soon as this batch's state is applied (so
        it reads the same state as it would at its turn), its two calls at once: Redis
        reads while this batch's outputs are built and handed to the producer. A write
        that moves the state meanwhile (an exam result) makes its apply refused, and it
        reads again."""
        combos = Combos.of(prep.shippers)
        remembered, (stored, marks) = await asyncio.gather(
            self._redis("read_parcels", partial(self.store.read_parcels, prep.parcel_ids)),
            self._redis("read", partial(self.store.read, prep.shippers, prep.partitions,
                                        combos)))  # fmt: skip
        self._check_kept(marks, prep.partitions)
        return EarlyRead(prep.shippers, combos, remembered, stored, marks)

    def drop_ahead(self) -> None:
        """Stopping: the next batch's parse and read are dropped (it is fetched again)."""
        self._ahead = None
        if self._reading is not None:
            self._reading[1].cancel()
            self._reading = None

    async def _prepare_ahead(
        self, records: list[InRecord], split: float | None
    ) -> tuple[list[InRecord], Prepared, int, float | None]:
        """``prepare`` of the next batch, yielding to the event loop before each record's
        parse: the loop then sends the rest of the apply script's arguments (a large update
        does not fit the socket's buffer at once), so that Redis works on it meanwhile."""
        at = now_ms()
        parts, parse_s = [], 0.0
        for record in records:
            await asyncio.sleep(0)
            t0 = time.perf_counter()
            parts.append(parse_batch([record], self.limits, at))
            parse_s += time.perf_counter() - t0
        prep = prepare(records, self.limits, at, split, ParsedBatch.joined(parts),
                       keys=self.risk_cfg.scores, ruleset=self.ruleset)  # fmt: skip
        # the parse stage's metric counts the records' parse too, as when done in one go
        return records, replace(prep, parse_s=prep.parse_s + parse_s), at, split

    async def _finish(
        self, records: list[InRecord], out: StepResult, acks: list[Awaitable[object]] | None,
        times: tuple[float, float, float],
    ) -> BatchResult | None:  # fmt: skip
        t0, t2, t_apply = times
        await self._acked(out.outputs, acks)
        last: dict[Partition, int] = {}
        for r in records:
            part = (r.topic, r.partition)
            last[part] = max(last.get(part, -1), r.offset)
        # acknowledged: their digests can go with the next update
        for part, offset in last.items():
            self.pending_prune[part] = max(self.pending_prune.get(part, -1), offset)
            self.positions[part] = offset + 1
        oldest_ms = min((r.timestamp_ms for r in records if r.timestamp_ms > 0), default=0)
        m = self.metrics
        if oldest_ms:
            m.record_age.observe(max(0.0, now_ms() - oldest_ms) / 1000)
        m.last_batch.set(time.time())
        m.stage_seconds["reputation"].observe(t_apply)
        m.stage_seconds["produce"].observe(time.perf_counter() - t2)
        m.stage_seconds["outputs"].observe(time.perf_counter() - t2 + t_apply)
        m.records.inc(len(records))
        m.batches.inc()
        m.batch_seconds.observe(time.perf_counter() - t0)
        if not out.fresh:
            return None
        self._count(out.result)
        return out.result

    def _count(self, result: BatchResult) -> None:
        m = self.metrics
        for stage, seconds in result.stage_s.items():
            m.stage_seconds[stage].observe(seconds)
        for lane in LANES:
            if result.lane_counts[lane]:
                m.parcels[lane].inc(result.lane_counts[lane])
        # Sampled parcels are all holds; the other holds were selected on risk.
        held = {k: v for k, v in result.selection_counts.items() if k != "risk"}
        held["risk"] = result.lane_counts["hold"] - sum(held.values())
        for how, count in held.items():
            if count:
                m.selected[how].inc(count)
        for reason, count in result.rejection_counts.items():
            m.rejections[reason].inc(count)
        if result.repeats:
            m.repeated["repeat"].inc(result.repeats)
        if result.amendments:
            m.repeated["amendment"].inc(result.amendments)
        if result.lane_counts["hold"]:
            codes = [r.code for r in self.ruleset.rules]
            m.count_hold_reasons(codes, hold_reason_counts(result.masks, result.lanes, len(codes)))
        m.batch_parcels.observe(result.parcels)


class ExamProcessor:
    """Applies a batch of examination results; returns only when it is safe to ack."""

    def __init__(
        self,
        settings: Settings,
        store: AsyncStateStore,
        send: SendFn,
        metrics: WorkerMetrics,
        pivot_score: Callable[[], float] = lambda: 60.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.send = send
        self.metrics = metrics
        self.learner_cfg = settings.learner_config()
        self.risk_cfg = settings.risk_config()
        self.pruned_at = time.monotonic()
        self.pivot_score = pivot_score  # the active rule set's hold score
        self.positions: dict[Partition, int] = {}  # next offset to process, per partition

    async def _apply(self, deltas: list[ExamDelta]) -> list[bool]:
        """Apply the results and, unless the learner is off, train it on the new ones in
        the same atomic step; retried when another worker stored a learner state first."""
        if not trains(self.learner_cfg, self.risk_cfg) or not deltas:
            return await self.store.apply_exams(deltas) or []
        while True:
            state = await self.store.read_learner()
            seen = await self.store.exams_seen([d.exam_id for d in deltas])
            todo, learner = exam_step(deltas, seen, state, self.learner_cfg, self.pivot_score(),
                                      now_ms(), self.risk_cfg)  # fmt: skip
            if not todo:
                return [False] * len(deltas)
            if learner is None:  # nothing to train on: the results alone
                return applied_flags(deltas, todo, await self.store.apply_exams(todo) or [])
            applied = await self.store.apply_exams(todo, learner)
            if applied is not None:
                self.metrics.learner_updates.inc()
                return applied_flags(deltas, todo, applied)
            log.info("learner state moved meanwhile; retraining on the current one")

    async def handle(self, records: list[InRecord]) -> dict[str, int]:
        batch = parse_exam_records(records, now_ms())
        backoff = Backoff()
        while True:
            try:
                known = await self.store.lookup_parcels([r.parcel_id for r in batch.results])
                deltas, unknown = trace(batch.results, known)
                applied = await self._apply(deltas)
                break
            except (RedisError, OSError) as exc:
                self.metrics.redis_errors.inc()
                self.metrics.redis_up.set(0)
                log.warning("redis failed applying exam results (%s); retrying", type(exc).__name__)
                await backoff.wait()
        if batch.rejections:
            pending = [
                await self.send(self.settings.topic_rejects, None, encode_rejection(rej))
                for rej in batch.rejections
            ]
            await asyncio.gather(*pending)
        counts = {
            "applied": sum(applied),
            "duplicate": len(applied) - sum(applied),
            "unknown_parcel": len(unknown),
            "rejected": len(batch.rejections),
        }
        for status, count in counts.items():
            if count:
                self.metrics.exam_results[status].inc(count)
        by_id = {r.exam_id: r for r in batch.results}
        for d, fresh in zip(deltas, applied, strict=True):
            if fresh:
                self.metrics.exam_outcomes[by_id[d.exam_id].outcome].inc()
        for r in records:
            part = (r.topic, r.partition)
            self.positions[part] = max(self.positions.get(part, 0), r.offset + 1)
        await self._prune()
        return counts

    async def _prune(self) -> None:
        """Every ``risk_prune_s``: drop the learned keys too rare to count any more. A
        failure waits for the next time (nothing depends on it but memory)."""
        if not self.risk_cfg.scores or time.monotonic() - self.pruned_at < (
                self.settings.risk_prune_s):  # fmt: skip
            return
        self.pruned_at = time.monotonic()
        try:
            dropped = await self.store.prune_risk(now_ms())
        except (RedisError, OSError) as exc:
            log.warning("pruning the learned keys failed (%s); trying again later",
                        type(exc).__name__)  # fmt: skip
            return
        self.metrics.risk_keys_pruned.inc(dropped)
        log.info("learned keys pruned: %d under %g examinations", dropped,
                 self.settings.risk_evict_below)  # fmt: skip
