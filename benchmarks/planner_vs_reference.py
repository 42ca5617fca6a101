"""nnlite's planner against nnU-Net v2's ExperimentPlanner on many random fingerprints.

    python benchmarks/planner_vs_reference.py [--n 100] [--seed 0] [--gpu-memory-gb 8]
                                              [--preset default|resenc-m|resenc-l|resenc-xl]
                                              [--reference-python /path/to/venv/bin/python]

Random nnU-Net-style fingerprints (isotropic and anisotropic spacings, 8-1024 voxel shapes, 1-4
channels, 2-6 labels, 10-400 cases) are planned by nnlite with both memory models. With
`--reference-python` the same fingerprints go, in a subprocess, through the reference planner
(nnunetv2 must be installed there; it is never imported here) and every decision is compared:
target spacing, transpose, configuration set, strides, kernels, widths, patch and batch (and, with
`--preset resenc-*`, nnU-Net's nnUNetPlannerResEncM/L/XL and the residual blocks per stage).
Expected: memory model "nnunet" agrees on everything; "bytes" on everything but patch/batch where
its byte estimate decides differently (counted and listed). Without the reference, it prints
nnlite's timings and how often the two memory models differ, and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnlite.common.errors import UserError  # noqa: E402
from nnlite.planning.fingerprint import fingerprint_from_nnunet  # noqa: E402
from nnlite.planning.planner import plan_experiment  # noqa: E402
from nnlite.planning.presets import PRESETS  # noqa: E402

CHANNEL_NAMES = ("CT", "T1", "T2", "FLAIR", "ADC", "noNorm", "rescale_to_0_1")

# Runs under the reference interpreter: plans every fingerprint with nnU-Net's own ExperimentPlanner,
# feeding it the fingerprint and dataset.json in memory instead of from nnUNet_raw/nnUNet_preprocessed.
REFERENCE_DRIVER = r"""
import json, sys, contextlib, io
import nnunetv2.experiment_planning.experiment_planners.default_experiment_planner as dep
import nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners as res
cases = json.load(open(sys.argv[1])); gb = float(sys.argv[2]); out = []
planner_class = {"default": dep.ExperimentPlanner, "resenc-m": res.nnUNetPlannerResEncM,
                 "resenc-l": res.nnUNetPlannerResEncL, "resenc-xl": res.nnUNetPlannerResEncXL}[sys.argv[4]]
for case in cases:
    dep.maybe_convert_to_dataset_name = lambda x: x
    dep.nnUNet_raw = dep.nnUNet_preprocessed = "/nonexistent"
    dep.get_filenames_of_train_images_and_targets = lambda folder, dj: {}
    dep.load_json = lambda p, c=case: c["dataset_json"] if p.endswith("dataset.json") else c["fingerprint"]
    dep.isfile = lambda p: p.endswith("dataset_fingerprint.json")
    dep.shutil.copy = lambda *a, **k: None
    planner = planner_class("bench", gb)
    planner.determine_reader_writer = lambda: type("NoReader", (), {})
    planner.save_plans = lambda plans: None
    with contextlib.redirect_stdout(io.StringIO()):
        plans = planner.plan_experiment()
    dep.recursive_fix_for_json_export(plans)
    out.append(plans)
