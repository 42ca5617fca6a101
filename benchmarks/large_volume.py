"""Peak memory and wall time of predicting (and preprocessing) whole-body-CT-sized volumes.

    python benchmarks/large_volume.py [--work DIR] [--shape 300 512 512] [--classes 13]
                                      [--train-epochs N --train-iters M] [--save-probabilities]
                                      [--table-classes 3 7 13] [--table-depths 150 300]
                                      [--preprocess-cases 3] [--memory-gb 3]
                                      [--reference-python /tmp/refvenv/bin/python]

A CT-like case (air -1000 HU, a body, lungs, a spine and 12 organs of one fixed anatomy, each case
moving them a little; int16) of --shape voxels (Z, Y, X) at 2.5 × 0.7 × 0.7 mm is predicted by a
plain U-Net with --classes outputs planned at a coarser spacing, 5.0 × 1.4 × 1.4 mm (CT
normalisation, separate-z resampling both ways), so the export resamples the probabilities up
8-fold. The model is written once as an nnU-Net v2 model folder (plans.json, dataset.json,
fold_0/checkpoint_final.pth in nnU-Net's layout, renamed to PlainConvUNet's keys with its aliases):
with --train-epochs, the weights nnlite trained on TRAIN_CASES other generated cases (at the planned
spacing and TRAIN_PATCH, TRAIN_SETTINGS); without, random weights drawn by nnlite's initialiser,
the output layer scaled by --head-gain (see HEAD_GAIN). nnlite predicts with it through
`convert nnunet-model`, nnU-Net (with --reference-python) with `nnUNetv2_predict_from_modelfolder`
(its defaults: 3 preprocessing and 3 export processes): the same weights on both sides. Both run on
the CPU without mirroring, in fresh processes, one after the other; every run's process tree
(children included) is sampled every 100 ms for its proportional set size (PSS: pages shared
between the processes counted once) and resident size.

Printed: per run the peak PSS / RSS of the tree and the wall time; nnlite's peak against the
physical floor (the raw image as read, float32, + one label map + one class channel in the
original geometry), the voxel agreement of the two label maps (all voxels, and the voxels either
calls foreground) and each one's mean Dice against the generated labels; with --save-probabilities
the same prediction saving `<case>.npz` (nnlite at T = 1 and with a fitted T = 1.5, nnU-Net with
--save_probabilities); the growth of nnlite's peak per added class (table over --table-classes, and
over --table-depths: the same case cut to fewer slices). With --preprocess-cases N: a raw dataset of
N such cases (with labels) is planned and preprocessed (3d_fullres) by nnlite and by nnU-Net
(`nnUNetv2_plan_and_preprocess`), peak memory and wall time each, and nnlite's preprocess once more
with `--memory-gb` (its peak must stay under that budget).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACING = (2.5, 0.7, 0.7)  # (Z, Y, X) mm of the generated case
COARSE = (5.0, 1.4, 1.4)  # the planned spacing: export resamples 2 × 2 × 2 up
PATCH = (48, 128, 128)
TRAIN_PATCH = (32, 96, 96)  # training at a smaller patch: 2.7× fewer voxels per step
TRAIN_CASES = 4
# no augmentation (the generated cases differ only by small shifts and noise), 2 of 3 patches centred
# on an organ (12 small classes learn sooner), the learning rate decayed every step
TRAIN_SETTINGS = ("--set", "validation.enabled=false", "--set", "data.augment=false",
                  "--set", "data.oversample_foreground=0.66", "--set", "training.lr_step=iteration")
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
KERNELS = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
FEATURES = [8, 16, 32, 64, 128]
TRAINER_FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"
CT_STATS = {"mean": 40.0, "std": 300.0, "median": 40.0, "min": -1024.0, "max": 3000.0,
            "percentile_00_5": -1000.0, "percentile_99_5": 1500.0}
MIB = 2**20
# Random weights predict a label that changes almost every voxel, so the export's interpolation
# decides most voxels: nnU-Net interpolates logits, nnlite probabilities (docs/benchmarks/large_volume.md). With
# the output layer scaled down, softmax works in its linear range, where both rules give the same
# argmax, and the agreement measures the implementations (a trained model's maps are smooth and
# agree to 99.96 %, benchmarks/nnunet_model.py); --head-gain 1 shows the rules' difference.
HEAD_GAIN = 0.005
ANATOMY_SEED = 0  # the organ layout every generated case shares


# --- the generated case -----------------------------------------------------------------------

def organ_layout(organs: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(centre, radii, HU) of each organ in the unit cube (Z, Y, X) ∈ [-1, 1]³: one fixed anatomy
    (as in real CT, label k is always the same organ at about the same place and density), so a
    model can learn it; the HU values are 80 apart (noise σ 15)."""
    rng = np.random.default_rng(ANATOMY_SEED)
    densities = rng.permutation(np.arange(organs)) * 80 + 100
    return [(rng.uniform([-0.7, -0.3, -0.5], [0.7, 0.3, 0.5]), rng.uniform([0.15, 0.1, 0.1], [0.35, 0.22, 0.22]),
             int(density)) for density in densities]


