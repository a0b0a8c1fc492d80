import argparse
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from parcel_stream.adapters import devstack
from parcel_stream.cli import build_parser, main


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parcel_stream.cli", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_bad_config_is_one_line_without_traceback() -> None:
    import os

    p = run("dev", "status", env={**os.environ, "PARCEL_PARTITIONS": "many"})
    assert p.returncode == 2
    assert (
        p.stderr.strip()
        == "parcel-stream: PARCEL_PARTITIONS='many' is not an integer; set e.g. PARCEL_PARTITIONS=1"
    )


def test_bad_argument_names_the_fix() -> None:
    p = run("generate", "--parcels", "-3")
    assert p.returncode == 2 and "must be at least 1" in p.stderr and "Traceback" not in p.stderr


def test_missing_feed_file(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["produce", str(tmp_path / "nope.ndjson")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "parcel-stream generate" in err


def test_generate_writes_feed_and_labels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    feed, labels = tmp_path / "f.ndjson", tmp_path / "l.ndjson"
    assert main(["generate", "--parcels", "50", "--out", str(feed), "--labels", str(labels)]) == 0
    assert len(feed.read_bytes().splitlines()) == 50 == len(labels.read_bytes().splitlines())


def test_the_protocol_backtest_reports_and_writes_scores(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    feed, labels, scores = tmp_path / "f.ndjson", tmp_path / "l.ndjson", tmp_path / "s.ndjson"
    assert main(["generate", "--parcels", "3000", "--days", "3", "--hidden-risk",
                 "--out", str(feed), "--labels", str(labels)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["backtest", str(feed), "--labels", str(labels), "--feedback", "all",
                 "--outcome-delay", "12h", "--capacity-pct", "5", "--compare-model",
                 "--scores-out", str(scores)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| rules alone |" in out and "| model, no exploration |" in out
    rows = [orjson.loads(x) for x in scores.read_bytes().splitlines()]
    assert len(rows) == 3000 and {"probability", "selection_probability", "lane"} <= set(rows[0])
    assert sum(r["lane"] == "hold" for r in rows) in range(120, 180)  # 5 % per hub and day
    assert main(["backtest", str(feed), "--feedback", "selected"]) == 2  # needs --labels
    assert "--labels" in capsys.readouterr().err


def test_the_protocols_variants_in_parallel_processes_report_what_they_report_in_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed, labels = tmp_path / "f.ndjson", tmp_path / "l.ndjson"
    assert main(["generate", "--parcels", "2000", "--days", "2", "--hidden-risk",
                 "--out", str(feed), "--labels", str(labels)]) == 0  # fmt: skip
    capsys.readouterr()
    outs = {}
    for jobs in ("1", "2"):
        assert main(["backtest", str(feed), "--labels", str(labels), "--feedback", "selected",
                     "--compare-model", "--jobs", jobs]) == 0  # fmt: skip
        got = capsys.readouterr()
        outs[jobs] = got.out
        assert ("5 runs, 2 at once" in got.err) == (jobs == "2")
    assert outs["1"] == outs["2"] and "| model, no IPW weights |" in outs["1"]


def test_missing_redis_server_is_a_clear_error(monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(devstack.DevStackError, match="apt-get install redis-server"):
        devstack.redis_binary()
    assert main(["dev", "up", "--state-dir", str(tmp_path / "s")]) == 1
    assert "apt-get install redis-server" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "feed.ndjson", "--speed", "fast"],
        ["replay", "feed.ndjson", "--as", "sideways"],
        ["record", "--out", "x.ndjson", "--until", "tomorrow"],
        ["backtest", "feed.ndjson", "--capacity-pct", "0"],
        ["backtest", "feed.ndjson", "--feedback", "selected", "--outcome-delay", "soon"],
        ["backtest", "feed.ndjson", "--feedback", "some"],
        ["backtest", "feed.ndjson", "--feedback", "all", "--exploration", "2"],
        ["backtest", "feed.ndjson", "--feedback", "selected", "--period", "0s"],
        ["backtest", "feed.ndjson", "--feedback", "selected", "--ipw-clip", "0"],
        ["learn", "feed.ndjson", "--labels", "l.ndjson", "--period", "0s"],
        ["learn", "feed.ndjson", "--labels", "l.ndjson", "--min-examinations", "-1"],
        ["learn", "feed.ndjson", "--labels", "l.ndjson", "--replace", "--add"],
        ["learner", "rollback", "--version", "-1"],
        ["generate", "--parcels", "many"],
        ["demo", "--batch-size", "0"],
        ["dev", "sideways"],
        ["no-such-command"],
    ],
)
def test_every_bad_argument_is_one_line(argv: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and "--help" in err and "Traceback" not in err


def test_kafka_commands_without_a_broker_fail_fast_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """produce, record and replay against a closed loopback port: one line naming the fix,
    well before kafka-python's own 30 s bootstrap timeout."""
    import os
    import socket
    import time

    feed = tmp_path / "feed.ndjson"
    feed.write_text('{"parcel_id": "P1", "shipper": {"id": "S1"}}\n')
    commands = {
        "produce": ["produce", str(feed)],
        "record": ["record", "--out", str(tmp_path / "out.ndjson")],
        "replay": ["replay", str(feed)],
    }
    # Bound but not listening: connections are refused, and no other process can take the
    # port while the test holds it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        bootstrap = f"127.0.0.1:{closed.getsockname()[1]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARCEL_")}
        env["PARCEL_KAFKA_BOOTSTRAP"] = bootstrap
        t0 = time.monotonic()
        procs = {
            name: subprocess.Popen(
                [sys.executable, "-m", "parcel_stream.cli", *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for name, argv in commands.items()
        }
        results = {name: (p.communicate(timeout=60), p.returncode) for name, p in procs.items()}
        elapsed_s = time.monotonic() - t0
    for name, ((_out, err), code) in results.items():
        assert code == 2, (name, err)
        assert err == (
            f"parcel-stream: cannot reach Kafka at {bootstrap} within 5 s; start it with "
            "`parcel-stream dev up` or set PARCEL_KAFKA_BOOTSTRAP\n"
        ), name
    assert elapsed_s < 15, elapsed_s  # loose bound: the three ran side by side


def _subcommands() -> list[str]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def test_the_command_list() -> None:
    """The commands, in the order --help lists them (they are assembled from several modules)."""
    assert _subcommands() == [
        "worker", "dev", "demo", "generate", "produce", "record", "replay",
        "backtest", "learn", "rules", "reputation", "learner", "workbench", "schemas",
    ]  # fmt: skip


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_help_exits_0(command: str, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"usage: parcel-stream {command}") and captured.err == ""


def test_module_entry_point_help() -> None:
    """`python -m parcel_stream.cli` (the package's __main__) runs the same command line."""
    p = run("--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: parcel-stream") and not p.stderr


def test_a_missing_feed_is_one_line_for_the_protocol_and_learn(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    labels = tmp_path / "labels.ndjson"
    labels.write_text('{"parcel_id": "P1", "label": null}\n')
    missing = str(tmp_path / "nofeed.ndjson")
    for argv in (["backtest", missing, "--labels", str(labels), "--feedback", "selected"],
                 ["learn", missing, "--labels", str(labels), "--dry-run"]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "nofeed.ndjson: no such file" in err and "Traceback" not in err


def test_learn_refuses_labels_that_match_nothing_in_the_feed(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    feed, labels = tmp_path / "feed.ndjson", tmp_path / "labels.ndjson"
    assert main(["generate", "--parcels", "200", "--out", str(feed), "--labels",
                 str(tmp_path / "real.ndjson")]) == 0  # fmt: skip
    labels.write_text('{"parcel_id": "OTHER1", "label": null}\n')
    assert main(["learn", str(feed), "--labels", str(labels), "--dry-run"]) == 2
    assert "none of its 1 parcel ids is in" in capsys.readouterr().err
