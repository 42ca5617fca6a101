"""Inference speed (seconds per case) of `nnlite.predict`, optionally side by side with nnU-Net v2.

Two inputs: real Hippocampus cases (1 channel, 3d_fullres plan of the reference: patch 40×56×40,
4 stages) and one synthetic BreastDM-sized case (3 channels, 8×369×369, patch 6×384×384, 7 stages
pooling in-plane only). Each runs with and without mirroring, on the CPU (bf16 where the CPU has
bf16 instructions, as `nnlite.predict` does) and on CUDA when present,
end to end: read, preprocess, sliding window, export, write.

    python benchmarks/inference.py [--cases 5] [--skip-demo] [--device cpu] [--checkpoint CKPT]
                                   [--reference-python /work/refvenv/bin/python]

With --reference-python, nnU-Net's `nnUNetPredictor.predict_from_files` runs in a subprocess on the
same files with the SAME weights (nnlite's random-init state_dict renamed to PlainConvUNet's
keys), and the benchmark prints the speed ratio and the voxel agreement of the two segmentations.
nnlite averages softmax probabilities over mirrors and tiles, the reference logits; the
"logit rule" agreement line reruns nnlite's sliding window averaging logits to separate that
design choice from implementation differences.
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
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnlite.common.schema import to_jsonable  # noqa: E402
from nnlite.data.image_io import read_image, write_image  # noqa: E402
from nnlite.inference.options import PredictOptions
from nnlite.inference.predictor import predict_folder  # noqa: E402
from nnlite.network import build_unet  # noqa: E402
from nnlite.plans import ConfigurationPlan, IntensityStats, NetworkPlan, Plans, save_plans  # noqa: E402
from nnlite.training.checkpoints import save_checkpoint  # noqa: E402

HIPPOCAMPUS = ROOT.parent / "shared" / "data" / "Dataset004_Hippocampus"
CONFIG = "3d_fullres"
DEMO_SHAPE = (8, 369, 369)  # BreastDM-sized case, (Z, Y, X)
DEMO_SPACING = (3.0, 0.9, 0.9)  # anisotropic like BreastDM; the plan keeps it (no resampling)
MEASURED_REFERENCE = "nnunetv2 2.8.1, 2 cores, mirroring: 2.7 s per Hippocampus case, 52.6 s demo-sized"

# Runs inside the reference Python: builds PlainConvUNet from the converted plans, loads the same
# weights (nnlite's tensors under the reference's key names), predicts the files, prints seconds.
REFERENCE_SCRIPT = r"""
import json, sys, time
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager


def main():  # guarded: the predictor's workers re-import this file (spawn)
    spec = json.load(open(sys.argv[1]))
    plans_manager = PlansManager(spec["plans"])
    cm = plans_manager.get_configuration("3d_fullres")
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, spec["in_channels"],
                                 spec["num_classes"], allow_init=True, deep_supervision=False)
    ours = torch.load(spec["weights"], weights_only=True)
    alias = lambda k: k.replace("decoder.encoder.", "encoder.").replace(
        "all_modules.0.", "conv.").replace("all_modules.1.", "norm.")
    net.load_state_dict({key: ours[alias(key)] for key in net.state_dict()})
    seconds = {}
    for mirror in spec["mirror"]:
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                    perform_everything_on_device=spec["device"] == "cuda",
                                    device=torch.device(spec["device"]), verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(net, plans_manager, cm, [net.state_dict()],
                                        spec["dataset_json"], "nnUNetTrainer",
                                        tuple(range(len(cm.patch_size))))
        out = spec["out"] + ("_mirror" if mirror else "_plain")
        start = time.perf_counter()
        predictor.predict_from_files(spec["inputs"], [f"{out}/{c}" for c in spec["cases"]],
                                     save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=2,
                                     num_processes_segmentation_export=2)
        seconds[str(mirror)] = time.perf_counter() - start
    print("RESULT " + json.dumps(seconds))


if __name__ == "__main__":
    main()
