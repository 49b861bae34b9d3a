"""The ``synchuman`` command line.

Every subcommand lives in its own module under :mod:`synchuman_cli.commands`; that module exposes
``register(subparsers)`` (adds its parser, cheap to import) and the parser's ``func`` default,
which does the work and returns the process exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order of ``synchuman --help``.
COMMANDS = ("preprocess", "reconstruct", "serve", "selftest", "ckpts", "parity", "keys")


class UserError(Exception):
    """A problem the user can fix (bad input, missing file): printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synchuman", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"synchuman_cli.commands.{name}")
        except ModuleNotFoundError as exc:  # a command whose module is not installed
            if exc.name and exc.name.startswith("synchuman_cli.commands"):
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from synchuman.logs import configure_logging

    configure_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"synchuman {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synchuman {args.command}: interrupted", file=sys.stderr)
        return 130

