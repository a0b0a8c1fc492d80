"""The project's Faust transport: Faust's aiokafka driver with four consumer changes.

- Fetch wait: Faust hard-codes ``fetch_max_wait_ms=1500``. A broker that holds a fetch for
  the full wait when data arrives meanwhile (the dev broker does) then adds up to 1.5 s to
  every decision at low load; the app's ``parcel_fetch_max_wait_ms`` replaces it.
- Isolation level: Faust reads ``read_uncommitted`` unless the app itself is transactional;
  the app's ``parcel_isolation_level`` (default ``read_committed``) replaces it, so records
  of a hub's aborted transactions are not scored.
- Poison records: aiokafka decodes a record batch (decompression, CRC, record layout) while
  handing records out, and raises out of ``getmany`` when it cannot (an unknown codec, a
  corrupt batch). Faust treats that as a crash, and after a restart the same offset crashes
  the next worker: the partition is blocked forever. Here the failure ends that partition's
  iteration at the bad offset with its position one past it; the record is logged and
  handed to the app's ``parcel_on_poison`` hook (rejection, metric), then Faust may commit
  past it. Other partitions are not touched (see :func:`_guarded`, :class:`PoisonRecord`).
- Batch-native topics: Faust hands each record to its topic's agent as an event, through
  two asyncio tasks and a queue per record (``Consumer._drain_messages``): that, not the
  work, caps a Faust agent at a few thousand records a second. For a topic the app names
  in ``parcel_batch_sinks``, the consumer instead hands each fetch's records to a
  :class:`BatchSink` as one list; the app acks each record after its batch is done, so
  Faust commits exactly as it does for events (see :meth:`_Consumer._drain_messages`).

Registered under the URL scheme ``pskafka://``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import errors as kafka_errors
from aiokafka.consumer.fetcher import FetchResult, PartitionRecords
from aiokafka.structs import TopicPartition
from faust.transport import drivers
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

SCHEME = "pskafka"
ISOLATION_LEVELS = ("read_committed", "read_uncommitted")

log = logging.getLogger("parcel_stream.consumer")

PoisonReason = Literal["unsupported_codec", "corrupt_record", "decode_error", "too_large"]
POISON_REASONS: tuple[PoisonReason, ...] = (
    "unsupported_codec",
    "corrupt_record",
    "decode_error",
    "too_large",
)


@dataclass(frozen=True)
class PoisonRecord:
    """A record the consumer could not decode and skipped: where it was and why.

    ``detail`` is the error's type (and, for the client library's own errors, its fixed
    message); it never contains record bytes."""

    topic: str
    partition: int
    offset: int
    reason: PoisonReason
    detail: str


PoisonHook = Callable[[PoisonRecord], Awaitable[None]]


def classify(exc: BaseException) -> tuple[PoisonReason, str]:
    """The bounded reason label and a payload-free description of a decoding failure."""
    if isinstance(exc, kafka_errors.UnsupportedCodecError):
        return "unsupported_codec", str(exc)[:300]  # "UnsupportedCodecError: <fixed text>"
    if isinstance(exc, kafka_errors.CorruptRecordException):
        return "corrupt_record", str(exc)[:300]
    if isinstance(exc, kafka_errors.RecordTooLargeError):
        return "too_large", "RecordTooLargeError: larger than the consumer's fetch size"
    # decompressor errors (zlib.error, cramjam's DecompressionError, ...): type name only,
    # their messages are not ours to vouch for
    return "decode_error", type(exc).__name__


OnError = Callable[[TopicPartition, int, Exception], None]


def _guarded(records: PartitionRecords, inner: Iterator[Any], on_error: OnError) -> Iterator[Any]:
    """``records``' own iterator ``inner``, ending cleanly (and reporting) where decoding
    fails, with the partition's next position one past the failed offset.

    On failure ``records.next_fetch_offset`` is the offset being decoded: the start of
    the bad batch, or the bad record inside it. Ending here lets aiokafka hand out the good
    records before it (raising would lose them: aiokafka has advanced past them but not
    returned them) and then set the partition's position to ``next_fetch_offset``, now one
    past the bad offset: the next fetch starts there. A bad batch of n records is so
    skipped (and reported) record by record, as the broker serves it from each offset."""
    try:
        yield from inner
    except Exception as exc:
        offset = records.next_fetch_offset
        records.next_fetch_offset = offset + 1
        on_error(records._tp, offset, exc)


class _GuardedResults(collections.OrderedDict[Any, Any]):
    """aiokafka's buffer of fetched results (``Fetcher._records``), which wraps each
    partition's record iterator as a fetch response is stored, before anything reads it."""

    def __init__(self, on_error: OnError) -> None:
        super().__init__()
        self._on_error = on_error

    def __setitem__(self, tp: Any, result: Any) -> None:
        if type(result) is FetchResult:
            records = result._partition_records
            if records is not None and records._records_iterator is not None:
                records._records_iterator = _guarded(
                    records, records._records_iterator, self._on_error
                )
        super().__setitem__(tp, result)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "parcel_fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)
        level = getattr(self.app, "parcel_isolation_level", None)
        # Faust picks read_committed itself for a transactional app: never lower that.
        if level in ISOLATION_LEVELS and consumer._isolation_level != "read_committed":
            consumer._isolation_level = level
        return consumer

    async def on_start(self) -> None:
        await super().on_start()  # starts the aiokafka consumer, which creates its fetcher
        fetcher = self._ensure_consumer()._fetcher
        guarded = _GuardedResults(self._skip)
        guarded.update(fetcher._records)
        fetcher._records = guarded

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: Any,
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        try:
            return await super()._fetch_records(
                consumer, active_partitions, timeout=timeout, max_records=max_records
            )
        except kafka_errors.RecordTooLargeError as exc:
            # aiokafka has moved the position past it already (args: msg, tp, offset, size)
            _msg, tp, offset, *_ = exc.args
            self._skip(tp, int(offset), exc)
            return {}

    def _skip(self, tp: TopicPartition, offset: int, exc: Exception) -> None:
        """Log and report one skipped undecodable record (its partition's position is
        already past it)."""
        reason, detail = classify(exc)
        log.error(
            "skipped an undecodable record: topic=%s partition=%s offset=%s reason=%s (%s)",
            tp.topic,
            tp.partition,
            offset,
            reason,
            detail,
        )
        poison = PoisonRecord(tp.topic, tp.partition, offset, reason, detail)
        fut = asyncio.run_coroutine_threadsafe(self._settle(poison), self.parent_loop)
        fut.add_done_callback(_log_failure)

    async def _settle(self, poison: PoisonRecord) -> None:
        """On the app's loop: report the record (the app's ``parcel_on_poison`` hook counts
        it and sends the rejection), then let Faust commit past its offset."""
        hook: PoisonHook | None = getattr(self.app, "parcel_on_poison", None)
        if hook is not None:
            await hook(poison)
        await self.consumer._add_gap(
            TP(poison.topic, poison.partition), poison.offset, poison.offset
        )


