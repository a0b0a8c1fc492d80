"""Integration tests run against the real dev broker and a real redis-server.

They start their own on free loopback ports and stop them afterwards. They never skip:
a missing binary is a test failure with the fix in the message.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from parcel_stream.adapters import devstack
from parcel_stream.demo import isolated_settings
from parcel_stream.settings import Settings


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devstack.StackInfo]:
    state = tmp_path_factory.mktemp("stack")
    info = devstack.up(Settings(), state)
    try:
        yield info
    finally:
        devstack.down(state)


@pytest.fixture
def settings(stack: devstack.StackInfo, tmp_path: Path) -> Settings:
    """Fresh topics, group and key prefix per test, so tests do not see each other."""
    return isolated_settings(stack, uuid.uuid4().hex[:8], tmp_path / "worker-data")
