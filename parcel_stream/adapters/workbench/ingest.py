"""The workbench's two streams: holds in (a consumer group of its own), exam results out.

``HoldsIngester`` reads the holds topic in batches, writes them to the case store and only
then commits the offsets: a crash re-reads holds that the store may have, which it ignores
(cases are idempotent by parcel id and decision). ``OutcomeSender`` is an outbox: an
outcome is first recorded in the case store (the officer's submit), then produced to the
exam-results topic with acks from all in-sync replicas, and only then marked sent (the
case closes). A crash in between sends it again with the same exam id, which the exam
consumer ignores as a repeat.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import msgspec
from kafka import KafkaConsumer, KafkaProducer

from parcel_stream.adapters.kafka_io import consumer_options
from parcel_stream.adapters.security import kafka_client_options
from parcel_stream.adapters.workbench.cases import CaseStore, Outcome
from parcel_stream.adapters.workbench.metrics import WorkbenchMetrics
from parcel_stream.model import ExamResult
from parcel_stream.settings import Settings

log = logging.getLogger("parcel_stream.adapters.workbench")
_ENC = msgspec.json.Encoder()


def exam_result(o: Outcome) -> ExamResult:
    return ExamResult(exam_id=o.exam_id, parcel_id=o.parcel_id, outcome=o.outcome,  # type: ignore[arg-type]
                      examined_ts_ms=o.examined_ts_ms, finding=o.finding,  # type: ignore[arg-type]
                      notes=o.notes, recovered_usd=o.recovered_usd)  # fmt: skip


class HoldsIngester(threading.Thread):
    """Holds topic -> case store, offsets committed after the store has them."""

    def __init__(self, settings: Settings, store: CaseStore, metrics: WorkbenchMetrics) -> None:
        super().__init__(name="holds-ingester", daemon=True)
        self.settings, self.store, self.metrics = settings, store, metrics
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        s = self.settings
        try:
            consumer = KafkaConsumer(
                s.topic_holds, bootstrap_servers=s.kafka_bootstrap,
                group_id=s.workbench_group, enable_auto_commit=False,
                auto_offset_reset="earliest", client_id="parcel-stream-workbench",
                session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
                max_poll_records=2_000, **consumer_options(s),
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - reported by the service's health
            self.error = exc
            log.error("holds consumer cannot start: %s", type(exc).__name__)
            return
        self.ready.set()
        try:
            while not self.stopping.is_set():
                polled = consumer.poll(timeout_ms=500)
                values = [m.value for msgs in polled.values() for m in msgs if m.value]
                if values:
                    self._ingest(values)
                    consumer.commit()
        except Exception as exc:  # noqa: BLE001
            self.error = exc
            log.error("holds consumer stopped: %s", type(exc).__name__)
        finally:
            consumer.close()

    def _ingest(self, values: list[bytes]) -> None:
        while not self.stopping.is_set():
            try:
                got = self.store.ingest(values)
                self.metrics.ingested(got)
                if got.bad:
                    log.warning("%d records on the holds topic are not holds; skipped", got.bad)
                return
            except Exception as exc:  # noqa: BLE001 - the database is away: retry, no commit
                log.error("case store unavailable (%s); retrying", type(exc).__name__)
                self.stopping.wait(2.0)


class OutcomeSender(threading.Thread):
    """The outbox of recorded outcomes -> the exam-results topic."""

    def __init__(self, settings: Settings, store: CaseStore, metrics: WorkbenchMetrics,
                 period_s: float = 2.0) -> None:  # fmt: skip
        super().__init__(name="outcome-sender", daemon=True)
        self.settings, self.store, self.metrics = settings, store, metrics
        self.period_s = period_s
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.producer: KafkaProducer | None = None

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.send_pending()
            except Exception as exc:  # noqa: BLE001 - broker or database away: next round
                log.error("sending exam results failed (%s); retrying", type(exc).__name__)
            self.wake.wait(self.period_s)
            self.wake.clear()
        if self.producer is not None:
            self.producer.close(timeout=5)

    def send_pending(self) -> int:
        pending = self.store.unsent()
        if not pending:
            return 0
        if self.producer is None:
            self.producer = KafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap, acks="all", linger_ms=5,
                client_id="parcel-stream-workbench", **kafka_client_options(self.settings),
            )  # fmt: skip
        futures: list[Any] = [
            self.producer.send(
                self.settings.topic_exam_results,
                key=o.parcel_id.encode(),
                value=_ENC.encode(exam_result(o)),
            )  # fmt: skip
            for o in pending
        ]
        self.producer.flush(timeout=30)
        for f in futures:
            f.get(timeout=30)  # raises if any was not acknowledged
        self.store.mark_sent([o.exam_id for o in pending])
        for o in pending:
            self.metrics.sent.labels(o.outcome).inc()
        return len(pending)
