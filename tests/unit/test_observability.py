"""The shipped alert rules, Prometheus config and Grafana dashboard: promtool validates and
unit-tests the rules, and every metric (and enumerated label value) they query is one the
worker exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from parcel_stream.adapters.metrics import WorkerMetrics
from parcel_stream.adapters.workbench.cases import CaseStore
from parcel_stream.adapters.workbench.db import connect, migrate
from parcel_stream.adapters.workbench.metrics import WorkbenchMetrics
from parcel_stream.decide import hold_reason_counts

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "parcel-stream.json"
NAME = re.compile(r"\b((?:parcel_stream|process|python)_[a-z0-9_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"')
# label values that are not enumerated by the worker (scrape or partition labels)
OPEN_LABELS = {"job", "instance", "topic", "partition", "rule", "op", "stage"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: `make test-deps` installs Debian's prometheus package")
    return path


def run_promtool(*args: str) -> str:
    proc = subprocess.run(
        [promtool(), *args], cwd=PROM, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_alert_rules_pass_promtool_check() -> None:
    out = run_promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in out


def test_alert_rules_unit_tests_pass() -> None:
    """Each alert fires on the series it is meant for, with its annotations, and not on
    the healthy ones (deploy/prometheus/alerts_test.yml)."""
    out = run_promtool("test", "rules", "alerts_test.yml")
    assert "SUCCESS" in out


def test_prometheus_config_is_valid() -> None:
    run_promtool("check", "config", "--syntax-only", "prometheus.yml")


def exported() -> tuple[dict[str, set[str]], dict[str, dict[str, set[str]]]]:
    """Sample names the worker exports, with each one's label names, and the label values
    of the pre-bound (enumerated) children."""
    names: dict[str, set[str]] = {}
    values: dict[str, dict[str, set[str]]] = {}
    for registry in (WorkerMetrics().registry, workbench_registry()):
        for collector, fam_names in registry._collector_to_names.items():  # noqa: SLF001
            labels = set(getattr(collector, "_labelnames", ()))
            for n in fam_names:
                names[n] = labels | ({"le"} if n.endswith("_bucket") else set())
        for family in registry.collect():
            for sample in family.samples:
                names.setdefault(sample.name, set()).update(sample.labels)
                for k, v in sample.labels.items():
                    values.setdefault(sample.name, {}).setdefault(k, set()).add(v)
    return names, values


def workbench_registry() -> CollectorRegistry:
    """The workbench's metrics, over a case store with one open hold (so that its
    per-hub gauges have a sample)."""
    engine = connect("sqlite://")
    migrate(engine)
    store = CaseStore(engine)
    hold = json.loads((Path(__file__).parents[2] / "schemas/examples/hold.v1.json").read_text())
    store.ingest([json.dumps(hold).encode()])
    return WorkbenchMetrics(store).registry


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard target and every alerting or recording rule."""
    out = []
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            out.append((f"dashboard: {panel['title']}", t["expr"]))
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            out.append((f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]))
    return out


def test_every_queried_metric_and_label_is_exported() -> None:
    names, values = exported()
    seen = set()
    problems = []
    for where, expr in queries():
        for name, matchers in NAME.findall(expr):
            seen.add(name)
            if name not in names:
                problems.append(f"{where}: {name} is not exported")
                continue
            for label, op, value in MATCHER.findall(matchers or ""):
                if label in ("job", "instance"):
                    continue  # added by the scrape
                if label not in names[name]:
                    problems.append(f"{where}: {name} has no label {label}")
                elif op == "=" and label not in OPEN_LABELS:
                    known = values.get(name, {}).get(label, set())
                    if value not in known:
                        problems.append(f"{where}: {name}{{{label}={value!r}}} never exported")
    assert not problems, "\n".join(problems)
    # the dashboard and alerts cover the catalog the issue asks for
    for needed in (
        "parcel_stream_parcels_total",
        "parcel_stream_hold_reasons_total",
        "parcel_stream_rejections_total",
        "parcel_stream_batch_duration_seconds_bucket",
        "parcel_stream_stage_duration_seconds_bucket",
        "parcel_stream_redis_roundtrip_seconds_bucket",
        "parcel_stream_errors_total",
        "parcel_stream_consumer_lag_records",
        "parcel_stream_ruleset_info",
        "parcel_stream_selected_total",
        "parcel_stream_record_age_seconds_bucket",
        "parcel_stream_redis_up",
    ):
        assert needed in seen, f"{needed} is neither on the dashboard nor in an alert"


def test_metric_names_follow_prometheus_conventions() -> None:
    names, _ = exported()
    m = WorkerMetrics()
    for family in m.registry.collect():
        if family.name.startswith(("process_", "python_")):
            continue
        assert family.name.startswith("parcel_stream_")
        if family.type == "counter":
            assert f"{family.name}_total" in names
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_parcels")), family.name
    for collector in m.registry._collector_to_names:  # noqa: SLF001
        labels = set(getattr(collector, "_labelnames", ()))
        assert not labels & {"shipper", "shipper_id", "parcel_id", "consignee", "seller"}


def test_hold_reason_counts_by_rule_bit() -> None:
    masks = np.array([0b101, 0b001, 0b110, 1 << 63], dtype=np.uint64).view(np.int64)
    lanes = np.array([2, 2, 0, 2], dtype=np.int8)  # the third parcel is released
    counts = hold_reason_counts(masks, lanes, 64)
    assert counts[0] == 2 and counts[1] == 0 and counts[2] == 1 and counts[63] == 1
    assert sum(counts) == 4


def test_lag_gauge_drops_partitions_no_longer_assigned() -> None:
    m = WorkerMetrics()
    m.set_lag({("in", 0): 5, ("in", 1): 7})
    m.set_lag({("in", 1): 2})
    lag = {
        s.labels["partition"]: s.value
        for f in m.registry.collect()
        if f.name == "parcel_stream_consumer_lag_records"
        for s in f.samples
    }
    assert lag == {"1": 2.0}
