"""The training loop's parts: poly LR, batch split across ranks, pseudo-Dice, steps, EMA, resume checks.

End-to-end runs on demo data live in tests/test_demo.py (marked slow).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from tqdm import tqdm

from tests.loader_fixtures import toy_dataset, toy_plans

from nnlite.common.errors import UserError
from nnlite.network import build_unet
from nnlite.network.loss import build_loss, deep_supervision_scales, downsample_seg
from nnlite.plans import NetworkPlan
from nnlite.train import build_parser, main as train_main, overrides_from_args
from nnlite.training import checkpoints
from nnlite.training.config import load_train_config, replace_setting
from nnlite.training.distributed import Rank, forced_foreground, split_batch
from nnlite.training.precision import amp_dtype, first_cpu_bf16_hazard
from nnlite.training.run_setup import build_batches, plan_differences, seed_everything
from nnlite.training.trainer import (RunState, build_state, confusion_counts, epoch_record, learning_rate,
                                     make_checkpoint, poly_lr, restore_state, train_one_epoch, train_step,
                                     validate, wants_compile)

PLAN = NetworkPlan(strides=((1, 1, 1), (1, 2, 2), (2, 2, 2)), kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)),
                   features_per_stage=(4, 8, 16))
PATCH = (4, 16, 16)
# Never 2 deep on the first axis (its bottleneck is 4 × 4 × 4): safe for the CPU's bf16 conv3d.
BF16_PLAN = NetworkPlan(strides=((1, 1, 1), (1, 2, 2), (1, 2, 2)),
                        kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3)), features_per_stage=(4, 8, 16))


# --- learning rate -----------------------------------------------------------------------------

def test_poly_lr_matches_the_reference():
    assert poly_lr(1e-2, 0, 1000, 0.9) == 1e-2
    assert poly_lr(1e-2, 999, 1000, 0.9) == pytest.approx(1.99e-5, rel=0.01)
    assert poly_lr(1e-2, 1000, 1000, 0.9) == 0.0


def test_learning_rate_per_epoch_or_per_iteration():
    per_epoch = load_train_config("default", ["training.epochs=10", "training.iters_per_epoch=4"])
    assert learning_rate(per_epoch, 3, 0) == learning_rate(per_epoch, 3, 3) == poly_lr(1e-2, 3, 10, 0.9)
    per_iter = replace_setting(per_epoch, "training.lr_step", "iteration")
    lrs = [learning_rate(per_iter, e, i) for e in range(10) for i in range(4)]
    assert lrs[0] == 1e-2 and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert lrs[13] == pytest.approx(poly_lr(1e-2, 13, 40, 0.9))


# --- batch split across ranks --------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 40), world=st.integers(1, 8), oversample=st.sampled_from([0.0, 0.33, 0.5, 1.0]))
def test_ranks_split_the_global_batch_and_keep_the_global_oversampling(batch, world, oversample):
    if batch < world:
        with pytest.raises(ValueError):
            split_batch(batch, Rank(0, world))
        return
    ranks = [Rank(r, world) for r in range(world)]
    sizes = [split_batch(batch, r)[0] for r in ranks]
    assert sum(sizes) == batch and max(sizes) - min(sizes) <= 1
    assert [split_batch(batch, r)[1] for r in ranks] == list(np.cumsum([0] + sizes[:-1]))
    merged = [flag for r in ranks for flag in forced_foreground(batch, oversample, r)]
    assert merged == forced_foreground(batch, oversample, Rank())


def test_forced_foreground_is_the_reference_rule():
    assert forced_foreground(2, 0.33, Rank()) == [False, True]
    assert [i for i, f in enumerate(forced_foreground(12, 0.33, Rank())) if f] == [8, 9, 10, 11]
    assert forced_foreground(5, 0.33, Rank(1, 2)) == [True, True]  # rank 1 holds global samples 3, 4


# --- pseudo-Dice and EMA -------------------------------------------------------------------------

def test_confusion_counts_against_numpy():
    rng = np.random.default_rng(0)
    pred, target = rng.integers(0, 3, (2, 5, 6)), rng.integers(0, 3, (2, 5, 6))
    counts = confusion_counts(torch.as_tensor(pred), torch.as_tensor(target), 3).numpy()
    for label in (1, 2):
        p, t = pred == label, target == label
        assert list(counts[:, label - 1]) == [(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]


def test_confusion_counts_leave_out_the_ignore_label():
    """Labels 0-2 plus ignore 3: unannotated voxels make no TP, FP or FN, whatever is predicted."""
    rng = np.random.default_rng(1)
    pred, target = rng.integers(0, 3, (2, 5, 6)), rng.integers(0, 4, (2, 5, 6))
    counts = confusion_counts(torch.as_tensor(pred), torch.as_tensor(target), 3, ignore_label=3).numpy()
    annotated = target != 3
    for label in (1, 2):
        p, t = (pred == label) & annotated, target == label
        assert list(counts[:, label - 1]) == [(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]
    assert counts[1].sum() < confusion_counts(torch.as_tensor(pred), torch.as_tensor(target), 3)[1].sum()


def test_ema_of_the_pseudo_dice():
    config = load_train_config("debug")
    state = RunState(None, None, None, None, None, torch.device("cpu"), 0, [])
    first = epoch_record(state, 0, 1.0, 1.0, [0.4, 0.6], config, 0.0)
    assert first["mean_pseudo_dice"] == pytest.approx(0.5) and first["ema_pseudo_dice"] == pytest.approx(0.5)
    state.metrics.append(first)
    second = epoch_record(state, 1, 1.0, 1.0, [1.0, float("nan")], config, 0.0)
    assert second["mean_pseudo_dice"] == 1.0  # NaN classes (absent from every patch) left out
    assert second["ema_pseudo_dice"] == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)


# --- the loop on a tiny network with hand-made batches (a stand-in for the loader) ------------------

def fake_batches(seed: int, n: int, plan: NetworkPlan = PLAN):
    """Endless batches of a bright cube (label 1) in noise, with deep-supervision targets."""
    rng = np.random.default_rng(seed)
    scales = deep_supervision_scales(plan)
    while True:
        seg = np.zeros((2, 1, *PATCH), dtype=np.int64)
        seg[:, :, 1:3, 4:12, 4:12] = 1
        data = (rng.normal(size=(2, 1, *PATCH)) + 2.0 * seg).astype(np.float32)
        yield {"data": torch.from_numpy(data), "target": downsample_seg(torch.from_numpy(seg), scales),
               "cases": ["a", "b"]}


def plan_for(amp: torch.dtype | None) -> NetworkPlan:
    """PLAN in fp32; under autocast BF16_PLAN, which the CPU's bf16 conv3d handles correctly."""
    return PLAN if amp is None else BF16_PLAN


