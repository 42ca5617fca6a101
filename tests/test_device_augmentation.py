"""Batched device augmentation: the same batch as the CPU pipeline for every transform, valid
labels, zero strength is identity, seeds reproduce, and the spatial statistics measured from
its OUTPUT over 1 000 samples match the configured probabilities."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, kstest

from nnlite.common.errors import UserError
from nnlite.loading.augmentation import AugmentConfig, AugmentParams, augment_config, read_source
from nnlite.loading.device_augmentation import augment_batch, augment_on_device, collate_sources
from nnlite.loading.intensity_transforms import (Blur, Brightness, Contrast, Gamma, IntensityParams,
                                                 LowResolution, Noise)
from nnlite.loading.loader import BatchSpec, build_loader, make_batch
from nnlite.loading.sampling import CaseStore, forced_foreground
from nnlite.loading.spatial_transforms import SCALE_RANGE, SpatialParams
from nnlite.network.loss import deep_supervision_scales
from tests.loader_fixtures import DATA_IDENTIFIER, toy_dataset, toy_plans, write_case

P_VALUE = 1e-3  # statistical tests (fixed seeds, so deterministic) fail below this
TRANSFORMS = ("rotation", "scaling", "mirror", "noise", "blur", "brightness", "contrast", "lowres",
              "gamma_inverted", "gamma")
SPATIAL_P = {"rotation": "p_rotation", "scaling": "p_scaling", "mirror": "p_mirror"}
GEOMETRIES = {  # name: (patch, channels, masked channels, configuration name)
    "3d": ((8, 12, 12), 2, False, "3d_fullres"),
    "dummy2d_masked": ((4, 16, 16), 1, True, "3d_fullres"),  # 16/4 > 3: in-plane only
    "2d": ((16, 12), 2, False, "2d"),
}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def only(cfg: AugmentConfig, names: tuple[str, ...]) -> AugmentConfig:
    """The configuration with every transform off except `names`, which always fire."""
    spatial = {p: 1.0 if name in names else 0.0 for name, p in SPATIAL_P.items()}
    intensity = {f"p_{name}": 1.0 if name in names else 0.0 for name in TRANSFORMS if name not in SPATIAL_P}
    return replace(cfg, spatial=replace(cfg.spatial, **spatial),
                   intensity=replace(cfg.intensity, **intensity))


def spec_for(tmp_path: Path, geometry: str, batch: int = 5) -> BatchSpec:
    patch, channels, masked, name = GEOMETRIES[geometry]
    names = toy_dataset(tmp_path, 3, channels=channels)
    plans = toy_plans(patch, batch_size=batch, channels=channels, use_mask=masked, name=name)
    config = plans.configurations[name]
    store = CaseStore(tmp_path / "preprocessed" / DATA_IDENTIFIER, names)
    return BatchSpec(store, augment_config(config), tuple(forced_foreground(batch)), 7, True,
                     tuple(deep_supervision_scales(config.network)))


def assert_same_batch(cpu: dict, device: dict, atol: float = 1e-4) -> None:
    assert cpu["cases"] == device["cases"]
    assert cpu["data"].shape == device["data"].shape and device["data"].dtype == torch.float32
    np.testing.assert_allclose(device["data"].cpu().numpy(), cpu["data"].numpy(), atol=atol, rtol=1e-4)
    for expected, got in zip(cpu["target"], device["target"], strict=True):
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got.cpu().numpy(), expected.numpy())


# --- same parameters, same batch as the CPU pipeline ---------------------------------------------

@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("names", [(t,) for t in TRANSFORMS] + [TRANSFORMS], ids=list(TRANSFORMS) + ["all"])
def test_device_batch_matches_the_cpu_pipeline(tmp_path, geometry, names):
    spec = spec_for(tmp_path, geometry)
    spec = replace(spec, cfg=only(spec.cfg, names))
    for index in range(3):
        crops = make_batch(replace(spec, on_device=True), index)
        device = augment_batch(crops, spec.cfg, spec.ds_scales)
        assert_same_batch(make_batch(spec, index), device)


def test_reference_probabilities_match_the_cpu_pipeline_through_the_loader(tmp_path):
    """The real loader with a worker process, mixed batches (some samples warped, some not)."""
    names = toy_dataset(tmp_path, 3, channels=2)
    plans = toy_plans((8, 12, 12), batch_size=6, channels=2)
    common = dict(work=tmp_path, plans=plans, config_name="3d_fullres", case_names=names,
                  batch_size=6, augment=True, seed=11)
    with build_loader(workers=0, augment_on="cpu", **common) as cpu, \
            build_loader(workers=1, augment_on="device", device="cpu", **common) as device:
        for _ in range(12):
            assert_same_batch(next(cpu), next(device))


# --- labels, identity, seeds --------------------------------------------------------------------

def test_masked_channels_are_zero_exactly_outside_the_mask(tmp_path):
    """No transform fires: every sample is a plain crop, so the mask is the crop's seg ≥ 0; the
    masked channel is 0 exactly where the seg was −1 and the crop's values everywhere else."""
    spec = spec_for(tmp_path, "dummy2d_masked", batch=6)
    spec = replace(spec, cfg=only(spec.cfg, ()), on_device=True)
    assert spec.cfg.masked_channels
    for index in range(3):
        crops = make_batch(spec, index)
        assert crops.crops.shape[0] == 6  # all plain crops
        outside = crops.crop_segs[:, 0] < 0
        assert outside.any() and (~outside).any()
        data = augment_batch(crops, spec.cfg, spec.ds_scales)["data"]
        for channel in spec.cfg.masked_channels:
            assert (data[:, channel][outside] == 0).all()
            torch.testing.assert_close(data[:, channel][~outside], crops.crops[:, channel][~outside])


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_labels_stay_valid(tmp_path, geometry):
    spec = spec_for(tmp_path, geometry, batch=8)
    spec = replace(spec, cfg=only(spec.cfg, TRANSFORMS), on_device=True)
    for index in range(4):
        batch = augment_batch(make_batch(spec, index), spec.cfg, spec.ds_scales)
        for target in batch["target"]:
            assert set(torch.unique(target).tolist()) <= {0, 1, 2}


