"""Dice + CE loss, deep-supervision weights/scales and target downsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nnlite.network.loss import (DICE_SMOOTH, DeepSupervisionLoss, DiceCELoss, build_loss,
                                 deep_supervision_scales, deep_supervision_weights, downsample_seg,
                                 soft_dice_per_class)
from nnlite.plans import NetworkPlan


def _random_target(seed: int, shape: tuple[int, ...], num_classes: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, shape, generator=gen)


def _perfect_logits(target: torch.Tensor, num_classes: int, margin: float = 50.0) -> torch.Tensor:
    onehot = F.one_hot(target[:, 0], num_classes).movedim(-1, 1).float()
    return onehot * margin


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    num_classes=st.integers(2, 5),
    batch_dice=st.booleans(),
    ndim=st.sampled_from([2, 3]),
)
def test_perfect_prediction_scores_the_minimum(seed: int, num_classes: int, batch_dice: bool, ndim: int) -> None:
    shape = (2, 1) + (6,) * ndim
    target = _random_target(seed, shape, num_classes)
    loss = DiceCELoss(batch_dice)
    perfect = loss(_perfect_logits(target, num_classes), target)
    gen = torch.Generator().manual_seed(seed + 1)
    noisy = _perfect_logits(target, num_classes) + 60 * torch.randn((2, num_classes) + shape[2:], generator=gen)
    random = torch.randn((2, num_classes) + shape[2:], generator=gen)
    # CE ≥ 0 and Dice ≤ 1, so −1 is the infimum; a perfect prediction reaches it.
    assert perfect.item() == pytest.approx(-1.0, abs=1e-4)
    assert loss(noisy, target).item() > perfect.item()
    assert loss(random, target).item() > perfect.item()


def _dice_by_hand(probs: np.ndarray, target: np.ndarray, batch_dice: bool) -> np.ndarray:
    """Straightforward per-class soft Dice: loops over samples and foreground classes."""
    b, k = probs.shape[:2]
    samples = [list(range(b))] if batch_dice else [[i] for i in range(b)]
    result = np.zeros((len(samples), k - 1))
    for row, idx in enumerate(samples):
        for c in range(1, k):
            p = probs[idx, c].astype(np.float64)
            y = (target[idx, 0] == c).astype(np.float64)
            result[row, c - 1] = (2 * (p * y).sum() + DICE_SMOOTH) / (y.sum() + p.sum() + DICE_SMOOTH)
    return result[0] if batch_dice else result


@pytest.mark.parametrize("batch_dice", [False, True])
def test_dice_matches_a_per_class_computation(batch_dice: bool) -> None:
    target = _random_target(3, (3, 1, 5, 6, 7), 4)
    target[1] = 0  # a sample without foreground: its Dice is smooth/smooth-ish, not NaN
    logits = torch.randn((3, 4, 5, 6, 7), generator=torch.Generator().manual_seed(4))
    probs = torch.softmax(logits, 1)
    dice = soft_dice_per_class(probs, target, batch_dice)
    expected = _dice_by_hand(probs.numpy(), target.numpy(), batch_dice)
    np.testing.assert_allclose(dice.numpy(), expected, rtol=1e-5, atol=1e-6)
    ce = F.cross_entropy(logits, target[:, 0])
    total = DiceCELoss(batch_dice)(logits, target)
    assert total.item() == pytest.approx(ce.item() - expected.mean(), rel=1e-5, abs=1e-6)


def test_batch_dice_differs_from_per_sample_dice() -> None:
    target = torch.zeros((2, 1, 4, 4), dtype=torch.long)
    target[0, 0, :2] = 1  # foreground only in sample 0
    logits = torch.randn((2, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    per_sample = DiceCELoss(batch_dice=False)(logits, target)
    batch = DiceCELoss(batch_dice=True)(logits, target)
    assert per_sample.item() != pytest.approx(batch.item(), abs=1e-3)
    # With one sample both are the same computation.
    assert DiceCELoss(False)(logits[:1], target[:1]).item() == pytest.approx(
        DiceCELoss(True)(logits[:1], target[:1]).item(), abs=1e-6
    )


@pytest.mark.parametrize("batch_dice", [False, True])
def test_gradients_are_finite_for_empty_foreground(batch_dice: bool) -> None:
    target = torch.zeros((2, 1, 4, 5, 6), dtype=torch.long)
    logits = torch.randn((2, 3, 4, 5, 6), requires_grad=True)
    loss = DiceCELoss(batch_dice)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("ignore_label, mask_outside", [(None, True), (3, False), (3, True)])
def test_masked_voxels_do_not_change_the_loss(ignore_label: int | None, mask_outside: bool) -> None:
    """Voxels with the ignore label, or −1 (outside) with mask_outside, count in neither CE nor Dice."""
    target = _random_target(5, (2, 1, 6, 8), 3)
    target[..., 4:] = -1 if ignore_label is None else ignore_label
    target[..., 7] = -1 if mask_outside else target[..., 7]
    logits = torch.randn((2, 3, 6, 8), generator=torch.Generator().manual_seed(6))
    loss = DiceCELoss(False, ignore_label, mask_outside)
    changed = logits.clone()
    changed[..., 4:] = 100 * torch.randn_like(changed[..., 4:])
    assert loss(logits, target).item() == pytest.approx(loss(changed, target).item(), abs=1e-6)
    # And it equals the loss on the valid part alone.
    assert loss(logits, target).item() == pytest.approx(
        DiceCELoss(False)(logits[..., :4], target[..., :4]).item(), abs=1e-5
    )


@pytest.mark.parametrize("batch_dice", [False, True])
def test_outside_voxels_count_as_background_by_default(batch_dice: bool) -> None:
    target = _random_target(7, (2, 1, 6, 8), 3)
    target[..., :2] = 0
    outside = target.clone()
    outside[..., :2] = -1
    logits = torch.randn((2, 3, 6, 8), generator=torch.Generator().manual_seed(8))
    loss = DiceCELoss(batch_dice)
    assert torch.equal(loss(logits, outside), loss(logits, target))
    # The masked path with nothing to mask is the same computation as the fast path.
    assert DiceCELoss(batch_dice, mask_outside=True)(logits, target).item() == pytest.approx(
        loss(logits, target).item(), abs=1e-6
    )


def test_all_voxels_masked_gives_a_finite_loss() -> None:
    target = torch.full((1, 1, 4, 4), -1)
    logits = torch.randn((1, 2, 4, 4), requires_grad=True)
    loss = DiceCELoss(False, mask_outside=True)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_deep_supervision_weights_for_six_stages() -> None:
    weights = deep_supervision_weights(5)
    np.testing.assert_allclose(weights, [0.5333, 0.2667, 0.1333, 0.0667, 0.0], atol=1e-4)


@given(st.integers(2, 12))
def test_deep_supervision_weights_sum_to_one_lowest_zero(n: int) -> None:
    weights = deep_supervision_weights(n)
    assert len(weights) == n and weights[-1] == 0
    assert sum(weights) == pytest.approx(1.0)
    assert all(a == pytest.approx(2 * b) for a, b in zip(weights[:-2], weights[1:-1]))


def test_single_output_gets_weight_one() -> None:
    assert deep_supervision_weights(1) == [1.0]


def test_deep_supervision_skips_zero_weight_outputs() -> None:
    target = _random_target(0, (1, 1, 8, 8), 2)
    targets = downsample_seg(target, [(1, 1), (0.5, 0.5), (0.25, 0.25)])
    outputs = [torch.randn((1, 2) + t.shape[2:]) for t in targets]
    loss = DeepSupervisionLoss(DiceCELoss(False), deep_supervision_weights(3))
    full = loss(outputs, targets)
    outputs_nan = outputs[:2] + [torch.full_like(outputs[2], float("nan"))]
    assert torch.equal(loss(outputs_nan, targets), full)  # the weight-0 output is never evaluated
    assert torch.equal(loss(outputs[:2], targets), full)  # nor needed at all
    expected = 2 / 3 * DiceCELoss(False)(outputs[0], targets[0]) + 1 / 3 * DiceCELoss(False)(outputs[1], targets[1])
    assert full.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError):
        loss(outputs[:1], targets)
    # Without deep supervision a single tensor uses the full-resolution target.
    assert torch.equal(loss(outputs[0], targets), DiceCELoss(False)(outputs[0], targets[0]))


def test_deep_supervision_scales_follow_the_strides() -> None:
    plan = NetworkPlan(
        strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 1)),
        kernel_sizes=((1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
        features_per_stage=(4, 8, 16, 32),
    )
    assert deep_supervision_scales(plan) == [(1.0, 1.0, 1.0), (1.0, 0.5, 0.5), (0.5, 0.25, 0.25)]
    assert len(build_loss(plan, batch_dice=True).weights) == 3


@settings(max_examples=30, deadline=None)
@given(
    factors=st.lists(st.sampled_from([1, 2, 4]), min_size=3, max_size=3),
    multiples=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    seed=st.integers(0, 1000),
)
def test_downsample_seg_is_nearest_exact(factors: list[int], multiples: list[int], seed: int) -> None:
    shape = tuple(f * m for f, m in zip(factors, multiples))
    seg = _random_target(seed, (2, 1) + shape, 4).to(torch.int16)
    scale = tuple(1 / f for f in factors)
    (low,) = downsample_seg(seg, [scale])
    expected = F.interpolate(seg.float(), size=tuple(multiples), mode="nearest-exact").to(torch.int16)
    assert low.dtype == torch.int16 and torch.equal(low, expected)
    (low_np,) = downsample_seg(seg.numpy(), [scale])
    assert isinstance(low_np, np.ndarray) and np.array_equal(low_np, expected.numpy())


def test_downsample_seg_falls_back_for_indivisible_sizes() -> None:
    seg = _random_target(1, (1, 1, 5, 7), 3)
    (low,) = downsample_seg(seg, [(0.5, 0.5)])
    expected = F.interpolate(seg.float(), size=(2, 4), mode="nearest-exact").long()
    assert torch.equal(low, expected)