"""


def network_plan(strides, kernels, features) -> NetworkPlan:
    return NetworkPlan(strides=tuple(map(tuple, strides)), kernel_sizes=tuple(map(tuple, kernels)),
                       features_per_stage=tuple(features))


def make_plans(name: str, spacing, patch, network: NetworkPlan, channels: int, labels: dict) -> Plans:
    """A one-configuration plan written by hand (the reference's plan for these data)."""
    config = ConfigurationPlan(spacing=spacing, patch_size=patch, median_shape=patch, batch_size=2,
                               network=network, normalization=("zscore",) * channels,
                               use_mask_for_norm=(False,) * channels, batch_dice=False,
                               data_identifier=CONFIG)
    stats = IntensityStats(0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0)  # unused by z-score
    return Plans(dataset_name=name, transpose=(0, 1, 2), original_median_spacing=spacing,
                 original_median_shape=patch, configurations={CONFIG: config},
                 intensity_per_channel={str(c): stats for c in range(channels)},
                 channel_names={str(c): f"ch{c}" for c in range(channels)}, labels=labels,
                 gpu_memory_gb=8.0)


def hippocampus_plans() -> Plans:
    network = network_plan([[1, 1, 1]] + [[2, 2, 2]] * 3, [[3, 3, 3]] * 4, [32, 64, 128, 256])
    return make_plans("Hippocampus", (1.0, 1.0, 1.0), (40, 56, 40), network, 1,
                      {"background": 0, "Anterior": 1, "Posterior": 2})


def demo_plans() -> Plans:
    network = network_plan([[1, 1, 1]] + [[1, 2, 2]] * 6, [[1, 3, 3]] * 2 + [[3, 3, 3]] * 5,
                           [32, 64, 128, 256, 320, 320, 320])
    return make_plans("DemoBreastDM", DEMO_SPACING, (6, 384, 384), network, 3,
                      {"background": 0, "lesion": 1})


def save_model(work: Path, plans: Plans, state: dict | None = None, seed: int = 0) -> dict:
    """plans.json + a fold_0 checkpoint (random weights unless `state`); returns the state_dict."""
    save_plans(plans, work / "plans.json")
    if state is None:
        torch.manual_seed(seed)
        net = build_unet(plans.configurations[CONFIG].network, plans.num_channels, plans.num_classes)
        state = net.state_dict()
    save_checkpoint(work / "results" / CONFIG / "fold_0" / "checkpoint_final.pt",
                    {"network": state, "optimizer": {}, "epoch": 0, "metrics": [], "rng": {},
                     "plan": to_jsonable(plans), "config": {"configuration": CONFIG, "fold": 0}})
    return state


KEY_RENAMES = [  # nnlite UNet key → PlainConvUNet key
    (r"^encoder\.stages\.(\d+)\.(\d+)\.(conv|norm)\.", r"encoder.stages.\1.0.convs.\2.\3."),
    (r"^decoder\.levels\.(\d+)\.up\.", r"decoder.transpconvs.\1."),
    (r"^decoder\.levels\.(\d+)\.convs\.(\d+)\.", r"decoder.stages.\1.convs.\2."),
    (r"^decoder\.heads\.(\d+)\.", r"decoder.seg_layers.\1."),
]


def reference_state_dict(state: dict) -> dict:
    import re

    renamed = {}
    for key, tensor in state.items():
        for pattern, replacement in KEY_RENAMES:
            key = re.sub(pattern, replacement, key)
        renamed[key] = tensor
    return renamed


def reference_plans(plans: Plans) -> dict:
    """nnU-Net v2 plans dict of the same configuration (PlainConvUNet, z-score, NibabelIO)."""
    config = plans.configurations[CONFIG]
    net = config.network
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    arch = {"n_stages": net.n_stages, "features_per_stage": list(net.features_per_stage),
            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": to_jsonable(net.kernel_sizes),
            "strides": to_jsonable(net.strides), "n_conv_per_stage": [2] * net.n_stages,
            "n_conv_per_stage_decoder": [2] * (net.n_stages - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True}}
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": config.batch_size, "patch_size": list(config.patch_size),
        "median_image_size_in_voxels": list(config.median_shape), "spacing": list(config.spacing),
        "normalization_schemes": ["ZScoreNormalization"] * plans.num_channels,
        "use_mask_for_norm": [False] * plans.num_channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling,
        "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
        "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
        "architecture": {"network_class_name":
                         "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": arch,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False}
    stats = {"mean": 0.0, "std": 1.0, "median": 0.0, "min": 0.0, "max": 1.0,
             "percentile_00_5": 0.0, "percentile_99_5": 1.0}
    return {"dataset_name": plans.dataset_name, "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": list(config.spacing),
            "original_median_shape_after_transp": list(config.median_shape),
            "image_reader_writer": "NibabelIO", "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2], "configurations": {CONFIG: configuration},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel":
                {str(c): stats for c in range(plans.num_channels)}}


def run_reference(python: str, work: Path, plans: Plans, state: dict, inputs: Path,
                  cases: list[str], device: str) -> dict[bool, float]:
    """Seconds of nnUNetPredictor.predict_from_files per mirroring setting (outputs in work/ref_*)."""
    weights = work / "reference_weights.pt"
    torch.save(reference_state_dict(state), weights)
    spec = {"plans": reference_plans(plans), "weights": str(weights), "device": device,
            "in_channels": plans.num_channels, "num_classes": plans.num_classes,
            "dataset_json": {"channel_names": plans.channel_names, "labels": plans.labels,
                             "numTraining": len(cases), "file_ending": ".nii.gz"},
            "inputs": [sorted(str(p) for p in inputs.glob(f"{case}_*.nii.gz")) for case in cases],
            "cases": cases, "out": str(work / "ref"), "mirror": [True, False]}
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "reference.py").write_text(REFERENCE_SCRIPT)
    done = subprocess.run([python, str(work / "reference.py"), str(work / "spec.json")],
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"reference predictor failed:\n{done.stderr[-3000:]}")
    return {key == "True": value for key, value in json.loads(lines[-1][7:]).items()}