def ct_like_case(shape: tuple[int, int, int], seed: int = 0, organs: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(image int16 HU, label map uint8 with `organs` ellipsoids) of shape (Z, Y, X); `seed` moves
    and resizes each organ of the fixed layout a little (one patient to the next) and draws the noise."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    image = np.full(shape, -1000, np.int16)
    labels = np.zeros(shape, np.uint8)
    zz = z[:, None, None]
    body = (y[None, :, None] / 0.62) ** 2 + (x[None, None, :] / 0.85) ** 2 <= 1 - 0.2 * zz**2
    image[body] = 20
    for side in (-0.4, 0.4):  # lungs in the upper half
        lung = (((y[None, :, None] + 0.05) / 0.35) ** 2 + ((x[None, None, :] - side) / 0.3) ** 2
                + ((zz - 0.45) / 0.45) ** 2) <= 1
        image[lung] = -800
    spine = ((y[None, :, None] - 0.4) / 0.1) ** 2 + (x[None, None, :] / 0.08) ** 2 <= 1
    image[np.broadcast_to(spine, shape)] = 1400
    for label, (usual_centre, usual_radii, density) in enumerate(organ_layout(organs), start=1):
        centre = usual_centre + rng.uniform(-0.04, 0.04, 3)
        radii = usual_radii * rng.uniform(0.9, 1.1, 3)
        box = [slice(max(0, int((c - r + 1) / 2 * n)), min(n, int((c + r + 1) / 2 * n) + 1))
               for c, r, n in zip(centre, radii, shape)]
        grid = np.ix_(z[box[0]], y[box[1]], x[box[2]])
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
        image[tuple(box)][inside] = density
        labels[tuple(box)][inside] = label
    noise = rng.normal(0, 15, size=shape[1:]).astype(np.int16)  # one noise plane, rolled per slice
    for k in range(shape[0]):
        image[k] += np.roll(noise, 7 * k, axis=1)
    return image, labels


def write_nifti(path: Path, array: np.ndarray, spacing: tuple[float, float, float]) -> None:
    import nibabel as nib

    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])  # array (Z, Y, X) → NIfTI (X, Y, Z)
    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine)
    image.header.set_zooms((spacing[2], spacing[1], spacing[0]))
    nib.save(image, str(path))


# --- the model, as an nnU-Net v2 model folder -------------------------------------------------

