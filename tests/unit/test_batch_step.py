"""The worker's batch step on the in-memory twin: no Redis, no Kafka. Redelivery after a
crash, outbox rebuild and pruning, a write that loses a compare-and-set race, and the same
step driven synchronously (the backtest)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import orjson
import pytest
from prometheus_client import CollectorRegistry

from parcel_stream.adapters.metrics import WorkerMetrics
from parcel_stream.adapters.worker import BatchProcessor
from parcel_stream.parse import InRecord, Limits
from parcel_stream.reputation import InMemoryStore, ReputationUpdate
from parcel_stream.rules import default_ruleset
from parcel_stream.settings import Settings
from parcel_stream.state import AsyncTwin
from parcel_stream.step import run_sync
from tests.unit.test_same_feed import feed

SETTINGS = Settings()
RS = default_ruleset(SETTINGS)
Sent = list[tuple[str, bytes | None, bytes]]


def processor(store: AsyncTwin, sent: Sent) -> BatchProcessor:
    async def send(topic: str, key: bytes | None, value: bytes) -> Awaitable[object]:
        sent.append((topic, key, value))
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    return BatchProcessor(SETTINGS, RS, store, send, WorkerMetrics(CollectorRegistry()))


def lines(sent: Sent) -> list[tuple[str, bytes | None, bytes]]:
    """Every output line (decisions records group lines per partition, or per record when
    rebuilt from digests): the lines are what must be identical."""
    return sorted((t, k if t != SETTINGS.topic_decisions else None, x)
                  for t, k, v in sent for x in v.split(b"\n"))  # fmt: skip


def state(store: InMemoryStore) -> dict[str, tuple[float, ...]]:
    return {k: v.row() for k, v in store.shippers.items()}


def test_a_batch_redelivered_after_a_crash_gets_its_outputs_back_and_changes_nothing() -> None:
    records = feed(41, 400)
    store = InMemoryStore()
    first: Sent = []
    asyncio.run(processor(AsyncTwin(store), first).handle(records))
    before = state(store)
    # the worker "crashed" after producing, before the offsets were committed: a new
    # worker gets the same records; their digests rebuild the same outputs
    again: Sent = []
    worker = processor(AsyncTwin(store), again)
    asyncio.run(worker.handle(records))
    assert lines(again) == lines(first) and state(store) == before
    assert worker.metrics.redelivered["resent"]._value.get() == len(records)
    # its next batch prunes the acknowledged digests: a later redelivery is skipped
    asyncio.run(worker.handle([]))
    skipped: Sent = []
    late = processor(AsyncTwin(store), skipped)
    asyncio.run(late.handle(records))
    assert skipped == [] and late.metrics.redelivered["skipped"]._value.get() == len(records)


class RacingTwin(AsyncTwin):
    """Another writer applies its batch just before this worker's first write."""

    def __init__(self, store: InMemoryStore, other: list[InRecord]) -> None:
        super().__init__(store)
        self.other: list[InRecord] | None = other
        self.refused = 0

    async def apply(self, update: ReputationUpdate) -> bool:
        if self.other is not None:
            assert isinstance(self.store, InMemoryStore)
            run_sync(self.other, self.store, RS, Limits(), 1)
            self.other = None
        ok = self.store.apply(update)
        self.refused += not ok
        return ok


def test_a_write_that_lost_a_race_is_scored_again_on_the_new_state() -> None:
    records = feed(42, 300, amend=False)
    mine = [r for r in records if r.offset % 2 == 0]
    theirs = [InRecord(r.value, r.topic, 9, r.offset, r.key, r.timestamp_ms, r.content_type)
              for r in records if r.offset % 2 == 1]  # fmt: skip
    store = InMemoryStore()
    racing = RacingTwin(store, theirs)
    sent: Sent = []
    asyncio.run(processor(racing, sent).handle(mine))
    assert racing.refused == 1  # the first write was refused: the shippers had moved
    # the result is what one writer would have got doing theirs first, then mine
    alone = InMemoryStore()
    run_sync(theirs, alone, RS, Limits(), 1)
    run_sync(mine, alone, RS, Limits(), 1)
    assert state(store) == state(alone)
    unique = {orjson.loads(x)["parcel_id"] for r in records for x in r.value.split(b"\n")}
    assert sum(v.seen for v in store.shippers.values()) == len(unique)  # resends count once


