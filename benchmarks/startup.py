"""How long `python -m nnlite.<stage> --help` takes for every stage, beside a bare `python -c pass`.

    python benchmarks/startup.py [--repeats 5]

The commands import their library (nibabel, scipy, torch) only after the arguments are parsed,
so --help costs the interpreter's start plus argparse. Prints the median wall seconds of each and
what it adds to the bare interpreter; tests/test_startup.py checks the imports, not the times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnlite.__main__ import STAGES  # noqa: E402


def wall_seconds(command: list[str], repeats: int) -> float:
    """Median wall seconds of `repeats` runs (after one warm-up run)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for run in range(repeats + 1):
        start = time.perf_counter()
        subprocess.run(command, env=env, capture_output=True, check=True)
        if run:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    bare = wall_seconds([sys.executable, "-c", "pass"], args.repeats)
    print(f"{'python -c pass':34s} {bare:5.2f} s")
    for stage in STAGES:
        seconds = wall_seconds([sys.executable, "-m", f"nnlite.{stage}", "--help"], args.repeats)
        print(f"{f'python -m nnlite.{stage} --help':34s} {seconds:5.2f} s  (+{seconds - bare:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
