"""nnU-Net's rules of training, loss, inference, post-processing and evaluation, each pinned by an
expectation written from the reference (literal numbers or worked examples computed by hand), never
from a constant of the module under test. Each worked example tells the reference value apart from
its neighbours (momentum 0.9, step 0.6, σ = tile/6, EMA 0.8, …): benchmarks/mutations.py breaks
every rule on purpose and names the test here that catches it.

Sources: nnU-Net v2's documented trainer, loss, predictor, post-processing and evaluation (Isensee
et al., Nature Methods 2021; nnunetv2 2.8.1), as summarised in the project's reference notes, cited
per test as "nnU-Net reference: <section>".
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from tqdm import tqdm

from nnlite.data.image_io import write_seg
from nnlite.evaluation.metrics import Counts, label_classes, matched_cases, summarize
from nnlite.evaluation.postprocessing import decide_postprocessing
from nnlite.inference.largest_component import apply_postprocessing
from nnlite.inference.options import PredictOptions, PredictReport
from nnlite.inference.sliding_window import (
    gaussian_weights,
    predict_sliding_window,
    tile_starts,
)
from nnlite.network.loss import deep_supervision_weights
from nnlite.planning.planner import plan_experiment
from nnlite.plans import CaseFingerprint, Fingerprint, IntensityStats, NetworkPlan
from nnlite.training.config import config_from_dict, load_train_config
from nnlite.training.distributed import Rank
from nnlite.training.run_setup import Run
from nnlite.training.trainer import (
    build_state,
    end_epoch,
    epoch_record,
    learning_rate,
    train_one_epoch,
    training_loss,
)
from tests.loader_fixtures import toy_plans

CPU = torch.device("cpu")


def default_config(*overrides: str):
    """configs/default.yaml (what `nnlite train` runs) on the CPU, seeded, without AMP."""
    return load_train_config("default", ["seed=0", "device=cpu", "training.amp=off", *overrides])


def make_fingerprint(spacing: tuple[float, ...], shape: tuple[int, ...], n: int = 40,
                     channels: tuple[str, ...] = ("MRI",)) -> Fingerprint:
    """n identical cases of one spacing and shape, labels 0-2."""
    stats = IntensityStats(mean=0.0, std=1.0, median=0.0, min=-1.0, max=1.0, percentile_00_5=-1.0,
                           percentile_99_5=1.0)
    cases = tuple(CaseFingerprint(f"case{i:03d}", tuple(map(float, spacing)), tuple(shape), tuple(shape))
                  for i in range(n))
    return Fingerprint(cases=cases, intensity_per_channel={str(i): stats for i in range(len(channels))},
                       channel_names={str(i): c for i, c in enumerate(channels)},
                       labels={"background": 0, "l1": 1, "l2": 2}, median_relative_size_after_crop=1.0)


# --- optimizer, as the trainer builds it ------------------------------------------------------------

def test_the_trainer_builds_nesterov_sgd_with_the_reference_hyperparameters():
    """nnU-Net reference: trainer, hyperparameters — SGD(lr 1e-2, momentum 0.99, nesterov True,
    weight_decay 3e-5) on all parameters (norm and bias included), one parameter group."""
    plans = toy_plans()
    state = build_state(plans, default_config(), CPU, None, Rank())
    optimizer = state.optimizer
    assert type(optimizer) is torch.optim.SGD
    assert len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["lr"] == 1e-2
    assert group["momentum"] == 0.99
    assert group["nesterov"] is True
    assert group["weight_decay"] == 3e-5
    assert group["dampening"] == 0
    in_group = {id(p) for p in group["params"]}
    assert in_group == {id(p) for p in state.network.parameters()}  # norm weights and biases too


def test_one_step_of_the_built_optimizer_is_nesterov_sgd_by_hand():
    """nnU-Net reference: trainer, hyperparameters. The update the built optimizer makes, by hand:
    g = grad + 3e-5·w; buf = g (first step); w ← w − lr·(g + 0.99·buf). Momentum 0.9, no Nesterov or
    weight decay 3e-4 give another weight."""
    plans = toy_plans()
    state = build_state(plans, default_config(), CPU, None, Rank())
    param = next(state.network.parameters())
    before = param.detach().clone()
    grads = [torch.full_like(p, 0.5) for p in state.network.parameters()]
    for p, g in zip(state.network.parameters(), grads):
        p.grad = g.clone()
    state.optimizer.step()
    g = 0.5 + 3e-5 * before.double()
    expected = before.double() - 1e-2 * (g + 0.99 * g)
    torch.testing.assert_close(param.detach().double(), expected, rtol=0, atol=1e-7)


# --- learning rate schedule ---------------------------------------------------------------------------

def test_poly_lr_is_stepped_per_epoch_with_exponent_0_9():
    """nnU-Net reference: trainer, PolyLR — lr = 1e-2·(1 − epoch/1000)^0.9, once per epoch (the
    same value for every iteration of the epoch). Epoch 500: 1e-2·0.5^0.9 = 5.3589e-3 (exponent 1
    gives 5e-3); epoch 999 ≈ 1.99e-5."""
    config = default_config()
    assert learning_rate(config, 0, 0) == 1e-2
    for iteration in (0, 1, 137, 249):
        assert learning_rate(config, 500, iteration) == pytest.approx(5.358867e-3, rel=1e-6)
    assert learning_rate(config, 999, 249) == pytest.approx(1.99526e-5, rel=1e-5)


def fake_batches(plan: NetworkPlan, patch: tuple[int, ...]):
    gen = torch.Generator().manual_seed(0)
    while True:
        seg = torch.randint(0, 3, (2, 1, *patch), generator=gen)
        data = torch.randn((2, 1, *patch), generator=gen) + seg.float()
        targets = [seg]
        for stride in plan.strides[1:-1]:
            seg = seg[(..., *(slice(s // 2, None, s) for s in stride))]
        yield {"data": data, "target": targets if len(plan.strides) == 2 else [targets[0], seg]}


def test_the_epochs_learning_rate_is_set_on_the_optimizer_and_gradients_clipped_at_12(monkeypatch):
    """nnU-Net reference: trainer — the PolyLR value of the epoch index is what the optimizer uses
    for each of its iterations, and clip_grad_norm_ runs with max norm 12 (L2 over all parameters)."""
    plans = toy_plans(patch=(8, 12, 12))
    plan = plans.configurations["3d_fullres"]
    config = default_config("training.iters_per_epoch=2")
    state = build_state(plans, config, CPU, None, Rank())
    seen_lr, seen_norm = [], []
    real_step, real_clip = state.optimizer.step, nn.utils.clip_grad_norm_

    def spy_step(*args, **kwargs):
        seen_lr.append(state.optimizer.param_groups[0]["lr"])
        return real_step(*args, **kwargs)

    def spy_clip(parameters, max_norm, *args, **kwargs):
        seen_norm.append(float(max_norm))
        return real_clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(state.optimizer, "step", spy_step)
    monkeypatch.setattr(nn.utils, "clip_grad_norm_", spy_clip)
    loss_fn = training_loss(plans, config)
    train_one_epoch(state, loss_fn, fake_batches(plan.network, plan.patch_size), config, 500, tqdm(disable=True))
    assert seen_lr == pytest.approx([5.358867e-3] * 2, rel=1e-6)
    assert seen_norm == [12.0, 12.0]


def test_default_schedule_and_sampling_settings():
    """nnU-Net reference: trainer — 1000 epochs × 250 iterations, 50 validation iterations,
    oversample_foreground_percent 0.33, EMA 0.9, final validation with tile step 0.5 and mirroring."""
    config = load_train_config("default")
    t = config.training
    assert (t.epochs, t.iters_per_epoch, t.val_iters) == (1000, 250, 50)
    assert (t.poly_exponent, t.lr_step, t.grad_clip, t.ema_momentum) == (0.9, "epoch", 12.0, 0.9)
    assert config.data.oversample_foreground == 0.33
    assert (config.validation.step, config.validation.mirroring) == (0.5, True)


def test_settings_left_out_of_a_users_yaml_are_the_reference_values():
    """nnU-Net reference: trainer — the dataclass defaults (what a partial YAML or `config_from_dict`
    falls back to) are nnU-Net's values too."""
    config = config_from_dict({})
    t = config.training
    assert (t.epochs, t.iters_per_epoch, t.val_iters) == (1000, 250, 50)
    assert (t.initial_lr, t.momentum, t.nesterov, t.weight_decay) == (1e-2, 0.99, True, 3e-5)
    assert (t.poly_exponent, t.lr_step, t.grad_clip, t.ema_momentum) == (0.9, "epoch", 12.0, 0.9)
    assert config.data.oversample_foreground == 0.33
    assert (config.validation.step, config.validation.mirroring) == (0.5, True)


