"""A real Prometheus (Debian's package) scrapes a running worker with the shipped alert
rules loaded; the parcel count read back through its HTTP API equals what was sent, the
rules evaluate without error, and every metric the dashboard and the alerts query is on
the live worker's /metrics page. The same worker logs JSON lines with no personal data."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.reliability.harness import Feed, Worker, collect, make_feed, metrics, pace
from parcel_stream.adapters import devstack
from parcel_stream.adapters.devstack import free_port
from parcel_stream.demo import isolated_settings
from parcel_stream.settings import Settings
from tests.unit.test_observability import NAME, PROM, queries

WORKBENCH = "parcel_stream_workbench_"


def api(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def start_prometheus(tmp: Path, target_port: int) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: `make test-deps` installs Debian's prometheus package")
    shutil.copy(PROM / "alerts.yml", tmp / "alerts.yml")
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        "  - job_name: parcel-stream\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=open(tmp / "prometheus.log", "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, port


def query_value(port: int, expr: str) -> float | None:
    result = api(port, "query", query=expr)["result"]
    return float(result[0]["value"][1]) if result else None


@dataclass
class Run:
    settings: Settings
    feed: Feed
    prometheus_port: int
    log: Path
    metrics_port: int


@pytest.fixture(scope="module")
def run(stack: devstack.StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("prometheus")
    settings = isolated_settings(stack, uuid.uuid4().hex[:8], tmp / "worker-data").replace(
        log_format="json", metrics_port=0
    )
    feed = make_feed(3000, seed=21, bad_every=300)
    worker = Worker(settings, tmp / "worker.log")
    worker.start()
    try:
        prom, port = start_prometheus(tmp, worker.metrics_port)
    except BaseException:
        worker.stop()
        raise
    try:
        pace(settings, feed, 3000).join()
        out = collect(settings, feed, timeout_s=120, progress=False, workers=(worker,))
        assert len(out.decisions) == len(feed.ids)
        yield Run(settings, feed, port, worker.log_path, worker.metrics_port)
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        worker.stop()


def test_prometheus_scrapes_the_worker(run: Run) -> None:
    settings, feed, port = run.settings, run.feed, run.prometheus_port
    # the worker's count, read back through Prometheus
    deadline = time.monotonic() + 60
    got = None
    while time.monotonic() < deadline:
        try:
            got = query_value(port, 'sum(parcel_stream_parcels_total{job="parcel-stream"})')
            if got == len(feed.ids):
                break
        except OSError:
            pass  # Prometheus still starting
        time.sleep(1.0)
    assert got == len(feed.ids), f"Prometheus read {got}, sent {len(feed.ids)}"
    assert query_value(port, "sum(parcel_stream_rejections_total)") == feed.bad
    assert query_value(port, 'up{job="parcel-stream"}') == 1.0
    held = query_value(port, "sum(parcel_stream_hold_reasons_total)")
    assert held is not None and held > 0
    # the shipped rules load and evaluate against real series without errors
    rules = [r for g in api(port, "rules")["groups"] for r in g["rules"]]
    assert len(rules) >= 15
    deadline = time.monotonic() + 30
    while any(r.get("lastEvaluation", "").startswith("0001") for r in rules):
        assert time.monotonic() < deadline, "rules never evaluated"
        time.sleep(1.0)
        rules = [r for g in api(port, "rules")["groups"] for r in g["rules"]]
    assert all(r["health"] == "ok" for r in rules), [
        (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ]
    # the worker-down conditions, evaluated now against the live series, are false (the
    # alerts' `for:` is minutes, so their state would say nothing in a short test)
    exprs = {r["name"]: r["query"] for r in rules if r["type"] == "alerting"}
    for name in ("ParcelStreamWorkerDown", "ParcelStreamNoWorkers", "ParcelStreamStalled"):
        assert api(port, "query", query=exprs[name])["result"] == [], name
    # every metric the dashboard and the alerts query is on the live page (the lag
    # gauge is set every 5 s)
    deadline = time.monotonic() + 15
    live = metrics(run.metrics_port)
    while "consumer_lag_records{" not in "".join(live) and time.monotonic() < deadline:
        time.sleep(0.5)
        live = metrics(run.metrics_port)
    live_names = {k.split("{", 1)[0] for k in live}
    wanted = {
        name
        for _where, expr in queries()
        for name, _m in NAME.findall(expr)
        if not name.startswith(WORKBENCH)
    }  # the workbench's page: test_workbench_pages
    assert wanted - live_names == set()
    lag = [k for k in live if k.startswith("parcel_stream_consumer_lag_records{")]
    assert any(f'topic="{settings.topic_manifests}"' in k for k in lag), lag


def test_json_logs_carry_no_personal_data(run: Run) -> None:
    """Every log line is a JSON object, and none carries a consignee name or address line
    of the feed."""
    lines = [x for x in run.log.read_text().splitlines() if x.strip()]
    assert any("worker ready" in x for x in lines)
    docs = [json.loads(x) for x in lines]  # fails on any line that is not JSON
    assert all({"ts", "level", "logger", "msg"} <= d.keys() for d in docs)
    private: set[str] = set()
    for _key, value in run.feed.values:
        for line in value.split(b"\n"):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            c = d["consignee"]
            private |= {c["name"], *c["address"]["lines"]}
    private = {p for p in private if len(p) >= 6}
    assert len(private) > 100
    text = run.log.read_text()
    leaked = [p for p in private if p in text]
    assert not leaked, leaked[:5]
