"""Prometheus metrics of the worker, updated once per batch through pre-bound children.

Labels are bounded enums only (lane, rejection reason, output topic kind): never shipper
ids, parcel ids or anything personal.
"""

from __future__ import annotations

import urllib.request
from typing import get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from parcel_stream import __version__
from parcel_stream.adapters.health import Health
from parcel_stream.adapters.health import serve as serve_health
from parcel_stream.decide import LANES
from parcel_stream.model import RejectReason

BATCH_PARCEL_BUCKETS = (1, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# record age at decision: sub-second when keeping up, minutes when draining a backlog
AGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if registry is None:  # process_* (CPU, RSS, open fds), python_gc_*, python_info
            ProcessCollector(registry=r)
            GCCollector(registry=r)
            PlatformCollector(registry=r)
        parcels = Counter(
            "parcel_stream_parcels_total", "Parcels scored, by lane", ["lane"], registry=r
        )
        self.parcels = {lane: parcels.labels(lane=lane) for lane in LANES}
        selected = Counter(
            "parcel_stream_selected_total",
            "Parcels sent to hold, by how they were selected (risk, random, exploration)",
            ["selection"],
            registry=r,
        )
        self.selected = {k: selected.labels(selection=k) for k in ("risk", "random", "exploration")}
        self.hold_reasons = Counter(
            "parcel_stream_hold_reasons_total",
            "Held parcels by the rule that fired (a parcel held for three rules counts "
            "once under each); rule codes come from the rule set, so the label is bounded",
            ["rule"],
            registry=r,
        )
        rejections = Counter(
            "parcel_stream_rejections_total",
            "Malformed manifests sent to the rejects topic, by reason",
            ["reason"],
            registry=r,
        )
        self.rejections = {
            reason: rejections.labels(reason=reason) for reason in get_args(RejectReason)
        }
        self.records = Counter(
            "parcel_stream_records_total",
            "Kafka records consumed from the manifests topic",
            registry=r,
        )
        self.batches = Counter("parcel_stream_batches_total", "Batches processed", registry=r)
        self.batch_parcels = Histogram(
            "parcel_stream_batch_parcels",
            "Parcels per processed batch",
            buckets=BATCH_PARCEL_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "parcel_stream_batch_duration_seconds",
            "Wall time to process a batch: parse, score, produce, update reputation",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        stages = Histogram(
            "parcel_stream_stage_duration_seconds",
            "Time per batch in each stage (produce and reputation overlap; outputs = both)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_seconds = {
            st: stages.labels(stage=st)
            for st in ("parse", "features", "kernel", "encode", "produce", "reputation", "outputs")
        }
        self.redis_seconds = Histogram(
            "parcel_stream_redis_roundtrip_seconds",
            "Reputation read and update round trips",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.record_age = Histogram(
            "parcel_stream_record_age_seconds",
            "Per batch: age of its oldest record (broker timestamp to outputs acknowledged), "
            "the decision latency a parcel saw at worst",
            buckets=AGE_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "parcel_stream_consumer_lag_records",
            "Records in each assigned input partition not yet processed (high watermark "
            "minus the next offset to process); a manifest batch record holds many parcels",
            ["topic", "partition"],
            registry=r,
        )
        self.last_batch = Gauge(
            "parcel_stream_last_batch_timestamp_seconds",
            "Unix time the last batch finished",
            registry=r,
        )
        redelivered = Counter(
            "parcel_stream_redelivered_records_total",
            "Input records seen again after a crash or rebalance, already applied: outputs "
            "resent from their stored digests, or skipped (outputs acknowledged before)",
            ["result"],
            registry=r,
        )
        self.redelivered = {k: redelivered.labels(result=k) for k in ("resent", "skipped")}
        repeated = Counter(
            "parcel_stream_repeated_parcels_total",
            "Parcel ids seen before within the repeat window: repeats (same content, original "
            "decision re-emitted, no state change) and amendments (other content, scored again)",
            ["kind"],
            registry=r,
        )
        self.repeated = {k: repeated.labels(kind=k) for k in ("repeat", "amendment")}
        errors = Counter(
            "parcel_stream_errors_total",
            "Retried failures by component (the batch is retried, not dropped)",
            ["component"],
            registry=r,
        )
        self.redis_errors = errors.labels(component="redis")
        self.produce_errors = errors.labels(component="produce")
        self.poison_records = Counter(
            "parcel_stream_poison_records_total",
            "Kafka records the consumer could not decode (unknown codec, corrupt batch) and "
            "skipped; each is on the rejects topic as undecodable_record. Labels: the input "
            "topic and unsupported_codec, corrupt_record, decode_error or too_large",
            ["topic", "reason"],
            registry=r,
        )
        self.state_lost = Counter(
            "parcel_stream_state_lost_total",
            "Input records whose applied state the store no longer has: its watermark went "
            "back below what this worker applied and acknowledged (a Redis failover that "
            "lost acknowledged writes, or a restart without persistence)",
            registry=r,
        )
        self.redis_wait_short = Counter(
            "parcel_stream_redis_wait_short_total",
            "Writes that fewer than PARCEL_REDIS_WAIT_REPLICAS replicas acknowledged within "
            "PARCEL_REDIS_WAIT_TIMEOUT_MS (Redis Cluster with WAIT on)",
            registry=r,
        )
        self.redis_up = Gauge(
            "parcel_stream_redis_up", "1 when the last Redis call succeeded", registry=r
        )
        self.ruleset = Info("parcel_stream_ruleset", "The active rule set", registry=r)
        Info("parcel_stream_build", "The parcel-stream release", registry=r).info(
            {"version": __version__}
        )
        exam_results = Counter(
            "parcel_stream_exam_results_total",
            "Examination results by what happened to them",
            ["status"],
            registry=r,
        )
        self.exam_results = {
            k: exam_results.labels(status=k)
            for k in ("applied", "duplicate", "unknown_parcel", "rejected")
        }
        outcomes = Counter(
            "parcel_stream_exam_outcomes_total",
            "Applied examination results by outcome",
            ["outcome"],
            registry=r,
        )
        self.exam_outcomes = {
            k: outcomes.labels(outcome=k) for k in ("seized", "violation", "clean")
        }
        reloads = Counter(
            "parcel_stream_ruleset_reloads_total",
            "Rule-set file changes picked up (ok) or refused (error)",
            ["result"],
            registry=r,
        )
        self.ruleset_reloads = {k: reloads.labels(result=k) for k in ("ok", "error")}
        self.ruleset_error = Gauge(
            "parcel_stream_ruleset_load_error",
            "1 when the last rule-set change was refused (the previous rule set still runs)",
            registry=r,
        )
        self.learner_version = Gauge(
            "parcel_stream_learner_version",
            "Version of the learner state the worker holds (0: none yet)",
            registry=r,
        )
        self.learner_updates = Counter(
            "parcel_stream_learner_updates_total",
            "Learner training steps this worker stored (one per exam-results batch)",
            registry=r,
        )
        self.risk_keys_pruned = Counter(
            "parcel_stream_risk_keys_pruned_total",
            "Learned keys dropped because their decayed examinations fell under "
            "PARCEL_RISK_EVICT_BELOW",
            registry=r,
        )
        self.learner_max_adjust = Gauge(
            "parcel_stream_learner_max_adjust_points",
            "Largest absolute per-rule adjustment of the held learner state, in points",
            registry=r,
        )
        self.learner_applied = Gauge(
            "parcel_stream_learner_applied",
            "1 when learned adjustments change scores (PARCEL_LEARNER_MODE=on)",
            registry=r,
        )

        self._lag_keys: set[tuple[str, int]] = set()
        self._hold_reason: dict[str, Counter] = {}

    def count_hold_reasons(self, codes: list[str], counts: list[int]) -> None:
        for code, n in zip(codes, counts, strict=True):
            if n:
                child = self._hold_reason.get(code)
                if child is None:
                    child = self._hold_reason[code] = self.hold_reasons.labels(rule=code)
                child.inc(n)

    def watch_poison(self, topics: list[str], reasons: tuple[str, ...]) -> None:
        """Export the skipped-record counters at 0 for the consumed topics, so the first
        skipped record is an increase an alert sees (a series born at 1 is not)."""
        for topic in topics:
            for reason in reasons:
                self.poison_records.labels(topic=topic, reason=reason)

    def count_poison(self, topic: str, reason: str) -> None:
        """One skipped undecodable record (rare: a labelled lookup per record is fine)."""
        self.poison_records.labels(topic=topic, reason=reason).inc()
        self.rejections["undecodable_record"].inc()

    def set_lag(self, lags: dict[tuple[str, int], int]) -> None:
        """Lag of each assigned partition; partitions no longer assigned are dropped
        (their new owner reports them)."""
        for topic, part in self._lag_keys - lags.keys():
            self.consumer_lag.remove(topic, str(part))
        for (topic, part), lag in lags.items():
            self.consumer_lag.labels(topic=topic, partition=str(part)).set(lag)
        self._lag_keys = set(lags)

    def serve(self, port: int, health: Health | None = None) -> int | None:
        """Metrics on ``port``, with ``/healthz`` and ``/readyz`` when given; returns the
        bound port. 0 binds any free port (no pick-then-bind race); -1: off, None."""
        if port < 0:
            return None
        if health is None:
            server, _thread = start_http_server(port, addr="0.0.0.0", registry=self.registry)
        else:
            server = serve_health(port, self.registry, health)
        return int(server.server_port)


def metric_total(port: int, name: str) -> float:
    """The value of one unlabelled sample (a counter, or a histogram's ``_sum``) from a
    running worker's metrics endpoint on this machine."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    for fam in text_string_to_metric_families(text.decode()):
        for sample in fam.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise KeyError(f"no sample {name} at :{port}/metrics")


def worker_breakdown(port: int) -> list[str]:
    """Per batch, from a running worker's metrics endpoint on this machine: parcels, wall
    time, each stage and Redis round trip, and the age of its oldest record (means since it
    started), as lines to print (the benchmarks do)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    sums: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text.decode()):
        for sample in fam.samples:
            if sample.name.endswith(("_sum", "_count")):
                label = sample.labels.get("stage") or sample.labels.get("op") or ""
                sums[(sample.name, label)] = sample.value

    def mean(name: str, label: str = "") -> float:
        count = sums.get((f"{name}_count", label), 0.0)
        return sums.get((f"{name}_sum", label), 0.0) / count if count else float("nan")

    batches = sums.get(("parcel_stream_batch_parcels_count", ""), 0.0)
    lines = [f"worker: {batches:.0f} batches, {mean('parcel_stream_batch_parcels'):.1f} parcels "
             f"a batch, {1e3 * mean('parcel_stream_batch_duration_seconds'):.1f} ms a batch; "
             f"oldest record's age at the end of a batch "
             f"{1e3 * mean('parcel_stream_record_age_seconds'):.0f} ms"]  # fmt: skip
    for metric, kind in (("parcel_stream_stage_duration_seconds", "stage"),
                         ("parcel_stream_redis_roundtrip_seconds", "redis")):  # fmt: skip
        parts = sorted(label for name, label in sums if name == f"{metric}_count" and label)
        lines.append(f"  {kind}, ms a batch: " + ", ".join(
            f"{label} {1e3 * mean(metric, label):.1f}" for label in parts))  # fmt: skip
    return lines