class NeverWrites(InMemoryStore):
    """A store whose every write loses a race."""

    def apply(self, update: ReputationUpdate) -> bool:
        return False


def test_the_sync_driver_gives_up_after_three_lost_races() -> None:
    with pytest.raises(RuntimeError, match="3 times in a row"):
        run_sync(feed(43, 50), NeverWrites(), RS, Limits(), 1)


def test_the_same_step_redelivers_on_a_synchronous_store_too() -> None:
    """The backtest's driver runs the worker's step: a batch seen again gets its outputs
    back from the digests and changes nothing."""
    records = feed(44, 300)
    store = InMemoryStore()
    first = run_sync(records, store, RS, Limits(), 5)
    before = state(store)
    again = run_sync(records, store, RS, Limits(), 6)
    assert again.parcels == 0 and state(store) == before
    for kind in ("decisions", "holds"):
        got = sorted(x for _k, v in getattr(again.outputs, kind) for x in v.split(b"\n"))
        want = sorted(x for _k, v in getattr(first.outputs, kind) for x in v.split(b"\n"))
        assert got == want and want, kind


def test_state_the_store_lost_is_counted() -> None:
    """A failover that loses acknowledged writes shows as a watermark below what the
    worker applied: the worker counts the records lost and goes on."""
    records = feed(45, 300, amend=False)
    half = len(records) // 2
    worker = processor(AsyncTwin(InMemoryStore()), [])
    asyncio.run(worker.handle(records[:half]))
    assert worker.metrics.state_lost._value.get() == 0
    worker.store = AsyncTwin(InMemoryStore())  # the state came back empty
    asyncio.run(worker.handle(records[half:]))
    assert worker.metrics.state_lost._value.get() == records[half - 1].offset + 1
    asyncio.run(worker.handle([]))
    assert worker.metrics.state_lost._value.get() == records[half - 1].offset + 1  # once


def decided(sent: Sent) -> list[tuple[str, str, float]]:
    """(parcel id, lane, score) of every decision, in the order sent."""
    out = []
    for topic, _key, value in sent:
        if topic == SETTINGS.topic_decisions:
            for line in value.split(b"\n"):
                d = orjson.loads(line)
                out.append((d["parcel_id"], d["lane"], d["score"]))
    return out


def test_the_next_batch_starts_while_outputs_wait_for_the_broker_and_failures_resend() -> None:
    """Pipelined as the agent runs it: a batch's state is applied and its outputs handed
    over; the next batch is scored while the broker has not yet acknowledged them. The
    decisions are those of batch after batch; a batch whose outputs failed is sent again
    whole, and only then counts as done."""
    records = feed(43, 600)
    k = len(records) // 3
    thirds = [records[:k], records[k : 2 * k], records[2 * k :]]
    expected: list[Sent] = []
    one = processor(AsyncTwin(InMemoryStore()), [])
    for part in thirds:
        expected.append([])
        one.send = processor(AsyncTwin(InMemoryStore()), expected[-1]).send
        asyncio.run(one.handle(part))

    async def pipelined() -> tuple[Sent, int, list[bool]]:
        sent: Sent = []
        acks: list[asyncio.Future[object]] = []

        async def send(topic: str, key: bytes | None, value: bytes) -> Awaitable[object]:
            sent.append((topic, key, value))
            ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            acks.append(ack)
            return ack

        worker = BatchProcessor(SETTINGS, RS, AsyncTwin(InMemoryStore()), send,
                                WorkerMetrics(CollectorRegistry()))  # fmt: skip
        first = asyncio.ensure_future(await worker.start(thirds[0]))
        handed = len(sent)
        second = asyncio.ensure_future(await worker.start(thirds[1]))  # nothing acked yet
        await asyncio.sleep(0)
        done_before = [first.done(), second.done()]
        for ack in acks[:handed]:  # the first batch's outputs fail
            ack.set_exception(OSError("broker away"))
        for ack in acks[handed:]:
            ack.set_result(None)
        while not first.done():  # its resend: acknowledged
            for ack in acks:
                if not ack.done():
                    ack.set_result(None)
            await asyncio.sleep(0.01)
        await second
        third = asyncio.ensure_future(await worker.start(thirds[2]))
        for ack in acks:
            if not ack.done():
                ack.set_result(None)
        await third
        return sent, int(worker.metrics.produce_errors._value.get()), done_before

    sent, failed, done_before = asyncio.run(pipelined())
    assert done_before == [False, False]
    assert failed == 1
    e1, e2, e3 = (decided(e) for e in expected)
    assert e1 and e2 and e3
    assert decided(sent) == e1 + e2 + e1 + e3


