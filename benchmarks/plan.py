"""Time integrity check + fingerprint + plan of a raw dataset (default: the 220 Hippocampus cases).

    python benchmarks/plan.py [--raw PATH] [--workers 2] [--reference-python /path/to/venv/bin/python]

nnlite runs as `python -m nnlite.plan RAW WORK` in a subprocess (interpreter start and imports
included). With `--reference-python`, nnU-Net v2 does the same work on the same data in the same
way: `nnUNetv2_plan_and_preprocess -d ID --verify_dataset_integrity --no_pp -npfp N --clean`
(integrity check, fingerprint and plan, no preprocessing), and the ratio is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RAW = REPO.parent / "shared" / "data" / "Dataset004_Hippocampus"

REFERENCE_ENTRY = (
    "import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
    "plan_and_preprocess_entry as main; sys.argv = ['nnUNetv2_plan_and_preprocess'] + sys.argv[1:]; main()"
)


def time_nnlite(raw: Path, workers: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "nnlite.plan", str(raw), work, "--workers", str(workers)],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        plans = json.loads((Path(work) / "plans.json").read_text())
    return elapsed, plans


def time_reference(python: str, raw: Path, workers: int) -> tuple[float, dict]:
    match = re.match(r"Dataset(\d+)_", raw.name)
    if not match:
        raise SystemExit(f"the reference needs a DatasetXXX_Name folder, got {raw.name}")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, nnUNet_raw=f"{tmp}/raw", nnUNet_preprocessed=f"{tmp}/pre",
                   nnUNet_results=f"{tmp}/res")
        Path(tmp, "raw").mkdir()
        Path(tmp, "raw", raw.name).symlink_to(raw.resolve())
        start = time.perf_counter()
        subprocess.run([python, "-c", REFERENCE_ENTRY, "-d", str(int(match.group(1))), "--verify_dataset_integrity",
                        "--no_pp", "-npfp", str(workers), "--clean"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        plans = json.loads(Path(tmp, "pre", raw.name, "nnUNetPlans.json").read_text())
    return elapsed, plans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reference-python")
    args = parser.parse_args()
    if not (args.raw / "dataset.json").is_file():
        print(f"no dataset at {args.raw}; nothing to time")
        return 0
    ours, plans = time_nnlite(args.raw, args.workers)
    full = plans["configurations"].get("3d_fullres", {})
    print(f"nnlite check + fingerprint + plan: {ours:.1f} s ({args.workers} workers); 3d_fullres patch "
          f"{full.get('patch_size')} batch {full.get('batch_size')}")
    if args.reference_python:
        ref, ref_plans = time_reference(args.reference_python, args.raw, args.workers)
        ref_full = ref_plans["configurations"].get("3d_fullres", {})
        print(f"nnU-Net v2 check + fingerprint + plan: {ref:.1f} s; 3d_fullres patch {ref_full.get('patch_size')} "
              f"batch {ref_full.get('batch_size')}")
        print(f"speed-up: {ref / ours:.2f}× (nnlite / reference time = {ours / ref:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
