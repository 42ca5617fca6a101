"""Preprocessing throughput (cases/s) of nnlite, optionally side by side with nnU-Net v2.

Two datasets: the 220 Hippocampus cases (isotropic 1 mm: cropping, normalization and I/O
dominate) and 20 anisotropic 3-channel demo cases (resampling dominates).

    python benchmarks/preprocess.py [--workers 2] [--reference-python /work/refvenv/bin/python]
    python benchmarks/preprocess.py --end-to-end [--repeats 3] [--reference-python ...]

--end-to-end times what a user waits for, in fresh processes: `python -m nnlite.plan RAW WORK`
then `python -m nnlite.preprocess WORK --configs 3d_fullres`, against nnU-Net's
`nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres -np N -npfp N` on the same raw folder, the two
in turn (A B A B …) so a drift of the machine hits both; each run starts from empty output
folders. It prints every run's wall and CPU seconds (user + sys of all processes) and the medians
with their ratio reference / nnlite.

With --reference-python, nnU-Net's fingerprint, planning and preprocessing (3d_fullres) run in a
subprocess on the same raw data; nnlite then preprocesses with the *reference's* plans converted
to nnlite Plans, so the two outputs can be compared array by array (largest |difference| of the
data, fraction of differing seg voxels). Without it nnlite plans with its own planner.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnlite.data.dataset import load_dataset  # noqa: E402
from nnlite.planning.fingerprint import extract_fingerprint  # noqa: E402
from nnlite.planning.planner import plan_experiment  # noqa: E402
from nnlite.plans import ConfigurationPlan, IntensityStats, NetworkPlan, Plans, save_plans  # noqa: E402
from nnlite.preprocessing.pipeline import case_files
from nnlite.preprocessing.runner import run_preprocessing  # noqa: E402

HIPPOCAMPUS = ROOT.parent / "shared" / "data" / "Dataset004_Hippocampus"
CONFIG = "3d_fullres"
REFERENCE_SCHEMES = {"ZScoreNormalization": "zscore", "CTNormalization": "ct", "NoNormalization": "none",
                     "RescaleTo01Normalization": "rescale_0_1"}

# Runs inside the reference Python: fingerprint, plan, preprocess (timed separately), then
# exports the preprocessed arrays as .npy so this process can compare them.
REFERENCE_SCRIPT = r"""
import json, sys, time
from pathlib import Path
import numpy as np
dataset_id, workers, export = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
from nnunetv2.experiment_planning.plan_and_preprocess_api import (
    extract_fingerprints, plan_experiments, preprocess)
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
times = {}
t = time.perf_counter()
extract_fingerprints([dataset_id], num_processes=workers, show_progress_bar=False, verbose=False)
times["fingerprint"] = time.perf_counter() - t
t = time.perf_counter()
plan_experiments([dataset_id])
times["plan"] = time.perf_counter() - t
t = time.perf_counter()
preprocess([dataset_id], configurations=("3d_fullres",), num_processes=(workers,), show_progress_bar=False)
times["preprocess"] = time.perf_counter() - t
base = Path(nnUNet_preprocessed) / convert_id_to_dataset_name(dataset_id)
folder = base / "nnUNetPlans_3d_fullres"
ds = nnUNetDatasetBlosc2(str(folder))
export.mkdir(parents=True, exist_ok=True)
for name in ds.identifiers:
    data, seg, _, _ = ds.load_case(name)
    np.save(export / f"{name}.npy", np.asarray(data[:], dtype=np.float32))
    np.save(export / f"{name}_seg.npy", np.asarray(seg[:]))
