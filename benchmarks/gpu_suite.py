"""One command for everything a CPU cannot measure: run it once on a CUDA GPU, commit the report.

    python benchmarks/gpu_suite.py [--out docs/benchmarks/gpu.md] [--hippocampus RAW] [--workers 4]
    python benchmarks/gpu_suite.py --dry-run [--out DIR/gpu.md]   # every step on the CPU, tiny sizes

Four sections, about 5 minutes on one GPU (Hippocampus planning and preprocessing included):
1. memory: peak `torch.cuda.max_memory_allocated` of two AMP training steps (SGD, clipping, as
   the trainer runs them) against the plan's predicted bytes (`geometry.training_memory_bytes`)
   for three 3d_fullres plans at their planned batch: Hippocampus (from its own fingerprint), a
   CT-abdomen-like and a brain-MRI-like plan (from the fingerprints below);
2. throughput: AMP training iterations/s of the Hippocampus plan with augmentation in `--workers`
   CPU workers and on the device, as fractions of the dummy-data ceiling, eager and compiled;
3. inference: sliding-window seconds per preprocessed case, mirroring on and off;
4. training: `nnlite.train` on Hippocampus fold 0 for about `--train-seconds` (default settings:
   compile and device augmentation auto), with the final validation's Dice.
The markdown report names the date, device and torch version. When a memory ratio measured /
predicted falls outside 0.75–1.0 the report says that the memory model's constants need a refit.

`--dry-run` runs the same code on the CPU with a 4-case synthetic demo dataset, tiny patches,
narrow networks and a few iterations (the test suite runs it), so the script is known to work
before GPU time is spent; it never writes docs/benchmarks/gpu.md (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import throughput  # noqa: E402  (its Bench, loaders and timed steps)

from nnlite.data.demo_dataset import generate_demo_dataset  # noqa: E402
from nnlite.network import build_unet, geometry  # noqa: E402
from nnlite.network.loss import build_loss  # noqa: E402
from nnlite.plan import main as plan_main  # noqa: E402
from nnlite.planning.fingerprint import fingerprint_from_nnunet  # noqa: E402
from nnlite.planning.planner import plan_experiment  # noqa: E402
from nnlite.inference.sliding_window import predict_preprocessed  # noqa: E402
from nnlite.plans import Plans, load_plans, save_plans  # noqa: E402
from nnlite.preprocess import main as preprocess_main  # noqa: E402
from nnlite.training.config import load_train_config  # noqa: E402
from nnlite.training.distributed import Rank  # noqa: E402
from nnlite.training.trainer import build_state, train_step  # noqa: E402

CONFIG = "3d_fullres"
REPORT = ROOT / "docs" / "benchmarks" / "gpu.md"
HIPPOCAMPUS_CANDIDATES = (ROOT / "shared" / "data" / "Dataset004_Hippocampus",
                          ROOT.parent / "shared" / "data" / "Dataset004_Hippocampus")
MEMORY_RATIO_RANGE = (0.75, 1.0)  # measured / predicted outside this: refit the memory model
STATS = {"mean": 100.0, "median": 100.0, "std": 50.0, "min": -100.0, "max": 400.0, "percentile_00_5": -50.0,
         "percentile_99_5": 300.0}
# nnU-Net-style fingerprints (median-like spacings and shapes after cropping, repeated per case)
FINGERPRINTS = {
    "CT abdomen-like": dict(spacing=(2.5, 0.8, 0.8), shape=(180, 420, 420), cases=200, channels={"0": "CT"},
                            labels=3),
    "brain MRI-like": dict(spacing=(1.0, 1.0, 1.0), shape=(138, 170, 138), cases=400,
                           channels={"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}, labels=4),
}
WARMUP, ITERS = 5, 40  # throughput: untimed and timed steps per measurement
INFERENCE_CASES = 5
TRAIN_ITERS_PER_EPOCH = 250  # nnU-Net's; long epochs keep the per-epoch checkpoint and plot overhead small
DRY = dict(warmup=1, iters=2, cases=1, workers=0, width=4, crop=1.5)  # --dry-run sizes


@dataclass
class Suite:
    device: torch.device
    dry: bool
    workers: int
    tmp: Path
    lines: list[str]

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


# --- plans ---------------------------------------------------------------------------------------

def fingerprint_plans(name: str) -> Plans:
    spec = FINGERPRINTS[name]
    labels = {"background": 0, **{f"label{i}": i for i in range(1, spec["labels"])}}
    fingerprint = fingerprint_from_nnunet(
        {"spacings": [list(spec["spacing"])] * spec["cases"], "shapes_after_crop": [list(spec["shape"])] * spec["cases"],
         "foreground_intensity_properties_per_channel": {c: STATS for c in spec["channels"]},
         "median_relative_size_after_cropping": 1.0},
        {"channel_names": spec["channels"], "labels": labels, "numTraining": spec["cases"], "file_ending": ".nii.gz"})
    return plan_experiment(fingerprint, configs=[CONFIG], dataset_name=name)


def shrink(plans: Plans, width: int) -> Plans:
    """The dry run's stand-in: batch 1, stage widths ≤ `width`, patch = 2 × the total stride."""
    config = plans.configurations[CONFIG]
    network = replace(config.network, features_per_stage=tuple(min(f, width) for f in config.network.features_per_stage))
    total = np.prod(np.array(config.network.strides), axis=0)
    config = replace(config, network=network, batch_size=1, patch_size=tuple(int(2 * t) for t in total))
    return replace(plans, configurations={CONFIG: config})