# --- loss ---------------------------------------------------------------------------------------------

def six_stage_plans(name: str, batch_dice: bool):
    plans = toy_plans(patch=(64, 64, 64), name=name)
    config = plans.configurations[name]
    network = NetworkPlan(strides=((1, 1, 1),) + ((2, 2, 2),) * 5, kernel_sizes=((3, 3, 3),) * 6,
                          features_per_stage=(4, 8, 16, 32, 64, 64))
    return replace(plans, configurations={name: replace(config, network=network, batch_dice=batch_dice)})


def test_deep_supervision_weights_of_the_trainers_loss():
    """nnU-Net reference: trainer, loss — w_i = 1/2^i, lowest output 0, normalised:
    6 stages → [0.5333, 0.2667, 0.1333, 0.0667, 0] (8/15, 4/15, 2/15, 1/15, 0)."""
    plans = six_stage_plans("3d_fullres", False)
    loss = training_loss(plans, default_config())
    np.testing.assert_allclose(loss.weights, [8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0], rtol=1e-12)
    np.testing.assert_allclose(deep_supervision_weights(3), [2 / 3, 1 / 3, 0.0], rtol=1e-12)


def uniform_logits_and_one_foreground_sample():
    """Logits 0 everywhere (softmax 0.5/0.5) on 2 samples of 2×2 voxels; sample 0 all label 1,
    sample 1 all background."""
    logits = torch.zeros((2, 2, 2, 2))
    target = torch.zeros((2, 1, 2, 2), dtype=torch.long)
    target[0] = 1
    return logits, target


