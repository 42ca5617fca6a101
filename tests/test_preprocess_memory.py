"""preprocess --memory-gb: the per-case estimate bounds what preprocessing holds, the workers fit
the budget, and a case that cannot fit is one line naming it while the others are written."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from nnlite.common.errors import UserError
from nnlite.common.host_memory import GIB, limit_address_space, memory_budget, resident_bytes
from nnlite.data.dataset import check_case, load_dataset
from nnlite.data.image_io import write_image, write_seg
from nnlite.plans import (CaseFingerprint, ConfigurationPlan, Fingerprint, IntensityStats, NetworkPlan, Plans,
                          save_fingerprint, save_plans)
from nnlite.preprocessing import runner
from nnlite.preprocessing.pipeline import is_preprocessed, preprocess_case
from nnlite.preprocessing.scheduling import (SAFETY, WORKER_BASE, case_footprint, plan_workers,
                                             workers_after_measuring)

MIB = 2**20
STATS = IntensityStats(mean=100.0, std=50.0, median=100.0, min=0.0, max=300.0,
                       percentile_00_5=5.0, percentile_99_5=290.0)


def _plans(spacing, channels: int = 1, labels: int = 2, raw: Path | None = None) -> Plans:
    network = NetworkPlan(strides=((1, 1, 1), (2, 2, 2)), kernel_sizes=((3, 3, 3),) * 2, features_per_stage=(4, 8))
    config = ConfigurationPlan(spacing=spacing, patch_size=(8, 8, 8), median_shape=(8, 8, 8), batch_size=2,
                               network=network, normalization=("zscore",) * channels,
                               use_mask_for_norm=(False,) * channels, batch_dice=False, data_identifier="mem_3d")
    return Plans(dataset_name="Dataset998_Memory", transpose=(0, 1, 2), original_median_spacing=(1, 1, 1),
                 original_median_shape=(8, 8, 8), configurations={"3d_fullres": config},
                 intensity_per_channel={str(c): STATS for c in range(channels)},
                 channel_names={str(c): f"ch{c}" for c in range(channels)},
                 labels={"background": 0, **{f"l{k}": k for k in range(1, labels + 1)}}, gpu_memory_gb=8.0,
                 extra={} if raw is None else {"raw_path": str(raw)})


def _raw(root: Path, shapes: dict[str, tuple[int, int, int]], spacing, channels: int = 1, labels: int = 2) -> Path:
    """A raw dataset of boxes in a zero background (cropping removes a margin), labels in blocks."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    for name, shape in shapes.items():
        inner = tuple(slice(2, n - 2) for n in shape)
        for c in range(channels):
            image = np.zeros(shape, np.float32)
            image[inner] = rng.uniform(1, 300, size=[n - 4 for n in shape]).astype(np.float32)
            write_image(root / "imagesTr" / f"{name}_{c:04d}.nii.gz", image, affine)
        seg = np.zeros(shape, np.uint8)
        for k in range(1, labels + 1):
            seg[2 + k : 2 + 2 * k, inner[1], inner[2]] = k
        write_seg(root / "labelsTr" / f"{name}.nii.gz", seg, affine)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): f"ch{c}" for c in range(channels)},
        "labels": {"background": 0, **{f"l{k}": k for k in range(1, labels + 1)}},
        "numTraining": len(shapes), "file_ending": ".nii.gz"}))
    return root


@pytest.mark.parametrize("shape, spacing, target, channels, labels", [
    ((40, 64, 64), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), 1, 2),  # no resampling
    ((24, 48, 48), (2.0, 1.0, 1.0), (1.0, 0.5, 0.5), 2, 3),  # upsampled 8-fold, two channels
    ((30, 80, 80), (3.0, 0.7, 0.7), (3.0, 1.4, 1.4), 1, 12),  # anisotropic, separate z, 12 labels
])
def test_estimate_bounds_what_reading_and_preprocessing_a_case_hold(tmp_path, shape, spacing, target, channels, labels):
    raw = _raw(tmp_path / "raw", {"c0": shape}, spacing, channels, labels)
    dataset = load_dataset(raw)
    plans = _plans(target, channels, labels)
    cropped = tuple(n - 4 for n in shape)
    estimate = case_footprint(CaseFingerprint("c0", spacing, shape, cropped), plans, ["3d_fullres"])
    tracemalloc.start()
    try:
        checked = check_case(dataset, dataset.cases[0])
        preprocess_case(checked.data, checked.seg, checked.spacing, plans, "3d_fullres", case="c0")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= estimate, f"measured {peak / MIB:.1f} MiB > estimated {estimate / MIB:.1f} MiB"
    assert estimate <= 4 * peak, "the estimate is so loose that it would cost workers for nothing"


