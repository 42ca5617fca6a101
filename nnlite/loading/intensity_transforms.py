"""Intensity augmentation in torch: noise, blur, brightness, contrast, low resolution, gamma.

"Sample, then apply": `sample_intensity_params(rng, cfg)` draws the fired steps, in the
reference's order, as small frozen dataclasses; `apply_intensity(image, params)` is pure and works
on any device and any number of spatial axes (image (C, *spatial)). A step that did not fire is
absent from `params.steps`, so firing rates can be counted from parameters alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

import numpy as np
import torch
import torch.nn.functional as F

P_NOISE = 0.1  # Gaussian noise probability per sample
NOISE_SIGMA = (0.0, 0.1)  # noise std U(lo, hi) (the reference calls it "variance"), shared by channels
P_BLUR = 0.2  # Gaussian blur probability per sample
P_BLUR_CHANNEL = 0.5  # ... then per channel
BLUR_SIGMA = (0.5, 1.0)  # blur sigma U(lo, hi), drawn per axis and per channel
BLUR_TRUNCATE = 6.0  # kernel half-width in sigmas
P_BRIGHTNESS = 0.15  # multiplicative brightness probability per sample
BRIGHTNESS_RANGE = (0.75, 1.25)  # per-channel factor, "BGContrast": half U(lo, 1), half U(1, hi)
P_CONTRAST = 0.15  # contrast probability per sample
CONTRAST_RANGE = (0.75, 1.25)  # per-channel factor (BGContrast), range of the channel preserved
P_LOWRES = 0.25  # low-resolution simulation probability per sample
P_LOWRES_CHANNEL = 0.5  # ... then per channel
LOWRES_ZOOM = (0.5, 1.0)  # zoom U(lo, hi) per channel, shared by the axes
P_GAMMA_INVERTED = 0.1  # gamma on the negated image
P_GAMMA = 0.3  # gamma
GAMMA_RANGE = (0.7, 1.5)  # per-channel gamma (BGContrast), mean and std of the channel retained
EPS = 1e-7  # guards divisions by a range or std of 0


@dataclass(frozen=True)
class IntensityConfig:
    """Per-configuration settings; probabilities default to the reference's."""

    n_channels: int
    n_spatial: int = 3  # spatial axes of the augmented image (2 for 2D configurations)
    lowres_ignore_axes: tuple[int, ...] = ()  # dummy-2D: (0,) keeps the coarse axis untouched
    p_noise: float = P_NOISE
    p_blur: float = P_BLUR
    p_brightness: float = P_BRIGHTNESS
    p_contrast: float = P_CONTRAST
    p_lowres: float = P_LOWRES
    p_gamma_inverted: float = P_GAMMA_INVERTED
    p_gamma: float = P_GAMMA


@dataclass(frozen=True)
class Noise:
    name: ClassVar[str] = "noise"
    sigma: float
    seed: int  # seeds the noise field (torch.Generator on the image's device)


@dataclass(frozen=True)
class Blur:
    name: ClassVar[str] = "blur"
    sigmas: tuple[tuple[float, ...] | None, ...]  # per channel: sigma per axis, None = not blurred


@dataclass(frozen=True)
class Brightness:
    name: ClassVar[str] = "brightness"
    factors: tuple[float, ...]  # per channel


@dataclass(frozen=True)
class Contrast:
    name: ClassVar[str] = "contrast"
    factors: tuple[float, ...]  # per channel


@dataclass(frozen=True)
class LowResolution:
    name: ClassVar[str] = "lowres"
    zooms: tuple[float | None, ...]  # per channel, None = untouched
    ignore_axes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Gamma:
    gammas: tuple[float, ...]  # per channel
    invert: bool

    @property
    def name(self) -> str:
        return "gamma_inverted" if self.invert else "gamma"


IntensityStep = Union[Noise, Blur, Brightness, Contrast, LowResolution, Gamma]
STEP_NAMES = ("noise", "blur", "brightness", "contrast", "lowres", "gamma_inverted", "gamma")


@dataclass(frozen=True)
class IntensityParams:
    steps: tuple[IntensityStep, ...] = ()


def bg_contrast(rng: np.random.Generator, lo: float, hi: float) -> float:
    """The reference's BGContrast draw: half the time U(lo, 1), otherwise U(1, hi)."""
    if rng.random() < 0.5 and lo < 1:
        return float(rng.uniform(lo, 1.0))
    return float(rng.uniform(max(lo, 1.0), hi))


