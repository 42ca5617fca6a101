"""The measured training step (nnlite/network/measured_memory.py) beside the byte model
(nnlite/network/geometry.py) on the planner's own networks at their planned patches, and the plan a
wider custom network gets: the tables of docs/planning.md ("Any network: sized by measurement").

    python benchmarks/measured_memory.py          # CPU only, no GPU needed; about a minute

Every number is a ratio or a count of bytes; nothing here is timed except the measurement itself,
reported only to show its cost.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from nnlite.network import geometry
from nnlite.network.measured_memory import bytes_per_voxel, measure_training_step
from nnlite.network.unet import build_unet
from nnlite.planning.memory_budget import GIB
from nnlite.planning.planner import network_plan, plan_experiment
from nnlite.planning.presets import get_preset
from nnlite.planning.topology import pool_and_conv_props
from nnlite.plans import CaseFingerprint, Fingerprint, IntensityStats

IN_CHANNELS, CLASSES, BATCH = 1, 3, 2
CASES = {  # name: (spacing, planned patch) as the default planner plans them at 8 GB
    "brain 3d_fullres": ((1.0, 1.0, 1.0), (128, 128, 128)),
    "CT abdomen 3d_fullres": ((2.5, 0.78, 0.78), (56, 192, 192)),
    "Hippocampus 3d_fullres": ((1.0, 1.0, 1.0), (40, 56, 40)),
    "CT abdomen 2d": ((0.78, 0.78), (512, 512)),
}
FAMILIES = {"plain": ("default", False), "ResEnc-M": ("resenc-m", False), "gated": ("default", True)}
WIDE = '''
from dataclasses import replace
from nnlite.network.unet import build_unet

def build_wide(plan, in_channels, num_classes, deep_supervision=True, region_outputs=False, factor=2):
    wide = replace(plan, features_per_stage=tuple(factor * f for f in plan.features_per_stage),
                   architecture=None, kwargs={})
    return build_unet(wide, in_channels, num_classes, deep_supervision=deep_supervision,
                      region_outputs=region_outputs)
'''


def agreement_table() -> None:
    print("| network | patch | byte model (GiB) | measured (GiB) | measured / model | measuring took |")
    print("|---|---|---|---|---|---|")
    for case, (spacing, patch) in CASES.items():
        topology = pool_and_conv_props(spacing, patch)
        for family, (preset, gates) in FAMILIES.items():
            plan = replace(network_plan(topology, get_preset(preset)), attention_gates=gates)
            start = time.perf_counter()
            step = measure_training_step(build_unet, plan, topology.patch_size, IN_CHANNELS, CLASSES, BATCH)
            seconds = time.perf_counter() - start
            model = geometry.activation_bytes(plan, topology.patch_size, IN_CHANNELS, CLASSES, BATCH,
                                              geometry.AMP_BYTES)
            print(f"| {family}, {case} | {'×'.join(map(str, topology.patch_size))} | {model / GIB:.3f} | "
                  f"{step.activation_bytes / GIB:.3f} | {step.activation_bytes / model:.4f} | {seconds:.1f} s |")


def zoo_table() -> None:
    """The zoo's networks (nnlite/network/zoo/) measured on the Hippocampus plan beside the built-in."""
    topology = pool_and_conv_props((1.0, 1.0, 1.0), (40, 56, 40))
    plan, patch = network_plan(topology, get_preset("default")), topology.patch_size
    print("\n| builder | parameters | activation bytes per voxel | predicted GiB at batch 2 |")
    print("|---|---|---|---|")
    for name in ("nnlite.network.unet:build_unet", "nnlite.network.zoo.vnet:build",
                 "nnlite.network.zoo.cicek_unet:build", "nnlite.network.zoo.attention_unet:build"):
        module, _, function = name.partition(":")
        builder = getattr(importlib.import_module(module), function)
        step = measure_training_step(builder, plan, patch, IN_CHANNELS, CLASSES)
        print(f"| {name} | {step.trainable_parameters / 1e6:.1f} M | {bytes_per_voxel(step, patch):.0f} | "
              f"{step.training_memory_bytes(BATCH) / GIB:.2f} |")


def hippocampus_like(n_cases: int) -> Fingerprint:
    stats = IntensityStats(mean=0.0, std=1.0, median=0.0, min=-1.0, max=1.0, percentile_00_5=-1.0,
                           percentile_99_5=1.0)
    cases = tuple(CaseFingerprint(f"case{i:04d}", (1.0, 1.0, 1.0), (36, 50, 35), (36, 50, 35))
                  for i in range(n_cases))
    return Fingerprint(cases=cases, intensity_per_channel={"0": stats}, channel_names={"0": "MRI"},
                       labels={"background": 0, "l1": 1, "l2": 2}, median_relative_size_after_crop=1.0)


def custom_network_table() -> None:
    folder = Path(tempfile.mkdtemp())
    (folder / "wide_nets.py").write_text(WIDE)
    sys.path.insert(0, str(folder))
    print("\n| network | budget | patch | batch | predicted GiB | activation bytes per voxel |")
    print("|---|---|---|---|---|---|")
    for gb, n_cases in ((1.0, 40), (2.0, 2000)):
        fingerprint = hippocampus_like(n_cases)
        for label, architecture, kwargs in (("built-in U-Net", None, {}),
                                            ("wide_nets:build_wide, factor 1", "wide_nets:build_wide", {"factor": 1}),
                                            ("wide_nets:build_wide, factor 2", "wide_nets:build_wide", {"factor": 2})):
            config = plan_experiment(fingerprint, gb, configs=["3d_fullres"], architecture=architecture,
                                     network_kwargs=kwargs).configurations["3d_fullres"]
            factor = kwargs.get("factor", 1)
            plan = replace(config.network, architecture=None, kwargs={},
                           features_per_stage=tuple(factor * f for f in config.network.features_per_stage))
            step = measure_training_step(build_unet, plan, config.patch_size, IN_CHANNELS, CLASSES)
            print(f"| {label} | {gb:g} GB, {n_cases} cases | {'×'.join(map(str, config.patch_size))} | "
                  f"{config.batch_size} | {config.predicted_memory_bytes / GIB:.2f} | "
                  f"{bytes_per_voxel(step, config.patch_size):.0f} |")


if __name__ == "__main__":
    agreement_table()
    custom_network_table()
    zoo_table()
