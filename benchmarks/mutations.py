"""Break critical rules on purpose and check that the fast tests notice.

Each mutation is one small semantic change to a copy of the package (the real tree is never
touched): a snippet that must occur exactly once in its file is replaced, and the tests named for
it run against the mutated copy (`pytest -x`, slow tests included when named). A mutation is
CAUGHT when a test fails, and SURVIVED when they all pass. Before any mutation the same tests must
pass on the unmutated copy, so a catch is never a broken test.

    python benchmarks/mutations.py              # every mutation: a table, exit 1 if one survives
    python benchmarks/mutations.py --only gauss # the mutations whose name contains "gauss"

Add a mutation with every new rule that matters (see the list below).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("nnlite", "tests", "configs", "docs", "pyproject.toml", "README.md")


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the root


MUTATIONS = (
    Mutation("sliding window: Gaussian weights replaced by ones", "nnlite/inference/sliding_window.py",
             "self.gaussian = gaussian_weights(tile).to(self.device)",
             "self.gaussian = torch.ones_like(gaussian_weights(tile)).to(self.device)",
             ("tests/test_inference.py",)),
    Mutation("prediction: test-time mirroring switched off", "nnlite/inference/sliding_window.py",
             "axes = None if mirror else ()", "axes = ()", ("tests/test_inference.py",)),
    Mutation("2d on a 3D volume: mirror axes without the slice-axis offset",
             "nnlite/inference/sliding_window.py",
             "mirror_axes = [lead + axis for axis in mirror_axes]",
             "mirror_axes = [axis for axis in mirror_axes]", ("tests/test_inference.py",)),
    Mutation("final validation: mirroring setting ignored", "nnlite/evaluation/fold_validation.py",
             "mirror=config.validation.mirroring", "mirror=False",
             ("tests/test_demo.py::test_final_validation_mirrors_every_axis_when_configured",)),
    Mutation("oversampling: int instead of round", "nnlite/loading/sampling.py",
             "threshold = round(batch_size * (1 - fraction))",
             "threshold = int(batch_size * (1 - fraction))",
             ("tests/test_trainer.py", "tests/test_sampling.py")),
    Mutation("training: gradient clipping removed", "nnlite/training/trainer.py",
             "        loss.backward()\n        nn.utils.clip_grad_norm_(state.network.parameters(), grad_clip)\n",
             "        loss.backward()\n", ("tests/test_trainer.py",)),
    Mutation("resume: the RNG state is not restored", "nnlite/training/trainer.py",
             '    checkpoints.restore_rng(checkpoint["rng"])\n', "", ("tests/test_trainer.py",)),
    Mutation("resume: the oldest checkpoint wins", "nnlite/training/checkpoints.py",
             'return max(good, key=lambda checkpoint: checkpoint["epoch"])',
             'return min(good, key=lambda checkpoint: checkpoint["epoch"])', ("tests/test_checkpoints.py",)),
    Mutation("training: poly LR without its exponent", "nnlite/training/trainer.py",
             "return initial_lr * (1 - min(step, total_steps) / total_steps) ** exponent",
             "return initial_lr * (1 - min(step, total_steps) / total_steps)", ("tests/test_trainer.py",)),
    Mutation("planner: anisotropy threshold 2 instead of 3", "nnlite/planning/planner.py",
             "ANISO_THRESHOLD = 3 ", "ANISO_THRESHOLD = 2 ", ("tests/test_planner.py",)),
    Mutation("planner: 16 base features instead of 32", "nnlite/planning/planner.py",
             "BASE_FEATURES = 32 ", "BASE_FEATURES = 16 ", ("tests/test_planner.py",)),
    Mutation("resampling: separate-z threshold 2 instead of 3", "nnlite/preprocessing/resampling.py",
             "ANISOTROPY_THRESHOLD = 3.0 ", "ANISOTROPY_THRESHOLD = 2.0 ", ("tests/test_resampling.py",)),
    Mutation("normalization: CT values not clipped to the percentiles", "nnlite/preprocessing/normalization.py",
             "    np.clip(image, stats.percentile_00_5, stats.percentile_99_5, out=image)\n", "",
             ("tests/test_normalization.py",)),
    Mutation("export: no transpose back to the raw axis order", "nnlite/preprocessing/pipeline.py",
             "back = tuple(range(lead)) + tuple(lead + a for a in plans.transpose_backward)",
             "back = tuple(range(full.ndim))", ("tests/test_inference.py", "tests/test_preprocessing.py")),
    Mutation("loss: soft Dice without the factor 2", "nnlite/network/loss.py",
             "return (2 * intersect + smooth)", "return (intersect + smooth)", ("tests/test_loss.py",)),
    Mutation("loss: the lowest deep-supervision output keeps its weight", "nnlite/network/loss.py",
             "    weights[-1] = 0.0\n", "", ("tests/test_loss.py",)),
    Mutation("sampling: forced patches ignore the foreground", "nnlite/loading/sampling.py",
             "    if not present:\n        return random_start(rng, shape, patch)\n",
             "    if present:\n        return random_start(rng, shape, patch)\n", ("tests/test_sampling.py",)),
    Mutation("post-processing: keeps the smallest component", "nnlite/inference/largest_component.py",
             "out[mask & (components != int(sizes.argmax()))] = 0",
             "out[mask & (components != int(sizes[1:].argmin() + 1))] = 0", ("tests/test_postprocessing.py",)),
    Mutation("post-processing: accepted without a strict improvement", "nnlite/evaluation/postprocessing.py",
             "return not math.isnan(after) and (math.isnan(before) or after > before)",
             "return not math.isnan(after) and (math.isnan(before) or after >= before)",
             ("tests/test_postprocessing.py",)),
    Mutation("pictures: the label overlay is not drawn", "nnlite/evaluation/pictures.py",
             "alpha=OVERLAY_ALPHA, aspect=aspect", "alpha=0.0, aspect=aspect", ("tests/test_pictures.py",)),
    Mutation("device augmentation: masked channels not zeroed outside the mask",
             "nnlite/loading/device_augmentation.py",
             "        image[:, channel].masked_fill_(outside[:, 0], 0.0)\n", "        pass\n",
             ("tests/test_device_augmentation.py",)),
    Mutation("cascade: a changed lowres prediction is not redone", "nnlite/training/lowres_predictions.py",
             '"source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}', '"source_sha256": ""}',
             ("tests/test_cascade.py",)),
    Mutation("evaluation: Dice computed as IoU", "nnlite/evaluation/metrics.py",
             '"dice": 2 * tp / (2 * tp + fp + fn) if union else math.nan',
             '"dice": tp / (tp + fp + fn) if union else math.nan', ("tests/test_metrics.py",)),
    Mutation("classification: tiles averaged without their foreground weight",
             "nnlite/inference/case_classification.py",
             'weights = np.ones(len(class_probs)) if how == "mean" else foreground + TILE_WEIGHT_FLOOR',
             "weights = np.ones(len(class_probs))",
             ("tests/test_classification.py::test_foreground_weighting_by_hand",)),
    Mutation("classification: class weights not balanced", "nnlite/network/classifier.py",
             "total / (k * counts_t.clamp_min(1))", "torch.ones_like(counts_t)",
             ("tests/test_classification.py::test_balanced_weights_make_each_class_count_equally",)),
    Mutation("classification: AUC ties counted as wins", "nnlite/evaluation/class_scores.py",
             "ranks[order[start:end]] = (start + 1 + end) / 2", "ranks[order[start:end]] = end",
             ("tests/test_class_scores.py",)),
    Mutation("classification: the head-off loss path changed", "nnlite/network/classifier.py",
             "        return seg_loss(outputs, targets)\n    target",
             "        return seg_loss(outputs, targets) * 1.0000001\n    target",
             ("tests/test_classification.py::test_head_off_seeded_training_is_bit_identical_to_before_the_head",)),
)


def copy_tree(target: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        else:
            shutil.copy2(source, target / name)


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[bool, str]:
    """(passed, the first failing test id or the last output line)."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                             "-p", "no:randomly", *tests], cwd=root, env=env, capture_output=True, text=True)
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in result.stdout.splitlines()
              if line.startswith(("FAILED ", "ERROR "))]
    last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    return result.returncode == 0, failed[0] if failed else last