def zero_strength(channels: int) -> IntensityParams:
    """Every intensity step fires, each at zero strength."""
    ones = (1.0,) * channels
    return IntensityParams((Noise(0.0, 3), Blur((None,) * channels), Brightness(ones), Contrast(ones),
                            LowResolution(ones), Gamma(ones, invert=True), Gamma(ones, invert=False)))


@pytest.mark.parametrize("geometry", ["3d", "dummy2d_masked"])
def test_zero_strength_is_identity(tmp_path, geometry):
    spec = spec_for(tmp_path, geometry)
    intensity = zero_strength(spec.store.cases[0].channels)
    params = [AugmentParams(SpatialParams((0.0, 0.0, 0.0), 1.0), intensity),  # fire, zero strength
              AugmentParams(SpatialParams(None, None), intensity)]
    data, seg = spec.store.arrays(spec.store.cases[0].name)
    start = (2, 3, 4)
    sources = [read_source(data, seg, start, p, spec.cfg) for p in params]
    batch = augment_batch(collate_sources(sources, params, ["a", "b"], spec.cfg), spec.cfg)
    crop = (slice(None),) + tuple(slice(s, s + n) for s, n in zip(start, spec.cfg.patch_size))
    expected = np.where(seg[crop] < 0, 0, data[crop]) if spec.cfg.masked_channels else data[crop]
    for j in range(2):
        np.testing.assert_allclose(batch["data"][j].numpy(), expected, atol=1e-5)
        np.testing.assert_array_equal(batch["target"][0][j].numpy(), np.clip(seg[crop], 0, None))


def test_a_seed_reproduces_a_batch(tmp_path):
    spec = spec_for(tmp_path, "3d", batch=6)
    spec = replace(spec, cfg=only(spec.cfg, TRANSFORMS), on_device=True)

    def batch(seed: int, index: int) -> dict:
        return augment_batch(make_batch(replace(spec, seed=seed), index), spec.cfg, spec.ds_scales)

    first, again, other = batch(3, 5), batch(3, 5), batch(4, 5)
    assert torch.equal(first["data"], again["data"]) and torch.equal(first["target"][0], again["target"][0])
    assert not torch.equal(first["data"], other["data"])


def test_augment_on_modes():
    assert augment_on_device("device", None) and not augment_on_device("cpu", torch.device("cuda"))
    assert augment_on_device("auto", torch.device("cuda"))
    assert not augment_on_device("auto", torch.device("cpu"))
    assert not augment_on_device("auto", None)
    with pytest.raises(UserError, match="augment_on"):
        augment_on_device("gpu", None)


def test_train_flag_sets_the_setting():
    from nnlite.train import build_parser, overrides_from_args
    from nnlite.training.config import load_train_config

    args = build_parser().parse_args(["work", "--augment-on", "device"])
    assert load_train_config("default", overrides_from_args(args)).data.augment_on == "device"
    assert load_train_config("default").data.augment_on == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["work", "--augment-on", "gpu"])


# --- statistics measured from the output --------------------------------------------------------