def sample_intensity_params(rng: np.random.Generator, cfg: IntensityConfig) -> IntensityParams:
    """Draw which intensity steps fire for one sample and their per-channel parameters."""
    c = cfg.n_channels
    steps: list[IntensityStep] = []
    if rng.random() < cfg.p_noise:
        steps.append(Noise(float(rng.uniform(*NOISE_SIGMA)), int(rng.integers(2**62))))
    if rng.random() < cfg.p_blur:
        steps.append(Blur(tuple(tuple(float(s) for s in rng.uniform(*BLUR_SIGMA, size=cfg.n_spatial))
                                if rng.random() < P_BLUR_CHANNEL else None for _ in range(c))))
    if rng.random() < cfg.p_brightness:
        steps.append(Brightness(tuple(bg_contrast(rng, *BRIGHTNESS_RANGE) for _ in range(c))))
    if rng.random() < cfg.p_contrast:
        steps.append(Contrast(tuple(bg_contrast(rng, *CONTRAST_RANGE) for _ in range(c))))
    if rng.random() < cfg.p_lowres:
        zooms = tuple(float(rng.uniform(*LOWRES_ZOOM)) if rng.random() < P_LOWRES_CHANNEL else None
                      for _ in range(c))
        steps.append(LowResolution(zooms, cfg.lowres_ignore_axes))
    for p, invert in ((cfg.p_gamma_inverted, True), (cfg.p_gamma, False)):
        if rng.random() < p:
            steps.append(Gamma(tuple(bg_contrast(rng, *GAMMA_RANGE) for _ in range(c)), invert))
    return IntensityParams(tuple(steps))


def apply_intensity(image: torch.Tensor, params: IntensityParams) -> torch.Tensor:
    """Pure: image (C, *spatial) float → a new tensor with every step of `params` applied in order."""
    out = image.clone()
    for step in params.steps:
        _APPLY[type(step)](out, step)
    return out


def _noise(image: torch.Tensor, step: Noise) -> None:
    generator = torch.Generator(device=image.device).manual_seed(step.seed)
    noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    image.add_(noise.mul_(step.sigma))


def _blur(image: torch.Tensor, step: Blur) -> None:
    for channel, sigmas in enumerate(step.sigmas):
        if sigmas is None:
            continue
        x = image[channel][None, None]
        for axis, sigma in enumerate(sigmas):
            x = conv_axis(x, gaussian_kernel(sigma)[None].to(x.device, x.dtype), axis)
        image[channel] = x[0, 0]


def conv_axis(x: torch.Tensor, weight: torch.Tensor, axis: int) -> torch.Tensor:
    """Channel i of x (N, n, *S) convolved along spatial `axis` with the odd-length row weight[i]
    (n, width): reflect padding, replicate where the axis is not longer than the half-width."""
    n_spatial = x.ndim - 2
    half = weight.shape[1] // 2
    shape = [1] * n_spatial
    shape[axis] = weight.shape[1]
    pad = [0] * (2 * n_spatial)  # F.pad lists the last axis first
    pad[2 * (n_spatial - 1 - axis)] = pad[2 * (n_spatial - 1 - axis) + 1] = half
    mode = "reflect" if x.shape[2 + axis] > half else "replicate"
    conv = (F.conv1d, F.conv2d, F.conv3d)[n_spatial - 1]
    return conv(F.pad(x, pad, mode=mode), weight.view(-1, 1, *shape), groups=x.shape[1])


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalized 1D Gaussian, odd size nearest to 6σ + 0.5 (the reference's rounding)."""
    target = sigma * BLUR_TRUNCATE + 0.5
    size = round(target)
    if size % 2 == 0:
        size = size + 1 if target - size >= 0 else size - 1
    x = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return (pdf / pdf.sum()).float()


def _brightness(image: torch.Tensor, step: Brightness) -> None:
    for channel, factor in enumerate(step.factors):
        image[channel].mul_(factor)


def _contrast(image: torch.Tensor, step: Contrast) -> None:
    for channel, factor in enumerate(step.factors):
        x = image[channel]
        low, high = torch.aminmax(x)
        mean = x.mean()
        x.sub_(mean).mul_(factor).add_(mean).clamp_(low, high)


def _lowres(image: torch.Tensor, step: LowResolution) -> None:
    shape = tuple(image.shape[1:])
    mode = ("linear", "bilinear", "trilinear")[len(shape) - 1]
    for channel, zoom in enumerate(step.zooms):
        if zoom is None:
            continue
        small = [n if axis in step.ignore_axes else max(1, round(n * zoom))
                 for axis, n in enumerate(shape)]
        down = F.interpolate(image[channel][None, None], size=small, mode="nearest-exact")
        image[channel] = F.interpolate(down, size=shape, mode=mode, align_corners=False)[0, 0]


def _gamma(image: torch.Tensor, step: Gamma) -> None:
    """x → ((x - min)/range)^γ · range + min, then the channel's mean and std are restored."""
    sign = -1.0 if step.invert else 1.0
    for channel, gamma in enumerate(step.gammas):
        x = image[channel].mul_(sign)
        mean, std = x.mean(), x.std()
        low, high = torch.aminmax(x)
        span = high - low
        x.sub_(low).div_(span.clamp(min=EPS)).pow_(gamma).mul_(span).add_(low)
        x.sub_(x.mean()).mul_(std / x.std().clamp(min=EPS)).add_(mean)
        x.mul_(sign)


_APPLY = {Noise: _noise, Blur: _blur, Brightness: _brightness, Contrast: _contrast,
          LowResolution: _lowres, Gamma: _gamma}