def apply(root: Path, mutation: Mutation) -> None:
    path = root / mutation.path
    text = path.read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise SystemExit(f"error: {mutation.path}: the snippet of '{mutation.name}' occurs {count} times "
                         f"(expected once): {mutation.old!r}")
    path.write_text(text.replace(mutation.old, mutation.new))


def check_baseline(tests: tuple[str, ...]) -> None:
    """The tests must pass on an unmutated copy (run once per set of tests)."""
    with tempfile.TemporaryDirectory(prefix="nnlite-baseline-") as tmp:
        copy_tree(Path(tmp))
        passed, detail = run_tests(Path(tmp), tests)
    if not passed:
        raise SystemExit(f"error: {' '.join(tests)}: fail without any mutation ({detail})")


def check_mutation(mutation: Mutation) -> tuple[str, float]:
    """'caught by <test>' or 'SURVIVED'; the seconds it took."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nnlite-mutation-") as tmp:
        root = Path(tmp)
        copy_tree(root)
        apply(root, mutation)
        passed, detail = run_tests(root, mutation.tests)
    return ("SURVIVED" if passed else f"caught by {detail}"), time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the mutations whose name contains this text")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.only.lower() in m.name.lower()]
    for tests in dict.fromkeys(m.tests for m in chosen):
        check_baseline(tests)
    print("| mutation | result | seconds |\n|---|---|---|")
    survivors = 0
    for mutation in chosen:
        result, seconds = check_mutation(mutation)
        survivors += result == "SURVIVED"
        print(f"| {mutation.name} | {result} | {seconds:.0f} |", flush=True)
    print(f"\n{len(chosen)} mutations, {len(chosen) - survivors} caught, {survivors} survived")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
