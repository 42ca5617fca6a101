"""`nnlite <stage> …`: one console script; each stage is also `python -m nnlite.<stage>`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Sequence

STAGES = ("convert", "check", "plan", "preprocess", "train", "predict", "postprocess", "evaluate",
          "visualize", "best", "export", "app")


def available_stages() -> list[str]:
    return [s for s in STAGES if importlib.util.find_spec(f"nnlite.{s}") is not None]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    stages = available_stages()
    if args and args[0] in ("-h", "--help"):
        print("usage: nnlite <stage> [args …]\nstages: " + ", ".join(stages))
        return 0
    if not args or args[0] not in stages:
        problem = f"unknown stage '{args[0]}'" if args else "no stage given"
        print(f"error: nnlite: {problem} (stages: {', '.join(stages)})", file=sys.stderr)
        print("hint: nnlite <stage> --help", file=sys.stderr)
        return 2
    module = importlib.import_module(f"nnlite.{args[0]}")
    from nnlite.common.cli import run

    return run(module.main, args[1:])


if __name__ == "__main__":
    sys.exit(main())