# Dice of class 1 by hand (smooth 1e-5, negligible at 1e-6): batch: I = 4·0.5 = 2, Σp = 8·0.5, Σy = 4
# → (4 + s)/(8 + s) = 0.5. Per sample: (4 + s)/(6 + s) = 2/3 and s/(2 + s) ≈ 5e-6 → mean 1/3.
# CE = ln 2 on every voxel. Loss = CE − Dice.
LOSS_BATCH_DICE = math.log(2) - 0.5
LOSS_PER_SAMPLE_DICE = math.log(2) - (2 / 3 + 5e-6) / 2


def test_2d_configuration_trains_with_batch_dice():
    """nnU-Net reference: planning (batch_dice: 2d True) and loss (batch Dice sums over the batch)."""
    plans = plan_experiment(make_fingerprint((1.0, 1.0, 1.0), (36, 50, 35), n=40))
    assert plans.configurations["2d"].batch_dice is True
    two_d = replace(toy_plans(patch=(12, 12), name="2d"), labels={"background": 0, "a": 1})
    two_d = replace(two_d, configurations={"2d": replace(two_d.configurations["2d"],
                                                         batch_dice=plans.configurations["2d"].batch_dice)})
    loss = training_loss(two_d, default_config("configuration=2d"))
    logits, target = uniform_logits_and_one_foreground_sample()
    assert float(loss(logits, target)) == pytest.approx(LOSS_BATCH_DICE, abs=1e-5)


def test_3d_fullres_without_lowres_trains_with_per_sample_dice_and_the_cascade_plans_batch_dice():
    """nnU-Net reference: planning — 3d_fullres uses batch Dice only when a 3d_lowres exists;
    3d_lowres never; the cascade inherits 3d_fullres. The loss then averages per-sample Dice."""
    small = plan_experiment(make_fingerprint((1.0, 1.0, 1.0), (36, 50, 35), n=40)).configurations
    assert small["3d_fullres"].batch_dice is False and "3d_lowres" not in small
    large = plan_experiment(make_fingerprint((2.5, 0.78, 0.78), (162, 512, 512), channels=("CT",))).configurations
    assert {name: plan.batch_dice for name, plan in large.items()} == {
        "2d": True, "3d_lowres": False, "3d_fullres": True, "3d_cascade_fullres": True}
    plans = replace(toy_plans(patch=(4, 12, 12)), labels={"background": 0, "a": 1})
    per_sample = training_loss(plans, default_config())
    batch = training_loss(replace(plans, configurations={"3d_fullres": replace(
        plans.configurations["3d_fullres"], batch_dice=True)}), default_config())
    logits, target = uniform_logits_and_one_foreground_sample()
    logits, target = logits[:, :, None], target[:, :, None]  # (B, K, 1, 2, 2)
    assert float(per_sample(logits, target)) == pytest.approx(LOSS_PER_SAMPLE_DICE, abs=1e-5)
    assert float(batch(logits, target)) == pytest.approx(LOSS_BATCH_DICE, abs=1e-5)


