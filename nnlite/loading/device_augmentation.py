"""Batched augmentation on the training device (`--augment-on device`): workers only crop.

The CPU pipeline (`augmentation.crop_and_augment`) augments one sample at a time in the loader
workers; on a fast GPU those workers cannot keep up (`benchmarks/throughput.py` measures both paths).
Here the work is split:

- worker (`collate_sources`): the same parameters as the CPU path (`loader.plan_batch`, one
  `np.random.default_rng([seed, i])` per batch), and only the exact input box each sample's affine
  reads (`augmentation.read_source`) — a `CropBatch`;
- training device (`augment_batch`): the whole batch at once — one `grid_sample` for every rotated
  or scaled sample (rotation · scaling · mirroring · crop offset in one matrix, labels warped
  per label by `spatial_transforms.warp`, as on the CPU), flips of the others, then each intensity
  step for all samples and channels it fired for together, masked channels zeroed outside, -1 → 0,
  and the deep-supervision targets.

Same parameters in, the same batch out as the CPU path (up to float rounding): noise fields come
from a `torch.Generator` seeded by the sample's drawn seed, blur pads the smaller kernels of a batch
with zero taps, low-resolution simulation is the same separable operator written as one matrix per
axis (nearest-exact down, linear up: exactly what `F.interpolate` does, axis by axis). On CUDA the
noise fields are another stream of the same seed (CUDA's generator): same distribution, still
reproducible. Parameters reach the device through pinned, non-blocking copies; the only host
syncs left are inside `spatial_transforms.warp` (label discovery, the tie check, the grid size tensors).
The CPU path keeps its own per-sample ops: these on a batch of one differ in the last bits (a
tensor exponent in `pow`, reductions along a dimension, the low-resolution matrices) and, on an axis
no longer than a kernel's half-width, in the padding mode (the batch's widest blur kernel picks it).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nnlite.common.errors import UserError
from nnlite.data.cropping import OUTSIDE_LABEL
from nnlite.loading.augmentation import AugmentConfig, AugmentParams
from nnlite.loading.intensity_transforms import EPS, IntensityParams, conv_axis, gaussian_kernel
from nnlite.loading.spatial_transforms import sample_matrix, warp, warp_planar
from nnlite.network.loss import downsample_seg

SEG_PATCH_DTYPE = torch.int16  # as sampling.SEG_PATCH_DTYPE: labels above 127 survive

AUGMENT_ON = ("auto", "cpu", "device")  # where training batches are augmented
Source = tuple[np.ndarray, np.ndarray, np.ndarray]  # image (C, *box), seg (1, *box), patch centre


def augment_on_device(mode: str, device: torch.device | None) -> bool:
    """"device" → True, "cpu" → False, "auto" → True when batches go to a CUDA device."""
    if mode not in AUGMENT_ON:
        raise UserError("data.augment_on", f"must be one of {AUGMENT_ON}, got {mode!r}")
    if mode == "auto":
        return device is not None and device.type == "cuda"
    return mode == "device"


@dataclass(frozen=True)
class CropBatch:
    """What a worker hands over in device mode: crops, source boxes and each sample's parameters.

    Samples without rotation or scaling are plain patch crops; the others are their exact source
    boxes, each at the origin of a common box and padded (padding is never read by the warp).
    """

    crops: torch.Tensor  # (n_crop, C, *patch) float32, unwarped samples in batch order
    crop_segs: torch.Tensor  # (n_crop, 1, *patch) int16
    sources: torch.Tensor  # (n_warp, C, *box) float32, warped samples in batch order
    source_segs: torch.Tensor  # (n_warp, 1, *box) int16
    centres: torch.Tensor  # (n_warp, 3) float64: the patch centre in box coordinates
    params: tuple[AugmentParams, ...]  # every sample's, batch order
    cases: tuple[str, ...]

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "CropBatch":
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def pin_memory(self) -> "CropBatch":
        """Called by the DataLoader's pinning thread on CUDA."""
        return self._map(torch.Tensor.pin_memory)

    def to(self, device: torch.device | None, non_blocking: bool = False) -> "CropBatch":
        if device is None:
            return self
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))


