"""The project's Faust transport: Faust's aiokafka driver with three consumer changes.

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
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

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


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


def register() -> None:
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