def test_soft_dice_smoothing_is_1e_5():
    """nnU-Net reference: loss — dc = (2I + 1e-5) / (Σy + Σp + 1e-5), CE and Dice weights 1.
    One voxel of background where class 1 gets p = 1e-5: Dice = 1e-5 / (1e-5 + 1e-5) = 0.5
    (smooth 1e-4: 0.909; 1e-6: 0.091; 1: ≈ 1), CE = −ln(1 − 1e-5) ≈ 1e-5, loss ≈ −0.5."""
    plans = replace(toy_plans(patch=(4, 12, 12)), labels={"background": 0, "a": 1})
    loss = training_loss(plans, default_config())
    p = 1e-5
    logits = torch.tensor([0.0, math.log(p / (1 - p))], dtype=torch.float64).float().reshape(1, 2, 1, 1, 1)
    target = torch.zeros((1, 1, 1, 1, 1), dtype=torch.long)
    assert float(loss(logits, target)) == pytest.approx(1e-5 - 0.5, abs=2e-3)


# --- best checkpoint ----------------------------------------------------------------------------------

def test_checkpoint_best_follows_the_ema_of_the_pseudo_dice(tmp_path, monkeypatch):
    """nnU-Net reference: trainer, epoch loop and checkpoints — ema = 0.9·ema_prev + 0.1·mean pseudo
    Dice (the first value as is); checkpoint_best is written whenever the EMA beats (strictly) the best
    EMA so far. Mean pseudo-Dice 0.5, 0.5, 0.2, 0.9, 0.55, 0.3, 0.6 →
    EMA 0.5 (best), 0.5 (a tie: not better), 0.47, 0.513 (best), 0.5167 (best), 0.49503, 0.505527.
    Selecting by the raw pseudo-Dice gives epochs 0, 3; comparing the raw value with the best EMA
    adds epoch 6 (0.6 > 0.5167); EMA 0.8 gives 0.44, 0.532, 0.5356, 0.48848, 0.510784."""
    monkeypatch.setattr("nnlite.training.progress.plot_progress", lambda records, path: None)
    plans = toy_plans()
    config = default_config("training.epochs=7", "checkpoint.every=100")
    state = build_state(plans, config, CPU, None, Rank())
    run = Run(tmp_path, config)
    best = tmp_path / "checkpoint_best.pt"
    emas, written = [], []
    for epoch, dice in enumerate([0.5, 0.5, 0.2, 0.9, 0.55, 0.3, 0.6]):
        record = epoch_record(state, epoch, 1.0, 1.0, [dice, math.nan], config, 0.0)
        end_epoch(run, state, record, plans, config, Rank())
        emas.append(record["ema_pseudo_dice"])
        if best.exists() and torch.load(best, weights_only=True)["epoch"] == epoch + 1:
            written.append(epoch)  # checkpoint_best now holds this epoch's weights
    np.testing.assert_allclose(emas, [0.5, 0.5, 0.47, 0.513, 0.5167, 0.49503, 0.505527], rtol=1e-9)
    assert written == [0, 3, 4]
    assert torch.load(best, weights_only=True)["epoch"] == 5  # epoch 4's weights


# --- sliding window -----------------------------------------------------------------------------------

def test_tile_step_is_half_a_tile():
    """nnU-Net reference: inference, sliding window — n = ceil((size − tile)/(tile·0.5)) + 1 starts,
    evenly spread, rounded. 155 with tile 100: 3 starts [0, 28, 55] (step 0.6 gives 2);
    256 with tile 128: [0, 64, 128] (step 0.4 gives 4); 300 with 128: [0, 57, 115, 172]."""
    assert tile_starts(155, 100) == [0, 28, 55]
    assert tile_starts(256, 128) == [0, 64, 128]
    assert tile_starts(300, 128) == [0, 57, 115, 172]