def collate_sources(sources: Sequence[Source], params: Sequence[AugmentParams], cases: Sequence[str],
                    cfg: AugmentConfig) -> CropBatch:
    """Pack the `augmentation.read_source` outputs of one batch (worker side, CPU tensors)."""
    warped = [s for s, p in zip(sources, params) if p.spatial.needs_warp]
    plain = [s for s, p in zip(sources, params) if not p.spatial.needs_warp]
    channels = sources[0][0].shape[0]
    patch = cfg.patch_size
    crops = torch.from_numpy(np.stack([s[0] for s in plain])) if plain else torch.zeros(0, channels, *patch)
    crop_segs = (torch.from_numpy(np.stack([s[1] for s in plain])) if plain
                 else torch.zeros(0, 1, *patch, dtype=SEG_PATCH_DTYPE))
    box = np.max([s[0].shape[1:] for s in warped], axis=0) if warped else np.asarray(patch)
    # any fill works (the warp never reads it): a label already present adds no indicator channel
    fill = OUTSIDE_LABEL if cfg.masked_channels else 0
    images = torch.zeros(len(warped), channels, *box)
    segs = torch.full((len(warped), 1, *box), fill, dtype=SEG_PATCH_DTYPE)
    for i, (image, seg, _) in enumerate(warped):
        region = (i, slice(None)) + tuple(slice(0, n) for n in image.shape[1:])
        images[region] = torch.from_numpy(image)
        segs[region] = torch.from_numpy(seg)
    centres = torch.from_numpy(np.stack([s[2] for s in warped]).astype(np.float64)) if warped \
        else torch.zeros(0, 3, dtype=torch.float64)
    return CropBatch(crops, crop_segs, images, segs, centres, tuple(params), tuple(cases))


def augment_batch(batch: CropBatch, cfg: AugmentConfig,
                  ds_scales: Sequence[Sequence[float]] = ()) -> dict[str, Any]:
    """The training batch of a CropBatch on its device: {"data": (B, C, *patch) float32, "target":
    [(B, 1, *patch_level) int16 per deep-supervision level], "cases": [str]}, as `loader.make_batch`."""
    with one_thread_on_cpu(batch.crops.device):
        image, seg = spatial_batch(batch, cfg)
        if cfg.squeeze:  # 2D configuration: (B, C, 1, Y, X) → (B, C, Y, X)
            image, seg = image[:, :, 0], seg[:, :, 0]
        image = intensity_batch(image.contiguous(), [p.intensity for p in batch.params])
        outside = seg < 0
        for channel in cfg.masked_channels:  # normalized inside the mask only: zero outside it
            image[:, channel].masked_fill_(outside[:, 0], 0.0)
        seg = seg.masked_fill(outside, 0).to(torch.int16)
        target = downsample_seg(seg, ds_scales) if ds_scales else [seg]
    return {"data": image, "target": target, "cases": list(batch.cases)}


def one_thread_on_cpu(device: torch.device) -> contextlib.AbstractContextManager:
    """Patch-sized ops gain nothing from intra-op threads and lose a lot when the cores are busy
    (the loader's workers run with one thread for the same reason)."""
    return one_torch_thread() if device.type == "cpu" else contextlib.nullcontext()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- spatial ------------------------------------------------------------------------------------