def _log_failure(fut: Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("reporting a skipped record failed: %r", fut.exception())


class BatchSink:
    """Where the consumer leaves a batch-native topic's records, a list per fetch, for
    the app's agent to take in batches (:meth:`take`). Bounded: a fetch waits while the
    sink holds ``max_records`` records or ``max_bytes`` of values (but an empty sink
    takes any list). Registered with the app's flow control like Faust's own buffers, so
    a rebalance clears it: the records it held were never acked, and are fetched again
    from the committed offsets by whoever owns their partition next."""

    def __init__(self, max_records: int, flow_control: Any, max_bytes: int = 1 << 62) -> None:
        self.max_records, self.max_bytes = max_records, max_bytes
        self._lists: collections.deque[tuple[list[Message], int]] = collections.deque()
        self._held = 0
        self._bytes = 0
        self._cleared = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        flow_control.manage_queue(self)

    def __len__(self) -> int:
        return self._held

    def waiting(self) -> bool:
        """Whether records wait to be taken."""
        return bool(self._lists)

    def clear(self) -> None:
        self._lists.clear()
        self._held = self._bytes = 0
        self._cleared += 1  # records taken ahead before this no longer count
        self._ready.clear()
        self._room.set()

    async def put(self, messages: list[Message], suspended: asyncio.Event) -> bool:
        """Leave a fetch's records, once there is room; False (not left) when the
        consumer's flow is suspended first: a rebalance began, and clearing the sink
        wakes this wait."""
        size = sum(len(m.value) for m in messages if m.value is not None)
        while self._held and (self._held + len(messages) > self.max_records
                              or self._bytes + size > self.max_bytes):  # fmt: skip
            if suspended.is_set():
                return False
            self._room.clear()
            await self._room.wait()
        if suspended.is_set():
            return False
        self._lists.append((messages, size))
        self._held += len(messages)
        self._bytes += size
        self._ready.set()
        return True

    async def take(self, max_records: int) -> list[Message]:
        """The records waiting, in the order fetched, at least one list and then more
        while they fit in ``max_records``; waits for the next fetch when empty."""
        while not self._lists:
            self._ready.clear()
            await self._ready.wait()
        out, size = self._pop(max_records)
        self._release(len(out), size)
        return out

    def take_ahead(self, max_records: int) -> tuple[list[Message], Callable[[], None]]:
        """As :meth:`take`, without waiting (none when the sink is empty), for records
        looked at before their turn (the agent parses them ahead): they count against the
        sink's bounds until ``release`` (the function returned) is called at their turn,
        so that looking ahead holds no more records than waiting here."""
        out, size = self._pop(max_records) if self._lists else ([], 0)
        cleared = self._cleared

        def release() -> None:
            if cleared == self._cleared:  # (a clear let go of them already)
                self._release(len(out), size)

        return out, release

    def _pop(self, max_records: int) -> tuple[list[Message], int]:
        out, size = self._lists.popleft()
        while self._lists and len(out) + len(self._lists[0][0]) <= max_records:
            more, more_size = self._lists.popleft()
            out, size = out + more, size + more_size
        return out, size

    def _release(self, records: int, size: int) -> None:
        self._held -= records
        self._bytes -= size
        self._room.set()


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop (``faust.transport.consumer.Consumer._drain_messages`` of
        the pinned faust-streaming, which ``tests/unit/test_consumer.py`` pins), with the
        records of batch-native topics collected per fetch and handed to their sink as
        one list, instead of one ``callback`` (conductor, channel, event) per record.
        Everything else is Faust's: read offsets, gaps (skipped offsets, such as
        transaction markers, that commits must pass), commits every ``commit_every``
        acks, flow control. A batch record is tracked (``track_message``) once its list
        is in the sink, and acked by the app once its batch is done."""
        sinks: dict[str, BatchSink] = getattr(self.app, "parcel_batch_sinks", None) or {}
        if not sinks:
            await super()._drain_messages(fetcher)
            return
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        suspended = self.suspend_flow
        track = self.track_message
        yield_every, num_since_yield = 100, 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                fetched: dict[str, list[Message]] = {}
                async for tp, message in ait:
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # read already (Faust logs these at its dev level)
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    batch = fetched.get(message.topic)
                    if batch is None and message.topic in sinks:
                        batch = fetched[message.topic] = []
                    if batch is not None:
                        batch.append(message)
                    else:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await asyncio.sleep(0)
                            num_since_yield = 0
                        await self.wait_first(callback(message), suspended.wait())
                    set_read_offset(tp, offset)
                for topic, batch in fetched.items():
                    # left in the sink and tracked with no await between: the agent
                    # cannot ack a record before it is tracked
                    if await sinks[topic].put(batch, suspended):
                        for message in batch:
                            track(message)
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


def register() -> None:
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