class StartRecorder(nn.Module):
    """Records where each tile starts (the input holds each voxel's coordinates); outputs zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: set[tuple[int, ...]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for tile in x:
            self.starts.add(tuple(int(tile[c, 0, 0, 0]) for c in range(3)))
        return torch.zeros((x.shape[0], 2, *x.shape[2:]))


def test_prediction_defaults_to_step_half_and_every_mirror_axis(monkeypatch, tmp_path):
    """nnU-Net reference: inference — tile_step 0.5 by default (predict and the final validation),
    mirroring on. The tiles predict_sliding_window cuts from a (155, 256, 4) volume with a
    (100, 128, 4) tile: starts [0, 28, 55] × [0, 64, 128] × [0]."""
    volume = torch.from_numpy(np.indices((155, 256, 4)).astype(np.float32))
    net = StartRecorder()
    predict_sliding_window(net, volume, (100, 128, 4), mirror_axes=(), output="logits")
    assert net.starts == {(z, y, 0) for z in (0, 28, 55) for y in (0, 64, 128)}
    assert PredictOptions().step == 0.5 and PredictOptions().mirror is True
    seen = []

    def fake_predict_folder(work, input_dir, output_dir, options):
        seen.append(options)
        return PredictReport()

    monkeypatch.setattr("nnlite.inference.predictor.predict_folder", fake_predict_folder)
    from nnlite.predict import main as predict_main
    assert predict_main([str(tmp_path), str(tmp_path / "in"), str(tmp_path / "out")]) == 0
    assert seen[0].step == 0.5 and seen[0].mirror is True


def test_gaussian_importance_map_has_sigma_one_eighth_of_the_tile():
    """nnU-Net reference: inference, Gaussian importance map — σ = tile/8 per axis, peak at index
    tile//2. 128³ scaled to a peak of 10: centre 10, face centre 0.0034 (= 10·e^-8). Relative to the
    peak: e^(−½(d/σ)²) — tile 8 (σ 1): index 0 (d 4) → e^-8, index 7 (d 3) → e^-4.5; σ = tile/6
    would give e^-4.5 at the face centre of 128³."""
    big = gaussian_weights((128, 128, 128))
    assert float(big[64, 64, 64]) == 1.0 and float(big.max()) == 1.0
    assert 10 * float(big[0, 64, 64]) == pytest.approx(0.0034, rel=0.02)
    assert float(big[0, 64, 64]) == pytest.approx(math.exp(-8), rel=1e-5)
    assert float(big[64, 64, 127]) == pytest.approx(math.exp(-0.5 * (63 / 16) ** 2), rel=1e-5)
    small = gaussian_weights((8, 5)).double()
    expected = np.outer(np.exp(-0.5 * (np.arange(8) - 4) ** 2), np.exp(-0.5 * ((np.arange(5) - 2) / 0.625) ** 2))
    np.testing.assert_allclose(small.numpy(), expected, rtol=1e-6)
    assert small[0, 2] == pytest.approx(math.exp(-8), rel=1e-6) and small[7, 2] == pytest.approx(math.exp(-4.5))


# --- post-processing ----------------------------------------------------------------------------------

SHAPE = (12, 12, 12)
AFFINE = np.eye(4)


def write_pair(root: Path, case: str, pred: np.ndarray, ref: np.ndarray) -> None:
    write_seg(root / "pred" / f"{case}.nii.gz", pred.astype(np.uint8), AFFINE)
    write_seg(root / "ref" / f"{case}.nii.gz", ref.astype(np.uint8), AFFINE)


def attached_label_2_and_a_larger_far_label_2() -> tuple[np.ndarray, np.ndarray]:
    """Reference: label 1 cube A (27 voxels) with label 2 slab B (4 voxels) touching it. Prediction:
    the same plus a far label-2 cube G of 8 voxels, larger than B."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[1:4, 1:4, 1:4] = 1
    ref[4, 1:3, 1:3] = 2
    pred = ref.copy()
    pred[8:10, 8:10, 8:10] = 2
    return pred, ref


def test_the_merged_step_keeps_the_largest_component_of_all_foreground_labels_together(tmp_path):
    """nnU-Net reference: post-processing, step 1 — all foreground labels merged into one mask, its
    largest component kept: A+B (31 voxels) stays, G (8) goes, so label 2's Dice rises from
    2·4/(2·4 + 8) = 0.5 to 1 and step [1, 2] is accepted; the per-label steps then change nothing.
    (Largest component per label instead would keep G and drop B: label 2 worse, rejected.)"""
    pred, ref = attached_label_2_and_a_larger_far_label_2()
    kept = apply_postprocessing(pred, [[1, 2]])
    np.testing.assert_array_equal(kept, ref)
    for i in range(3):
        write_pair(tmp_path, f"c{i}", pred, ref)
    decision = decide_postprocessing(matched_cases(tmp_path / "pred", tmp_path / "ref"), label_classes([1, 2]))
    merged, label1, label2 = decision["decisions"]
    assert merged["labels"] == [1, 2] and merged["accepted"]
    assert merged["dice_before"] == pytest.approx((1.0 + 0.5) / 2) and merged["dice_after"] == pytest.approx(1.0)
    assert not label1["accepted"] and not label2["accepted"]
    assert decision["steps"] == [[1, 2]]


