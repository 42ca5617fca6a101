"""Sliding window: tile coverage, Gaussian map, exact stitching of an add-one network, mirroring."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from inference_fixtures import CONFIG, save_random_model, tiny_plans
from nnlite.common.cli import run
from nnlite.data.image_io import read_image, write_image
from nnlite.inference.outputs import export_prediction
from nnlite.inference.saved_probabilities import load_probabilities
from nnlite.inference.largest_component import apply_postprocessing
from nnlite.inference.sliding_window import (gaussian_weights, mirror_subsets, pad_to_tile, predict_preprocessed,
                                             predict_sliding_window, tile_starts)
from nnlite.predict import main as predict_main
from nnlite.preprocessing.pipeline import preprocess_case
from nnlite.network.hardware import inference_autocast


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


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(1, 11), min_size=3, max_size=3),
       patch=st.lists(st.integers(2, 6), min_size=3, max_size=3),
       mirror=st.booleans(), tile_batch=st.integers(1, 9), channels=st.integers(1, 2))
def test_add_one_network_stitches_back_exactly(fp32_on_cpu, shape, patch, mirror, tile_batch, channels):
    data = torch.randn(channels, *shape)
    out = predict_sliding_window(add_one_network(channels, 3), data, patch,
                                 mirror_axes=None if mirror else (), tile_batch=tile_batch,
                                 output="logits")
    assert out.shape == data.shape
    torch.testing.assert_close(out, data + 1, rtol=0, atol=1e-5)


def test_volume_smaller_than_patch_keeps_its_shape(fp32_on_cpu):
    data = torch.randn(1, 3, 5, 2)
    out = predict_sliding_window(add_one_network(1, 3), data, (8, 8, 8), output="logits")
    assert out.shape == data.shape
    torch.testing.assert_close(out, data + 1, rtol=0, atol=1e-6)
    padded, crop = pad_to_tile(data, (8, 8, 8))
    assert padded.shape == (1, 8, 8, 8) and crop[1] == slice(1, 6)  # centred, extra voxel high


def test_2d_network_on_3d_volume_slice_by_slice(fp32_on_cpu):
    data = torch.randn(2, 5, 11, 9)
    out = predict_sliding_window(add_one_network(2, 2), data, (4, 6), tile_batch=3, output="logits")
    torch.testing.assert_close(out, data + 1, rtol=0, atol=1e-5)


def _conv_net(in_ch: int, classes: int, ndim: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.Conv3d if ndim == 3 else nn.Conv2d
    return nn.Sequential(conv(in_ch, 4, 3, padding=1), nn.ReLU(), conv(4, classes, 3, padding=1)).eval()


def test_mirrors_and_networks_average_probabilities(fp32_on_cpu):
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
    data = torch.randn(1, 6, 9, 5)
    net = _conv_net(1, 2, 3, 3)
    one = predict_sliding_window(net, data, (4, 6, 4), tile_batch=1)
    many = predict_sliding_window(net, data, (4, 6, 4), tile_batch=11)
    torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("caps, dtype", [({"avx512_bf16": True}, torch.bfloat16), ({}, None)])
def test_cpu_prediction_uses_bf16_only_where_the_cpu_computes_it(monkeypatch, caps, dtype):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    with inference_autocast(torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") == (dtype is not None)
        if dtype is not None:
            assert torch.get_autocast_dtype("cpu") == dtype


def test_bf16_prediction_agrees_with_fp32(monkeypatch):
    """The CPU's bf16 path changes probabilities by rounding only (the real gap on a trained
    Hippocampus network: 99.98 % voxel agreement with the reference's fp32, benchmarks/inference.py)."""
    torch.manual_seed(0)
    data = torch.randn(1, 1, 12, 12, 12)
    data = nn.functional.avg_pool3d(data, 3, 1, 1)[0] * 3  # smooth, so classes form regions
    net = _conv_net(1, 3, 3, 4)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})
    fp32 = predict_sliding_window(net, data, (8, 8, 8), tile_batch=4)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    bf16 = predict_sliding_window(net, data, (8, 8, 8), tile_batch=4)
    assert not torch.equal(fp32, bf16)  # the bf16 path did run
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=0.03)
    assert (bf16.argmax(0) == fp32.argmax(0)).float().mean() > 0.98


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


