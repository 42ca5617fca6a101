"""Shared plumbing of the command entry points: the error contract, argument parsing, logging.

Every user or environment mistake ends the same way: one `error: <where>: <problem>` line on
stderr (optionally one `hint:` line) and exit 2. A `UserError` carries the where and problem; an
`OSError` (permission denied, disk full, a path that is a file) names its file; a usage mistake
names the command. Anything else is a bug in nnlite and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, NoReturn, Sequence

from nnlite.common.errors import UserError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2
MAX_DEFAULT_WORKERS = 8  # worker processes by default: the CPU count, at most this many


def default_workers() -> int:
    """The `--workers` default of every command: the CPU count, capped at MAX_DEFAULT_WORKERS."""
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def print_error(where: str, problem: str, hint: str | None = None) -> None:
    """The one-line error (and optional hint) of the contract, on stderr."""
    sys.stdout.flush()
    print(f"error: {where}: {problem}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line naming the command (and a hint), exit 2."""

    def error(self, message: str) -> NoReturn:
        print_error(self.prog, message, hint=f"{self.prog} --help")
        sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run an entry point's `main`, mapping a UserError or an OSError to one `error:` line, exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return main(argv)
    except UserError as error:
        print_error(error.where, error.problem, error.hint)
        return EXIT_USER_ERROR
    except OSError as error:  # the environment's fault: permissions, disk full, a file for a folder
        where = error.filename if error.filename is not None else "system"
        print_error(str(where), error.strerror or str(error))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
