import os
from pathlib import Path

import pytest

from parcel_stream.adapters.rules_watch import RuleSetWatcher
from parcel_stream.rules import DEFAULT_RULESET_PATH, RuleSetError
from parcel_stream.settings import Settings

DEFAULT = DEFAULT_RULESET_PATH.read_text()


def write(path: Path, version: str, extra: str = "") -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        DEFAULT.replace('version = "default-2026.11.3"', f'version = "{version}"') + extra
    )
    os.replace(tmp, path)


def test_watcher_swaps_valid_files_and_keeps_the_old_one_on_errors(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    write(path, "v1")
    now = [0.0]
    w = RuleSetWatcher(Settings(rules_file=str(path)), check_every_s=1.0, clock=lambda: now[0])
    assert w.current.version == "v1" and w.poll() is None
    write(path, "v2")
    assert w.poll() is None  # checked at most once a second
    now[0] += 1.5
    new = w.poll()
    assert new is not None and new.version == "v2" and w.current.version == "v2"
    now[0] += 1.5
    path.write_text(DEFAULT.replace("weight = 25", 'weight = "heavy"'))
    with pytest.raises(RuleSetError, match="rule NEAR_THRESHOLD: weight"):
        w.poll()
    assert w.current.version == "v2" and w.last_error
    now[0] += 1.5
    os.utime(path)  # touched, same bad content: nothing new to report
    assert w.poll() is None
    write(path, "v3")
    now[0] += 1.5
    new = w.poll()
    assert new is not None and new.version == "v3" and w.last_error is None


def test_no_rules_file_means_no_watching() -> None:
    w = RuleSetWatcher(Settings())
    assert w.poll() is None and w.current.version.startswith("default-")