def nnunet_plans(classes: int, patch: tuple[int, int, int] = PATCH) -> dict:
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    arch = {"n_stages": len(FEATURES), "features_per_stage": FEATURES,
            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": KERNELS, "strides": STRIDES,
            "n_conv_per_stage": [2] * len(FEATURES), "n_conv_per_stage_decoder": [2] * (len(FEATURES) - 1),
            "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": 2, "patch_size": list(patch), "median_image_size_in_voxels": [150, 256, 256],
              "spacing": list(COARSE), "normalization_schemes": ["CTNormalization"],
              "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": resampling,
              "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
              "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
              "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                               "arch_kwargs": arch,
                               "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
              "batch_dice": True}  # nnU-Net plans True for a 3d_fullres that has a 3d_lowres (cases this large)
    return {"dataset_name": "Dataset990_LargeCT", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": list(SPACING),
            "original_median_shape_after_transp": [300, 512, 512], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"3d_fullres": config}, "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {"0": CT_STATS}}


def dataset_json(classes: int, cases: int = 1) -> dict:
    return {"channel_names": {"0": "CT"},
            "labels": {"background": 0, **{f"organ{k}": k for k in range(1, classes)}},
            "numTraining": cases, "file_ending": ".nii.gz", "name": "LargeCT"}


def nnunet_state_dict(classes: int, head_gain: float, seed: int = 0) -> dict:
    """Random weights (nnlite's initialiser) under PlainConvUNet's keys, its aliases included, the
    output layer's weights and bias scaled by `head_gain`."""
    import torch

    from nnlite.network import build_unet
    from nnlite.network.nnunet_weights import nnlite_to_nnunet
    from nnlite.plans import NetworkPlan

    plan = NetworkPlan(strides=tuple(map(tuple, STRIDES)), kernel_sizes=tuple(map(tuple, KERNELS)),
                       features_per_stage=tuple(FEATURES))
    torch.manual_seed(seed)
    state = nnlite_to_nnunet(build_unet(plan, 1, classes).state_dict(), "PlainConvUNet")
    return with_nnunet_aliases({key: tensor * head_gain if key.startswith("decoder.seg_layers.") else tensor
                                for key, tensor in state.items()})


def with_nnunet_aliases(state: dict) -> dict:
    """PlainConvUNet's state dict holds each encoder tensor twice (decoder.encoder.*) and each conv
    unit's conv/norm again under all_modules.0/1: add them, as nnU-Net's strict load expects."""
    aliased = dict(state)
    for key, tensor in state.items():
        if key.startswith("encoder."):
            aliased["decoder." + key] = tensor
    for key, tensor in list(aliased.items()):
        for part, index in ((".conv.", "0"), (".norm.", "1")):
            if ".convs." in key and part in key:
                aliased[key.replace(part, f".all_modules.{index}.")] = tensor
    return aliased


def write_model_folder(root: Path, classes: int, head_gain: float = HEAD_GAIN, weights: dict | None = None,
                       patch: tuple[int, int, int] = PATCH) -> Path:
    """The nnU-Net model folder: `weights` (nnU-Net keys), else random ones with the output layer
    scaled by `head_gain`."""
    import torch

    folder = root / TRAINER_FOLDER
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    plans = nnunet_plans(classes, patch)
    (folder / "plans.json").write_text(json.dumps(plans, indent=1))
    (folder / "dataset.json").write_text(json.dumps(dataset_json(classes), indent=1))
    state = nnunet_state_dict(classes, head_gain) if weights is None else with_nnunet_aliases(weights)
    checkpoint = {"network_weights": state, "optimizer_state": None,
                  "grad_scaler_state": None, "logging": {}, "_best_ema": None, "current_epoch": 0,
                  "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0,
                                "dataset_json": dataset_json(classes), "device": "cpu"},
                  "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)}
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def trained_weights(root: Path, shape: tuple[int, int, int], classes: int, epochs: int, iters: int,
                    threads: str) -> dict:
    """The model trained by nnlite (fold all, no validation) on TRAIN_CASES other cases of the same
    anatomy, generated at the planned spacing (half of `shape`, the same physical extent: nothing to
    resample), at the smaller TRAIN_PATCH (the network is fully convolutional: predicted at PATCH);
    its weights under PlainConvUNet's keys."""
    import torch

    from nnlite.network.nnunet_weights import nnlite_to_nnunet

    work = root / "train_work"
    checkpoint = work / "results" / "3d_fullres" / "fold_all" / "checkpoint_final.pt"
    if not checkpoint.is_file():
        coarse_shape = tuple(round(n * s / c) for n, s, c in zip(shape, SPACING, COARSE))
        raw = make_raw_dataset(root / "train_raw", coarse_shape, TRAIN_CASES, classes, COARSE, first_seed=1)
        model = write_model_folder(root / "train_model", classes, patch=TRAIN_PATCH)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": threads}
        for command in (["convert", "nnunet-model", str(model), str(work), "--overwrite"],
                        ["preprocess", str(work), "--raw", str(raw)],
                        ["train", str(work), "--fold", "all", "--epochs", str(epochs), "--iters-per-epoch",
                         str(iters), "--val-iters", "1", "--batch-size", "2", "--workers", "0", "--seed", "0",
                         "--overwrite", *TRAIN_SETTINGS]):
            done = subprocess.run([sys.executable, "-m", "nnlite", *command], check=False, env=env, capture_output=True,
                                  text=True)
            if done.returncode != 0:
                raise RuntimeError(f"nnlite {command[0]} failed:\n{done.stderr[-3000:]}")
    return nnlite_to_nnunet(torch.load(checkpoint, weights_only=True)["network"], "PlainConvUNet")


