"""`python -m nnlite.preprocess WORK [--configs …] [--workers N] [--overwrite] [--raw RAW]`.

Crops, normalizes and resamples every training case for the planned configurations into
WORK/preprocessed/<data_identifier>/ (see nnlite/preprocessing/pipeline.py for the file layout).
Exit 0 when every case was written, 2 when the input is bad or any case failed (the other cases
are still written; the failures are listed by file name). A configuration whose plan changed since
its data was made is redone, saying so.
"""

from __future__ import annotations

import sys
from typing import Sequence

from nnlite.common.cli import EXIT_OK, ArgumentParser, default_workers, run

# The library is imported in main, after the arguments are parsed: --help starts instantly.


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="nnlite preprocess", description=__doc__.splitlines()[0])
    parser.add_argument("work", metavar="WORK", help="work directory holding plans.json")
    parser.add_argument("--configs", nargs="+", metavar="NAME", help="configurations to preprocess (default: all planned)")
    parser.add_argument("--workers", type=int, metavar="N", default=default_workers(),
                        help=f"worker processes (default: the CPU count, at most 8: {default_workers()})")
    parser.add_argument("--overwrite", action="store_true", help="redo cases that are already done")
    parser.add_argument("--raw", metavar="RAW", help="raw dataset folder (default: the one recorded in plans.json)")
    parser.add_argument("--memory-gb", type=float, metavar="GB",
                        help="RAM the whole process tree may use (default: the available memory minus 10 %%); "
                             "fewer workers run when the largest cases need it")
    args = parser.parse_args(argv)
    from nnlite.preprocessing.runner import run_preprocessing

    done = run_preprocessing(args.work, args.configs, max(1, args.workers), args.overwrite, args.raw,
                             memory_gb=args.memory_gb)
    print(f"preprocess: {done} cases written to {args.work}/preprocessed")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(run(main))