def ramp_case(folder: Path, size: int = 40) -> None:
    """Channel k holds the voxel's coordinate along axis k: bilinear interpolation reproduces it
    exactly, so each output patch reveals the affine map that made it."""
    image = np.indices((size,) * 3).astype(np.float32)
    seg = np.zeros((size,) * 3, dtype=np.int8)
    seg[size // 2, size // 2, size // 2] = 1  # forced samples centre on it: no padding is read
    write_case(folder, "ramp", image, seg)
    (folder / "ramp.json").write_text(json.dumps({"class_locations": {"1": [[size // 2] * 3]}}))


def recovered_matrix(patch: np.ndarray) -> np.ndarray:
    """M (input offset per output offset) by least squares on the ramps of one patch (3, *s)."""
    u = np.indices(patch.shape[1:]).reshape(3, -1).T.astype(float)
    design = np.column_stack([np.ones(len(u)), u])
    coefficients = np.linalg.lstsq(design, patch.reshape(3, -1).T, rcond=None)[0]
    return coefficients[1:].T


def test_output_statistics_over_1000_samples_match_the_configuration(tmp_path):
    folder = tmp_path / "preprocessed" / DATA_IDENTIFIER
    ramp_case(folder)
    plans = toy_plans((6, 6, 6), batch_size=50, channels=3)
    cfg = only(augment_config(plans.configurations["3d_fullres"]), ("rotation", "scaling", "mirror"))
    cfg = replace(cfg, spatial=replace(cfg.spatial, p_rotation=0.2, p_scaling=0.2, p_mirror=0.5))
    spec = BatchSpec(CaseStore(folder, ["ramp"]), cfg, (True,) * 50, 5, True, (), on_device=True)
    patches = np.concatenate([augment_batch(make_batch(spec, i), cfg)["data"].numpy() for i in range(20)])
    matrices = np.array([recovered_matrix(x) for x in patches])
    rotated = np.array([np.abs(m - np.diag(np.diag(m))).max() > 1e-3 for m in matrices])
    scales = np.abs(np.linalg.det(matrices)) ** (1 / 3)
    scaled = np.abs(scales - 1) > 1e-3
    assert binomtest(int(rotated.sum()), 1000, 0.2).pvalue > P_VALUE
    assert binomtest(int(scaled.sum()), 1000, 0.2).pvalue > P_VALUE
    low, high = SCALE_RANGE
    assert kstest(scales[scaled], "uniform", args=(low, high - low)).pvalue > P_VALUE
    plain = matrices[~rotated]  # diagonal: its signs are the flips
    for axis in range(3):
        flipped = int((plain[:, axis, axis] < 0).sum())
        assert binomtest(flipped, len(plain), 0.5).pvalue > P_VALUE


# --- CUDA ---------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_cuda_batch_matches_the_cpu_pipeline(tmp_path, geometry):
    """Everything but the noise field (CUDA's generator draws a different stream) as on the CPU;
    label maps may differ only where interpolated scores tie within float rounding."""
    spec = spec_for(tmp_path, geometry, batch=6)
    spec = replace(spec, cfg=only(spec.cfg, tuple(t for t in TRANSFORMS if t != "noise")))
    for index in range(3):
        crops = make_batch(replace(spec, on_device=True), index).pin_memory()
        device = augment_batch(crops.to(torch.device("cuda"), non_blocking=True), spec.cfg, spec.ds_scales)
        assert device["data"].is_cuda and all(t.is_cuda for t in device["target"])
        cpu = make_batch(spec, index)
        np.testing.assert_allclose(device["data"].cpu().numpy(), cpu["data"].numpy(), atol=1e-3, rtol=1e-3)
        for expected, got in zip(cpu["target"], device["target"], strict=True):
            assert (got.cpu() != expected).float().mean() < 1e-3


@pytest.mark.gpu
def test_cuda_noise_is_seeded_and_has_the_drawn_std(tmp_path):
    spec = spec_for(tmp_path, "3d", batch=4)
    spec = replace(spec, cfg=only(spec.cfg, ("noise",)), on_device=True)
    crops = make_batch(spec, 0)
    first, again = (augment_batch(crops.to(torch.device("cuda")), spec.cfg)["data"] for _ in range(2))
    assert torch.equal(first, again)
    plain = augment_batch(make_batch(replace(spec, cfg=only(spec.cfg, ())), 0), spec.cfg)["data"]
    for j, params in enumerate(crops.params):
        sigma = params.intensity.steps[0].sigma
        assert (first[j].cpu() - plain[j]).std().item() == pytest.approx(sigma, rel=0.1, abs=1e-3)
