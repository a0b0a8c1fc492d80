"""Session-wide test settings: the backtest's columnar cache goes to a temporary directory
(set before any test, so the CLI runs in this process and in subprocesses use it), never
to the user's ~/.cache."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_OWN: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    if "PARCEL_BACKTEST_CACHE_DIR" not in os.environ:
        path = tempfile.mkdtemp(prefix="parcel-stream-test-cache-")
        os.environ["PARCEL_BACKTEST_CACHE_DIR"] = path
        _OWN.append(path)


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _OWN:
        shutil.rmtree(path, ignore_errors=True)
