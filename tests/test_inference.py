"""Sliding window: tile coverage, Gaussian map, exact stitching of an add-one network, mirroring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nnlite.inference import (gaussian_weights, mirror_subsets, pad_to_tile, predict_sliding_window,
                              tile_starts)


def add_one_network(channels: int, ndim: int) -> nn.Module:
    """A real conv layer computing output = input + 1 (1×1 kernel, identity weights, bias 1)."""
    conv = (nn.Conv3d if ndim == 3 else nn.Conv2d)(channels, channels, 1)
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(channels):
            conv.weight[(c, c) + (0,) * ndim] = 1.0
        conv.bias.fill_(1.0)
    return conv.eval()


@settings(max_examples=50, deadline=None)
@given(size=st.integers(1, 400), tile=st.integers(1, 160), step=st.sampled_from([0.25, 0.5, 1.0]))
def test_tile_starts_cover_every_voxel(size, tile, step):
    starts = tile_starts(size, tile, step)
    assert starts[0] == 0
    assert starts[-1] == max(0, size - tile)
    covered = np.zeros(size, bool)
    for start in starts:
        covered[start : start + tile] = True
    assert covered.all()
    gaps = np.diff(starts)
    assert (gaps > 0).all() and (gaps <= max(1, np.ceil(tile * step))).all()


def test_tile_starts_reference_worked_example():
    assert tile_starts(300, 128) == [0, 57, 115, 172]


@settings(max_examples=30, deadline=None)
@given(tile=st.lists(st.integers(1, 40), min_size=2, max_size=3))
def test_gaussian_positive_and_peaked_at_centre(tile):
    weights = gaussian_weights(tile)
    assert weights.shape == tuple(tile)
    assert (weights > 0).all()
    centre = tuple(t // 2 for t in tile)
    assert weights[centre] == weights.max()
    if any(t > 2 for t in tile):  # the centre is strictly above every border voxel
        assert weights[centre] > weights[(0,) * len(tile)]


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 14), min_size=3, max_size=3),
       patch=st.lists(st.integers(1, 8), min_size=3, max_size=3),
       mirror=st.booleans(), tile_batch=st.integers(1, 9), channels=st.integers(1, 2))
def test_add_one_network_stitches_back_exactly(shape, patch, mirror, tile_batch, channels):
    data = torch.randn(channels, *shape)
    out = predict_sliding_window(add_one_network(channels, 3), data, patch,
                                 mirror_axes=None if mirror else (), tile_batch=tile_batch,
                                 output="logits")
    assert out.shape == data.shape
    torch.testing.assert_close(out, data + 1, rtol=0, atol=1e-5)


def test_volume_smaller_than_patch_keeps_its_shape():
    data = torch.randn(1, 3, 5, 2)
    out = predict_sliding_window(add_one_network(1, 3), data, (8, 8, 8), output="logits")
    assert out.shape == data.shape
    torch.testing.assert_close(out, data + 1, rtol=0, atol=1e-6)
    padded, crop = pad_to_tile(data, (8, 8, 8))
    assert padded.shape == (1, 8, 8, 8) and crop[1] == slice(1, 6)  # centred, extra voxel high


def test_2d_network_on_3d_volume_slice_by_slice():
    data = torch.randn(2, 5, 11, 9)
    out = predict_sliding_window(add_one_network(2, 2), data, (4, 6), tile_batch=3, output="logits")
    torch.testing.assert_close(out, data + 1, rtol=0, atol=1e-5)


def _conv_net(in_ch: int, classes: int, ndim: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.Conv3d if ndim == 3 else nn.Conv2d
    return nn.Sequential(conv(in_ch, 4, 3, padding=1), nn.ReLU(), conv(4, classes, 3, padding=1)).eval()


def test_mirrors_and_networks_average_probabilities():
    """One tile (volume = patch): the result is the mean of softmax over folds × 8 mirrors."""
    data = torch.randn(1, 6, 6, 6)
    nets = [_conv_net(1, 3, 3, seed) for seed in (0, 1)]
    out = predict_sliding_window(nets, data, (6, 6, 6), tile_batch=5)
    expected = torch.zeros(3, 6, 6, 6)
    with torch.no_grad():
        for net in nets:
            for subset in mirror_subsets((1, 2, 3)):
                flipped = data.flip(subset) if subset else data
                probs = torch.softmax(net(flipped[None])[0], dim=0)
                expected += probs.flip(subset) if subset else probs
    expected /= 16
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sum(0), torch.ones(6, 6, 6))


def test_tile_batch_does_not_change_the_result():
    data = torch.randn(1, 10, 13, 7)
    net = _conv_net(1, 2, 3, 3)
    one = predict_sliding_window(net, data, (4, 6, 4), tile_batch=1)
    many = predict_sliding_window(net, data, (4, 6, 4), tile_batch=16)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-6)


def test_mirror_subsets_counts():
    assert len(mirror_subsets((0, 1, 2))) == 8 and len(mirror_subsets((0, 1))) == 4
    assert mirror_subsets(()) == [()]


@pytest.mark.gpu
def test_cuda_matches_cpu():
    data = torch.randn(1, 12, 20, 16)
    net = _conv_net(1, 3, 3, 0)
    cpu = predict_sliding_window(net, data, (8, 8, 8))
    cuda = predict_sliding_window(net.cuda(), data, (8, 8, 8), device="cuda")
    assert (cpu.argmax(0) == cuda.argmax(0)).float().mean() > 0.999
    torch.testing.assert_close(cpu, cuda, atol=2e-3, rtol=0)
