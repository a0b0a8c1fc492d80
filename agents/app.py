"""``create_app(settings)``: the Faust app with the scoring agent (wiring only)."""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
from redis.exceptions import RedisError

from agents import faust_transport
from parcel_stream.adapters.health import Health, write_port_file
from parcel_stream.adapters.metrics import WorkerMetrics
from parcel_stream.adapters.redis_store import RedisReputationStore
from parcel_stream.adapters.security import faust_credentials
from parcel_stream.adapters.worker import Backoff, BatchProcessor, ExamProcessor, now_ms
from parcel_stream.decide import encode_rejection
from parcel_stream.model import Rejection
from parcel_stream.parse import InRecord, chunk_records
from parcel_stream.rules import RuleSet, default_ruleset
from parcel_stream.settings import Settings
from parcel_stream.step import warm_up_scoring

log = logging.getLogger("parcel_stream.agents")
CONTENT_TYPE = "content-type"


def _faust_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker": ",".join(
            f"{faust_transport.SCHEME}://{h.strip()}" for h in settings.kafka_bootstrap.split(",")
        ),
        "datadir": str(Path(settings.data_dir).resolve()),
        "broker_credentials": faust_credentials(settings),
        "web_enabled": False,
        "topic_partitions": settings.partitions,
        "broker_rebalance_timeout": settings.broker_rebalance_timeout_s,
        "broker_session_timeout": settings.broker_session_timeout_s,
        "broker_heartbeat_interval": settings.broker_heartbeat_interval_s,
        "broker_commit_interval": settings.commit_interval_s,
        "consumer_auto_offset_reset": "earliest",
        # Batch records are large: fetch several per partition per request, and allow
        # output records (a batch's decisions) up to the input record limit.
        "consumer_max_fetch_size": max(8 << 20, settings.max_record_bytes),
        "producer_max_request_size": settings.max_record_bytes + (1 << 20),
        "producer_acks": -1,
        "stream_wait_empty": True,
        # Bound what the consumer holds ahead of the agent (records, not bytes).
        "stream_buffer_maxsize": 2 * settings.batch_max_records,
    }


def make_faust_app(settings: Settings) -> faust.App:
    """A Faust app configured from settings (also the benchmark's bare-agent peer)."""
    faust_transport.register()
    app = faust.App(settings.app_id, **_faust_config(settings))
    app.parcel_fetch_max_wait_ms = settings.fetch_max_wait_ms  # type: ignore[attr-defined]
    app.parcel_isolation_level = settings.kafka_isolation_level  # type: ignore[attr-defined]
    return app


def _in_record(event: Any) -> InRecord:
    return _record_of(event.message)


def _record_of(msg: Any) -> InRecord:
    """A consumed Kafka message (Faust's ``Message``) as the core's input record."""
    content_type = None
    for name, value in msg.headers or ():
        if name == CONTENT_TYPE:
            content_type = value
    return InRecord(
        value=msg.value if msg.value is not None else b"",
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key,
        timestamp_ms=int((msg.timestamp or 0) * 1000),
        content_type=content_type,
    )