def predict_logit_rule(work: Path, inputs: Path, out: Path, device: str) -> None:
    """nnlite's pipeline with the reference's combination rule (logits averaged), for agreement."""
    from nnlite.inference.outputs import export_prediction
    from nnlite.inference.models import load_fold_networks
    from nnlite.inference.options import find_input_cases, read_input_case
    from nnlite.inference.predictor import preprocess_raw
    from nnlite.inference.sliding_window import predict_sliding_window
    from nnlite.plans import load_plans

    plans = load_plans(work / "plans.json")
    networks = load_fold_networks(work, plans, CONFIG, ("0",), "final", torch.device(device))
    patch = plans.configurations[CONFIG].patch_size
    for case, paths in find_input_cases(inputs).items():
        raw = read_input_case(case, paths, plans.num_channels)
        (data, props), affine = preprocess_raw(raw, case, plans, CONFIG), raw.affine
        logits = predict_sliding_window(networks, torch.from_numpy(data), patch, device=device,
                                        output="logits")
        export_prediction(logits, props, plans, CONFIG, out / f"{case}.nii.gz", affine=affine)


def agreement(dir_a: Path, dir_b: Path, cases: list[str]) -> float:
    """Fraction of voxels (over all cases) with the same label in both folders."""
    same = total = 0
    for case in cases:
        a = read_image(dir_a / f"{case}.nii.gz").array
        b = read_image(dir_b / f"{case}.nii.gz").array
        same += int((a == b).sum())
        total += a.size
    return same / total


def time_nnlite(work: Path, inputs: Path, out: Path, device: str, mirror: bool) -> float:
    options = PredictOptions(folds=("0",), mirror=mirror, overwrite=True, device=device)
    start = time.perf_counter()
    report = predict_folder(work, inputs, out, options)
    if report.failed:
        raise RuntimeError(f"nnlite failed on {report.failed}")
    return time.perf_counter() - start


def hippocampus_inputs(folder: Path, n_cases: int) -> list[str]:
    import shutil

    files = sorted((HIPPOCAMPUS / "imagesTr").glob("*_0000.nii.gz"))[:n_cases]
    folder.mkdir(parents=True)
    for path in files:
        shutil.copy(path, folder / path.name)
    return [path.name[: -len("_0000.nii.gz")] for path in files]