# --- measuring a process tree -------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    """Child processes of `pid` (Linux: /proc/PID/task/*/children), [] once it is gone."""
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(child) for child in handle.read().split())
    except OSError:
        pass
    return found


def _tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def _memory_of(pid: int) -> tuple[int, int]:
    """(PSS, RSS) bytes of one process (0, 0 when it is gone)."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, rss


@dataclass
class Run:
    name: str
    wall: float
    peak_pss: int
    peak_rss: int


def measured(name: str, command: list[str], env: dict | None = None, period: float = 0.1) -> Run:
    """Run `command`; sample its process tree's summed PSS and RSS until it ends."""
    peaks = [0, 0]
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            sizes = [_memory_of(pid) for pid in _tree(proc.pid)]
            peaks[0] = max(peaks[0], sum(s[0] for s in sizes))
            peaks[1] = max(peaks[1], sum(s[1] for s in sizes))
            time.sleep(period)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{output[-4000:]}")
    return Run(name, wall, peaks[0], peaks[1])


# --- the runs -----------------------------------------------------------------------------------

def nnlite_predict(model: Path, work: Path, inputs: Path, out: Path, threads: str, *, name: str = "nnlite predict",
                   temperature: float | None = None, extra: tuple[str, ...] = ()) -> Run:
    """`convert nnunet-model` then `predict` (+ `extra`); `temperature`: a fitted T written for it."""
    from nnlite.common.layout import temperature_file

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": threads}
    subprocess.run([sys.executable, "-m", "nnlite.convert", "nnunet-model", str(model), str(work), "--overwrite"],
                   check=True, capture_output=True, env=env)
    if temperature is not None:
        temperature_file(work, "3d_fullres").write_text(json.dumps({"temperature": temperature}))
    shutil.rmtree(out, ignore_errors=True)
    return measured(name, [sys.executable, "-m", "nnlite.predict", str(work), str(inputs), str(out),
                           "--folds", "0", "--no-mirroring", "--device", "cpu", *extra], env)


def reference_predict(python: str, model: Path, inputs: Path, out: Path, threads: str, *, name: str = "nnU-Net predict",
                      extra: tuple[str, ...] = ()) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "nnUNet_raw": str(out.parent / "nnUNet_raw"),
           "nnUNet_preprocessed": str(out.parent / "nnUNet_pre"), "nnUNet_results": str(out.parent / "nnUNet_res")}
    entry = ("import sys; from nnunetv2.inference.predict_from_raw_data import predict_entry_point_modelfolder "
             "as main; sys.argv[0] = 'nnUNetv2_predict_from_modelfolder'; sys.exit(main())")
    return measured(name, [python, "-c", entry, "-i", str(inputs), "-o", str(out), "-m", str(model),
                           "-f", "0", "-device", "cpu", "--disable_tta", "--disable_progress_bar", *extra], env)