# ---------------------------------------------------------------- export and predict (files) ---

# (x, y, z) voxel sizes 1, 1, 2 with a rotation-free offset: spacing (z, y, x) = (2, 1, 1)
AFFINE = np.array([[1.0, 0, 0, -7.5], [0, 1.0, 0, 3.0], [0, 0, 2.0, 11.0], [0, 0, 0, 1]])


def _raw_case(rng: np.random.Generator, shape=(7, 19, 13)) -> tuple[np.ndarray, np.ndarray]:
    """Image with a zero border (so cropping happens) and a two-label seg inside it."""
    data = np.zeros((1, *shape), np.float32)
    data[0, 1:-1, 2:-3, 1:-2] = rng.normal(size=(shape[0] - 2, shape[1] - 5, shape[2] - 3)) + 5
    seg = np.zeros(shape, np.int16)
    seg[2:5, 4:10, 3:8] = 1
    seg[3:5, 11:14, 5:9] = 2
    return data, seg


@pytest.mark.parametrize("transpose", [(0, 1, 2), (2, 0, 1)])
def test_export_inverts_preprocessing_with_affine_and_probabilities(tmp_path, rng, transpose):
    spacing = (2.0, 1.0, 1.0)
    plans = tiny_plans(spacing=tuple(spacing[a] for a in transpose), transpose=transpose)
    data, seg = _raw_case(rng)
    _, net_seg, props = preprocess_case(data, seg, spacing, plans, CONFIG, case="x", affine=AFFINE)
    one_hot = np.stack([(net_seg[0] == k) for k in range(3)]).astype(np.float32)
    out = export_prediction(torch.from_numpy(one_hot), props, plans, CONFIG, tmp_path / "x.nii.gz",
                            True)
    written = read_image(out)
    np.testing.assert_array_equal(written.array, seg)
    np.testing.assert_allclose(written.affine, AFFINE)
    probs = load_probabilities(tmp_path / "x.npz")
    assert probs.dtype == np.float16 and probs.shape == (3, *seg.shape)
    np.testing.assert_array_equal(probs.argmax(0), seg)
    assert probs[0, 0, 0, 0] == 1  # outside the crop: background


def _input_folder(folder: Path, rng: np.random.Generator, cases=("a", "b", "c")) -> None:
    for i, case in enumerate(cases):
        data, _ = _raw_case(rng, shape=(7 + i, 19, 13 + 2 * i))
        write_image(folder / f"{case}_0000.nii.gz", data[0], AFFINE)


@pytest.fixture
def trained(tmp_path) -> Path:
    work = tmp_path / "work"
    save_random_model(work, tiny_plans(), folds=(0, 1))
    return work


def test_predict_writes_input_geometry_and_skips_done_cases(tmp_path, trained, rng, capsys):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    _input_folder(inputs, rng)
    before = sorted(p.name for p in inputs.iterdir())
    args = [str(trained), str(inputs), str(outputs), "--device", "cpu", "--save-probabilities"]
    assert predict_main(args) == 0
    for case in ("a", "b", "c"):
        image = read_image(inputs / f"{case}_0000.nii.gz")
        seg = read_image(outputs / f"{case}.nii.gz")
        assert seg.array.shape == image.array.shape
        np.testing.assert_allclose(seg.affine, image.affine)
        probs = load_probabilities(outputs / f"{case}.npz")
        assert probs.shape == (3, *image.array.shape)
        assert (probs.argmax(0) == seg.array).mean() > 0.99  # float16 rounding may flip ties
    assert sorted(p.name for p in inputs.iterdir()) == before  # nothing written into INPUT_DIR
    (outputs / "b.nii.gz").unlink()
    (outputs / "a.nii.gz").write_bytes(b"a finished case is not read again")
    capsys.readouterr()
    assert predict_main(args) == 0
    assert "predicted 1, skipped 2" in capsys.readouterr().out and (outputs / "b.nii.gz").is_file()
    assert (outputs / "a.nii.gz").read_bytes() == b"a finished case is not read again"
    assert predict_main(args + ["--overwrite"]) == 0
    assert "predicted 3, skipped 0" in capsys.readouterr().out
    assert read_image(outputs / "a.nii.gz").array.shape == read_image(inputs / "a_0000.nii.gz").array.shape


