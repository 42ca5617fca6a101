"""Record facts about real nnU-Net v2 models as test data: JSON, and one .npz of arrays for the
forward pass (run with a Python that has nnunetv2).

    /path/to/refvenv/bin/python benchmarks/record_nnunet_facts.py tests/data

Writes `nnunet_state_dicts.json`: for a few small plans (3D and 2D PlainConvUNet, 3D
ResidualEncoderUNet) the architecture entry as nnU-Net writes it into plans.json and every
state-dict key of the network dynamic_network_architectures builds from it, with its shape, in
order. Writes `nnunet_checkpoint.json`: the top-level keys of a `checkpoint_final.pth` saved by
nnU-Net's own trainer (`nnUNetTrainer.save_checkpoint`), the keys of its `init_args`, and the
non-tensor globals that `torch.load(weights_only=True)` refuses in it. nnlite's tests build
fixture checkpoints from these records, so they never need nnunetv2 and never derive nnU-Net's
names from nnlite's own modules.

Writes `nnunet_forward.npz` (numpy arrays only, no pickles: load it with allow_pickle=False): for
the same three networks with smaller widths (the weights are stored; the 3D strides are
anisotropic) a network built by nnU-Net with torch's seed fixed and nnU-Net's own He init, its
biases and InstanceNorm scales and shifts then redrawn from a seeded generator (the init leaves
them at 0 and 1, and ResEnc's zeroes the last norm of each block, so a dropped bias, affine or
residual branch would not show), its state dict (`<net>/weight/<key>`, nnU-Net's key names; the
aliases `…all_modules.<n>…` and `decoder.encoder.…` are left out, being the same tensors), a
seeded input batch (`<net>/input`) and every deep-supervision output of the network in eval mode,
highest resolution first (`<net>/output/<i>`). Train mode gives the same outputs (no dropout, no
running statistics); the script checks that instead of storing them twice. `meta` is one JSON
string: each network's `architecture` entry as plans.json holds it, the channel and class counts,
and the versions that computed the numbers. tests/test_nnunet_parity.py rebuilds each network
the nnlite way from its `architecture`, loads the weights through nnlite's conversion and
compares the logits.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESIDUAL = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


def arch_entry(class_name: str, ndim: int, strides, kernels, features, blocks=None) -> dict:
    """The `architecture` entry of a plans.json configuration, as nnU-Net's planner writes it."""
    n = len(features)
    kwargs = {
        "n_stages": n, "features_per_stage": features,
        "conv_op": f"torch.nn.modules.conv.Conv{ndim}d",
        "kernel_sizes": kernels, "strides": strides,
        "n_conv_per_stage_decoder": [1 if blocks else 2] * (n - 1),
        "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{ndim}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    if blocks:
        kwargs["n_blocks_per_stage"] = blocks
    else:
        kwargs["n_conv_per_stage"] = [2] * n
    return {"network_class_name": class_name, "arch_kwargs": kwargs,
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


EXAMPLES = {
    "plain_3d": arch_entry(PLAIN, 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                           [[3, 3, 3], [3, 3, 3], [3, 3, 3], [1, 3, 3]], [8, 16, 32, 32]),
    "plain_2d": arch_entry(PLAIN, 2, [[1, 1], [2, 2], [2, 2]], [[3, 3], [3, 3], [3, 3]], [8, 16, 32]),
    "resenc_3d": arch_entry(RESIDUAL, 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                            [[3, 3, 3], [3, 3, 3], [3, 3, 3], [1, 3, 3]], [8, 16, 32, 32], [1, 2, 2, 3]),
}
IN_CHANNELS, NUM_CLASSES = 2, 3
# Forward parity: the same topologies with narrower stages (the weights are stored in the test data)
PARITY = {
    "plain_3d": arch_entry(PLAIN, 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                           [[3, 3, 3], [3, 3, 3], [3, 3, 3], [1, 3, 3]], [4, 4, 8, 8]),
    "plain_2d": arch_entry(PLAIN, 2, [[1, 1], [2, 2], [2, 2]], [[3, 3], [3, 3], [3, 3]], [4, 8, 8]),
    "resenc_3d": arch_entry(RESIDUAL, 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                            [[3, 3, 3], [3, 3, 3], [3, 3, 3], [1, 3, 3]], [4, 4, 8, 8], [1, 2, 2, 3]),
}
PARITY_INPUT = {"plain_3d": (2, IN_CHANNELS, 8, 8, 16), "plain_2d": (2, IN_CHANNELS, 16, 24),
                "resenc_3d": (2, IN_CHANNELS, 8, 16, 8)}  # (B, C, *patch): divisible by the total strides
PARITY_SEED = 12345


def build(entry: dict) -> torch.nn.Module:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(entry["network_class_name"], entry["arch_kwargs"],
                                  entry["_kw_requires_import"], IN_CHANNELS, NUM_CLASSES,
                                  allow_init=True, deep_supervision=True)


def record_state_dicts() -> dict:
    out = {"in_channels": IN_CHANNELS, "num_classes": NUM_CLASSES, "networks": {}}
    for name, entry in EXAMPLES.items():
        state = build(entry).state_dict()
        out["networks"][name] = {"architecture": entry,
                                 "keys": [[k, list(v.shape)] for k, v in state.items()]}
    return out


def seeded_network(entry: dict) -> torch.nn.Module:
    """nnU-Net's network with its own init under a fixed seed, then biases and norm affines redrawn."""
    torch.manual_seed(PARITY_SEED)
    net = build(entry)
    generator = torch.Generator().manual_seed(PARITY_SEED + 1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
            if getattr(module, "bias", None) is not None:
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=generator))
    return net


def own_tensors(state: dict) -> dict:
    """The state dict without its aliases: the first key of each storage (nnU-Net's order)."""
    seen, out = set(), {}
    for key, value in state.items():
        if value.data_ptr() not in seen:
            seen.add(value.data_ptr())
            out[key] = value
    return out


def record_forward() -> dict[str, np.ndarray]:
    """Arrays for nnunet_forward.npz: per network its weights, a seeded input and its outputs."""
    import importlib.metadata

    arrays: dict[str, np.ndarray] = {}
    meta = {"in_channels": IN_CHANNELS, "num_classes": NUM_CLASSES, "seed": PARITY_SEED, "networks": {},
            "versions": {p: importlib.metadata.version(p) for p in
                         ("torch", "nnunetv2", "dynamic_network_architectures", "numpy")}}
    for name, entry in PARITY.items():
        net = seeded_network(entry)
        x = torch.randn(PARITY_INPUT[name], generator=torch.Generator().manual_seed(PARITY_SEED + 2))
        with torch.no_grad():
            outputs = net.eval()(x)
            train_outputs = net.train()(x)
        assert all(torch.equal(a, b) for a, b in zip(outputs, train_outputs)), "train mode differs"
        for key, value in own_tensors(net.state_dict()).items():
            arrays[f"{name}/weight/{key}"] = value.numpy()
        arrays[f"{name}/input"] = x.numpy()
        for i, output in enumerate(outputs):  # highest resolution first
            arrays[f"{name}/output/{i}"] = output.numpy()
        meta["networks"][name] = {"architecture": entry, "outputs": len(outputs)}
    arrays["meta"] = np.array(json.dumps(meta, indent=1))
    return arrays


def trainer_checkpoint(folder: Path) -> Path:
    """Save a checkpoint with nnU-Net's own trainer, its logger holding the value types training logs."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    arch = EXAMPLES["plain_3d"]
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": 2, "patch_size": [16, 32, 32], "median_image_size_in_voxels": [20, 40, 40],
              "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"] * 2,
              "use_mask_for_norm": [False, False], "resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
              "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                     "force_separate_z": None},
              "architecture": arch, "batch_dice": False}
    plans = {"dataset_name": "Dataset999_Facts", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
             "original_median_shape_after_transp": [20, 40, 40], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {"3d_fullres": config}, "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {},
             "continue_training": False}  # run_training.py adds this key before building the trainer
    dataset = {"channel_names": {"0": "a", "1": "b"}, "labels": {"background": 0, "x": 1, "y": 2},
               "numTraining": 2, "file_ending": ".nii.gz"}
    trainer = nnUNetTrainer(plans, "3d_fullres", 0, dataset, device=torch.device("cpu"))
    trainer.initialize()
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the mirroring axes
    # What one epoch logs (on_train_epoch_end / on_validation_epoch_end): numpy scalars and floats;
    # the logger adds ema_fg_dice itself.
    for key, value in [("mean_fg_dice", np.float64(0.5)),
                       ("dice_per_class_or_region", [np.float64(0.4), np.float64(0.6)]),
                       ("train_losses", np.float64(-0.3)), ("val_losses", np.float64(-0.2)),
                       ("lrs", 0.01), ("epoch_start_timestamps", 1.0), ("epoch_end_timestamps", 2.0)]:
        trainer.logger.log(key, value, 0)
    trainer._best_ema = np.float32(0.5)  # a real checkpoint_best.pth of nnunetv2 2.8.1 holds a float32 here
    path = folder / "checkpoint_final.pth"
    trainer.save_checkpoint(str(path))
    return path


def unsafe_globals(path: Path) -> tuple[list[str], dict]:
    """What torch.load(weights_only=True) must be allowed beyond its defaults to load `path` (the
    pickle's unsafe globals, then, one by one, the classes it still refuses to build), and the
    checkpoint loaded with exactly that allow-list."""
    import importlib
    import re

    found = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    for _ in range(10):
        objects = [getattr(importlib.import_module(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in found]
        try:
            with torch.serialization.safe_globals(objects):
                return found, torch.load(path, weights_only=True)
        except Exception as error:  # the message names the refused class
            refused = re.search(r"but got <class '([\w.]+)'>", str(error))
            if refused is None:
                raise
            found.append(refused.group(1))
    raise RuntimeError("could not load with any allow-list")


def record_checkpoint() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = trainer_checkpoint(Path(tmp))
        refused, checkpoint = unsafe_globals(path)
    return {"keys": sorted(checkpoint), "init_args": sorted(checkpoint["init_args"]),
            "logging": sorted(checkpoint["logging"]), "trainer_name": checkpoint["trainer_name"],
            "inference_allowed_mirroring_axes": list(checkpoint["inference_allowed_mirroring_axes"]),
            "init_args_device": str(checkpoint["init_args"]["device"]),
            "weights_only_refuses": refused, "torch": torch.__version__, "numpy": np.__version__}


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data").resolve()
    scratch = Path(tempfile.mkdtemp())
    # The trainer reads nnU-Net's environment when imported and looks at the preprocessed folder's
    # file endings in initialize(): point it at a scratch folder holding one empty .b2nd file.
    (scratch / "Dataset999_Facts" / "nnUNetPlans_3d_fullres").mkdir(parents=True)
    (scratch / "Dataset999_Facts" / "nnUNetPlans_3d_fullres" / "case.b2nd").touch()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(scratch)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nnunet_state_dicts.json").write_text(json.dumps(record_state_dicts(), indent=1) + "\n")
    (out / "nnunet_checkpoint.json").write_text(json.dumps(record_checkpoint(), indent=1) + "\n")
    np.savez_compressed(out / "nnunet_forward.npz", **record_forward())
    print(f"wrote nnunet_state_dicts.json, nnunet_checkpoint.json and nnunet_forward.npz in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