def read_labels(path: Path) -> np.ndarray:
    """A NIfTI label map written by write_nifti or a predictor, as (Z, Y, X)."""
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Fraction of voxels with the same label in the two maps, and the same over the voxels that
    either map calls foreground (the part a background-only model would not show)."""
    if a.shape != b.shape:
        raise RuntimeError(f"label map shapes differ: {a.shape} vs {b.shape}")
    foreground = (a > 0) | (b > 0)
    return float(np.mean(a == b)), float(np.mean(a[foreground] == b[foreground])) if foreground.any() else 1.0


def mean_dice(prediction: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """Mean Dice over the foreground classes (a class absent from both counts 1)."""
    scores = []
    for k in range(1, classes):
        p, t = prediction == k, truth == k
        total = int(p.sum()) + int(t.sum())
        scores.append(2 * int((p & t).sum()) / total if total else 1.0)
    return float(np.mean(scores))


def floor_bytes(shape: tuple[int, int, int]) -> int:
    """The raw image as read (float32) + one uint8 label map + one float32 class channel."""
    voxels = int(np.prod(shape))
    return voxels * (4 + 1 + 4)


def make_inputs(root: Path, shape: tuple[int, int, int]) -> Path:
    inputs = root / f"inputs_{'x'.join(map(str, shape))}"
    if not (inputs / "ct_000_0000.nii.gz").is_file():
        inputs.mkdir(parents=True, exist_ok=True)
        image, _ = ct_like_case(shape)
        write_nifti(inputs / "ct_000_0000.nii.gz", image, SPACING)
    return inputs


def fmt(run: Run) -> str:
    return f"{run.name:16s} peak PSS {run.peak_pss / MIB:8.0f} MiB  RSS {run.peak_rss / MIB:8.0f} MiB  wall {run.wall:7.1f} s"


def predict_table(args, root: Path, main_run: Run) -> list[tuple[int, tuple[int, int, int], Run]]:
    """nnlite's peak over --table-classes × --table-depths (the main run is one of the rows)."""
    rows = []
    for depth in args.table_depths:
        shape = (depth, *args.shape[1:])
        inputs = make_inputs(root, shape)
        for classes in args.table_classes:
            if (classes, shape) == (args.classes, tuple(args.shape)):
                rows.append((classes, shape, main_run))
                continue
            model = write_model_folder(root / f"model_{classes}_random", classes)  # memory does not depend on weights
            run = nnlite_predict(model, root / f"work_{classes}_random", inputs, root / f"out_{classes}_{depth}",
                                 args.threads)
            print(f"  K={classes:3d}  {'x'.join(map(str, shape))}: {fmt(run)}", flush=True)
            rows.append((classes, shape, run))
    return rows


def print_growth(rows) -> None:
    print("\n| classes | volume (Z×Y×X) | nnlite peak PSS (MiB) | floor (MiB) | wall (s) |")
    print("|---|---|---|---|---|")
    for classes, shape, run in rows:
        print(f"| {classes} | {'×'.join(map(str, shape))} | {run.peak_pss / MIB:.0f} | "
              f"{floor_bytes(shape) / MIB:.0f} | {run.wall:.1f} |")
    by_shape: dict[tuple, list] = {}
    for classes, shape, run in rows:
        by_shape.setdefault(shape, []).append((classes, run.peak_pss))
    for shape, points in by_shape.items():
        if len(points) > 1:
            (k0, p0), (k1, p1) = points[0], points[-1]
            channel = int(np.prod(shape)) * 4
            per_class = (p1 - p0) / (k1 - k0)
            print(f"growth at {'×'.join(map(str, shape))}: {per_class / MIB:.1f} MiB per added class = "
                  f"{per_class / channel:.2f} of one float32 class channel in the original geometry "
                  f"({channel / MIB:.0f} MiB)")