def raw_topic(app: faust.App, name: str, partitions: int) -> Any:
    """A topic of raw bytes: the core decodes values itself (msgspec), Faust must not."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )


def consumer_lag(
    app: faust.App, positions: dict[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """Per assigned partition: high watermark (from the last fetch) minus the next offset
    to process. Partitions not fetched from yet, or not processed yet, are left out."""
    lags: dict[tuple[str, int], int] = {}
    try:
        assigned = app.consumer.assignment()
    except Exception:  # consumer not started or being rebalanced
        return lags
    for tp in assigned:
        try:
            high = app.consumer.highwater(tp)
        except Exception:
            continue
        pos = positions.get((tp.topic, tp.partition))
        if high is not None and pos is not None:
            lags[(tp.topic, tp.partition)] = max(0, int(high) - pos)
    return lags


def _collect_for(chunk: list[InRecord], settings: Settings) -> None:
    """The young generation's threshold for chunks the size of this one: large chunks
    collect seldom (no rescans of the live batches), small ones often and briefly (short
    pauses, for the latency at low rates): ``Settings.young_threshold``."""
    young = settings.young_threshold(sum(len(r.value) for r in chunk))
    if young != gc.get_threshold()[0]:
        gc.set_threshold(young, 20, 100)


def _nothing() -> None:
    pass


def create_app(settings: Settings, ruleset: RuleSet | None = None) -> faust.App:
    """The worker app: one scoring agent over the manifests topic, which takes its records
    a fetch at a time (``PARCEL_CONSUME=batches``) or as Faust events (``events``)."""
    rules = ruleset or default_ruleset(settings)
    app = make_faust_app(settings)
    manifests = raw_topic(app, settings.topic_manifests, settings.partitions)
    metrics = WorkerMetrics()
    metrics.watch_poison(
        [settings.topic_manifests, settings.topic_exam_results], faust_transport.POISON_REASONS
    )
    health = Health()
    store = RedisReputationStore.from_settings(settings)
    store.on_wait_short = metrics.redis_wait_short.inc

    async def send(topic: str, key: bytes | None, value: bytes) -> Any:
        return await app.producer.send(topic, key, value, None, None, None)

    processor = BatchProcessor(settings, rules, store, send, metrics)
    exam_processor = ExamProcessor(
        settings, store, send, metrics, pivot_score=lambda: processor.ruleset.hold_score
    )
    exam_results = raw_topic(app, settings.topic_exam_results, settings.partitions)

    async def on_poison(poison: faust_transport.PoisonRecord) -> None:
        """A skipped undecodable input record: counted, and on the rejects topic (resent
        until the broker takes it) before Faust may commit past its offset."""
        metrics.count_poison(poison.topic, poison.reason)
        rejection = Rejection(
            reason="undecodable_record",
            path="$",
            detail=f"{poison.reason}: {poison.detail}"[:300],
            source=f"{poison.topic}/{poison.partition}/{poison.offset}",
            rejected_ts_ms=now_ms(),
        )
        backoff = Backoff()
        while True:
            try:
                await (await send(settings.topic_rejects, None, encode_rejection(rejection)))
                return
            except Exception as exc:
                metrics.produce_errors.inc()
                log.warning("producing a rejection failed (%s); resending", type(exc).__name__)
                await backoff.wait()

    app.parcel_on_poison = on_poison  # type: ignore[attr-defined]

    @app.agent(exam_results, concurrency=1)
    async def apply_exam_results(stream: Any) -> None:
        async for events in stream.take_events(500, within=0.2):
            await exam_processor.handle([_in_record(e) for e in events])

    @app.task(on_leader=False)  # type: ignore[untyped-decorator]
    async def _startup() -> None:
        warm_up_scoring(rules, settings.risk_config())
        # Everything allocated so far lives as long as the worker: keep it out of the
        # collector's scans so per-batch collections stay cheap.
        gc.freeze()
        try:
            port = metrics.serve(settings.metrics_port, health)
        except OSError as exc:
            log.error(
                "cannot serve metrics on port %s (%s): set PARCEL_METRICS_PORT to a free "
                "port, or 0 for any free port",
                settings.metrics_port,
                exc.strerror,
            )
            raise
        if port is not None:
            # whoever started the worker with port 0 reads the bound port here
            write_port_file(settings.data_dir, port)
        health.started = True
        log.info(
            "worker ready: rule set %s, decisions as %s, metrics on :%s",
            rules.version,
            settings.decisions_format,
            port or "off",
        )

    @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
    async def _heartbeat() -> None:
        health.beat()

    @app.timer(interval=2.0)  # type: ignore[untyped-decorator]
    async def _redis_check() -> None:
        try:
            if await asyncio.wait_for(store.ping(), timeout=2.0):
                health.redis_ok()
        except (TimeoutError, RedisError, OSError):
            pass  # /readyz turns 503 once the last good ping is stale

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def _lag() -> None:
        metrics.set_lag(consumer_lag(app, {**processor.positions, **exam_processor.positions}))

    sink = None
    if settings.consume == "batches":
        # the consumer leaves the manifests' records here a fetch at a time, not as events
        # (at most two batches' records, and two chunks' bytes, waiting)
        sink = faust_transport.BatchSink(2 * settings.batch_max_records, app.flow_control,
                                         2 * settings.chunk_max_bytes)  # fmt: skip
        app.parcel_batch_sinks = {settings.topic_manifests: sink}  # type: ignore[attr-defined]

    # Concurrency stays 1: with more, offset commits can skip in-flight events.
    @app.agent(manifests, concurrency=1)
    async def score(stream: Any) -> None:
        batch_max, within = settings.batch_max_records, settings.batch_within_s
        if sink is not None:
            # The agent's stream stays empty: its records come from the sink. Each is
            # acked once its batch is done, and Faust commits the acked offsets.
            ack = app.consumer.ack

            async def acked(sent: Awaitable[object], messages: list[Any]) -> None:
                await sent
                for m in messages:
                    ack(m)

            # One batch's outputs may wait for the broker while the next batch is scored
            # (its state is applied first); batches are acked in order, each once its
            # outputs are acknowledged. The chunks to score, each with the records to ack
            # once it is done (a take's, after its last chunk) and, for a take looked at
            # ahead, what lets its records out of the sink's bounds at its turn:
            chunks: collections.deque[tuple[list[InRecord], list[Any], Callable[[], None]]]
            chunks = collections.deque()

            def chunked(messages: list[Any], turn: Callable[[], None] = _nothing) -> None:
                processor.maybe_reload()  # a new rule set applies from a batch boundary on
                parts = chunk_records([_record_of(m) for m in messages], settings.chunk_max_bytes)
                for k, part in enumerate(parts):
                    chunks.append((part, messages if k == len(parts) - 1 else [],
                                   turn if k == 0 else _nothing))  # fmt: skip

            last: asyncio.Future[None] | None = None
            try:
                while True:
                    if not chunks:
                        chunked(await sink.take(batch_max))
                    chunk, done, turn = chunks.popleft()
                    turn()
                    if settings.parse_ahead and not chunks and sink.waiting():
                        chunked(*sink.take_ahead(batch_max))  # fetched already: next
                    # the next chunk is parsed while Redis applies this one
                    upcoming = chunks[0][0] if settings.parse_ahead and chunks else None
                    _collect_for(chunk, settings)
                    sent = await processor.start(chunk, upcoming)
                    if last is not None:
                        await last
                    last = asyncio.ensure_future(acked(sent, done))
            finally:  # stopping: a batch not acked is fetched again and its outputs resent
                processor.drop_ahead()
                if last is not None:
                    last.cancel()
        async for events in stream.take_events(batch_max, within=within):
            processor.maybe_reload()  # a new rule set applies from a batch boundary on
            records = [_in_record(e) for e in events]
            # The events are acked when this body returns: after every chunk is done.
            for chunk in chunk_records(records, settings.chunk_max_bytes):
                _collect_for(chunk, settings)
                await processor.handle(chunk)

    app.parcel_processor = processor  # type: ignore[attr-defined]
    return app
