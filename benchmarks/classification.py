"""The joint classification head against an honest baseline, on the 60-case demo (fold 0).

    # the demo's signs alone (no training, a minute): single-feature AUCs on ground-truth lesions
    PYTHONPATH=. python benchmarks/classification.py --features-only
    # after training fold 0 of a 60-case demo (docs/classification.md gives the commands):
    PYTHONPATH=. python benchmarks/classification.py --raw RAW --work WORK

Prints, over all cases, the ROC AUC of each single simple lesion feature measured on the
ground-truth masks — lesion volume, mean enhancement ratio (post / pre contrast), surface/volume
— none of which may exceed 0.9 (the demo's classes are not separable by one simple feature).
With a trained WORK it then compares on fold 0's validation cases (the same split):

- the joint head: `results/3d_fullres/fold_0/validation/classification.csv`, and the head
  re-run on the same cases with both tile aggregations (foreground-weighted, plain mean);
- the baseline: logistic regression (numpy, standardised features, L2) on the three features,
  fitted on the training cases' ground-truth masks and applied to the features of the
  *predicted* segmentation of the validation cases.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from nnlite.data.case_classes import classes_of_dataset
from nnlite.data.dataset import load_dataset
from nnlite.data.image_io import read_case, read_image
from nnlite.evaluation.class_scores import binary_auc

FEATURES = ("volume_mm3", "mean_enhancement_ratio", "surface_per_volume")
MAX_SINGLE_FEATURE_AUC = 0.9  # the bound for the demo
L2 = 1e-2
STEPS = 3000
LR = 0.1


def lesion_features(pre: np.ndarray, post: np.ndarray, mask: np.ndarray, spacing) -> np.ndarray:
    """(3,) volume in mm³, mean post/pre ratio inside the lesion, surface area / volume (1/mm)."""
    mask = mask > 0
    voxel = float(np.prod(spacing))
    volume = mask.sum() * voxel
    if not mask.any():
        return np.array([0.0, 1.0, 0.0])
    ratio = float(np.mean(post[mask] / np.maximum(pre[mask], 1.0)))
    faces = 0.0
    for axis in range(3):  # exposed voxel faces along each axis × that face's area
        padded = np.pad(mask, [(1, 1) if a == axis else (0, 0) for a in range(3)])
        changes = np.abs(np.diff(padded.astype(np.int8), axis=axis)).sum()
        faces += changes * voxel / spacing[axis]
    return np.array([volume, ratio, faces / volume])


def case_features(raw: Path, case: str, mask_path: Path) -> np.ndarray:
    images = sorted((raw / "imagesTr").glob(f"{case}_*.nii.gz"))
    image = read_case(images)
    mask = read_image(mask_path).array  # (Z, Y, X)
    return lesion_features(image.data[0], image.data[1], np.asarray(mask).reshape(image.data.shape[1:]),
                           image.spacing)


def fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardise, then gradient descent on the L2-regularised logistic loss → (w, mean, std)."""
    mean, std = x.mean(0), x.std(0) + 1e-12
    z = np.c_[(x - mean) / std, np.ones(len(x))]
    w = np.zeros(z.shape[1])
    for _ in range(STEPS):
        p = 1 / (1 + np.exp(-z @ w))
        w -= LR * (z.T @ (p - y) / len(y) + L2 * np.r_[w[:-1], 0])
    return w, mean, std


def predict_logistic(model, x: np.ndarray) -> np.ndarray:
    w, mean, std = model
    return 1 / (1 + np.exp(-(np.c_[(x - mean) / std, np.ones(len(x))] @ w)))


def single_feature_aucs(raw: Path) -> dict[str, float]:
    """AUC of each feature (either direction: max(AUC, 1 − AUC)) over every case's true lesion."""
    dataset = load_dataset(raw)
    classes = classes_of_dataset(dataset)
    x = np.stack([case_features(raw, c.name, c.label) for c in dataset.cases])
    y = np.array([classes.of_case[c.name] for c in dataset.cases]) == 1
    aucs = {}
    for i, name in enumerate(FEATURES):
        auc = binary_auc(y, x[:, i])
        aucs[name] = max(auc, 1 - auc)
    return aucs