def prepare_work(raw: Path, work: Path, suite: Suite) -> throughput.Bench:
    """Plan and preprocess `raw` into `work` (reused when done); dry run: tiny patch and widths."""
    if not (work / "plans.json").is_file():
        workers = str(max(suite.workers, os.cpu_count() or 1))
        if plan_main([str(raw), str(work), "--configs", CONFIG, "--workers", workers]) != 0:
            raise RuntimeError(f"planning {raw} failed")
        if suite.dry:
            save_plans(shrink(load_plans(work / "plans.json"), DRY["width"]), work / "plans.json")
        if preprocess_main([str(work), "--configs", CONFIG, "--raw", str(raw), "--workers", workers]) != 0:
            raise RuntimeError(f"preprocessing {work} failed")
    plans = load_plans(work / "plans.json")
    config = load_train_config("default", [f"configuration={CONFIG}"])
    return throughput.Bench("hippocampus", work, plans, throughput.preprocessed_cases(work, plans, config), raw)


def train_config(suite: Suite, compile_mode: str, augment_on: str = "auto"):
    return load_train_config("default", [f"configuration={CONFIG}", f"device={suite.device.type}", "seed=0",
                                         f"training.compile={compile_mode}", f"data.augment_on={augment_on}"])


# --- 1. memory -----------------------------------------------------------------------------------

def measure_memory(plans: Plans, suite: Suite) -> tuple[int | None, int]:
    """(measured peak bytes or None on a CPU, predicted bytes) of two eager AMP training steps."""
    config = plans.configurations[CONFIG]
    predicted = geometry.training_memory_bytes(config.network, config.patch_size, plans.num_channels,
                                               plans.num_classes, config.batch_size, amp=True)
    cuda = suite.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(suite.device)
        baseline = torch.cuda.memory_allocated(suite.device)
    state = build_state(plans, train_config(suite, "off"), suite.device, None, Rank())
    bench = throughput.Bench("memory", suite.tmp, plans, [], suite.tmp)
    loss_fn = build_loss(config.network, config.batch_dice).to(suite.device)
    batch = next(throughput.dummy_batches(bench, suite.device))
    for _ in range(2):  # the second step holds the momentum buffers too
        train_step(state, loss_fn, batch, throughput.GRAD_CLIP)
    measured = torch.cuda.max_memory_allocated(suite.device) - baseline if cuda else None
    del state, batch
    return measured, predicted


