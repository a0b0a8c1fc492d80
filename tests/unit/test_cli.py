import subprocess
import sys

import pytest

from parcel_stream.adapters import devstack
from parcel_stream.cli import main


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