def print_single_features(raw: Path) -> bool:
    aucs = single_feature_aucs(raw)
    for name, auc in aucs.items():
        print(f"single feature {name:>24}: AUC {auc:.3f}")
    ok = max(aucs.values()) <= MAX_SINGLE_FEATURE_AUC
    print(f"no single feature above {MAX_SINGLE_FEATURE_AUC}: {'yes' if ok else 'NO'}")
    return ok


def compare(raw: Path, work: Path) -> None:
    """Head (both aggregations) vs logistic regression on fold 0's validation cases."""
    from nnlite.common.files import read_json

    dataset = load_dataset(raw)
    classes = classes_of_dataset(dataset)
    labels = {c.name: c.label for c in dataset.cases}
    split = read_json(work / "splits.json")[0]
    fold = work / "results" / "3d_fullres" / "fold_0"
    validation = fold / "validation"
    y_train = np.array([classes.of_case[c] for c in split["train"]])
    y_val = np.array([classes.of_case[c] for c in split["val"]]) == 1
    x_train = np.stack([case_features(raw, c, labels[c]) for c in split["train"]])
    x_val = np.stack([case_features(raw, c, validation / f"{c}.nii.gz") for c in split["val"]])
    baseline = binary_auc(y_val, predict_logistic(fit_logistic(x_train, y_train), x_val))
    summary = read_json(validation / "summary.json")
    print(f"joint head (validation summary):          AUC {summary['classification']['auc']:.3f}")
    for how, auc in head_aucs(work, split["val"], y_val).items():
        print(f"joint head, tiles aggregated by {how:>10}: AUC {auc:.3f}")
    print(f"logistic regression on predicted-segmentation features: AUC {baseline:.3f} "
          f"({len(split['val'])} validation cases, {len(split['train'])} training cases)")


def head_aucs(work: Path, cases: list[str], y_val: np.ndarray) -> dict[str, float]:
    """Re-run fold 0's network on its validation cases; AUC of each tile aggregation."""
    import torch

    from nnlite.inference.case_classification import ClassCollector
    from nnlite.inference.sliding_window import predict_preprocessed
    from nnlite.network import build_unet
    from nnlite.plans import load_plans
    from nnlite.network.checkpoints import load_checkpoint

    plans = load_plans(work / "plans.json")
    config = plans.configurations["3d_fullres"]
    network = build_unet(config.network, plans.num_channels, plans.num_classes, deep_supervision=False)
    checkpoint = load_checkpoint(work / "results" / "3d_fullres" / "fold_0" / "checkpoint_final.pt")
    network.load_state_dict(checkpoint["network"])
    network.eval()
    scores = {"foreground": [], "mean": []}
    collector = ClassCollector([network])
    for case in cases:
        data = np.load(work / "preprocessed" / config.data_identifier / f"{case}.npy")
        with collector, torch.no_grad():
            collector.reset()
            predict_preprocessed([network], data, config, mirror=False)
        for how in scores:
            scores[how].append(collector.case_probabilities(how)[1])
    return {how: binary_auc(y_val, np.array(s)) for how, s in scores.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, help="the 60-case demo (convert demo RAW --cases 60)")
    parser.add_argument("--work", type=Path, help="its WORK, fold 0 of 3d_fullres trained")
    parser.add_argument("--features-only", action="store_true", help="generate 60 cases, print "
                        "the single-feature AUCs and stop")
    args = parser.parse_args()
    if args.features_only or args.raw is None:
        from nnlite.data.demo_dataset import generate_demo_dataset

        with tempfile.TemporaryDirectory() as tmp:
            ok = print_single_features(generate_demo_dataset(Path(tmp) / "raw", n_cases=60))
        return 0 if ok else 1
    ok = print_single_features(args.raw)
    if args.work is not None:
        compare(args.raw, args.work)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