print("RESULT " + json.dumps({"times": times, "plans": str(base / "nnUNetPlans.json")}))
"""


def reference_dirs(raw: Path, dataset_id: int, tmp: Path) -> dict[str, str]:
    """nnU-Net's three folders under tmp, with raw linked in as Dataset<ID>_<Name>."""
    name = f"Dataset{dataset_id:03d}_{raw.name.split('_', 1)[-1]}"
    dirs = {key: tmp / key for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    (dirs["nnUNet_raw"] / name).symlink_to(raw.resolve())
    return {key: str(value) for key, value in dirs.items()}


def run_reference(python: str, raw: Path, dataset_id: int, workers: int, tmp: Path) -> dict:
    """Run nnU-Net on `raw` in a subprocess; returns its timings, plans path and export folder."""
    env_dirs = reference_dirs(raw, dataset_id, tmp)
    export = tmp / "reference_arrays"
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", **env_dirs}
    proc = subprocess.run([python, "-c", REFERENCE_SCRIPT, str(dataset_id), str(workers), str(export)],
                          env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"reference failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result["export"] = export
    return result


def plans_from_reference(path: Path, raw: Path) -> Plans:
    """nnU-Net's nnUNetPlans.json (3d_fullres only) as nnlite Plans, for a like-for-like run."""
    ref = json.loads(path.read_text())
    config = ref["configurations"][CONFIG]
    arch = config["architecture"]["arch_kwargs"]
    network = NetworkPlan(strides=tuple(map(tuple, arch["strides"])),
                          kernel_sizes=tuple(map(tuple, arch["kernel_sizes"])),
                          features_per_stage=tuple(arch["features_per_stage"]))
    plan = ConfigurationPlan(
        spacing=tuple(config["spacing"]), patch_size=tuple(config["patch_size"]),
        median_shape=tuple(int(round(s)) for s in config["median_image_size_in_voxels"]),
        batch_size=config["batch_size"],
        network=network, normalization=tuple(REFERENCE_SCHEMES[s] for s in config["normalization_schemes"]),
        use_mask_for_norm=tuple(config["use_mask_for_norm"]), batch_dice=config["batch_dice"],
        data_identifier="nnlite_from_reference_3d_fullres")
    stats = {k: IntensityStats(**{f: v[f] for f in IntensityStats.__dataclass_fields__})
             for k, v in ref["foreground_intensity_properties_per_channel"].items()}
    dataset = load_dataset(raw)
    return Plans(dataset_name=ref["dataset_name"], transpose=tuple(ref["transpose_forward"]),
                 original_median_spacing=tuple(ref["original_median_spacing_after_transp"]),
                 original_median_shape=tuple(ref["original_median_shape_after_transp"]),
                 configurations={CONFIG: plan}, intensity_per_channel=stats,
                 channel_names=dataset.channel_names, labels=dataset.labels, gpu_memory_gb=8.0,
                 extra={"raw_path": str(raw.resolve())})


def compare(export: Path, folder: Path, cases: list[str]) -> tuple[float, float, float]:
    """Largest |data difference|, largest |reference data|, fraction of differing seg voxels."""
    worst, scale, seg_diff, seg_total = 0.0, 0.0, 0, 0
    for case in cases:
        data_path, seg_path, _ = case_files(folder, case)
        ours, ref = np.load(data_path), np.load(export / f"{case}.npy")
        if ours.shape != ref.shape:
            raise RuntimeError(f"{case}: shape {ours.shape} vs reference {ref.shape}")
        worst = max(worst, float(np.abs(ours - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
        ours_seg, ref_seg = np.load(seg_path), np.load(export / f"{case}_seg.npy")
        seg_diff += int(np.count_nonzero(ours_seg != ref_seg))
        seg_total += ref_seg.size
    return worst, scale, seg_diff / seg_total


def timed(commands: list[list[str]], env: dict[str, str]) -> tuple[float, float]:
    """Run the commands one after another; (wall s, CPU s of all their processes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for command in commands:
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:4])} … failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def count_arrays(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.rglob(pattern))


def run_nnlite_end_to_end(raw: Path, work: Path, workers: int, env: dict[str, str]) -> tuple[float, float]:
    commands = [[sys.executable, "-m", "nnlite.plan", str(raw), str(work), "--workers", str(workers)],
                [sys.executable, "-m", "nnlite.preprocess", str(work), "--configs", CONFIG,
                 "--workers", str(workers)]]
    result = timed(commands, {**env, "PYTHONPATH": str(ROOT)})
    n_cases = len(load_dataset(raw).cases)
    if count_arrays(work / "preprocessed", "*_seg.npy") != n_cases:
        raise RuntimeError(f"nnlite left fewer than {n_cases} preprocessed cases in {work}")
    return result


def run_reference_end_to_end(python: str, raw: Path, dataset_id: int, workers: int, tmp: Path,
                             env: dict[str, str]) -> tuple[float, float]:
    dirs = reference_dirs(raw, dataset_id, tmp)
    entry = ("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
             "plan_and_preprocess_entry as main; sys.argv[0] = 'nnUNetv2_plan_and_preprocess'; sys.exit(main())")
    command = [python, "-c", entry, "-d", str(dataset_id), "-c", CONFIG, "-np", str(workers),
               "-npfp", str(workers)]
    result = timed([command], {**env, **dirs})
    n_cases = len(load_dataset(raw).cases)
    if count_arrays(Path(dirs["nnUNet_preprocessed"]), "*_seg.b2nd") != n_cases:
        raise RuntimeError(f"the reference left fewer than {n_cases} preprocessed cases in {tmp}")
    return result


def end_to_end(label: str, raw: Path, dataset_id: int, args, tmp: Path) -> None:
    """plan + preprocess in fresh processes, nnlite and the reference in turn; medians and ratio."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ours, theirs = [], []
    for repeat in range(args.repeats):
        ours.append(run_nnlite_end_to_end(raw, tmp / f"work{repeat}", args.workers, env))
        shutil.rmtree(tmp / f"work{repeat}")
        if args.reference_python:
            theirs.append(run_reference_end_to_end(args.reference_python, raw, dataset_id, args.workers,
                                                   tmp / f"ref{repeat}", env))
            shutil.rmtree(tmp / f"ref{repeat}")
    n = len(load_dataset(raw).cases)
    print(f"\n{label}: {n} cases, plan + preprocess {CONFIG}, {args.workers} workers, fresh processes")
    for name, runs in (("nnlite", ours), ("reference", theirs)):
        if runs:
            walls = ", ".join(f"{wall:.1f}" for wall, _ in runs)
            print(f"  {name:9s} wall {statistics.median(w for w, _ in runs):6.1f} s (runs {walls}), "
                  f"CPU {statistics.median(c for _, c in runs):6.1f} s")
    if theirs:
        pairs = [their[0] / our[0] for our, their in zip(ours, theirs)]
        print(f"  speed-up (reference / nnlite): wall {statistics.median(w for w, _ in theirs) / statistics.median(w for w, _ in ours):.2f}x "
              f"(pairwise median {statistics.median(pairs):.2f}x), "
              f"CPU {statistics.median(c for _, c in theirs) / statistics.median(c for _, c in ours):.2f}x")


def bench(label: str, raw: Path, dataset_id: int, args, tmp: Path) -> None:
    dataset = load_dataset(raw)
    n = len(dataset.cases)
    work = tmp / "work"
    t = time.perf_counter()
    fingerprint = extract_fingerprint(dataset, workers=args.workers)
    own_plans = plan_experiment(fingerprint, configs=[CONFIG], dataset_name=raw.name)
    t_plan = time.perf_counter() - t
    reference = None
    if args.reference_python:
        reference = run_reference(args.reference_python, raw, dataset_id, args.workers, tmp / "ref")
        plans = plans_from_reference(Path(reference["plans"]), raw)
    else:
        plans = own_plans
    save_plans(plans, work / "plans.json")
    t = time.perf_counter()
    run_preprocessing(work, [CONFIG], workers=args.workers, overwrite=True, raw=raw)
    t_pre = time.perf_counter() - t
    print(f"\n{label}: {n} cases, {args.workers} workers")
    print(f"  nnlite    preprocess {t_pre:7.1f} s  {n / t_pre:6.2f} cases/s   "
          f"(fingerprint+plan {t_plan:.1f} s)")
    if reference is None:
        return
    times = reference["times"]
    ref_plan = times["fingerprint"] + times["plan"]
    print(f"  reference preprocess {times['preprocess']:7.1f} s  {n / times['preprocess']:6.2f} cases/s   "
          f"(fingerprint+plan {ref_plan:.1f} s)")
    print(f"  speed-up  preprocess {times['preprocess'] / t_pre:.1f}x,  "
          f"incl. fingerprint+plan {(times['preprocess'] + ref_plan) / (t_pre + t_plan):.1f}x")
    folder = work / "preprocessed" / plans.configurations[CONFIG].data_identifier
    worst, scale, seg_frac = compare(reference["export"], folder, [c.name for c in dataset.cases])
    print(f"  largest |data - reference| = {worst:.2e} (reference values up to {scale:.1f}); "
          f"seg voxels differing: {seg_frac:.2e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reference-python", help="a Python with nnunetv2==2.8.1")
    parser.add_argument("--anisotropic-cases", type=int, default=20)
    parser.add_argument("--datasets", nargs="+", choices=("hippocampus", "anisotropic"),
                        default=("hippocampus", "anisotropic"))
    parser.add_argument("--end-to-end", action="store_true",
                        help="time plan + preprocess as a user runs them (fresh processes)")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end runs of each (default 3)")
    args = parser.parse_args()
    run = end_to_end if args.end_to_end else bench
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "hippocampus" in args.datasets and HIPPOCAMPUS.is_dir():
            run("Hippocampus", HIPPOCAMPUS, 4, args, tmp / "hippocampus")
        elif "hippocampus" in args.datasets:
            print(f"Hippocampus skipped: {HIPPOCAMPUS} not found")
        if "anisotropic" in args.datasets:
            from nnlite.data.demo_dataset import generate_demo_dataset

            raw = generate_demo_dataset(tmp / "Dataset901_Aniso", n_cases=args.anisotropic_cases, seed=0)
            run("Anisotropic 3-channel demo", raw, 901, args, tmp / "aniso")
    return 0


if __name__ == "__main__":
    sys.exit(main())
