"""`parcel-stream workbench`: serve the officers' workbench, manage its users, or try it
on the dev stack with a synthetic feed (``workbench demo``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from parcel_stream.cli.errors import Parser, UsageError
from parcel_stream.settings import Settings

if TYPE_CHECKING:
    from parcel_stream.cli.common import Subcommands


def _stores(settings: Settings):  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import OperationalError

    from parcel_stream.adapters.workbench.db import DatabaseError
    from parcel_stream.adapters.workbench.service import open_store

    try:
        return open_store(settings)
    except (DatabaseError, OperationalError) as exc:
        msg = str(exc).splitlines()[0][:200]
        raise UsageError(f"cannot open the case store PARCEL_WORKBENCH_DB ({msg})") from None


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import logging
    import logging.config

    from parcel_stream.adapters.workbench.service import serve
    from parcel_stream.logjson import logging_config

    config = logging_config(settings.log_level, settings.log_format)
    if config is not None:
        logging.config.dictConfig(config)
    else:
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    _stores(settings)  # a bad database is one line, before anything starts
    return serve(settings, args.state_dir, streams=not args.no_streams)


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        try:
            return Path(args.password_file).read_text().rstrip("\n")
        except OSError as exc:
            raise UsageError(f"--password-file {args.password_file}: {exc.strerror}") from None
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    import getpass

    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UsageError("the two passwords differ")
    return first


def cmd_user(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.adapters.workbench.auth import AuthError

    _store, users = _stores(settings)
    try:
        if args.user_action == "add":
            hubs = [h for h in (args.hubs or "").split(",") if h.strip()]
            u = users.add(args.name, _password(args), args.role, hubs)
            where = ", ".join(u.hubs) if u.hubs else "all hubs"
            print(f"added {u.role} {u.username} ({where})")
        elif args.user_action == "disable":
            users.set_disabled(args.name, True)
            print(f"disabled {args.name} (signed out everywhere)")
        elif args.user_action == "enable":
            users.set_disabled(args.name, False)
            print(f"enabled {args.name}")
        elif args.user_action == "password":
            users.set_password(args.name, _password(args))
            print(f"password of {args.name} changed (signed out everywhere)")
        else:
            for u in users.all():
                shown = ",".join(u.hubs) or "*"
                print(f"{u.username:<20} {u.role:<11} {shown:<24} "
                      f"{'disabled' if u.disabled else 'active'}")  # fmt: skip
    except AuthError as exc:
        raise UsageError(str(exc)) from None
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from parcel_stream.adapters.workbench.demo import run_workbench_demo

    return run_workbench_demo(settings, parcels=args.parcels, port=args.port,
                              state_dir=args.state_dir, stop_after_s=args.stop_after)  # fmt: skip


def add_workbench(sub: Subcommands) -> None:
    w = sub.add_parser("workbench", help="the officers' workbench: serve it, manage its users, "
                       "or try it on the dev stack")  # fmt: skip
    ws = w.add_subparsers(dest="workbench_command", required=True, metavar="ACTION",
                          parser_class=Parser)  # fmt: skip
    serve = ws.add_parser("serve", help="serve the workbench (PARCEL_WORKBENCH_* settings)")
    serve.add_argument("--state-dir", default=os.environ.get("PARCEL_DATA_DIR", ""),
                       help="write the port listened on to STATE_DIR/workbench.port")  # fmt: skip
    serve.add_argument("--no-streams", action="store_true",
                       help="serve the pages only: another instance ingests holds and "
                       "sends the exam results (outcomes recorded here wait in the case "
                       "store for it)")  # fmt: skip
    serve.set_defaults(func=cmd_serve)
    user = ws.add_parser("user", help="add, disable, enable or list users")
    us = user.add_subparsers(dest="user_action", required=True, metavar="ACTION",
                             parser_class=Parser)  # fmt: skip
    add = us.add_parser("add", help="add a user; the password is read from --password-file, "
                        "standard input, or asked for")  # fmt: skip
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["officer", "supervisor", "analyst"])
    add.add_argument("--hubs", default="", help="an officer's hubs, comma-separated")
    add.add_argument("--password-file", default="")
    for action, text in (("disable", "disable a user and end their sessions"),
                         ("enable", "enable a disabled user"),
                         ("password", "set a user's password (ends their sessions)")):  # fmt: skip
        a = us.add_parser(action, help=text)
        a.add_argument("name")
        if action == "password":
            a.add_argument("--password-file", default="")
    us.add_parser("list", help="list the users")
    user.set_defaults(func=cmd_user)
    demo = ws.add_parser("demo", help="start the dev stack, a worker, a synthetic feed and the "
                         "workbench with a demo officer; Ctrl-C stops everything")  # fmt: skip
    demo.add_argument("--parcels", type=int, default=20_000)
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--state-dir", default=".parcel-stream/workbench-demo")
    demo.add_argument("--stop-after", type=float, default=0.0,
                      help="stop by itself after this many seconds (0: on Ctrl-C)")  # fmt: skip
    demo.set_defaults(func=cmd_demo)