def probability_runs(args, root: Path, model: Path, inputs: Path, plain: Run) -> None:
    """Peak and wall of predicting with the probabilities saved, against the label map alone."""
    from nnlite.inference.saved_probabilities import load_probabilities

    work, runs = root / f"work_{args.classes}", []
    for temperature in (None, 1.5):
        name = "nnlite + probs" + ("" if temperature is None else f" T={temperature:g}")
        runs.append(nnlite_predict(model, work, inputs, root / "out_nnlite_probs", args.threads, name=name,
                                   temperature=temperature, extra=("--save-probabilities",)))
        saved = load_probabilities(root / "out_nnlite_probs" / "ct_000.npz")
        print(f"  {fmt(runs[-1])}  (+{(runs[-1].peak_pss - plain.peak_pss) / MIB:.0f} MiB over the label map "
              f"alone; .npz {saved.shape} {saved.dtype}, {saved.nbytes / MIB:.0f} MiB)", flush=True)
        del saved
    if args.reference_python:
        theirs = reference_predict(args.reference_python, model, inputs, root / "out_reference_probs", args.threads,
                                   name="nnU-Net + probs", extra=("--save_probabilities",))
        print(f"  {fmt(theirs)}; nnlite / nnU-Net: peak PSS {runs[0].peak_pss / theirs.peak_pss:.2f}, "
              f"wall {runs[0].wall / theirs.wall:.2f}", flush=True)


# --- preprocessing ------------------------------------------------------------------------------

def make_raw_dataset(root: Path, shape: tuple[int, int, int], cases: int, classes: int,
                     spacing: tuple[float, float, float] = SPACING, first_seed: int = 0) -> Path:
    raw = root / "Dataset990_LargeCT"
    root.mkdir(parents=True, exist_ok=True)
    if (raw / "dataset.json").is_file():
        return raw
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        image, labels = ct_like_case(shape, seed=first_seed + i, organs=classes - 1)
        write_nifti(raw / "imagesTr" / f"ct_{i:03d}_0000.nii.gz", image, spacing)
        write_nifti(raw / "labelsTr" / f"ct_{i:03d}.nii.gz", labels, spacing)
    (raw / "dataset.json").write_text(json.dumps(dataset_json(classes, cases), indent=1))
    return raw


