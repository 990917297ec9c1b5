"""How every command of ``dyhead-serve`` and ``dyhead-export`` runs: logging to stderr, and the
one mapping of a user's mistake to ``error: <message>`` and exit status 2."""

from __future__ import annotations

import argparse
import logging
import sys

from dyhead_serve.errors import UserError

__all__ = ["EXIT_USER_ERROR", "USER_ERRORS", "run_command"]

EXIT_USER_ERROR = 2
# What a user can cause and fix: our own errors, and a file they named that is missing, not
# readable or a folder.
USER_ERRORS = (UserError, FileNotFoundError, PermissionError, IsADirectoryError)


def run_command(args: argparse.Namespace, level: int) -> int:
    """Set up logging to stderr and run ``args.func``; returns the exit status.

    A :data:`USER_ERRORS` becomes ``error: <message>`` on stderr and exit status 2 (one line,
    except a checkpoint mismatch, whose report lists the differing keys below it); Ctrl-C exit
    status 130. Anything else is a bug and keeps its traceback.
    """
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        return int(args.func(args))
    except USER_ERRORS as exc:
        print(f"error: {str(exc).strip()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
