"""The ``parcel-stream`` command line.

One module per command group: ``ops_cmds`` (worker, dev, demo, schemas), ``kafka_cmds``
(produce, record, replay), ``analyst_cmds`` (generate, backtest), ``rules_cmds`` (rules),
``state_cmds`` (reputation, learner), ``workbench_cmds`` (workbench). Each command's
options sit next to its handler; ``errors`` turns the known failures into one line and an exit code.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

from parcel_stream.cli import (
    analyst_cmds,
    kafka_cmds,
    learn_cmds,
    ops_cmds,
    rules_cmds,
    state_cmds,
    workbench_cmds,
)
from parcel_stream.cli.errors import Parser, UsageError, report_error
from parcel_stream.settings import Settings

__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="parcel-stream",
        description="Risk-score e-commerce parcel manifests as they stream through Kafka. "
        "Configuration comes from PARCEL_* environment variables (see docs/operations.md).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    # the order of --help's command list
    ops_cmds.add_worker(sub)
    ops_cmds.add_dev(sub)
    ops_cmds.add_demo(sub)
    analyst_cmds.add_generate(sub)
    kafka_cmds.add_produce(sub)
    kafka_cmds.add_record(sub)
    kafka_cmds.add_replay(sub)
    analyst_cmds.add_backtest(sub)
    learn_cmds.add_learn(sub)
    rules_cmds.add_rules(sub)
    state_cmds.add_reputation(sub)
    state_cmds.add_learner(sub)
    workbench_cmds.add_workbench(sub)
    ops_cmds.add_schemas(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Batches allocate about ten objects a parcel that live until the batch ends; with the
    # default thresholds the collector rescans them, and every object the run keeps, over
    # and over (a third of a backtest's time). The worker, backtests and warm starts alike.
    gc.set_threshold(50_000, 20, 100)
    try:
        settings = Settings.from_env()
        # (from the chunk size; the worker's follows the chunks it takes: agents/app.py)
        gc.set_threshold(settings.young_threshold(), 20, 100)
        unknown = Settings.unknown_variables()
        if unknown:
            print(
                f"parcel-stream: warning: ignoring {', '.join(unknown)}: not a setting "
                "(misspelt? docs/operations.md, Configuration, lists them)",
                file=sys.stderr,
            )
        return int(args.func(args, settings))
    except BaseException as exc:
        code = report_error(exc)
        if code is None:
            raise
        return code
