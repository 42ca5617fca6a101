"""`python -m nnlite.check RAW`: verify a raw dataset (reads every case once, writes nothing).

Exit 0 with a short summary and any warnings, or exit 2 with one line `error: <file>: <problem>`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from nnlite.common.cli import ArgumentParser, default_workers, run

# The library is imported in main, after the arguments are parsed: --help starts instantly.

def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="nnlite check", description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, metavar="RAW", help="raw dataset folder (dataset.json, imagesTr, labelsTr)")
    parser.add_argument("--workers", type=int, metavar="N", default=default_workers(),
                        help=f"processes reading cases (default: the CPU count, at most 8: "
                             f"{default_workers()})")
    args = parser.parse_args(argv)
    from nnlite.data.case_classes import classes_of_dataset
    from nnlite.data.dataset import check_dataset, load_dataset

    dataset = load_dataset(args.raw)
    classes = classes_of_dataset(dataset)  # dataset.json "classes" + classes.csv, when declared
    report = check_dataset(dataset, workers=max(1, args.workers))
    labels = ", ".join(f"{value}={name}" for name, value in sorted(dataset.labels.items(),
                                                                   key=lambda item: item[1]))
    regions = ", ".join(f"{r.name}={list(r.labels)}→{r.painted_as}" for r in dataset.regions)
    labels += f"; regions {regions}" if regions else ""  # region labels: each one's labels and painted value
    print(f"OK: {report.num_cases} cases, {dataset.num_channels} channel(s) "
          f"({', '.join(dataset.channel_names.values())}), labels {labels}; "
          f"{len(report.warnings)} warning(s)")
    if classes is not None:
        counts = classes.counts(list(classes.of_case))
        print("case classes: " + ", ".join(f"{n} {name}" for name, n in zip(classes.names, counts)))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
