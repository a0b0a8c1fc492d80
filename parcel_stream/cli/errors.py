"""The CLI's failures: a bad argument or a known misconfiguration is one line on stderr."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from parcel_stream.settings import ConfigError


class UsageError(Exception):
    """A bad argument: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (and a pointer to --help), no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def redis_unreachable(exc: BaseException) -> UsageError:
    return UsageError(
        f"cannot reach Redis at PARCEL_REDIS_URL ({type(exc).__name__}); is it running?"
    )


def report_error(exc: BaseException) -> int | None:
    """Print a known failure as one line and return its exit code; None for anything else
    (a bug: the caller re-raises it, traceback and all)."""
    from parcel_stream.rules import RuleSetError

    if isinstance(exc, ConfigError | UsageError | RuleSetError):
        print(f"parcel-stream: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, KeyboardInterrupt):
        print("parcel-stream: interrupted", file=sys.stderr)
        return 130
    if not isinstance(exc, Exception):
        return None
    from parcel_stream.adapters.devstack import DevStackError
    from parcel_stream.adapters.kafka_io import KafkaUnreachable

    if isinstance(exc, DevStackError):
        print(f"parcel-stream: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, KafkaUnreachable):
        print(
            f"parcel-stream: {exc}; start it with `parcel-stream dev up` "
            "or set PARCEL_KAFKA_BOOTSTRAP",
            file=sys.stderr,
        )
        return 2  # as for an unreachable Redis: the setting or the stack needs fixing
    return None
