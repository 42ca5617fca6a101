"""Run nnlite's whole pipeline and its demo through the command line, with a chosen copy of the package.

tests/test_refactor_golden.py runs this twice, once with the code of an older commit and once with
the working tree's, and compares what the two runs wrote. It imports nothing from nnlite: every
step is a `python -m nnlite.<command>` subprocess whose PYTHONPATH starts at PACKAGE_PARENT (the
folder holding the `nnlite/` to run), and the first step proves that this copy is the one imported.

    python tests/golden_driver.py PACKAGE_PARENT WORKSPACE

The workspace gets raw/ (4 demo cases), work/ (planned, preprocessed, every configuration trained
on both folds, `best` run), inputs/ (two cases' images), predictions/<run>/ (one folder per predict
run), best.json (results/best.json as `best` wrote it), demo/ (the shortened built-in demo) and
logs/ (each command's stdout and stderr).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

CASES = 4  # the smallest demo dataset whose two folds each validate one case of each class
FOLDS = 2
# The demo splits seven cases into five folds; fold 0 validates demo_004 and demo_007, one of
# each class, so its classification AUC is a number.
DEMO_CASES = 7
# A small budget makes the fullres patch cover under 25 % of the demo's images: the planner then
# plans 3d_lowres and 3d_cascade_fullres too (at 1 GB it plans only 2d and 3d_fullres).
PLAN_BUDGET_GB = "0.5"
WIDTH_DIVISOR = 4  # stage widths 32, 64, … become 8, 16, …: each fold trains in seconds on a CPU
CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")  # the cascade after its lowres stage
PREDICTED_CASES = ("demo_001", "demo_004")  # one benign, one malignant
CHANNELS = 3
ENSEMBLE = ("2d", "3d_fullres")
SHORT_SCHEDULE = ("--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1",
                  "--device", "cpu", "--workers", "0", "--seed", "0")
# Mirroring multiplies a 3D prediction's time by 8: it stays on where it is cheap (2d, the lowres
# winner of `best`).
PREDICT_RUNS = {
    "2d": ("--config", "2d", "--save-probabilities"),
    "3d_fullres": ("--config", "3d_fullres", "--no-mirroring"),
    "3d_cascade_fullres": ("--config", "3d_cascade_fullres", "--no-mirroring", "--save-probabilities"),
    "best": ("--best", "--save-probabilities"),
}
ENSEMBLE_RUN = ("--best", "--no-mirroring", "--save-probabilities")


class CommandFailed(RuntimeError):
    pass


class Runner:
    """Runs `python -m nnlite.<command>` with one package copy and one thread; logs under the workspace."""

    def __init__(self, package_parent: Path, workspace: Path):
        self.package_parent = Path(package_parent).resolve()
        self.workspace = Path(workspace).resolve()
        self.env = {**os.environ, "PYTHONPATH": str(self.package_parent), "OMP_NUM_THREADS": "1"}

    def python(self, *args: str, cwd: Path | None = None, name: str) -> str:
        """Run `python ARGS` in `cwd` (default: the workspace), its output in logs/NAME.out and .err;
        its stdout; raises when it fails."""
        result = subprocess.run([sys.executable, *args], cwd=cwd or self.workspace, env=self.env, check=False,
                                capture_output=True, text=True)
        logs = self.workspace / "logs"
        logs.mkdir(exist_ok=True)
        (logs / f"{name}.out").write_text(result.stdout)
        (logs / f"{name}.err").write_text(result.stderr)
        if result.returncode != 0:
            raise CommandFailed(f"{' '.join(args)} (in {cwd or self.workspace}) exited {result.returncode}:\n"
                                f"{result.stderr[-3000:]}")
        return result.stdout

    def nnlite(self, command: str, *args: str, cwd: Path | None = None, name: str | None = None) -> str:
        return self.python("-m", f"nnlite.{command}", *args, cwd=cwd, name=name or command)

    def check_imported_package(self, cwd: Path) -> None:
        """An editable install could shadow PYTHONPATH: the package imported in `cwd` must be ours.
        (Not logged: the printed path differs between the two copies.)"""
        result = subprocess.run([sys.executable, "-c", "import nnlite; print(nnlite.__file__)"], cwd=cwd,
                                env=self.env, capture_output=True, text=True, check=True)
        imported = Path(result.stdout.strip()).resolve()
        expected = self.package_parent / "nnlite" / "__init__.py"
        if imported != expected:
            raise CommandFailed(f"nnlite imported from {imported}, not from {expected}")


def narrow_networks(plans_file: Path) -> None:
    """Divide every configuration's stage widths by WIDTH_DIVISOR (plain JSON, no nnlite)."""
    plans = json.loads(plans_file.read_text())
    for configuration in plans["configurations"].values():
        network = configuration["network"]
        widths = network["features_per_stage"]
        network["features_per_stage"] = [max(1, width // WIDTH_DIVISOR) for width in widths]
    plans_file.write_text(json.dumps(plans, indent=2) + "\n")


def copy_inputs(raw: Path, inputs: Path) -> None:
    inputs.mkdir()
    for case in PREDICTED_CASES:
        for channel in range(CHANNELS):
            name = f"{case}_{channel:04d}.nii.gz"
            shutil.copyfile(raw / "imagesTr" / name, inputs / name)


def choose_ensemble(best_file: Path) -> None:
    """Make the ENSEMBLE pair best.json's winner (its `best` candidate, unchanged), whatever won:
    with one epoch of training a pair rarely beats both its members. Plain JSON, no nnlite."""
    best = json.loads(best_file.read_text())
    name = "+".join(ENSEMBLE)
    (pair,) = [candidate for candidate in best["candidates"] if candidate["name"] == name]
    best["winner"] = pair
    best_file.write_text(json.dumps(best, indent=2) + "\n")


def run_pipeline(runner: Runner) -> None:
    """convert demo → plan → narrow → preprocess → train every configuration on both folds → best
    → predict the input cases with each configuration, `--best`, and an ensemble `--best`."""
    ws = runner.workspace
    runner.nnlite("convert", "demo", "raw", "--cases", str(CASES))
    runner.nnlite("plan", "raw", "work", "--folds", str(FOLDS), "--workers", "0",
                  "--gpu-memory-gb", PLAN_BUDGET_GB, "--configs", *CONFIGURATIONS)
    narrow_networks(ws / "work" / "plans.json")
    runner.nnlite("preprocess", "work", "--workers", "0")
    for configuration in CONFIGURATIONS:
        runner.nnlite("train", "work", "--config", configuration, "--fold", "cv", "--train-config", "debug",
                      *SHORT_SCHEDULE, name=f"train_{configuration}")
    runner.nnlite("best", "work")
    shutil.copyfile(ws / "work" / "results" / "best.json", ws / "best.json")
    copy_inputs(ws / "raw", ws / "inputs")
    for run, args in PREDICT_RUNS.items():
        runner.nnlite("predict", "work", "inputs", f"predictions/{run}", "--device", "cpu", *args,
                      name=f"predict_{run}")
    choose_ensemble(ws / "work" / "results" / "best.json")
    runner.nnlite("predict", "work", "inputs", "predictions/ensemble", "--device", "cpu", *ENSEMBLE_RUN,
                  name="predict_ensemble")


def run_demo(runner: Runner) -> list[str]:
    """The built-in demo (`python -m nnlite.train` without WORK) on DEMO_CASES pre-generated cases
    (it reuses ./nnlite-demo/raw) with a one-epoch schedule; its printed `demo: …` lines, the
    workspace's path written `<workspace>`."""
    folder = runner.workspace / "demo"
    folder.mkdir()
    runner.check_imported_package(folder)
    runner.nnlite("convert", "demo", "nnlite-demo/raw", "--cases", str(DEMO_CASES), cwd=folder,
                  name="demo_convert")
    printed = runner.nnlite("train", *SHORT_SCHEDULE, cwd=folder, name="demo")
    lines = [line for line in printed.splitlines() if line.startswith("demo: ")]
    return [line.replace(str(runner.workspace), "<workspace>") for line in lines]


def run_everything(package_parent: Path, workspace: Path) -> list[str]:
    """The pipeline and the demo in a new `workspace`; the demo's `demo: …` lines."""
    workspace.mkdir(parents=True)
    runner = Runner(package_parent, workspace)
    runner.check_imported_package(runner.workspace)
    run_pipeline(runner)
    return run_demo(runner)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    for line in run_everything(Path(argv[0]), Path(argv[1])):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