def memory_section(hippocampus: Plans, suite: Suite) -> None:
    suite.say("## 1. Peak training memory: measured vs the plan's prediction (AMP, planned batch)\n")
    suite.say("| plan | patch | batch | predicted MiB | measured MiB | measured / predicted |")
    suite.say("|---|---|---|---|---|---|")
    plans_by_name = {"Hippocampus": hippocampus, **{name: fingerprint_plans(name) for name in FINGERPRINTS}}
    outside = []
    for name, plans in plans_by_name.items():
        plans = shrink(plans, DRY["width"]) if suite.dry else plans
        config = plans.configurations[CONFIG]
        measured, predicted = measure_memory(plans, suite)
        ratio = "n/a (no CUDA)" if measured is None else f"{measured / predicted:.2f}"
        if measured is not None and not MEMORY_RATIO_RANGE[0] <= measured / predicted <= MEMORY_RATIO_RANGE[1]:
            outside.append(name)
        shown = "n/a" if measured is None else f"{measured / 2**20:.0f}"
        suite.say(f"| {name} | {'×'.join(map(str, config.patch_size))} | {config.batch_size} | "
                  f"{predicted / 2**20:.0f} | {shown} | {ratio} |")
    if outside:
        suite.say(f"\n**Outside {MEMORY_RATIO_RANGE[0]}–{MEMORY_RATIO_RANGE[1]}: {', '.join(outside)}** — "
                  "refit the constants of nnlite/network/geometry.py from these numbers.")
    suite.say()


# --- 2. throughput -------------------------------------------------------------------------------

def throughput_section(bench: throughput.Bench, suite: Suite) -> float:
    """Iterations/s per path, eager and compiled; returns the fastest real-data rate."""
    warmup, iters = (DRY["warmup"], DRY["iters"]) if suite.dry else (WARMUP, ITERS)
    suite.say(f"## 2. AMP training throughput, Hippocampus plan (batch {bench.batch_size}, "
              f"{suite.workers} workers)\n")
    suite.say("| network | ceiling it/s | cpu augmentation it/s (of ceiling) | device augmentation it/s (of ceiling) |")
    suite.say("|---|---|---|---|")
    best = 0.0
    for mode in ("off", "on"):
        state = build_state(bench.plans, train_config(suite, mode), suite.device, None, Rank())
        config = bench.plans.configurations[CONFIG]
        loss_fn = build_loss(config.network, config.batch_dice).to(suite.device)
        ceiling = throughput.timed_steps(state, loss_fn, throughput.dummy_batches(bench, suite.device), warmup, iters)
        rates = []
        for path in ("cpu", "device"):
            with throughput.loader(bench, path, suite.workers, suite.device) as batches:
                rates.append(throughput.timed_steps(state, loss_fn, batches, warmup, iters))
        best = max(best, *rates)
        cells = " | ".join(f"{r:.2f} ({r / ceiling:.0%})" for r in rates)
        suite.say(f"| {'compiled' if mode == 'on' else 'eager'} | {ceiling:.2f} | {cells} |")
    suite.say()
    return best


# --- 3. inference --------------------------------------------------------------------------------

def inference_section(bench: throughput.Bench, suite: Suite) -> None:
    config = bench.plans.configurations[CONFIG]
    network = build_unet(config.network, bench.plans.num_channels, bench.plans.num_classes,
                         deep_supervision=False).to(suite.device).eval()
    cases = bench.cases[: DRY["cases"] if suite.dry else INFERENCE_CASES]
    folder = bench.work / "preprocessed" / config.data_identifier
    suite.say(f"## 3. Sliding-window inference (preprocessed cases, step 0.5, {len(cases)} cases)\n")
    suite.say("| mirroring | seconds per case |")
    suite.say("|---|---|")
    # the dry run predicts a corner of 1.5 patches per axis: still several overlapping tiles
    corner = (slice(None), *(slice(0, int(DRY["crop"] * p)) for p in config.patch_size)) if suite.dry else ...
    for mirror in (False, True):
        predict_preprocessed([network], np.load(folder / f"{cases[0]}.npy")[corner], config, mirror=mirror,
                             device=suite.device)  # warm-up (cuDNN algorithm choice)
        throughput.synchronize(suite.device)
        start = time.perf_counter()
        for case in cases:
            predict_preprocessed([network], np.load(folder / f"{case}.npy")[corner], config, mirror=mirror,
                                 device=suite.device)
        throughput.synchronize(suite.device)
        suite.say(f"| {'on' if mirror else 'off'} | {(time.perf_counter() - start) / len(cases):.3f} |")
    suite.say()


