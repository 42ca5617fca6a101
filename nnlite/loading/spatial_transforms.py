"""Spatial augmentation: rotation, isotropic scaling and mirroring as one affine map, in torch.

"Sample, then apply": `sample_spatial_params(rng, cfg)` draws a small frozen `SpatialParams`;
`apply_spatial(image, seg, params, patch_size, centre)` is pure. The warp itself,
`warp(image, seg, matrices, centres, patch)`, is batched over B so that a device pipeline can warp
a whole batch with one `grid_sample` (the CPU loader calls it with B = 1).

Geometry (voxel index coordinates, axes (Z, Y, X)). Output voxel u of a patch of size s reads the
input at

    p(u) = centre + M · (u - (s - 1) / 2),      M = R2(a2) · R1(a1) · R0(a0) · S · F

with R_k a rotation about axis k, S = scale · I (scale > 1 zooms OUT), F = diag(±1) the mirrored
axes. So rotation, scaling and mirroring all act about the patch centre, exactly as the reference's
SpatialTransform followed by its MirrorTransform. Mirroring is folded into M (the reference flips
at the end of the pipeline): a flip commutes exactly with every intensity transform except the
nearest-exact downsampling of low-resolution simulation, where it only changes which voxel of a
pair is kept, and folding it costs nothing when a warp runs anyway.

"Planar" patches (2D configurations and the reference's dummy-2D for anisotropic 3D patches) rotate
and scale in the (Y, X) plane only; axis 0 is copied slice by slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

P_ROTATION = 0.2  # probability that a sample is rotated (all angles drawn at once)
P_SCALING = 0.2  # probability that a sample is scaled
SCALE_RANGE = (0.7, 1.4)  # isotropic scale factor, U(lo, hi); > 1 zooms out
ROTATION_3D = math.radians(30)  # ±30° about each axis for 3D patches
ROTATION_DUMMY_2D = math.radians(180)  # ±180° in-plane for dummy-2D (anisotropic) 3D patches
ROTATION_2D_ELONGATED = math.radians(15)  # 2D patches with max/min side > 1.5
ROTATION_2D = math.radians(180)  # other 2D patches
ELONGATED_2D_RATIO = 1.5  # 2D: side ratio above which rotation is limited to ±15°
DUMMY_2D_RATIO = 3.0  # 3D: max(patch)/patch[0] above which augmentation is in-plane (dummy 2D)
P_MIRROR = 0.5  # probability to mirror each allowed axis
TIE_TOLERANCE = 1e-5  # label scores closer than this (of 1) count as tied; nearest label decides
BORDER_MARGIN = 1  # extra voxels read around the exact bilinear footprint (rounding safety)


@dataclass(frozen=True)
class SpatialConfig:
    """What spatial augmentation a configuration allows (patch always as (Z, Y, X))."""

    patch_size: tuple[int, int, int]
    planar: bool  # rotate/scale in the (Y, X) plane only: 2D configs and dummy-2D
    rotation_max: float  # radians, angles drawn U(-max, max)
    mirror_axes: tuple[int, ...]  # patch axes that may be mirrored
    p_rotation: float = P_ROTATION
    p_scaling: float = P_SCALING
    scale_range: tuple[float, float] = SCALE_RANGE
    p_mirror: float = P_MIRROR


@dataclass(frozen=True)
class SpatialParams:
    """One sample's spatial augmentation. `angles`/`scale` are None when that part did not fire."""

    angles: tuple[float, float, float] | None  # radians about axes 0, 1, 2 (planar: only axis 0)
    scale: float | None
    flip_axes: tuple[int, ...] = ()

    @property
    def needs_warp(self) -> bool:
        """False: a pure crop (+ flips), no interpolation, exactly as the reference."""
        return self.angles is not None or self.scale is not None


def spatial_config(patch_size: tuple[int, ...]) -> SpatialConfig:
    """The reference's rotation range, dummy-2D decision and mirror axes for a 2D or 3D patch."""
    if len(patch_size) == 2:
        elongated = max(patch_size) / min(patch_size) > ELONGATED_2D_RATIO
        rotation = ROTATION_2D_ELONGATED if elongated else ROTATION_2D
        return SpatialConfig((1, *patch_size), True, rotation, (1, 2))
    dummy_2d = max(patch_size) / patch_size[0] > DUMMY_2D_RATIO
    rotation = ROTATION_DUMMY_2D if dummy_2d else ROTATION_3D
    return SpatialConfig(tuple(patch_size), dummy_2d, rotation, (0, 1, 2))