@pytest.mark.parametrize("mode", ["off", "shadow"])
def test_the_next_batch_parsed_while_the_state_is_applied_decides_the_same(mode: str) -> None:
    """The agent names the next chunk (``upcoming``): it is parsed while the store applies
    this one, and its turn starts from its state read; with the learned model its keys
    are computed with that parse. The decisions and probabilities are those of batch after
    batch; a parse of other records than the next batch's is not used."""
    settings = SETTINGS.replace(risk_model=mode)
    records = feed(44, 600)
    k = len(records) // 3
    thirds = [records[:k], records[k : 2 * k], records[2 * k :]]

    def worker(sent: Sent) -> BatchProcessor:
        async def send(topic: str, key: bytes | None, value: bytes) -> Awaitable[object]:
            sent.append((topic, key, value))
            done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

        return BatchProcessor(settings, RS, AsyncTwin(InMemoryStore()), send,
                              WorkerMetrics(CollectorRegistry()))  # fmt: skip

    def decisions(sent: Sent) -> list[tuple[str, str, float, float | None]]:
        return [(d["parcel_id"], d["lane"], d["score"], d.get("probability"))
                for t, _k, v in sent if t == settings.topic_decisions
                for d in map(orjson.loads, v.split(b"\n"))]  # fmt: skip

    expected: Sent = []
    one = worker(expected)
    for part in thirds:
        asyncio.run(one.handle(part))

    async def ahead(upcoming: list[list[InRecord] | None]) -> tuple[Sent, list[bool]]:
        sent: Sent = []
        w = worker(sent)
        used = []
        for part, nxt in zip(thirds, upcoming, strict=True):
            before = w._ahead
            await (await w.start(part, nxt))
            used.append(before is not None and before[0] is part)
            if before is not None:
                assert (before[1].keys is not None) == (mode == "shadow")
        return sent, used

    sent, used = asyncio.run(ahead([thirds[1], thirds[2], None]))
    assert used == [False, True, True]
    assert decisions(sent) == decisions(expected) != []
    assert all((p is not None) == (mode == "shadow") for *_, p in decisions(sent))
    sent, used = asyncio.run(ahead([thirds[2], None, None]))  # not the next: parsed again
    assert used == [False, False, False]
    assert decisions(sent) == decisions(expected)