def test_failing_cases_are_named_and_the_others_finish(tmp_path, trained, rng, capsys):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    _input_folder(inputs, rng, cases=("good", "corrupt", "twochan"))
    (inputs / "corrupt_0000.nii.gz").write_bytes(b"not a nifti file")
    write_image(inputs / "twochan_0001.nii.gz", np.zeros((9, 19, 17), np.float32), AFFINE)
    assert run(predict_main, [str(trained), str(inputs), str(outputs), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "error: corrupt:" in err and "error: twochan:" in err
    assert (outputs / "good.nii.gz").is_file()
    assert not (outputs / "corrupt.nii.gz").exists() and not (outputs / "twochan.nii.gz").exists()


def test_output_equal_to_input_is_refused(tmp_path, trained, rng, capsys):
    inputs = tmp_path / "in"
    _input_folder(inputs, rng, cases=("a",))
    assert run(predict_main, [str(trained), str(inputs), str(inputs / ".")]) == 2
    assert "error:" in capsys.readouterr().err
    assert sorted(p.name for p in inputs.iterdir()) == ["a_0000.nii.gz"]


def test_postprocess_flag_applies_the_stored_steps(tmp_path, trained, rng):
    inputs = tmp_path / "in"
    _input_folder(inputs, rng, cases=("a",))
    (trained / "results" / CONFIG / "postprocessing.json").write_text('{"steps": [[1, 2], [1]]}')
    base = [str(trained), str(inputs), "--device", "cpu", "--folds", "0", "--no-mirroring"]
    assert predict_main(base[:2] + [str(tmp_path / "raw")] + base[2:]) == 0
    assert predict_main(base[:2] + [str(tmp_path / "pp")] + base[2:] + ["--postprocess"]) == 0
    raw = read_image(tmp_path / "raw" / "a.nii.gz").array.astype(np.int64)
    post = read_image(tmp_path / "pp" / "a.nii.gz").array.astype(np.int64)
    np.testing.assert_array_equal(post, apply_postprocessing(raw, [[1, 2], [1]]))


@pytest.mark.gpu
def test_cuda_falls_back_to_cpu_accumulators(monkeypatch, caplog):
    data = torch.randn(1, 12, 20, 16)
    net = _conv_net(1, 3, 3, 0).cuda()
    normal = predict_sliding_window(net, data, (8, 8, 8), device="cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1024, 2048))
    with caplog.at_level("INFO"):
        fallback = predict_sliding_window(net, data, (8, 8, 8), device="cuda")
    assert "accumulating on the CPU" in caplog.text
    torch.testing.assert_close(normal, fallback)


# --- rules checked against independent expectations (each fails for its mutation) -----------------

class PositionNetwork(nn.Module):
    """Output = input + a fixed map over the tile (logits (N, 1, *tile)): a tile's output depends on
    where a voxel sits in the tile, so the stitching weights show in the result."""

    def __init__(self, tile: tuple[int, ...], seed: int = 0) -> None:
        super().__init__()
        self.offset = torch.from_numpy(np.random.default_rng(seed).normal(size=tile).astype(np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset


def hand_gaussian(tile: tuple[int, ...]) -> np.ndarray:
    """exp(-d²/2σ²) per axis with σ = tile/8, centred on index tile//2 (the reference's map)."""
    weights = np.ones(())
    for size in tile:
        d = np.arange(size) - size // 2
        weights = np.multiply.outer(weights, np.exp(-0.5 * (d / (size / 8)) ** 2))
    return weights


def test_tiles_are_averaged_with_gaussian_weights(fp32_on_cpu):
    """Each voxel = Σ_tiles g(v − start)·out_tile(v) / Σ_tiles g(v − start), computed by hand."""
    shape, tile = (10, 13, 9), (6, 8, 6)
    data = torch.randn(1, *shape)
    net = PositionNetwork(tile)
    out = predict_sliding_window(net, data, tile, mirror_axes=(), output="logits")[0].numpy()
    sums, weights = np.zeros(shape), np.zeros(shape)
    g = hand_gaussian(tile)
    starts = [tile_starts(s, t) for s, t in zip(shape, tile)]
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                region = (slice(z, z + tile[0]), slice(y, y + tile[1]), slice(x, x + tile[2]))
                tile_out = data[0].numpy()[region] + net.offset.numpy()
                sums[region] += g * tile_out
                weights[region] += g
    np.testing.assert_allclose(out, sums / weights, rtol=1e-4, atol=1e-5)


def hand_mirrored_probs(net: nn.Module, volume: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Mean over every subset of `axes` (dims of volume (C, *S)) of softmax(net(flip(x))) flipped back."""
    subsets = [s for r in range(len(axes) + 1) for s in itertools.combinations(axes, r)]
    total = 0
    with torch.no_grad():
        for dims in subsets:
            flipped = volume.flip(dims) if dims else volume
            probs = torch.softmax(net(flipped[None])[0], dim=0)
            total = total + (probs.flip(dims) if dims else probs)
    return total / len(subsets)


def test_predict_preprocessed_mirrors_every_axis(fp32_on_cpu):
    """The predict/validation entry (`predict_preprocessed`, mirror=True) averages all 8 flips of a
    network that is not mirror-symmetric; mirror=False is the plain prediction."""
    plan = tiny_plans().configurations[CONFIG]
    net = _conv_net(1, 3, 3, seed=4)
    data = torch.randn(1, *plan.patch_size)  # one tile: the mirrors are all there is to average
    mirrored = predict_preprocessed([net], data, plan, mirror=True)
    torch.testing.assert_close(mirrored, hand_mirrored_probs(net, data, (1, 2, 3)), rtol=1e-5, atol=1e-6)
    plain = predict_preprocessed([net], data, plan, mirror=False)
    torch.testing.assert_close(plain, hand_mirrored_probs(net, data, ()), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mirrored, plain, atol=1e-3)  # the network is not symmetric


def test_2d_network_on_a_3d_volume_mirrors_y_and_x(fp32_on_cpu):
    """The 2d configuration: each slice (Y, X) is mirrored along Y and X (never along the slice axis)."""
    net = _conv_net(1, 2, 2, seed=5)
    data = torch.randn(1, 3, 6, 7)
    out = predict_sliding_window(net, data, (6, 7))
    expected = torch.stack([hand_mirrored_probs(net, data[:, z], (1, 2)) for z in range(3)], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_predict_command_mirrors_by_default(tmp_path, trained, rng, mirror_axes_seen):
    inputs = tmp_path / "in"
    _input_folder(inputs, rng, cases=("a",))
    base = [str(trained), str(inputs), "--device", "cpu", "--folds", "0"]
    assert predict_main(base[:2] + [str(tmp_path / "out")] + base[2:]) == 0
    assert mirror_axes_seen and set(mirror_axes_seen) == {(0, 1, 2)}
    mirror_axes_seen.clear()
    assert predict_main(base[:2] + [str(tmp_path / "plain")] + base[2:] + ["--no-mirroring"]) == 0
    assert mirror_axes_seen and set(mirror_axes_seen) == {()}