# --- 4. a short training run ---------------------------------------------------------------------

def training_section(bench: throughput.Bench, suite: Suite, rate: float, seconds: float) -> None:
    """`nnlite.train` fold 0 for about `seconds` at the measured rate, then its validation Dice."""
    iters = DRY["iters"] if suite.dry else TRAIN_ITERS_PER_EPOCH
    epochs = 1 if suite.dry else max(1, round(seconds * rate / iters))
    command = [sys.executable, "-m", "nnlite.train", str(bench.work), "--fold", "0", "--overwrite",
               "--device", suite.device.type, "--seed", "0", "--workers", str(suite.workers),
               "--epochs", str(epochs), "--iters-per-epoch", str(iters), "--val-iters", str(max(1, iters // 5)),
               "--set", "training.lr_step=iteration"]
    if suite.dry:  # one tile step per patch and no mirroring: the validation still runs, quickly
        command += ["--set", "validation.mirroring=false", "--set", "validation.step=1"]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    summary = json.loads((bench.work / "results" / CONFIG / "fold_0" / "validation" / "summary.json").read_text())
    suite.say(f"## 4. Training run: Hippocampus fold 0, {epochs} × {iters} iterations\n")
    suite.say(f"- wall time {wall:.0f} s (validation of {len(summary['per_case'])} cases included)")
    per_label = ", ".join(f"{label}: {values['dice']:.4f}" for label, values in summary["mean"].items())
    suite.say(f"- validation Dice (foreground mean) {summary['foreground_mean']['dice']:.4f}; per label {per_label}")
    suite.say()


# --- the suite -----------------------------------------------------------------------------------

def data_source(args: argparse.Namespace, tmp: Path) -> Path:
    if args.dry_run:
        return generate_demo_dataset(tmp / "raw", n_cases=4, seed=0)
    for candidate in ([args.hippocampus] if args.hippocampus else HIPPOCAMPUS_CANDIDATES):
        if (Path(candidate) / "dataset.json").is_file():
            return Path(candidate)
    raise SystemExit("error: --hippocampus: Dataset004_Hippocampus (raw layout) not found")


def run_suite(args: argparse.Namespace, tmp: Path) -> list[str]:
    device = torch.device("cpu" if args.dry_run else "cuda")
    suite = Suite(device, args.dry_run, DRY["workers"] if args.dry_run else args.workers, tmp, [])
    name = "CPU dry run (tiny sizes: not a measurement)" if args.dry_run else torch.cuda.get_device_name(device)
    suite.say(f"# GPU suite: {name}\n")
    suite.say(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
              f"`python benchmarks/gpu_suite.py{' --dry-run' if args.dry_run else ''}`\n")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bench = prepare_work(data_source(args, tmp), args.work or tmp / "work", suite)
    memory_section(bench.plans, suite)
    rate = throughput_section(bench, suite)
    inference_section(bench, suite)
    training_section(bench, suite, rate, args.train_seconds)
    return suite.lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny sizes")
    parser.add_argument("--out", type=Path, help=f"the report (default: {REPORT.relative_to(ROOT)} on a GPU, "
                        "a temporary folder in a dry run)")
    parser.add_argument("--hippocampus", type=Path, help="raw Dataset004_Hippocampus (default: shared/data/)")
    parser.add_argument("--work", type=Path, help="WORK folder to plan/preprocess into (reused when planned)")
    parser.add_argument("--workers", type=int, default=4, help="loader workers (default 4)")
    parser.add_argument("--train-seconds", type=float, default=120.0, help="training time of section 4")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --dry-run to check the script on the CPU")
    if args.dry_run and args.out is not None and args.out.resolve() == REPORT.resolve():
        parser.error(f"--dry-run never writes {REPORT.relative_to(ROOT)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nnlite_gpu_suite_") as tmp:
        lines = run_suite(args, Path(tmp))
        out = args.out or (Path(tmp) / "gpu.md" if args.dry_run else REPORT)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