def demo_inputs(folder: Path) -> list[str]:
    """One synthetic 3-channel case: noisy tissue inside an elliptic body, zeros outside."""
    rng = np.random.default_rng(0)
    z, y, x = np.indices(DEMO_SHAPE, dtype=np.float32)
    body = ((y - 184) / 170) ** 2 + ((x - 184) / 120) ** 2 < 1
    affine = np.diag([DEMO_SPACING[2], DEMO_SPACING[1], DEMO_SPACING[0], 1.0])
    for channel in range(3):
        image = (rng.normal(100 + 20 * channel, 15, DEMO_SHAPE) + 30 * np.sin(x / 20 + channel)) * body
        write_image(folder / f"demo_000_{channel:04d}.nii.gz", image.astype(np.float32), affine)
    return ["demo_000"]


def trained_model(path: Path) -> tuple[Plans, dict]:
    """Plans (3d_fullres only) and weights of an nnlite checkpoint."""
    from dataclasses import replace

    from nnlite.common.schema import from_dict
    from nnlite.network.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(path)
    plans = from_dict(Plans, checkpoint["plan"])
    config = checkpoint["config"].get("configuration", CONFIG)
    plans = replace(plans, configurations={CONFIG: plans.configurations[config]})
    return plans, checkpoint["network"]


def benchmark(name: str, root: Path, plans: Plans, cases_fn, devices: list[str],
              reference: str | None, state: dict | None = None) -> list[str]:
    """Time nnlite (and the reference) on one dataset; returns printable lines."""
    work, inputs = root / "work", root / "in"
    cases = cases_fn(inputs)
    state = save_model(work, plans, state)
    n = len(cases)
    lines, ours = [], {}
    for device in devices:
        for mirror in (True, False):
            seconds = time_nnlite(work, inputs, root / f"nnlite_{device}_{mirror}", device, mirror)
            ours[(device, mirror)] = seconds / n
            lines.append(f"{name:12} nnlite    {device:4} mirror={mirror!s:5} {seconds / n:7.2f} s/case")
    if reference:
        ref = run_reference(reference, work, plans, state, inputs, cases, "cpu")
        for mirror in (True, False):
            ratio = ref[mirror] / n / ours[("cpu", mirror)]
            agree = agreement(root / f"nnlite_cpu_{mirror}", work / ("ref_mirror" if mirror else "ref_plain"),
                              cases)
            lines.append(f"{name:12} reference cpu  mirror={mirror!s:5} {ref[mirror] / n:7.2f} s/case"
                         f"  nnlite is {ratio:5.2f}x faster, voxel agreement {100 * agree:.3f} %")
        predict_logit_rule(work, inputs, root / "nnlite_logits", "cpu")
        agree = agreement(root / "nnlite_logits", work / "ref_mirror", cases)
        lines.append(f"{name:12} logit rule (reference's combination) agreement {100 * agree:.3f} %")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5, help="Hippocampus cases to predict")
    parser.add_argument("--skip-demo", action="store_true", help="only the Hippocampus cases")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--reference-python", default=None, help="python of an nnunetv2 install")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="trained nnlite 3D Hippocampus checkpoint (default: random weights)")
    args = parser.parse_args(argv)
    devices = ["cpu"] if args.device != "cuda" else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append("cuda")
    print(f"torch threads {torch.get_num_threads()}; measured reference: {MEASURED_REFERENCE}")
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if (HIPPOCAMPUS / "imagesTr").is_dir():
            plans, state = (hippocampus_plans(), None) if args.checkpoint is None \
                else trained_model(args.checkpoint)
            lines += benchmark("hippocampus", tmp / "hippo", plans,
                               lambda folder: hippocampus_inputs(folder, args.cases), devices,
                               args.reference_python, state)
        else:
            print(f"Hippocampus not found at {HIPPOCAMPUS}: skipped")
        for line in lines:
            print(line, flush=True)
        if not args.skip_demo:
            demo = benchmark("demo 3x8x369", tmp / "demo", demo_plans(), demo_inputs, devices,
                             args.reference_python)
            for line in demo:
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
