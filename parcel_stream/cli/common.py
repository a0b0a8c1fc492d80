"""What the command groups share: argument types, the clock, the subcommand registry type."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TypeAlias

    from parcel_stream.cli.errors import Parser

    Subcommands: TypeAlias = argparse._SubParsersAction[Parser]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, e.g. 1000") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        value = -1.0
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage between 0 and 100, e.g. 2")
    return value


def time_ms(text: str) -> int:
    """Unix ms, or an ISO 8601 time (UTC when no zone is given)."""
    from datetime import UTC, datetime

    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use Unix ms or ISO 8601, e.g. 2026-11-22T08:00:00Z"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def speed(text: str) -> float:
    if text in ("max", "0"):
        return 0.0
    try:
        value = float(text.rstrip("x"))
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a speed: use max, 1 (recorded pace) or a factor such as 10"
        )
    return value


def now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000
