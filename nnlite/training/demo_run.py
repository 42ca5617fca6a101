"""The demo behind `python -m nnlite.train` without WORK: the whole pipeline on synthetic data.

generate the demo dataset (reused when present) → plan for a CPU → preprocess → train fold 0 with
the short schedule of configs/demo.yaml → predict and score the fold's validation cases.

A CPU-sized plan: the planner's own decisions (spacing, topology, patch) at a small memory budget,
with every stage's width divided by DEMO_WIDTH_DIVISOR. The synthetic lesions are bright and
compact; a quarter-width U-Net learns them in a few minutes where the full one would need hours.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from nnlite.common.layout import SUMMARY_FILE, VALIDATION_DIR, fold_folder, plans_file
from nnlite.common.files import read_json
from nnlite.data.demo_dataset import generate_demo_dataset
from nnlite.planning.work_folder import plan_dataset
from nnlite.plans import RAW_PATH_KEY, Plans, load_plans, save_plans
from nnlite.preprocessing.runner import run_preprocessing
from nnlite.training.config import TrainConfig
from nnlite.training.trainer import train_folds

log = logging.getLogger(__name__)

DEMO_CONFIGURATION = "3d_fullres"
DEMO_GPU_MEMORY_GB = 1.0  # planning budget: a patch that a CPU trains on in well under a second
DEMO_WIDTH_DIVISOR = 4  # stage widths 32, 64, … become 8, 16, …
DEMO_WORKERS = 2  # fingerprint / preprocessing processes


def run_demo(root: Path, config: TrainConfig, *, overwrite: bool = False) -> str:
    """Run the demo under `root` (raw/ and work/); returns the closing `demo: …` line (preceded by
    a `demo: classification AUC …` line when the dataset has case classes)."""
    raw, work = root / "raw", root / "work"
    if not (raw / "dataset.json").is_file():
        log.info("demo: generating the synthetic dataset in %s", raw)
        generate_demo_dataset(raw)
    if not (plans_file(work)).is_file():
        plan_demo(raw, work)
    run_preprocessing(work, [DEMO_CONFIGURATION], workers=DEMO_WORKERS)
    config = replace(config, configuration=DEMO_CONFIGURATION, fold="0")
    started = any(fold_folder(work, DEMO_CONFIGURATION, 0).glob("checkpoint_*.pt"))
    resume = started and not overwrite  # a second demo run continues (or just reports) the first
    folder = train_folds(work, config, ["0"], resume=resume, overwrite=overwrite)[0]
    summary = read_json(folder / VALIDATION_DIR / SUMMARY_FILE)
    dice = summary["foreground_mean"]["dice"]
    lines = [classification_line(summary["classification"])] if "classification" in summary else []
    lines.append(f"demo: validation Dice {dice:.4f} on {len(summary['per_case'])} cases; results in {folder}")
    return "\n".join(lines)


def classification_line(scores: dict) -> str:
    """`demo: classification AUC X on N cases` from summary.json's classification block."""
    auc = "n/a" if scores["auc"] is None else f"{scores['auc']:.4f}"
    return f"demo: classification AUC {auc} on {scores['num_cases']} cases"


def plan_demo(raw: Path, work: Path) -> Plans:
    """Plan the 3D configuration at the demo budget, narrow the network, write plans.json."""
    plan_dataset(raw, work, DEMO_GPU_MEMORY_GB, [DEMO_CONFIGURATION], workers=DEMO_WORKERS)
    plans = load_plans(plans_file(work))
    config = plans.configurations[DEMO_CONFIGURATION]
    widths = tuple(max(1, f // DEMO_WIDTH_DIVISOR) for f in config.network.features_per_stage)
    network = replace(config.network, features_per_stage=widths)
    reason = f"demo: stage widths divided by {DEMO_WIDTH_DIVISOR} to train on a CPU in minutes"
    config = replace(config, network=network, reasons=(*config.reasons, reason))
    extra = {**plans.extra, RAW_PATH_KEY: str(raw.resolve())}
    plans = replace(plans, configurations={DEMO_CONFIGURATION: config}, extra=extra)
    save_plans(plans, plans_file(work))
    return plans
