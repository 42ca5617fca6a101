"""Loader throughput: batches/s with full augmentation for the Hippocampus 3d_fullres plan.

    python benchmarks/loader.py [--raw RAW] [--work WORK] [--batches N] [--workers 1 2]
                                [--batch-sizes 2 8] [--reference-python /work/refvenv/bin/python]

Data: WORK/preprocessed/<id>/ of an nnlite run when --work is given; otherwise the raw Hippocampus
cases are prepared in a temporary folder the simple way (crop to nonzero + z-score, native ~1 mm
spacing, nnU-Net's class-location sampling). Prints, per batch size and worker count, the median
over --rounds alternating rounds of: nnlite batches/s, a dummy-data figure (the same DataLoader handing out one ready-made batch: the ceiling
of the worker plumbing) and, with --reference-python, nnunetv2's nnUNetDataLoader + training
transforms in NonDetMultiThreadedAugmenter on the SAME .npy files (its nnUNetDatasetNumpy: no blosc2
decompression, so the reference is, if anything, favoured) and the ratio. Finally the observed
firing rate of each transform over the batches nnlite produced.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnlite.common.files import write_json_atomic  # noqa: E402
from nnlite.data.cropping import crop_to_nonzero  # noqa: E402
from nnlite.data.dataset import load_dataset  # noqa: E402
from nnlite.data.image_io import read_case, read_image  # noqa: E402
from nnlite.loading.augmentation import TRANSFORM_NAMES, augment_config, fired_transforms  # noqa: E402
from nnlite.loading.intensity_transforms import (P_BLUR, P_BRIGHTNESS, P_CONTRAST, P_GAMMA, P_GAMMA_INVERTED,  # noqa: E402
                                                 P_LOWRES, P_NOISE)
from nnlite.loading.loader import build_loader, plan_batch  # noqa: E402
from nnlite.loading.sampling import CaseStore, forced_foreground  # noqa: E402
from nnlite.loading.spatial_transforms import P_MIRROR, P_ROTATION, P_SCALING  # noqa: E402
from nnlite.network.loss import deep_supervision_scales  # noqa: E402
from nnlite.plans import ConfigurationPlan, IntensityStats, NetworkPlan, Plans, load_plans  # noqa: E402
from nnlite.preprocessing.pipeline import sample_class_locations  # noqa: E402

HIPPOCAMPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset004_Hippocampus"
PATCH = (40, 56, 40)  # nnU-Net's Hippocampus 3d_fullres patch
CONFIG = "3d_fullres"
WARMUP = 5  # batches consumed before timing (worker start-up)
SEED = 0


def hippocampus_plans(identifier: str) -> Plans:
    net = NetworkPlan(strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
                      kernel_sizes=((3, 3, 3),) * 4, features_per_stage=(32, 64, 128, 256))
    config = ConfigurationPlan(spacing=(1.0, 1.0, 1.0), patch_size=PATCH, median_shape=(36, 50, 35),
                               batch_size=2, network=net, normalization=("zscore",),
                               use_mask_for_norm=(False,), batch_dice=False, data_identifier=identifier)
    stats = IntensityStats(0.0, 1.0, 0.0, -3.0, 3.0, -3.0, 3.0)
    return Plans("Dataset004_Hippocampus", (0, 1, 2), (1.0, 1.0, 1.0), (36.0, 50.0, 35.0),
                 {CONFIG: config}, {"0": stats}, {"0": "MRI"},
                 {"background": 0, "Anterior": 1, "Posterior": 2}, 8.0)


def prepare_simple(raw: Path, work: Path) -> tuple[Plans, list[str]]:
    """Crop + z-score every raw case into work/preprocessed/bench_3d/ (the loader's input format)."""
    folder = work / "preprocessed" / "bench_3d"
    folder.mkdir(parents=True)
    dataset = load_dataset(raw)
    for case in dataset.cases:
        crop = crop_to_nonzero(read_case(case.images).data, read_image(case.label).array[None])
        data = crop.data
        body = crop.seg[0] >= 0
        data = ((data - data[:, body].mean()) / max(float(data[:, body].std()), 1e-8)).astype(np.float32)
        np.save(folder / f"{case.name}.npy", data)
        np.save(folder / f"{case.name}_seg.npy", crop.seg.astype(np.int8))
        write_json_atomic(folder / f"{case.name}.json",
                          {"class_locations": sample_class_locations(crop.seg, [1, 2])})
    return hippocampus_plans("bench_3d"), [c.name for c in dataset.cases]


def existing_work(work: Path) -> tuple[Plans, list[str]]:
    plans = load_plans(work / "plans.json")
    config = plans.configurations[CONFIG]
    folder = work / "preprocessed" / config.data_identifier
    names = sorted(p.name[:-4] for p in folder.glob("*.npy") if not p.name.endswith("_seg.npy"))
    return plans, names


def timed(iterator, batches: int) -> float:
    for _ in range(WARMUP):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches / (time.perf_counter() - start)


class _Dummy(Dataset):
    def __init__(self, batch: dict):
        self.batch = batch

    def __getitem__(self, index: int) -> dict:
        return self.batch


def dummy_rate(batch: dict, workers: int, batches: int) -> float:
    loader = DataLoader(_Dummy(batch), batch_size=None, sampler=itertools.count(), num_workers=workers,
                        prefetch_factor=4 if workers else None)
    return timed(iter(loader), batches)


REFERENCE = textwrap.dedent("""
    import json, os, pickle, sys, time
    import numpy as np
    args = json.loads(sys.argv[1])
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    import torch
    # nnUNetv2_train does this on CUDA before its workers start (they inherit it); without it a
    # "1-worker" reference runs 2 intra-op threads and takes two CPU shares on a busy machine.
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    patch, workers = tuple(args["patch"]), args["workers"]
    rot = (-30. / 360 * 2. * np.pi, 30. / 360 * 2. * np.pi)
    initial = get_patch_size(patch, rot, rot, rot, (0.85, 1.25))
    labels = LabelManager({"background": 0, "Anterior": 1, "Posterior": 2}, None)
    ds = nnUNetDatasetNumpy(args["folder"], args["cases"])
    transforms = nnUNetTrainer.get_training_transforms(
        patch, rot, args["ds_scales"], (0, 1, 2), False, [False], False, None, None, None)
    dl = nnUNetDataLoader(ds, args["batch_size"], initial, patch, labels, 0.33, transforms=transforms)
    if workers == 0:
        aug = SingleThreadedAugmenter(dl, None)
    else:
        aug = NonDetMultiThreadedAugmenter(dl, None, workers, max(6, workers // 2), None, False, 0.002)
    for _ in range(args["warmup"]):
        next(aug)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args["batches"]):
        next(aug)
    print(json.dumps({"batches_per_s": args["batches"] / (time.perf_counter() - start),
                      "cpu_ms": (time.process_time() - cpu) / args["batches"] * 1e3}))
    if workers:
        aug._finish()
""")


def reference_folder(folder: Path, names: list[str], tmp: Path) -> Path:
    """The same .npy files + the .pkl properties nnunetv2 reads (class locations with a channel
    coordinate first, int label keys)."""
    out = tmp / "reference_npy"
    out.mkdir()
    for name in names:
        for suffix in (".npy", "_seg.npy"):
            (out / f"{name}{suffix}").symlink_to(folder / f"{name}{suffix}")
        locations = json.loads((folder / f"{name}.json").read_text())["class_locations"]
        props = {"class_locations": {int(k): np.array([[0, *v] for v in voxels], dtype=np.int64).reshape(-1, 4)
                                     for k, voxels in locations.items()}}
        with open(out / f"{name}.pkl", "wb") as handle:
            pickle.dump(props, handle)
    return out


def reference_rate(python: str, folder: Path, names: list[str], batch_size: int, workers: int,
                   batches: int, ds_scales: list) -> float:
    args = dict(folder=str(folder), cases=names, patch=list(PATCH), batch_size=batch_size,
                workers=workers, batches=batches, warmup=WARMUP, ds_scales=ds_scales)
    result = subprocess.run([python, "-c", REFERENCE, json.dumps(args)], capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"reference loader failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def cpu_ms_per_batch(work: Path, plans: Plans, names: list[str], batch_size: int, batches: int) -> float:
    """CPU time of one batch made in this process (1 thread): independent of other load."""
    plans_b = replace(plans, configurations={
        CONFIG: replace(plans.configurations[CONFIG], batch_size=batch_size)})
    loader = build_loader(work, plans_b, CONFIG, names, batch_size, augment=True, seed=SEED, workers=0)
    with loader:
        timed(loader, 1)
        start = time.process_time()
        for _ in range(batches):
            next(loader)
    return (time.process_time() - start) / batches * 1e3


def cpu_report(work: Path, plans: Plans, names: list[str], args, ref_folder: Path | None) -> None:
    print("\nCPU time per batch, made in the main process (1 thread; unaffected by other load):")
    for batch_size in args.batch_sizes:
        ours = cpu_ms_per_batch(work, plans, names, batch_size, args.batches)
        line = f"  batch {batch_size}: nnlite {ours:6.1f} ms"
        if ref_folder:
            plans_b = replace(plans, configurations={
                CONFIG: replace(plans.configurations[CONFIG], batch_size=batch_size)})
            ref = reference_rate(args.reference_python, ref_folder, names, batch_size, 0, args.batches,
                                 _ds_scales(plans_b))["cpu_ms"]
            line += f", reference {ref:6.1f} ms, ratio {ref / ours:.2f}x"
        print(line, flush=True)


CONFIGURED = {"rotation": P_ROTATION, "scaling": P_SCALING, "mirror": 1 - (1 - P_MIRROR) ** 3,
              "noise": P_NOISE, "blur": P_BLUR, "brightness": P_BRIGHTNESS, "contrast": P_CONTRAST,
              "lowres": P_LOWRES, "gamma_inverted": P_GAMMA_INVERTED, "gamma": P_GAMMA}


def firing_report(plans: Plans, cases, batch_size: int, consumed: int) -> None:
    """Observed firing rates over the samples of the first `consumed` batches of seed SEED."""
    cfg = augment_config(plans.configurations[CONFIG])
    forced = forced_foreground(batch_size)
    counts: Counter = Counter()
    samples = 0
    for index in range(consumed):
        for sample in plan_batch(cases, cfg, forced, SEED, index, True):
            counts.update(fired_transforms(sample.params))
            samples += 1
    print(f"\nfiring rates over {samples} samples (observed / configured):")
    for name in TRANSFORM_NAMES:
        print(f"  {name:15s} {counts[name] / samples:6.3f} / {CONFIGURED[name]:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", type=Path, default=HIPPOCAMPUS)
    parser.add_argument("--work", type=Path, help="an nnlite WORK folder with 3d_fullres preprocessed")
    parser.add_argument("--batches", type=int, default=100, help="timed batches per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are printed")
    parser.add_argument("--reference-python", help="python of an environment with nnunetv2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp) / "work"
        start = time.perf_counter()
        plans, names = existing_work(args.work) if args.work else prepare_simple(args.raw, work)
        folder = work / "preprocessed" / plans.configurations[CONFIG].data_identifier
        print(f"{len(names)} cases in {folder} ({time.perf_counter() - start:.0f} s to prepare)")
        ref_folder = reference_folder(folder, names, Path(tmp)) if args.reference_python else None
        print(f"{'batch':>5} {'workers':>7} {'nnlite b/s':>11} {'dummy b/s':>10} {'of dummy':>9}"
              + (f" {'reference b/s':>14} {'ratio':>6}" if ref_folder else ""))
        for batch_size, workers in itertools.product(args.batch_sizes, args.workers):
            plans_b = replace(plans, configurations={
                CONFIG: replace(plans.configurations[CONFIG], batch_size=batch_size)})
            ours, refs, dummies = [], [], []
            for _ in range(args.rounds):  # alternate the two so that load changes hit both alike
                loader = build_loader(work, plans_b, CONFIG, names, batch_size, augment=True,
                                      seed=SEED, workers=workers)
                with loader:
                    sample = next(loader)
                    ours.append(timed(loader, args.batches))
                dummies.append(dummy_rate(sample, workers, args.batches))
                if ref_folder:
                    refs.append(reference_rate(args.reference_python, ref_folder, names, batch_size,
                                               workers, args.batches, _ds_scales(plans_b))["batches_per_s"])
            rate, dummy = float(np.median(ours)), float(np.median(dummies))
            line = f"{batch_size:5d} {workers:7d} {rate:11.1f} {dummy:10.1f} {rate / dummy:9.2f}"
            if refs:
                line += f" {np.median(refs):14.1f} {rate / np.median(refs):6.2f}"
            print(line, flush=True)
        cpu_report(work, plans, names, args, ref_folder)
        firing_report(plans, _cases(work, plans, names), args.batch_sizes[0], WARMUP + 1 + args.batches)
    return 0


def _ds_scales(plans: Plans) -> list[list[float]]:
    return [list(s) for s in deep_supervision_scales(plans.configurations[CONFIG].network)]


def _cases(work: Path, plans: Plans, names: list[str]):
    return CaseStore(work / "preprocessed" / plans.configurations[CONFIG].data_identifier, names).cases


if __name__ == "__main__":
    sys.exit(main())
