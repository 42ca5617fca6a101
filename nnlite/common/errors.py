"""The one exception type for user errors (bad input or usage): exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path


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