def test_per_label_steps_start_from_the_accepted_merged_step(tmp_path):
    """nnU-Net reference: post-processing, step 2 — each label's step starts from the step-1 result
    and must improve on it strictly.

    5 cases "R": label 1 cube A (27) + attached label 2 slab B (9); predicted with a spurious label-1
    block F (18 voxels, far). 1 case "Q": label 2 cube (64) and a separate label 1 block (8), predicted
    exactly. Merged step: R loses F (label-1 Dice 54/72 = 0.75 → 1), Q loses its label-1 block (1 → 0):
    label 1 mean 0.7917 → 0.8333, label 2 stays 1 → accepted. From that result the label-1 step
    changes nothing → rejected; steps [[1, 2]]. (Started from the raw prediction instead it would
    keep Q's block: label 1 → 1.0 > 0.8333, wrongly accepted.)"""
    for i in range(5):
        ref = np.zeros(SHAPE, np.uint8)
        ref[1:4, 1:4, 1:4] = 1
        ref[4, 1:4, 1:4] = 2
        pred = ref.copy()
        pred[7:10, 7:10, 8:10] = 1
        write_pair(tmp_path, f"r{i}", pred, ref)
    ref = np.zeros(SHAPE, np.uint8)
    ref[1:5, 1:5, 1:5] = 2
    ref[8:10, 8:10, 8:10] = 1
    write_pair(tmp_path, "q", ref, ref)
    decision = decide_postprocessing(matched_cases(tmp_path / "pred", tmp_path / "ref"), label_classes([1, 2]))
    merged, label1, label2 = decision["decisions"]
    assert merged["accepted"]
    assert merged["dice_before"] == pytest.approx(((5 * 0.75 + 1) / 6 + 1) / 2)
    assert merged["dice_after"] == pytest.approx((5 / 6 + 1) / 2)
    assert label1["dice_before"] == pytest.approx(5 / 6) and label1["dice_after"] == pytest.approx(5 / 6)
    assert not label1["accepted"] and not label2["accepted"]
    assert decision["steps"] == [[1, 2]]
    assert decision["foreground_dice_after"] == pytest.approx((5 / 6 + 1) / 2)


def test_a_single_label_has_only_the_merged_step(tmp_path):
    """nnU-Net reference: post-processing — step 2 runs only with more than one label."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[1:4, 1:4, 1:4] = 1
    pred = ref.copy()
    pred[8:10, 8:10, 8:10] = 1
    write_pair(tmp_path, "a", pred, ref)
    decision = decide_postprocessing(matched_cases(tmp_path / "pred", tmp_path / "ref"), label_classes([1]))
    assert len(decision["decisions"]) == 1 and decision["steps"] == [[1]]
    assert decision["foreground_dice_before"] == pytest.approx(54 / 62)


# --- evaluation ---------------------------------------------------------------------------------------

def test_foreground_mean_is_nan_when_a_label_mean_is_nan():
    """nnU-Net reference: evaluation — mean[label] = nanmean over cases; foreground_mean = the plain
    mean over label means, NaN when one of them is NaN (a label empty in every reference and
    prediction). Label 1: Dice 2·3/(2·3 + 1) = 6/7, IoU 3/4."""
    summary = summarize({"a": {1: Counts(3, 1, 0), 2: Counts(0, 0, 0)},
                         "b": {1: Counts(0, 0, 0), 2: Counts(0, 0, 0)}}, [1, 2])
    assert summary["mean"]["1"]["dice"] == pytest.approx(6 / 7)
    assert summary["mean"]["1"]["iou"] == pytest.approx(3 / 4)
    assert math.isnan(summary["mean"]["2"]["dice"])
    assert math.isnan(summary["foreground_mean"]["dice"]) and math.isnan(summary["foreground_mean"]["iou"])
