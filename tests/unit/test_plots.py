"""matplotlib is an optional extra (`plots`): without it, --plots says how to install it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from parcel_stream.cli import main
from parcel_stream.plots import INSTALL_HINT, PlotsUnavailable, require_plots, write_plots


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Import of matplotlib fails, as when the `plots` extra is not installed."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_hint_names_the_extra() -> None:
    assert INSTALL_HINT == "pip install 'parcel-stream[plots]'"


@pytest.mark.usefixtures("no_matplotlib")
def test_require_and_write_plots_without_matplotlib(tmp_path: Path) -> None:
    with pytest.raises(PlotsUnavailable, match=r"pip install 'parcel-stream\[plots\]'"):
        require_plots()
    with pytest.raises(PlotsUnavailable, match="matplotlib"):
        write_plots([], [], {}, str(tmp_path / "plots"))
    assert not (tmp_path / "plots").exists()


@pytest.mark.usefixtures("no_matplotlib")
def test_backtest_plots_without_matplotlib(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = tmp_path / "f.ndjson"
    assert main(["generate", "--parcels", "200", "--out", str(feed)]) == 0
    capsys.readouterr()
    code = main(["backtest", str(feed), "--plots", str(tmp_path / "plots")])
    assert code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err == (
        "parcel-stream: --plots needs matplotlib, which is not installed; "
        "install it with: pip install 'parcel-stream[plots]'"
    ), err
    assert "Traceback" not in captured.err and captured.out == ""  # failed before the run
    assert not (tmp_path / "plots").exists()


def test_learning_curve_is_drawn(tmp_path: Path) -> None:
    from parcel_stream.plots import write_learning_curve

    path = write_learning_curve([("rules alone", [0.4, None, 0.5]), ("model", [0.5, 0.7, 0.9])],
                                str(tmp_path / "plots"))  # fmt: skip
    assert Path(path).name == "learning-curve.png"
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.usefixtures("no_matplotlib")
def test_protocol_plots_without_matplotlib_fail_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed, labels = tmp_path / "f.ndjson", tmp_path / "l.ndjson"
    assert main(["generate", "--parcels", "200", "--out", str(feed), "--labels", str(labels)]) == 0
    capsys.readouterr()
    code = main(["backtest", str(feed), "--labels", str(labels), "--feedback", "all",
                 "--plots", str(tmp_path / "plots")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2 and "--plots needs matplotlib" in captured.err and captured.out == ""
