"""The one exception type for user errors (bad input or usage): exit code 2, no traceback; and
the "did you mean" hint its messages give for a mistyped name."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable

SUGGESTION_CUTOFF = 0.6  # difflib similarity a choice needs to be suggested for a mistyped name


class UserError(Exception):
    """Bad input: `where` names the file, case or dataset.json key; `problem` says what is wrong;
    `hint` (optional) says how to fix it, printed on its own `hint:` line."""

    def __init__(self, where: str | Path, problem: str, hint: str | None = None):
        self.where = str(where)
        self.problem = problem
        self.hint = hint
        super().__init__(f"{self.where}: {problem}")

    def __reduce__(self):  # survive pickling across worker processes with every field intact
        return (UserError, (self.where, self.problem, self.hint))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'X'?)` for the choice closest to a mistyped `word` (difflib), else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=SUGGESTION_CUTOFF)
    return f" (did you mean '{close[0]}'?)" if close else ""
