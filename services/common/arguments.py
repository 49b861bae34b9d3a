"""The one way a service main reports a bad command-line option.

A flag that is wrong on its own is refused by the parser (``choices=`` / ``type=``, e.g.
:func:`non_negative_int_or_auto`); a combination of flags that cannot work is refused by the main's
``run(args)`` with :class:`CommandLineError`. Whoever built the parser (``synchuman serve <target>``,
``python -m gateway``) calls the main through :func:`run_checked`, which turns that into ``parser.error``:
every bad flag ends the same way, with the usage line, then ``<prog>: error: <message>``, exit status 2.
"""

from __future__ import annotations

import argparse


class CommandLineError(SystemExit):
    """A combination of service options that cannot work. ``str(error)`` is the message for the user.

    A :class:`SystemExit`, so a caller that does not catch it still ends the process with the message
    (exit status 1).
    """


def non_negative_int_or_auto(value: str) -> str | int:
    """``type=`` of an option that takes ``auto`` or a whole number >= 0."""
    if value == "auto":
        return value
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError(f"must be 'auto' or a number >= 0, got {value!r}")


def run_checked(module: object, parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``module.run(args)`` (``args`` parsed by ``parser``, which holds ``module.add_arguments``); a
    :class:`CommandLineError` becomes ``parser.error`` (usage, ``<prog>: error: ...``, exit 2)."""
    try:
        return int(module.run(args) or 0)  # type: ignore[attr-defined]
    except CommandLineError as exc:
        parser.error(str(exc))