def tiny_state(seed: int = 0, amp: torch.dtype | None = None) -> RunState:
    seed_everything(seed, deterministic=True)
    net = build_unet(plan_for(amp), 1, 2)
    net.skip_lowest_head = True
    opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    return RunState(net, net, opt, None, amp, torch.device("cpu"), 0, [])


def tiny_config():
    return load_train_config("debug", ["training.epochs=4", "training.iters_per_epoch=6",
                                       "training.val_iters=2", "training.initial_lr=0.05"])


@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_training_lowers_the_loss_and_pseudo_dice_rises(amp):
    config, state = tiny_config(), tiny_state(amp=amp)
    plan = plan_for(amp)
    loss_fn = build_loss(plan, batch_dice=True)
    train, val = fake_batches(1, 2, plan), fake_batches(2, 2, plan)
    bar = tqdm(disable=True)
    losses = [train_one_epoch(state, loss_fn, train, config, epoch, bar) for epoch in range(4)]
    assert losses[-1] < losses[0]
    _, dice = validate(state, loss_fn, val, config, 2, Rank())
    assert len(dice) == 1 and dice[0] > 0.5


@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_seeded_epochs_are_bit_reproducible(amp):
    plan = plan_for(amp)
    config, loss_fn = tiny_config(), build_loss(plan, batch_dice=True)
    weights = []
    for _ in range(2):
        state = tiny_state(seed=3, amp=amp)
        train_one_epoch(state, loss_fn, fake_batches(5, 2, plan), config, 0, tqdm(disable=True))
        weights.append([p.detach().clone() for p in state.network.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_learning_rate_is_set_on_the_optimizer():
    config = replace_setting(tiny_config(), "training.lr_step", "iteration")
    state = tiny_state()
    train_one_epoch(state, build_loss(PLAN, True), fake_batches(0, 2), config, 2, tqdm(disable=True))
    assert state.optimizer.param_groups[0]["lr"] == learning_rate(config, 2, 5)


def test_bf16_autocast_runs_the_convolutions_in_bf16():
    """The bf16 state really computes in bf16 (else the test above would not test the AMP path)."""
    state, seen = tiny_state(amp=torch.bfloat16), []
    conv = next(m for m in state.network.modules() if isinstance(m, torch.nn.Conv3d))
    conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    batch = next(fake_batches(0, 2, BF16_PLAN))
    train_step(state, build_loss(BF16_PLAN, True), batch, grad_clip=12.0)
    assert seen == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in state.network.parameters())  # fp32 master weights


@pytest.mark.parametrize("caps, expected", [({"avx512_bf16": True}, torch.bfloat16),
                                            ({"amx_bf16": True}, torch.bfloat16), ({}, None)])
def test_amp_auto_on_the_cpu_uses_bf16_only_where_the_cpu_computes_it(monkeypatch, caps, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu, BF16_PLAN, PATCH) == expected
    assert amp_dtype("bf16", cpu, BF16_PLAN, PATCH) == torch.bfloat16  # asked for: emulated if need be
    assert amp_dtype("off", cpu, BF16_PLAN, PATCH) is None


def test_cpu_bf16_is_avoided_where_a_stage_is_two_deep(monkeypatch):
    """PLAN's bottleneck is 2 × 4 × 4 with 3 × 3 × 3 kernels: the shape that breaks CPU bf16 conv3d."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    cpu = torch.device("cpu")
    assert first_cpu_bf16_hazard(PLAN, PATCH) == 2 and first_cpu_bf16_hazard(BF16_PLAN, PATCH) is None
    assert first_cpu_bf16_hazard(PLAN, (8, 16, 16)) is None  # 8 → 8 → 8 → 4
    assert amp_dtype("auto", cpu, PLAN, PATCH) is None
    with pytest.raises(UserError, match="training.amp.*2 voxels deep"):
        amp_dtype("bf16", cpu, PLAN, PATCH)


def test_amp_fp16_on_the_cpu_and_unknown_modes_are_user_errors():
    with pytest.raises(UserError, match="training.amp"):
        amp_dtype("fp16", torch.device("cpu"), BF16_PLAN, PATCH)
    with pytest.raises(UserError, match="training.amp"):
        load_train_config("debug", ["training.amp=fp8"])


# --- resume checks and the command line ---------------------------------------------------------

def test_plan_differences_name_what_changed():
    saved = {"configurations": {"3d_fullres": {"patch_size": [4, 8, 8]}}, "labels": {"a": 1}}
    same = {"configurations": {"3d_fullres": {"patch_size": [4, 8, 8]}, "2d": {}}, "labels": {"a": 1}}
    assert plan_differences(saved, same, "3d_fullres") == []
    changed = {"configurations": {"3d_fullres": {"patch_size": [4, 16, 16]}}, "labels": {"a": 1}}
    assert plan_differences(saved, changed, "3d_fullres") == ["plans.configurations.3d_fullres changed since the checkpoint"]


def test_flags_become_settings():
    args = build_parser().parse_args(["W", "--epochs", "3", "--set", "training.epochs=9", "--seed", "1",
                                      "--device", "cpu", "--config", "2d"])
    config = load_train_config("default", overrides_from_args(args))
    assert (config.training.epochs, config.seed, config.device, config.configuration) == (3, 1, "cpu", "2d")


@pytest.mark.parametrize("argv", [["W", "--fold", "x"], ["W", "--resume", "--overwrite"], ["W", "--epochs", "x"]])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exit_:
        train_main(argv)
    assert exit_.value.code == 2


def test_missing_plans_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="plans.json"):
        train_main([str(tmp_path), "--device", "cpu"])


# --- rules the trainer applies, through its own code paths --------------------------------------

def test_trainers_loader_forces_foreground_with_round_not_int(tmp_path):
    """Batch 4, oversampling 0.33: round(4·0.67) = 3, so only sample 3 is forced (int() would force
    samples 2 and 3). Seen through the batches `build_batches` makes for the trainer: sample 3
    always holds foreground, sample 2 (random placement, small blobs) not always."""
    cases = toy_dataset(tmp_path, n_cases=4, radius=1.5)
    plans = toy_plans(patch=(8, 8, 8), batch_size=4)
    config = load_train_config("debug", ["data.augment=false", "data.oversample_foreground=0.33"])
    config = replace_setting(config, "configuration", "3d_fullres")
    with build_batches(tmp_path, plans, config, cases, cases, 4, 0, Rank(), torch.device("cpu")) as batches:
        has_foreground = np.array([[bool((t > 0).any()) for t in next(batches.train)["target"][0]]
                                   for _ in range(12)])
    assert has_foreground[:, 3].all()
    assert not has_foreground[:, 2].all()


def test_gradient_clipping_bounds_the_gradient_norm():
    clip = 1e-3
    state, unclipped = tiny_state(seed=1), tiny_state(seed=1)
    for group in state.optimizer.param_groups + unclipped.optimizer.param_groups:
        group["lr"] = 0.0
    loss_fn, batch = build_loss(PLAN, batch_dice=True), next(fake_batches(0, 2))
    train_step(state, loss_fn, batch, clip)
    train_step(unclipped, loss_fn, batch, math.inf)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in state.network.parameters()
                                                 if p.grad is not None]))
    free = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in unclipped.network.parameters()
                                                 if p.grad is not None]))
    assert free > 10 * clip  # the test means something: clipping had work to do
    assert norm == pytest.approx(clip, rel=1e-4)


class GlobalDropout(nn.Module):
    """A user's change to the network that draws from torch's global RNG while training."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor):
        return self.network(nn.functional.dropout(x, 0.3, training=self.training))


def dropout_state(seed: int) -> RunState:
    state = tiny_state(seed=seed)
    state.model = GlobalDropout(state.network)
    return state


def test_resume_restores_the_global_rng_so_modified_networks_resume_exactly():
    """Nothing in nnlite's own training draws from the global RNG, but a modified network may
    (dropout here); resuming must then continue its random stream exactly: the checkpoint's RNG
    state is restored. Without the restore the second epoch's dropout masks differ."""
    config, loss_fn = tiny_config(), build_loss(PLAN, batch_dice=True)
    bar = tqdm(disable=True)
    straight = dropout_state(seed=2)
    batches = fake_batches(7, 2)
    train_one_epoch(straight, loss_fn, batches, config, 0, bar)
    checkpoint = {"network": {k: v.clone() for k, v in straight.network.state_dict().items()},
                  "optimizer": copy.deepcopy(straight.optimizer.state_dict()), "epoch": 1, "metrics": [],
                  "rng": checkpoints.capture_rng()}
    train_one_epoch(straight, loss_fn, batches, config, 1, bar)

    resumed = dropout_state(seed=2)  # a fresh process: seeded, then the checkpoint restored
    restore_state(resumed, checkpoint)
    replay = fake_batches(7, 2)
    for _ in range(config.training.iters_per_epoch):
        next(replay)  # the loader resumes at batch epoch · iterations
    train_one_epoch(resumed, loss_fn, replay, config, 1, bar)
    for a, b in zip(straight.network.parameters(), resumed.network.parameters()):
        assert torch.equal(a, b)


# --- training.compile ---------------------------------------------------------------------------------

def test_compile_auto_means_cuda_only():
    assert wants_compile("auto", torch.device("cuda", 0)) and not wants_compile("auto", torch.device("cpu"))
    assert wants_compile("on", torch.device("cpu")) and not wants_compile("off", torch.device("cuda", 0))


@pytest.mark.slow
def test_compiled_network_matches_eager_and_saves_plain_keys():
    """training.compile=on on a tiny plan: the compiled network computes what the eager one does, its
    checkpoint has no `_orig_mod.` keys and loads into an uncompiled network, and a resumed compiled
    run continues bit-exactly."""
    plans, cpu = toy_plans(patch=(8, 16, 16)), torch.device("cpu")
    plan = plans.configurations["3d_fullres"]
    config = load_train_config("debug", ["device=cpu", "training.amp=off", "training.compile=on"])
    compiled = build_state(plans, config, cpu, None, Rank())
    eager = build_state(plans, replace_setting(config, "training.compile", "off"), cpu, None, Rank())
    assert compiled.model is not compiled.network and eager.model is eager.network
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 16, 16, generator=gen)
    seg = torch.randint(0, 3, (2, 1, 8, 16, 16), generator=gen)
    batch = {"data": x, "target": downsample_seg(seg, deep_supervision_scales(plan.network))}
    with torch.no_grad():
        for ours, theirs in zip(compiled.model(x), eager.model(x)):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    loss_fn = build_loss(plan.network, batch_dice=False)
    losses = [train_step(state, loss_fn, batch, 12.0) for state in (compiled, eager)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    checkpoint = copy.deepcopy(make_checkpoint(compiled, plans, config))  # a copy, as torch.save makes
    assert not any("_orig_mod" in key for key in checkpoint["network"])
    eager.network.load_state_dict(checkpoint["network"])  # strict: the same keys as an eager network
    train_step(compiled, loss_fn, batch, 12.0)
    resumed = build_state(plans, config, cpu, checkpoint, Rank())
    train_step(resumed, loss_fn, batch, 12.0)
    for a, b in zip(compiled.network.parameters(), resumed.network.parameters()):
        assert torch.equal(a, b)