def sample_spatial_params(rng: np.random.Generator, cfg: SpatialConfig) -> SpatialParams:
    """Draw rotation (p_rotation), scaling (p_scaling) and one flip per mirror axis (p_mirror)."""
    angles = None
    if rng.random() < cfg.p_rotation:
        drawn = rng.uniform(-cfg.rotation_max, cfg.rotation_max, size=1 if cfg.planar else 3)
        angles = (float(drawn[0]), 0.0, 0.0) if cfg.planar else tuple(float(a) for a in drawn)
    scale = float(rng.uniform(*cfg.scale_range)) if rng.random() < cfg.p_scaling else None
    flips = rng.random(len(cfg.mirror_axes)) < cfg.p_mirror
    flip_axes = tuple(a for a, f in zip(cfg.mirror_axes, flips) if f)
    return SpatialParams(angles, scale, flip_axes)


def spatial_matrix(params: SpatialParams) -> np.ndarray:
    """The 3×3 map M from output offsets to input offsets (axes Z, Y, X), see the module docstring."""
    a0, a1, a2 = params.angles or (0.0, 0.0, 0.0)
    c0, s0, c1, s1, c2, s2 = (math.cos(a0), math.sin(a0), math.cos(a1), math.sin(a1),
                              math.cos(a2), math.sin(a2))
    r0 = np.array([[1, 0, 0], [0, c0, -s0], [0, s0, c0]])
    r1 = np.array([[c1, 0, s1], [0, 1, 0], [-s1, 0, c1]])
    r2 = np.array([[c2, -s2, 0], [s2, c2, 0], [0, 0, 1]])
    flips = np.diag([-1.0 if axis in params.flip_axes else 1.0 for axis in range(3)])
    return r2 @ r1 @ r0 * (params.scale or 1.0) @ flips


def sample_matrix(params: SpatialParams, planar: bool) -> np.ndarray:
    """`spatial_matrix`; for planar patches scale applies in-plane only: axis 0 keeps size (flips
    still apply)."""
    matrix = spatial_matrix(params)
    if planar:
        matrix[0] = 0.0
        matrix[:, 0] = 0.0
        matrix[0, 0] = -1.0 if 0 in params.flip_axes else 1.0
    return matrix


def source_box(matrix: np.ndarray, centre: np.ndarray, patch_size: tuple[int, ...],
               warp_axes: tuple[int, ...] = (0, 1, 2)) -> tuple[np.ndarray, np.ndarray]:
    """Integer box [lo, hi) of input voxels the warped patch reads (bilinear footprint + margin).

    Axes outside `warp_axes` (axis 0 of planar patches) are read exactly: [start, start + s).
    """
    half = (np.asarray(patch_size, dtype=float) - 1) / 2
    extent = np.abs(matrix) @ half  # farthest input offset a patch corner reaches, per axis
    lo = np.floor(centre - extent).astype(int) - BORDER_MARGIN
    hi = np.floor(centre + extent).astype(int) + 2 + BORDER_MARGIN
    for axis in set(range(len(patch_size))) - set(warp_axes):
        lo[axis] = int(round(centre[axis] - half[axis]))
        hi[axis] = lo[axis] + patch_size[axis]
    return lo, hi


def affine_grid(matrices: torch.Tensor, centres: torch.Tensor, in_shape: tuple[int, ...],
                patch: tuple[int, ...]) -> torch.Tensor:
    """grid_sample grid (B, *patch, k) realising p(u) = centre + M (u - (s-1)/2) on an input of
    `in_shape` (k spatial dims, k = 2 or 3; align_corners=False). matrices (B, k, k), centres (B, k)
    in voxel index coordinates of the input."""
    size_in = torch.tensor(in_shape, dtype=matrices.dtype, device=matrices.device)
    size_out = torch.tensor(patch, dtype=matrices.dtype, device=matrices.device)
    # normalized input coord n = (2p + 1)/S - 1 and output offset u - (s-1)/2 = u_n · s / 2
    linear = matrices * size_out[None, None, :] / size_in[None, :, None]
    shift = (2 * centres + 1) / size_in - 1
    # grid_sample wants the last spatial axis first (x, y, z): reverse both row and column order
    theta = torch.cat([linear.flip(1).flip(2), shift.flip(1)[:, :, None]], dim=2)
    batch = matrices.shape[0]
    return F.affine_grid(theta, [batch, 1, *patch], align_corners=False)


