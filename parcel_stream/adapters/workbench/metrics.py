"""The workbench's Prometheus metrics. Labels are hubs and outcomes only (bounded); no
parcel ids, no user names, no personal data. The open-holds gauges are read from the case
store when Prometheus scrapes, so every instance behind a load balancer reports the same
numbers (query them with ``max by (hub)``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from parcel_stream.adapters.workbench.cases import CaseStore, Ingested

HOLD_TO_OUTCOME_BUCKETS_S = (60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 86400,
                             3 * 86400)  # fmt: skip


class _Queue(Collector):
    def __init__(self, store: CaseStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        open_ = GaugeMetricFamily(
            "parcel_stream_workbench_open_holds",
            "Held parcels not yet examined (new or claimed)",
            labels=["hub"],
        )
        oldest = GaugeMetricFamily("parcel_stream_workbench_oldest_open_hold_age_seconds",
                                   "Age of the oldest open hold", labels=["hub"])  # fmt: skip
        late = GaugeMetricFamily("parcel_stream_workbench_overdue_holds",
                                 "Open holds waiting past their service-level time",
                                 labels=["hub"])  # fmt: skip
        now = time.time()
        for c in self.store.counts(None):
            open_.add_metric([c.hub], c.open)
            age = now - c.oldest_open_ts_ms / 1000 if c.oldest_open_ts_ms is not None else 0.0
            oldest.add_metric([c.hub], max(age, 0.0))
            late.add_metric([c.hub], c.overdue)
        yield open_
        yield oldest
        yield late


class WorkbenchMetrics:
    def __init__(self, store: CaseStore, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.holds = Counter("parcel_stream_workbench_holds_ingested_total",
                             "Hold records read from the holds topic, by what they did",
                             ["result"], registry=r)  # fmt: skip
        self.bad_holds = self.holds.labels("not_a_hold")
        self.outcomes = Counter(
            "parcel_stream_workbench_outcomes_total",
            "Outcomes recorded by officers",
            ["outcome"],
            registry=r,
        )
        self.sent = Counter("parcel_stream_workbench_exam_results_sent_total",
                            "Exam results produced to the exam-results topic", ["outcome"],
                            registry=r)  # fmt: skip
        self.hold_to_outcome = Histogram(
            "parcel_stream_workbench_hold_to_outcome_seconds",
            "Time from the hold decision to the recorded outcome",
            buckets=HOLD_TO_OUTCOME_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.sign_in_failures = Counter("parcel_stream_workbench_sign_in_failures_total",
                                        "Refused sign-ins (wrong password or throttled)",
                                        registry=r)  # fmt: skip
        for outcome in ("clean", "violation", "seized"):
            self.outcomes.labels(outcome)
            self.sent.labels(outcome)
        r.register(_Queue(store))

    def ingested(self, got: Ingested) -> None:
        for name, n in (("new", got.new), ("updated", got.updated),
                        ("unchanged", got.unchanged), ("not_a_hold", got.bad)):  # fmt: skip
            if n:
                self.holds.labels(name).inc(n)