def test_the_next_batch_is_read_once_this_one_is_applied_and_again_if_the_state_moved() -> None:
    """With the next batch parsed ahead, its state read is made as soon as this batch's
    state is applied (Redis reads while this batch's outputs go) and its turn starts from
    it. Decisions are those of batch after batch; an exam result that moves a shipper's
    state after that read and before the batch's apply makes the apply refused and the
    batch read again: it decides as if the read were made at its turn."""
    from parcel_stream.reputation import ExamDelta

    records = feed(45, 600)
    k = len(records) // 3
    thirds = [records[:k], records[k : 2 * k], records[2 * k :]]

    def decisions(sent: Sent) -> list[tuple[str, str, float]]:
        return [(d["parcel_id"], d["lane"], d["score"])
                for t, _k, v in sent if t == SETTINGS.topic_decisions
                for d in map(orjson.loads, v.split(b"\n"))]  # fmt: skip

    class Counting(AsyncTwin):
        def __init__(self, store: InMemoryStore) -> None:
            super().__init__(store)
            self.reads = 0
            self.refused = 0

        async def read(self, *args):  # type: ignore[no-untyped-def]
            self.reads += 1
            return await super().read(*args)

        async def apply(self, update: ReputationUpdate) -> bool:
            ok = await super().apply(update)
            self.refused += not ok
            return ok

    def exam(store: InMemoryStore) -> None:  # a violation found at a shipper of the 2nd third
        doc = orjson.loads(thirds[1][0].value.split(b"\n")[0])
        at, shipper = doc["manifest_ts_ms"], doc["shipper"]["id"]
        found = [ExamDelta(f"E{j}", f"P{j}", shipper, "A?", True, at) for j in range(8)]
        assert store.apply_exams(found) == [True] * 8

    async def run(upcoming: list[list[InRecord] | None], moved: bool) -> tuple[Sent, Counting,
                                                                              list[bool]]:  # fmt: skip
        sent: Sent = []
        store = Counting(InMemoryStore())
        w = processor(store, sent)
        prefetched = []
        for n, (part, nxt) in enumerate(zip(thirds, upcoming, strict=True)):
            if n == 1 and moved:
                if w._reading is not None:
                    await w._reading[1]  # the read is made: the exam result comes after it
                exam(store.store)  # type: ignore[arg-type]
            prefetched.append(w._reading is not None and w._ahead is not None
                              and w._reading[0] is w._ahead[1] and w._ahead[0] is part)  # fmt: skip
            await (await w.start(part, nxt))
        return sent, store, prefetched

    for moved in (False, True):
        plain, plain_store, none = asyncio.run(run([None, None, None], moved))
        assert none == [False, False, False] and plain_store.refused == 0
        sent, store, prefetched = asyncio.run(run([thirds[1], thirds[2], None], moved))
        assert prefetched == [False, True, True]
        assert decisions(sent) == decisions(plain) != []
        assert store.refused == int(moved)  # read before the exam result: refused once
        assert store.reads == plain_store.reads + int(moved)
    assert decisions(asyncio.run(run([None, None, None], True))[0]) != decisions(
        asyncio.run(run([None, None, None], False))[0]
    )  # the exam result changes decisions


def test_an_early_read_is_completed_for_the_originals_of_amended_parcels() -> None:
    """The next batch's early read (both its calls at once) holds its own entities
    only. An amendment that moves a parcel of this batch to another shipper adds
    the original's shipper to the index: that batch reads again, and decides as read at
    its turn."""

    def record(docs: list[dict[str, object]], offset: int) -> InRecord:
        value = b"\n".join(map(orjson.dumps, docs))
        return InRecord(value, "m", 0, offset, None, 0, b"application/x-ndjson")

    def decided(sent: Sent) -> list[tuple[str, str, float, str | None]]:
        return [(d["parcel_id"], d["lane"], d["score"], d.get("amends"))
                for t, _k, v in sent if t == SETTINGS.topic_decisions
                for d in map(orjson.loads, v.split(b"\n"))]  # fmt: skip

    docs = [orjson.loads(x) for r in feed(46, 300, amend=False) for x in r.value.split(b"\n")]
    first, second, third = docs[:100], docs[100:200], docs[200:]
    inside = {d["shipper"]["id"] for d in second}
    moved = next(d for d in first if d["shipper"]["id"] not in inside)
    second = [{**moved, "shipper": second[0]["shipper"]}, *second]
    batches = [[record(first, 0)], [record(second, 1)], [record(third, 2)]]

    class Counting(AsyncTwin):
        reads = 0

        async def read(self, *args):  # type: ignore[no-untyped-def]
            self.reads += 1
            return await super().read(*args)

    async def run(ahead: bool) -> tuple[Sent, int]:
        sent: Sent = []
        store = Counting(InMemoryStore())
        w = processor(store, sent)
        for n, part in enumerate(batches):
            nxt = batches[n + 1] if ahead and n + 1 < len(batches) else None
            await (await w.start(part, nxt))
        return sent, store.reads

    plain, plain_reads = asyncio.run(run(False))
    sent, reads = asyncio.run(run(True))
    assert any(a is not None for *_, a in decided(plain))  # the amendment is one
    assert decided(sent) == decided(plain)
    assert reads == plain_reads + 1  # the second batch read again for the original's shipper
