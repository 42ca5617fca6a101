"""Shared plumbing of the command entry points: the error contract and logging setup."""

from __future__ import annotations

import logging
import sys
from typing import Callable, Sequence

from nnlite.common.errors import UserError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run an entry point's `main`, mapping a UserError to one `error:` line on stderr and exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return main(argv)
    except UserError as error:
        sys.stdout.flush()
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
