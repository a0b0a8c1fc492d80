from pathlib import Path

import orjson
import pytest

from parcel_stream.backtest import evaluate, render_markdown, run_backtest
from parcel_stream.cli import main
from parcel_stream.feed import RawRecord
from parcel_stream.generate import FeedConfig, generate
from parcel_stream.rules import DEFAULT_RULESET_PATH, default_ruleset
from parcel_stream.settings import Settings


@pytest.fixture(scope="module")
def feed() -> tuple[list[RawRecord], dict[str, str | None]]:
    recs, labels = [], {}
    for n, (doc, label) in enumerate(generate(FeedConfig(parcels=15_000, seed=5))):
        recs.append(RawRecord(doc["manifest_ts_ms"], "m", 0, n, None, orjson.dumps(doc)))
        labels[doc["parcel_id"]] = label
    return recs, labels


def test_backtest_reports_and_reacts_to_a_disabled_rule(feed) -> None:  # type: ignore[no-untyped-def]
    recs, labels = feed
    base = default_ruleset(Settings())
    from dataclasses import replace

    no_hs = replace(base.with_rules(HIGH_RISK_HS={"enabled": False}), version="no-hs")
    r_base = evaluate(run_backtest(recs, base), labels, base, capacity_pct=2.0)
    r_off = evaluate(run_backtest(recs, no_hs), labels, no_hs, capacity_pct=2.0)
    assert r_base.parcels == r_off.parcels == 15_000
    assert sum(r_base.lanes.values()) == 15_000
    assert set(r_base.at_capacity) == {1.0, 2.0, 5.0, 10.0}
    examined, precision, recall = r_base.at_capacity[2.0]
    assert examined == 300 and 0 < precision <= 1 and 0 < recall <= 1
    hits = {code: h for code, h, _p, _s in r_base.rules}
    assert hits["HIGH_RISK_HS"] > 0
    # expected direction: the rule no longer fires, the precursor and pill-press
    # scenarios lose their holds, and holds overall drop
    assert {code: h for code, h, _p, _s in r_off.rules}["HIGH_RISK_HS"] == 0
    held = {s[0]: s[2] for s in r_base.scenarios}
    held_off = {s[0]: s[2] for s in r_off.scenarios}
    assert held["precursor_vague"] > 0.9 and held_off["precursor_vague"] < held["precursor_vague"]
    assert r_off.lanes["hold"] < r_base.lanes["hold"]
    assert r_off.hold_recall < r_base.hold_recall
    assert r_base.parcels_per_s > 0 and r_base.cpu_parcels_per_s > 0
    text = render_markdown([r_base, r_off])
    assert "| default-2026.11.3 | no-hs |" in text and "precursor_vague" in text


def test_backtest_cli_writes_report_and_plots(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    feed_path, labels = tmp_path / "f.ndjson.gz", tmp_path / "l.ndjson"
    assert main(["generate", "--parcels", "3000", "--format", "feed", "--out", str(feed_path),
                 "--labels", str(labels)]) == 0  # fmt: skip
    rules = tmp_path / "strict.toml"
    rules.write_text(
        (DEFAULT_RULESET_PATH.read_text())
        .replace('version = "default-2026.11.3"', 'version = "strict"')
        .replace("hold_score = 60", "hold_score = 45")
    )
    code = main(["backtest", str(feed_path), "--labels", str(labels), "--compare", str(rules),
                 "--report", str(tmp_path / "rep.md"), "--plots", str(tmp_path / "plots")])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "| default-2026.11.3 | strict |" in out and "precision / recall @ 2%" in out
    assert (tmp_path / "plots" / "precision-recall-capacity.png").stat().st_size > 1000
    assert (
        "![score-distribution.png](plots/score-distribution.png)"
        in (tmp_path / "rep.md").read_text()
    )
    rules.write_text(
        'version = "x"\n[[rules]]\nid = "NOPE"\ndescription = "d"\nwhen = ["nope > 1"]\nweight = 1\n'
    )
    assert main(["backtest", str(feed_path), "--rules", str(rules)]) == 2
    assert "rule NOPE: when[0]: unknown feature 'nope'" in capsys.readouterr().err


def test_runs_in_parallel_processes_report_what_they_report_one_after_the_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--jobs 2 runs the two sides of a comparison in two processes: the report is the
    one --jobs 1 gives (throughput aside), with exam feedback and the learner on."""
    feed_path, labels = tmp_path / "f.ndjson", tmp_path / "l.ndjson"
    assert main(["generate", "--parcels", "4000", "--out", str(feed_path),
                 "--labels", str(labels)]) == 0  # fmt: skip
    capsys.readouterr()
    base = ["backtest", str(feed_path), "--labels", str(labels), "--compare-learner",
            "--no-cache"]  # fmt: skip
    outs = {}
    for jobs in ("1", "2"):
        assert main([*base, "--jobs", jobs]) == 0
        got = capsys.readouterr()
        outs[jobs] = [ln for ln in got.out.splitlines() if "throughput" not in ln]
        assert ("2 runs in 2 processes" in got.err) == (jobs == "2")
    assert outs["1"] == outs["2"] and any("learner on" in ln for ln in outs["1"])