def warp(image: torch.Tensor, seg: torch.Tensor | None, matrices: torch.Tensor,
         centres: torch.Tensor, patch: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Warp image (B, C, *in) bilinearly and seg (B, 1, *in) label by label onto `patch`.

    Seg: every label present (including OUTSIDE -1) gets an indicator channel, all go through one
    bilinear grid_sample together with the image, and the highest score wins; exact
    ties are settled by the nearest-neighbour label. No label is ever invented. The input must
    already hold its padding (image 0, seg -1) wherever the grid reaches outside the real image.
    """
    grid = affine_grid(matrices.to(image.dtype), centres.to(image.dtype), tuple(image.shape[2:]), patch)
    if seg is None:
        return F.grid_sample(image, grid, mode="bilinear", align_corners=False), None
    labels = present_labels(seg)
    # The indicators sum to 1 at every input voxel and so do the bilinear weights, so the first
    # label's score is 1 - the others': one channel fewer to interpolate.
    others = (seg == labels[1:].view(1, -1, *[1] * (seg.ndim - 2))).to(image.dtype)
    both = F.grid_sample(torch.cat([image, others], dim=1), grid, mode="bilinear", align_corners=False)
    n_channels = image.shape[1]
    rest = both[:, n_channels:]
    scores = torch.cat([1 - rest.sum(dim=1, keepdim=True), rest], dim=1)
    best, winner = scores.max(dim=1, keepdim=True)
    out = labels[winner]
    tied = (scores >= best - TIE_TOLERANCE).sum(dim=1, keepdim=True) > 1
    if bool(tied.any()):
        nearest = F.grid_sample(seg.to(image.dtype), grid, mode="nearest", align_corners=False)
        nearest = nearest.round().to(seg.dtype)
        index = torch.searchsorted(labels, nearest.contiguous()).clamp_max(len(labels) - 1)
        is_label = labels[index] == nearest  # grid points off the input read 0, maybe no label
        use_nearest = tied & is_label & (scores.gather(1, index) >= best - TIE_TOLERANCE)
        out = torch.where(use_nearest, nearest, out)
    return both[:, :n_channels], out.to(seg.dtype)


def present_labels(seg: torch.Tensor) -> torch.Tensor:
    """Sorted label values occurring in seg (on the CPU a NumPy bincount: ~4× faster than unique)."""
    if seg.device.type != "cpu":
        return torch.unique(seg)
    values = seg.reshape(-1).numpy()
    low = int(values.min())
    present = np.flatnonzero(np.bincount(values.astype(np.intp) - low)) + low
    return torch.from_numpy(present).to(seg.dtype)


def warp_planar(image: torch.Tensor, seg: torch.Tensor | None, matrices: torch.Tensor,
                centres: torch.Tensor, patch: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like `warp` for planar patches: image (B, C, Z, *in), 2×2 matrices and 2D centres in the
    (Y, X) plane; the Z slices (already the patch's) are warped independently."""
    batch, depth = image.shape[0], image.shape[2]

    def fold(x: torch.Tensor) -> torch.Tensor:  # (B, C, Z, Y, X) → (B·Z, C, Y, X)
        return x.transpose(1, 2).reshape(batch * depth, x.shape[1], *x.shape[3:])

    def unfold(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, depth, x.shape[1], *x.shape[2:]).transpose(1, 2).contiguous()

    image2, seg2 = warp(fold(image), None if seg is None else fold(seg),
                        matrices.repeat_interleave(depth, 0), centres.repeat_interleave(depth, 0), patch)
    return unfold(image2), None if seg2 is None else unfold(seg2)


def apply_spatial(image: torch.Tensor, seg: torch.Tensor, params: SpatialParams,
                  patch_size: tuple[int, int, int], planar: bool,
                  centre: tuple[float, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure: image (C, *in) float, seg (1, *in) int → (C, *patch), (1, *patch) (3D, axes Z, Y, X).

    `centre` is the patch centre in input voxel coordinates (default: the input's centre). Without
    rotation or scaling this is an integer crop plus flips, with no interpolation.
    """
    in_shape = np.asarray(image.shape[1:])
    centre = (in_shape - 1) / 2 if centre is None else np.asarray(centre, dtype=float)
    if not params.needs_warp:
        start = np.round(centre - (np.asarray(patch_size) - 1) / 2).astype(int)
        region = (slice(None),) + tuple(slice(s, s + n) for s, n in zip(start, patch_size))
        image, seg = image[region], seg[region]
        if params.flip_axes:
            dims = [axis + 1 for axis in params.flip_axes]
            image, seg = image.flip(dims), seg.flip(dims)
        return image.contiguous(), seg.contiguous()
    matrix = torch.from_numpy(sample_matrix(params, planar))
    if planar:
        return _apply_planar(image, seg, params, matrix, centre, patch_size)
    image, seg = warp(image[None], seg[None], matrix[None], torch.from_numpy(centre)[None], patch_size)
    return image[0], seg[0]


def _apply_planar(image: torch.Tensor, seg: torch.Tensor, params: SpatialParams, matrix: torch.Tensor,
                  centre: np.ndarray, patch_size: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """apply_spatial for planar patches: the patch's slices, warped in-plane, axis 0 maybe flipped."""
    z0 = int(round(centre[0] - (patch_size[0] - 1) / 2))
    image, seg = image[:, z0:z0 + patch_size[0]], seg[:, z0:z0 + patch_size[0]]
    image, seg = warp_planar(image[None], seg[None], matrix[1:, 1:][None],
                             torch.from_numpy(centre[1:])[None], patch_size[1:])
    image, seg = image[0], seg[0]
    if 0 in params.flip_axes:
        image, seg = image.flip([1]), seg.flip([1])
    return image, seg