def spatial_batch(batch: CropBatch, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation, scaling and mirroring of every sample: image (B, C, *patch), seg (B, 1, *patch)."""
    spatial = [p.spatial for p in batch.params]
    warped = [j for j, s in enumerate(spatial) if s.needs_warp]
    plain = [j for j, s in enumerate(spatial) if not s.needs_warp]
    device = batch.crops.device
    image = torch.empty(len(spatial), batch.crops.shape[1], *cfg.patch_size, device=device)
    seg = torch.empty(len(spatial), 1, *cfg.patch_size, dtype=SEG_PATCH_DTYPE, device=device)
    if plain:
        crops, crop_segs = flip_samples(batch.crops, batch.crop_segs, [spatial[j].flip_axes for j in plain])
        index = host_tensor(plain, torch.long, device)
        image.index_copy_(0, index, crops)
        seg.index_copy_(0, index, crop_segs)
    if warped:
        out, out_seg = warp_sources(batch, [spatial[j] for j in warped], cfg)
        index = host_tensor(warped, torch.long, device)
        image.index_copy_(0, index, out)
        seg.index_copy_(0, index, out_seg)
    return image, seg


def warp_sources(batch: CropBatch, spatial: list, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One grid_sample for all rotated/scaled samples (their flips are folded into the matrix)."""
    device = batch.sources.device
    planar = cfg.spatial.planar
    matrices = host_tensor(np.stack([sample_matrix(s, planar) for s in spatial]), torch.float64, device)
    patch = cfg.patch_size
    if not planar:
        return warp(batch.sources, batch.source_segs, matrices, batch.centres, patch)
    depth = (slice(None), slice(None), slice(0, patch[0]))  # planar boxes hold the patch's slices
    image, seg = warp_planar(batch.sources[depth], batch.source_segs[depth], matrices[:, 1:, 1:],
                             batch.centres[:, 1:], patch[1:])
    return flip_samples(image, seg, [(0,) if 0 in s.flip_axes else () for s in spatial])


def flip_samples(image: torch.Tensor, seg: torch.Tensor,
                 flips: Sequence[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip sample i of image (n, C, *S) / seg (n, 1, *S) along its spatial axes flips[i]; one
    flip per distinct axis set."""
    if not any(flips):
        return image, seg
    image, seg = image.clone(), seg.clone()
    for axes in set(flips) - {()}:
        index = host_tensor([i for i, f in enumerate(flips) if f == axes], torch.long, image.device)
        dims = [axis + 2 for axis in axes]
        image.index_copy_(0, index, image.index_select(0, index).flip(dims))
        seg.index_copy_(0, index, seg.index_select(0, index).flip(dims))
    return image, seg


def host_tensor(values: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host values (a list, array or CPU tensor) on `device`, copied without stalling a CUDA stream."""
    is_tensor = isinstance(values, torch.Tensor)
    tensor = values.to(dtype) if is_tensor else torch.as_tensor(np.asarray(values), dtype=dtype)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


# --- intensity ----------------------------------------------------------------------------------

def intensity_batch(image: torch.Tensor, params: Sequence[IntensityParams]) -> torch.Tensor:
    """Every intensity step of `params` (one per sample) on image (B, C, *S), in place.

    Steps run in the CPU pipeline's order; each acts on the (sample, channel) rows it fired for,
    all at once. A sample's result is the same as `intensity_transforms.apply_intensity` on it.
    """
    flat = image.view(-1, *image.shape[2:])  # (B·C, *S): one row per sample and channel
    channels = image.shape[1]
    for name, apply in _STEPS:
        rows, values = fired_rows(params, name, channels)
        if rows:
            index = host_tensor(rows, torch.long, image.device)
            flat.index_copy_(0, index, apply(flat.index_select(0, index), values))
    return image


def fired_rows(params: Sequence[IntensityParams], name: str, channels: int) -> tuple[list[int], list]:
    """Rows b·C + c of image (B, C, ...) that step `name` changes, and its value for each row
    (a factor, γ, zoom, per-axis σ, or (σ, seed) for noise)."""
    rows, values = [], []
    for b, sample in enumerate(params):
        for step in sample.steps:
            if step.name != name:
                continue
            for c, value in enumerate(_row_values(step, channels)):
                if value is not None:
                    rows.append(b * channels + c)
                    values.append(value)
    return rows, values


_ROW_FIELD = {"blur": "sigmas", "brightness": "factors", "contrast": "factors", "gamma": "gammas",
              "gamma_inverted": "gammas"}  # the per-channel field of each step's dataclass


def _row_values(step: Any, channels: int) -> Sequence:
    """Per channel of one sample: the value its row needs, None where the step skips the channel."""
    if step.name == "noise":
        return [(step.sigma, step.seed, c) for c in range(channels)]
    if step.name == "lowres":
        return [None if z is None else (z, step.ignore_axes) for z in step.zooms]
    return getattr(step, _ROW_FIELD[step.name])


def _noise(rows: torch.Tensor, values: list) -> torch.Tensor:
    """Each sample's field drawn as the CPU path does: randn((C, *S)) from its seeded generator."""
    noise_fields = []
    channels = max(c for _, _, c in values) + 1  # noise always covers every channel of a sample
    for i in range(0, len(values), channels):
        sigma, seed, _ = values[i]
        generator = torch.Generator(device=rows.device).manual_seed(seed)
        noise_fields.append(torch.randn((channels, *rows.shape[1:]), generator=generator,
                                   device=rows.device, dtype=rows.dtype).mul_(sigma))
    return rows.add_(torch.cat(noise_fields))


def _per_row(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """(n, 1, …, 1) tensor of one value per row of `like` (n, *S)."""
    return host_tensor(values, like.dtype, like.device).view(-1, *[1] * (like.ndim - 1))


def _brightness(rows: torch.Tensor, factors: list) -> torch.Tensor:
    return rows.mul_(_per_row(factors, rows))


def _contrast(rows: torch.Tensor, factors: list) -> torch.Tensor:
    flat = rows.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    mean = flat.mean(1, keepdim=True)
    out = (flat - mean).mul_(_per_row(factors, flat)).add_(mean)
    return torch.clamp(out, low, high).view_as(rows)


def _gamma(sign: float) -> Callable[[torch.Tensor, list], torch.Tensor]:
    def apply(rows: torch.Tensor, gammas: list) -> torch.Tensor:
        """x → ((x - min)/range)^γ · range + min per row, then the row's mean and std restored."""
        x = rows.flatten(1) * sign
        mean, std = x.mean(1, keepdim=True), row_std(x)
        low, high = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
        span = high - low
        x = x.sub_(low).div_(span.clamp(min=EPS)).pow_(_per_row(gammas, x)).mul_(span).add_(low)
        x = x.sub_(x.mean(1, keepdim=True)).mul_(std / row_std(x).clamp(min=EPS)).add_(mean)
        return x.mul_(sign).view_as(rows)
    return apply


def row_std(x: torch.Tensor) -> torch.Tensor:
    """(n, V) → (n, 1) standard deviation (correction 1) of each row. On the CPU row by row: a
    full reduction is ~5× faster there than torch's reduction along a dimension."""
    if x.device.type == "cpu":
        return torch.stack([row.std() for row in x]).view(-1, 1)
    return x.std(1, keepdim=True)


def _blur(rows: torch.Tensor, sigmas: list) -> torch.Tensor:
    """Separable Gaussian blur, one grouped convolution per axis for all rows (reflect padding)."""
    x = rows[None]  # (1, n, *S): the rows are the channels of one grouped convolution
    for axis in range(rows.ndim - 1):
        kernels = [gaussian_kernel(s[axis]) for s in sigmas]
        width = max(len(k) for k in kernels)
        weight = torch.zeros(len(kernels), width)
        for i, kernel in enumerate(kernels):  # zero taps around smaller kernels change nothing
            start = (width - len(kernel)) // 2
            weight[i, start:start + len(kernel)] = kernel
        x = conv_axis(x, host_tensor(weight, rows.dtype, rows.device), axis)
    return x[0]


def _lowres(rows: torch.Tensor, values: list) -> torch.Tensor:
    """Nearest-exact down to round(n·zoom), linear back up, per axis: out = A_z ⊗ A_y ⊗ A_x · x."""
    shape = rows.shape[1:]
    for axis, n in enumerate(shape):
        sizes = [n if axis in ignore else max(1, round(n * zoom)) for zoom, ignore in values]
        if all(m == n for m in sizes):
            continue
        matrices = host_tensor(torch.stack([lowres_matrix(n, m) for m in sizes]), rows.dtype, rows.device)
        moved = rows.movedim(axis + 1, -1)  # (n_rows, ..., n): one batched matmul per axis
        rows = torch.einsum("r...j,rij->r...i", moved, matrices).movedim(-1, axis + 1)
    return rows


@functools.lru_cache(maxsize=1024)
def lowres_matrix(n: int, m: int) -> torch.Tensor:
    """(n, n) matrix of 1D nearest-exact n → m followed by linear m → n (align_corners False)."""
    if m == n:
        return torch.eye(n)
    basis = torch.eye(n)[:, None]  # (n, 1, n): the unit vectors as a batch of 1D signals
    down = F.interpolate(basis, size=m, mode="nearest-exact")
    up = F.interpolate(down, size=n, mode="linear", align_corners=False)
    return up[:, 0].T.contiguous()


_STEPS: tuple[tuple[str, Callable[[torch.Tensor, list], torch.Tensor]], ...] = (
    ("noise", _noise), ("blur", _blur), ("brightness", _brightness), ("contrast", _contrast),
    ("lowres", _lowres), ("gamma_inverted", _gamma(-1.0)), ("gamma", _gamma(1.0)))