def test_workers_follow_the_estimate_then_the_measured_peak():
    big = 400 * MIB
    generous = plan_workers([big, 10 * MIB], requested=4, budget=16 * GIB, enforce=True, used=GIB)
    assert generous.workers == 4 and not generous.measure_first
    assert generous.allowance == (15 * GIB) // 4 - WORKER_BASE
    tight = plan_workers([big], requested=4, budget=2 * GIB, enforce=True, used=GIB // 2)
    assert tight.workers == 1 and tight.measure_first
    measured = workers_after_measuring(peak=big, base=WORKER_BASE, requested=4, budget=2 * GIB, used=GIB // 2)
    per_worker = WORKER_BASE + int(big * SAFETY)
    assert measured.workers == (2 * GIB - GIB // 2) // per_worker == 1
    assert not plan_workers([big], 4, 16 * GIB, enforce=False, used=GIB).allowance  # no --memory-gb: no limit


def test_memory_gb_must_be_positive():
    with pytest.raises(UserError, match="--memory-gb"):
        memory_budget(0)
    assert memory_budget(2).total == 2 * GIB and memory_budget(2).explicit


def _address_space_probe(allowance: int, nbytes: int, queue) -> None:
    limit_address_space(allowance)
    try:
        np.ones(nbytes, np.uint8)
        queue.put("allocated")
    except MemoryError:
        queue.put("MemoryError")


@pytest.mark.parametrize("nbytes, expected", [(8 * MIB, "allocated"), (512 * MIB, "MemoryError")])
def test_address_space_limit_turns_an_oversized_allocation_into_memory_error(nbytes, expected):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_address_space_probe, args=(64 * MIB, nbytes, queue))
    process.start()
    process.join(60)
    assert queue.get(timeout=5) == expected


def _work(tmp_path: Path, shapes: dict[str, tuple[int, int, int]]) -> tuple[Path, Path]:
    raw = _raw(tmp_path / "raw", shapes, (1.0, 1.0, 1.0))
    work = tmp_path / "work"
    work.mkdir()
    save_plans(_plans((1.0, 1.0, 1.0), raw=raw), work / "plans.json")
    cases = tuple(CaseFingerprint(name, (1.0, 1.0, 1.0), shape, tuple(n - 4 for n in shape))
                  for name, shape in shapes.items())
    save_fingerprint(Fingerprint(cases, {"0": STATS}, {"0": "ch0"}, {"background": 0, "l1": 1, "l2": 2}, 0.9),
                     work / "fingerprint.json")
    return raw, work


def test_case_that_cannot_fit_is_named_and_the_others_are_written(tmp_path, monkeypatch):
    shapes = {"big": (96, 160, 160), "small_a": (12, 16, 16), "small_b": (12, 16, 16)}
    raw, work = _work(tmp_path, shapes)
    # a budget that leaves ~48 MiB beyond what the main process and one worker hold: the small
    # cases need a few MiB, the big one (2.5 M voxels) ~100 MiB
    budget_gb = (resident_bytes() + WORKER_BASE + 48 * MIB) / GIB
    with pytest.raises(UserError) as caught:
        runner.run_preprocessing(work, workers=2, memory_gb=budget_gb)
    assert "big_0000.nii.gz" in str(caught.value.where) and "--memory-gb" in caught.value.problem
    assert "1 of 3 cases failed" in caught.value.problem
    folder = work / "preprocessed" / "mem_3d"
    assert is_preprocessed(folder, "small_a") and is_preprocessed(folder, "small_b")
    assert not is_preprocessed(folder, "big") and not list(folder.glob("*.tmp"))


def test_budget_that_fits_one_worker_preprocesses_every_case_one_at_a_time(tmp_path, monkeypatch, caplog):
    shapes = {f"case{i}": (40, 64, 64) for i in range(3)}
    raw, work = _work(tmp_path, shapes)
    pools = []
    real_pool = runner._pool
    monkeypatch.setattr(runner, "_pool", lambda jobs, *a: pools.append((len(jobs), a[2], a[3])) or real_pool(jobs, *a))
    budget_gb = (resident_bytes() + WORKER_BASE + 200 * MIB) / GIB
    caplog.set_level("INFO")
    assert runner.run_preprocessing(work, workers=2, memory_gb=budget_gb) == 3
    assert pools[0] == (1, 1, pools[0][2]) and pools[0][2] is not None  # the largest case measured alone
    assert all(workers == 1 for _, workers, _ in pools[1:])  # two at once would not fit
    assert "largest case measured" in caplog.text
    folder = work / "preprocessed" / "mem_3d"
    assert all(is_preprocessed(folder, name) for name in shapes)