def preprocess_runs(args, root: Path) -> None:
    raw = make_raw_dataset(root, tuple(args.shape), args.preprocess_cases, args.classes)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": args.threads}
    runs = []
    for name, extra in (("nnlite plan+pre", []), (f"--memory-gb {args.memory_gb:g}", ["--memory-gb", str(args.memory_gb)])):
        work = root / "pre_work"
        shutil.rmtree(work, ignore_errors=True)
        plan = measured("nnlite plan", [sys.executable, "-m", "nnlite.plan", str(raw), str(work), "--configs",
                                        "3d_fullres"], env)
        pre = measured(name, [sys.executable, "-m", "nnlite.preprocess", str(work), "--configs", "3d_fullres",
                              *extra], env)
        runs.append(Run(name, plan.wall + pre.wall, max(plan.peak_pss, pre.peak_pss), max(plan.peak_rss, pre.peak_rss)))
        print(f"  {fmt(runs[-1])}  (preprocess alone: peak PSS {pre.peak_pss / MIB:.0f} MiB, {pre.wall:.1f} s)",
              flush=True)
    if args.reference_python:
        tmp = root / "pre_ref"
        shutil.rmtree(tmp, ignore_errors=True)
        dirs = {key: tmp / key for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
        for folder in dirs.values():
            folder.mkdir(parents=True)
        (dirs["nnUNet_raw"] / raw.name).symlink_to(raw.resolve())
        entry = ("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
                 "plan_and_preprocess_entry as main; sys.argv[0] = 'nnUNetv2_plan_and_preprocess'; sys.exit(main())")
        ref_env = {**os.environ, "OMP_NUM_THREADS": args.threads, **{k: str(v) for k, v in dirs.items()}}
        runs.append(measured("nnU-Net plan+pre", [args.reference_python, "-c", entry, "-d", "990", "-c", "3d_fullres"],
                             ref_env))
        print("  " + fmt(runs[-1]), flush=True)
    within = runs[1].peak_pss <= args.memory_gb * 2**30
    print(f"  --memory-gb {args.memory_gb:g}: peak {runs[1].peak_pss / 2**30:.2f} GiB, "
          f"{'within' if within else 'OVER'} the budget")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/nnlite_large_volume"))
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], metavar=("Z", "Y", "X"))
    parser.add_argument("--classes", type=int, default=13, help="outputs, background included")
    parser.add_argument("--table-classes", type=int, nargs="*", default=[3, 7, 13])
    parser.add_argument("--table-depths", type=int, nargs="*", default=[150, 300])
    parser.add_argument("--preprocess-cases", type=int, default=0)
    parser.add_argument("--only-preprocess", action="store_true", help="skip the predict runs")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="the budget of the second nnlite preprocess run")
    parser.add_argument("--head-gain", type=float, default=HEAD_GAIN,
                        help="scale of the random output layer (1: as initialised; see the docstring)")
    parser.add_argument("--train-epochs", type=int, default=0,
                        help="train the compared model this many epochs first (0: random weights)")
    parser.add_argument("--train-iters", type=int, default=20, help="iterations per training epoch")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also predict with --save-probabilities (nnlite: T = 1 and a fitted T = 1.5; "
                             "nnU-Net: --save_probabilities, with --reference-python)")
    parser.add_argument("--threads", default="2", help="OMP_NUM_THREADS of every run")
    parser.add_argument("--reference-python", help="a Python with nnunetv2==2.8.1")
    args = parser.parse_args()
    root = args.work
    root.mkdir(parents=True, exist_ok=True)
    if args.only_preprocess:
        preprocess_runs(args, root)
        return 0
    shape = tuple(args.shape)
    inputs = make_inputs(root, shape)
    weights = trained_weights(root, shape, args.classes, args.train_epochs, args.train_iters, args.threads) \
        if args.train_epochs else None
    model = write_model_folder(root / f"model_{args.classes}", args.classes, args.head_gain, weights)
    print(f"case {'x'.join(map(str, shape))} at {SPACING} mm, planned at {COARSE} mm, {args.classes} classes; "
          f"floor {floor_bytes(shape) / MIB:.0f} MiB", flush=True)
    ours = nnlite_predict(model, root / f"work_{args.classes}", inputs, root / "out_nnlite", args.threads)
    print("  " + fmt(ours), flush=True)
    if args.reference_python:
        theirs = reference_predict(args.reference_python, model, inputs, root / "out_reference", args.threads)
        print("  " + fmt(theirs), flush=True)
        ours_map = read_labels(root / "out_nnlite" / "ct_000.nii.gz")
        theirs_map = read_labels(root / "out_reference" / "ct_000.nii.gz")
        same, same_foreground = agreement(ours_map, theirs_map)
        _, truth = ct_like_case(shape)  # the labels of make_inputs' case
        print(f"  nnlite / nnU-Net: peak PSS {ours.peak_pss / theirs.peak_pss:.2f}, wall {ours.wall / theirs.wall:.2f}; "
              f"label maps agree on {100 * same:.3f} % of voxels ({100 * same_foreground:.3f} % of the voxels "
              f"either calls foreground; {np.unique(ours_map).size} classes present); mean Dice against the "
              f"generated labels: nnlite {mean_dice(ours_map, truth, args.classes):.3f}, "
              f"nnU-Net {mean_dice(theirs_map, truth, args.classes):.3f}", flush=True)
    if args.save_probabilities:
        probability_runs(args, root, model, inputs, ours)
    if args.table_classes:
        print_growth(predict_table(args, root, ours))
    if args.preprocess_cases:
        preprocess_runs(args, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