json.dump(out, open(sys.argv[3], "w"))
"""


def random_case(rng: np.random.Generator) -> dict:
    """One nnU-Net-style fingerprint + dataset.json."""
    n = int(rng.integers(10, 400))
    base_spacing = rng.uniform(0.2, 2.0, 3)
    if rng.random() < 0.4:  # anisotropic: one axis 2-20× coarser, usually with fewer slices
        axis = int(rng.integers(0, 3))
        base_spacing[axis] *= rng.uniform(2, 20)
    base_shape = np.exp(rng.uniform(np.log(8), np.log(1024), 3))
    if rng.random() < 0.4:
        base_shape[int(np.argmax(base_spacing))] = rng.uniform(8, 60)
    spacings = base_spacing * rng.uniform(0.8, 1.25, (n, 3))
    shapes = np.maximum(np.round(base_shape * rng.uniform(0.7, 1.4, (n, 3))), 1).astype(int)
    channels = int(rng.integers(1, 5))
    stats = {"mean": 1.0, "median": 1.0, "std": 1.0, "min": 0.0, "max": 2.0, "percentile_00_5": 0.0,
             "percentile_99_5": 2.0}
    return {
        "fingerprint": {"spacings": spacings.round(4).tolist(), "shapes_after_crop": shapes.tolist(),
                        "foreground_intensity_properties_per_channel": {str(c): stats for c in range(channels)},
                        "median_relative_size_after_cropping": float(rng.uniform(0.3, 1.0))},
        "dataset_json": {"channel_names": {str(c): str(rng.choice(CHANNEL_NAMES)) for c in range(channels)},
                         "labels": {"background": 0, **{f"l{i}": i for i in range(1, int(rng.integers(2, 7)))}},
                         "numTraining": n, "file_ending": ".nii.gz"},
    }


def nnlite_summary(case: dict, gb: float, model: str, preset: str = "default") -> dict:
    fingerprint = fingerprint_from_nnunet(case["fingerprint"], case["dataset_json"])
    try:
        plans = plan_experiment(fingerprint, gb, memory_model=model, preset=preset)
    except UserError as error:
        return {"error": str(error), "transpose": None, "configs": {}}
    configs = {name: {"spacing": list(c.spacing), "patch": list(c.patch_size), "batch": c.batch_size,
                      "strides": [list(s) for s in c.network.strides],
                      "kernels": [list(k) for k in c.network.kernel_sizes],
                      "features": list(c.network.features_per_stage),
                      "blocks": list(c.network.blocks_per_stage) or None}
               for name, c in plans.configurations.items()}
    return {"transpose": list(plans.transpose), "configs": configs}


def reference_summary(plans: dict) -> dict:
    configs = {}
    for name, c in plans["configurations"].items():
        if "inherits_from" in c:
            c = {**plans["configurations"][c["inherits_from"]], **c}
        arch = c["architecture"]["arch_kwargs"]
        configs[name] = {"spacing": c["spacing"], "patch": c["patch_size"], "batch": c["batch_size"],
                         "strides": arch["strides"], "kernels": arch["kernel_sizes"],
                         "features": arch["features_per_stage"], "blocks": arch.get("n_blocks_per_stage")}
    return {"transpose": plans["transpose_forward"], "configs": configs}


def compare(ours: dict, ref: dict) -> list[str]:
    """Names of the decisions that differ ('configs', 'transpose', '<config>.<field>')."""
    diffs = []
    if ours["transpose"] != ref["transpose"]:
        diffs.append("transpose")
    if set(ours["configs"]) != set(ref["configs"]):
        diffs.append("configs")
    for name in set(ours["configs"]) & set(ref["configs"]):
        a, b = ours["configs"][name], ref["configs"][name]
        if not np.allclose(a["spacing"], b["spacing"], rtol=1e-9, atol=1e-12):
            diffs.append(f"{name}.spacing")
        for key in ("patch", "batch", "strides", "kernels", "features", "blocks"):
            if a[key] != b[key]:
                diffs.append(f"{name}.{key}")
    return diffs


def run_reference(python: str, cases: list[dict], gb: float, preset: str) -> tuple[list[dict], float]:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "cases.json", Path(tmp) / "plans.json"
        src.write_text(json.dumps(cases))
        start = time.perf_counter()
        subprocess.run([python, "-c", REFERENCE_DRIVER, str(src), str(gb), str(out), preset], check=True)
        elapsed = time.perf_counter() - start
        return [reference_summary(p) for p in json.loads(out.read_text())], elapsed


def degenerate(ref: dict) -> bool:
    """The reference planned a 1-stage network (no pooling possible), which it cannot build;
    nnlite skips such configurations (docs/planning.md), so these fingerprints are set apart."""
    return any(len(c["strides"]) < 2 for c in ref["configs"].values())


def report(label: str, results: list[dict], refs: list[dict], cases: list[dict]) -> None:
    counts: dict[str, int] = {}
    examples = []
    kept = [i for i, ref in enumerate(refs) if not degenerate(ref)]
    if len(kept) < len(refs):
        print(f"{len(refs) - len(kept)} fingerprints set apart: the reference plans a 1-stage network there "
              f"(nnlite: {[results[i].get('error', sorted(results[i]['configs'])) for i in range(len(refs)) if i not in kept]})")
    results, refs, cases = [results[i] for i in kept], [refs[i] for i in kept], [cases[i] for i in kept]
    for i, (ours, ref) in enumerate(zip(results, refs)):
        diffs = compare(ours, ref)
        for d in diffs:
            counts[d] = counts.get(d, 0) + 1
        if diffs and len(examples) < 5:
            examples.append((i, diffs))
    agree = sum(1 for o, r in zip(results, refs) if not compare(o, r))
    print(f"{label}: {agree}/{len(refs)} fingerprints agree on every decision; differences: {counts or 'none'}")
    for i, diffs in examples:
        fp = cases[i]["fingerprint"]
        med = np.median(fp["shapes_after_crop"], 0).tolist()
        print(f"   #{i} median shape {med} spacing {np.median(fp['spacings'], 0).round(3).tolist()}: {diffs}")
        for name in sorted({d.split('.')[0] for d in diffs if '.' in d}):
            o, r = results[i]["configs"].get(name, {}), refs[i]["configs"].get(name, {})
            print(f"      {name}: nnlite patch {o.get('patch')} batch {o.get('batch')} | "
                  f"reference patch {r.get('patch')} batch {r.get('batch')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-memory-gb", type=float, default=None, help="default: the preset's (8, L 24, XL 40)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default")
    parser.add_argument("--reference-python")
    args = parser.parse_args()
    if args.gpu_memory_gb is None:
        args.gpu_memory_gb = PRESETS[args.preset].gpu_memory_gb
    rng = np.random.default_rng(args.seed)
    cases = [random_case(rng) for _ in range(args.n)]
    timings, results = {}, {}
    for model in ("nnunet", "bytes"):
        start = time.perf_counter()
        results[model] = [nnlite_summary(c, args.gpu_memory_gb, model, args.preset) for c in cases]
        timings[model] = time.perf_counter() - start
    print(f"nnlite planned {args.n} fingerprints: {timings['bytes']:.2f} s (bytes model), "
          f"{timings['nnunet']:.2f} s (nnunet proxy model)")
    if not args.reference_python:
        report("bytes vs nnunet-proxy model", results["bytes"], results["nnunet"], cases)
        return 0
    refs, ref_time = run_reference(args.reference_python, cases, args.gpu_memory_gb, args.preset)
    print(f"reference planned them in {ref_time:.1f} s (incl. interpreter start): nnlite bytes model is "
          f"{ref_time / timings['bytes']:.0f}× faster")
    report("nnlite (memory model nnunet) vs reference", results["nnunet"], refs, cases)
    report("nnlite (memory model bytes)  vs reference", results["bytes"], refs, cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
