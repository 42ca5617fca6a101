"""A deterministic synthetic DCE-MRI breast dataset, small enough to learn in minutes on a CPU.

Each case mimics one BreastDM acquisition: a pre-contrast image (VIBRANT), a post-contrast image
(VIBRANT_C2) and their subtraction (SUB2), on an anisotropic grid (≈3 mm slices, ≈0.8 mm in-plane,
both varying per case so preprocessing has real resampling to do). The body is one breast on a
chest wall over zero background. Inside it: fat, patchy fibroglandular tissue that enhances a
little, one or two lesions (label 1) and two to four vessels. Lesions enhance about as strongly as
the vessels (or, washed out, half as much: below), so no threshold on one channel separates them:
the network must use shape (compact, textured blob vs thin tube). Every case of a dataset with two or more cases (not the region
variant) also has a class, benign or malignant (dataset.json `classes` + classes.csv,
docs/classification.md), which its lesions show the way a radiologist reads them, each sign with
overlap (`DemoClassSigns`): kinetics (malignant lesions have washed out by the second
post-contrast phase, enhancing about half as much as the vessels; benign ones still enhance as
strongly as the vessels) and margin (malignant irregular and spiculated, benign smooth). Each
patient also takes up contrast differently (`contrast`, every enhancing tissue alike), so a
lesion's enhancement says little on its own and much against the vessels beside it. Everything
is drawn from `np.random.default_rng([seed, case])` (the class signs from
`rng([seed, case, CLASS_STREAM])`), and files are written with fixed gzip headers, so a seed
always gives the same bytes.

The region variant (`regions=True`, `convert demo --regions`) is the smallest BraTS-like dataset:
every lesion enhances at its rim around a necrotic core that barely enhances; the label map holds
1 (enhancing rim) and 2 (core), and dataset.json declares the nested regions "lesion" [1, 2] and
"core" 2 with `regions_class_order` [1, 2] (see docs/regions.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from nnlite.common.errors import UserError
from nnlite.common.files import staged_dir, write_json_atomic, write_text_atomic
from nnlite.data.breastdm import CHANNEL_NAMES, LABELS  # each case mimics a BreastDM acquisition
from nnlite.data.case_classes import CLASSES_FILE, CLASSES_KEY, format_classes_csv
from nnlite.data.image_io import write_raw_case

REGION_LABELS = {"background": 0, "lesion": [1, 2], "core": 2}  # the region variant's regions
REGIONS_CLASS_ORDER = [1, 2]  # lesion painted as 1, then core as 2 on top
CORE_DISTANCE = 0.75  # region variant: lesion voxels this deep (1 = the boundary) are necrotic core
NECROSIS_GAIN = 0.05  # region variant: the necrotic core barely enhances (a dark hole in the bright rim)
NECROSIS_PRE = 60.0  # region variant: pre-contrast intensity of the core (darker than fat)
CASE_PREFIX = "demo"
SHAPE_RANGE = ((14, 18), (88, 104), (88, 104))  # (z, y, x) voxels, inclusive
SLICE_SPACING_MM = (2.5, 3.5)  # through-plane spacing range
INPLANE_SPACING_MM = (0.7, 0.9)  # in-plane spacing range (same for y and x)
LESION_RADIUS_MM = (4.5, 10.0)  # semi-axes of a lesion before its boundary is roughened
VESSEL_RADIUS_MM = (1.2, 2.2)
VESSEL_COUNT = (4, 8)  # vessels per case: low inclusive, high exclusive
NOISE_SIGMA = 9.0  # Gaussian noise per acquired channel (intensity units of fat ≈ 90)
# (pre-contrast, post-contrast) mean intensity per tissue, before the per-case scale
FAT = (90.0, 95.0)
GLAND = (160.0, 195.0)
MUSCLE = (120.0, 150.0)
LESION = (150.0, 430.0)
VESSEL = (130.0, 430.0)
CLASS_NAMES = ("benign", "malignant")  # case class i: cases alternate benign, malignant, benign, …
CLASS_STREAM = 7  # the class signs come from rng([seed, case, CLASS_STREAM]), apart from the anatomy
SIGN_FLIP = 0.1  # chance that one sign (kinetics or margin) looks like the other class's
WASHOUT_GAIN = (0.3, 0.5)  # lesion enhancement by the second phase, vessels' = 1: washed out
PERSISTENT_GAIN = (0.9, 1.2)  # still enhancing like the vessels
CONTRAST_RANGE = (0.4, 1.6)  # the patient's contrast uptake (dose, cardiac output), scales all enhancement


@dataclass(frozen=True)
class DemoClassSigns:
    """How a case's lesions look: washout or persistent kinetics (`gain`, the lesion's enhancement
    relative to the vessels'), the margin's irregularity (amplitude and correlation length of the
    roughening, mm) and the patient's contrast uptake (a factor on every enhancing tissue)."""

    washout: bool
    gain: float
    roughness: float
    roughness_mm: float
    contrast: float


def class_signs(rng: np.random.Generator, case_class: int) -> DemoClassSigns:
    """Draw the signs of a benign (0) or malignant (1) case; each may contradict the class."""
    malignant_kinetics = bool(case_class) != (rng.random() < SIGN_FLIP)
    malignant_margin = bool(case_class) != (rng.random() < SIGN_FLIP)
    gain = rng.uniform(*WASHOUT_GAIN) if malignant_kinetics else rng.uniform(*PERSISTENT_GAIN)
    roughness = rng.uniform(0.15, 0.4) if malignant_margin else rng.uniform(0.0, 0.2)
    roughness_mm = rng.uniform(1.5, 2.5) if malignant_margin else rng.uniform(2.5, 4.0)
    return DemoClassSigns(malignant_kinetics, float(gain), float(roughness), float(roughness_mm),
                          float(rng.uniform(*CONTRAST_RANGE)))


@dataclass(frozen=True)
class DemoCase:
    """One generated case: images (3, Z, Y, X) float32, seg (Z, Y, X) uint8, spacing (z, y, x)."""

    images: np.ndarray
    seg: np.ndarray
    spacing: tuple[float, float, float]


def generate_demo_dataset(raw: str | Path, n_cases: int = 24, seed: int = 0, regions: bool = False) -> Path:
    """Write the demo dataset in nnU-Net's raw layout at `raw` (must not exist or be empty);
    `regions`: the region variant (rim + core labels, nested regions).

    Files go to `<raw>.tmp/` first and the folder is renamed when complete, so a killed run
    never leaves a dataset that looks valid.
    """
    if n_cases < 1:
        raise UserError("--cases", f"must be at least 1, got {n_cases}")
    with_classes = n_cases >= 2 and not regions  # one case cannot hold two classes
    classes = {}
    with staged_dir(raw) as staging:
        for index in range(n_cases):
            name = f"{CASE_PREFIX}_{index + 1:03d}"
            case_class = index % 2 if with_classes else None
            signs = None if case_class is None else class_signs(
                np.random.default_rng([seed, index, CLASS_STREAM]), case_class)
            case = make_demo_case(np.random.default_rng([seed, index]), regions, signs)
            if case_class is not None:
                classes[name] = CLASS_NAMES[case_class]
            voxels = [np.round(image).astype(np.int16) for image in case.images]  # MR scanners store integers
            write_raw_case(staging, name, voxels, case.seg, _affine(case.spacing, case.seg.shape))
        meta = _dataset_json(n_cases, seed, regions)
        if classes:
            meta[CLASSES_KEY] = list(CLASS_NAMES)
            write_text_atomic(staging / CLASSES_FILE, format_classes_csv(classes))
        write_json_atomic(staging / "dataset.json", meta)
    return Path(raw)


def _dataset_json(n_cases: int, seed: int, regions: bool = False) -> dict:
    region_keys = {"regions_class_order": REGIONS_CLASS_ORDER} if regions else {}
    return {
        "channel_names": CHANNEL_NAMES,
        "labels": REGION_LABELS if regions else LABELS,
        **region_keys,
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
        "name": "nnlite_demo",
        "description": "synthetic DCE-MRI breast lesions (nnlite.data.demo_dataset)",
        "seed": seed,
    }


def _affine(spacing: tuple[float, float, float], shape: tuple[int, ...]) -> np.ndarray:
    """NIfTI affine (x, y, z order) with the given voxel size, centred on the volume."""
    zooms = np.array(spacing[::-1])
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -zooms * (np.array(shape[::-1]) - 1) / 2
    return affine


def make_demo_case(rng: np.random.Generator, regions: bool = False, signs: DemoClassSigns | None = None
                   ) -> DemoCase:
    """Draw one case: pre, post and subtraction images plus the lesion mask (region variant: rim-
    enhancing lesions, seg 1 = enhancing rim, 2 = necrotic core; lesions showing a class's `signs`
    when given)."""
    shape = tuple(int(rng.integers(lo, hi + 1)) for lo, hi in SHAPE_RANGE)
    inplane = float(rng.uniform(*INPLANE_SPACING_MM))
    spacing = (float(rng.uniform(*SLICE_SPACING_MM)), inplane, inplane)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)],
                                indexing="ij"))  # (3, Z, Y, X) voxel centres in mm
    breast, chest, centre, radii = _body(grid, rng)
    body = breast | chest
    gland = breast & (_smooth_noise(rng, shape, spacing, 6.0) > 0.3)
    lesion, gain = np.zeros(shape, bool), np.ones(shape, np.float32)
    core = np.zeros(shape, bool)
    for _ in range(int(rng.integers(1, 3))):
        mask, lesion_gain, depth = _lesion(grid, rng, centre, radii, shape, spacing, rim_only=regions,
                                          signs=signs)
        lesion |= mask & breast
        deep = (depth < CORE_DISTANCE) & breast if regions else np.zeros(shape, bool)
        core |= deep
        gain = np.where(mask, np.where(deep, NECROSIS_GAIN, lesion_gain), gain)
    vessels = np.zeros(shape, bool)
    for _ in range(int(rng.integers(*VESSEL_COUNT))):
        vessels |= _vessel(grid, rng, centre, radii, spacing) & breast & ~lesion
    pre, post = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for mask, (a, b) in ((body, FAT), (chest, MUSCLE), (gland, GLAND), (vessels, VESSEL)):
        pre[mask], post[mask] = a, b
    pre[lesion] = LESION[0]
    post[lesion] = (LESION[0] + (LESION[1] - LESION[0]) * gain)[lesion]
    if signs is not None:  # the patient's contrast uptake scales every enhancement alike
        enhancing = gland | vessels | lesion
        post[enhancing] = pre[enhancing] + signs.contrast * (post[enhancing] - pre[enhancing])
    if regions:  # fluid-filled necrosis: dark before contrast, and it stays dark
        pre[core & lesion] = post[core & lesion] = NECROSIS_PRE
    scale = rng.uniform(0.7, 1.3)  # scanners differ in gain: normalization has work to do
    images = []
    for image in (pre, post):
        blurred = gaussian_filter(image, (0.3, 0.6, 0.6)) * scale  # partial-volume softening
        noisy = blurred + rng.normal(0, NOISE_SIGMA, shape) * body
        images.append(np.clip(noisy, 0, None) * body)
    images.append(images[1] - images[0])
    seg = lesion.astype(np.uint8)
    if regions:
        seg[core & lesion] = 2
    return DemoCase(np.stack(images).astype(np.float32), seg, spacing)


def _body(grid: np.ndarray, rng: np.random.Generator):
    """A breast (half ellipsoid pointing to low y) on a chest-wall slab; returns masks and shape."""
    extent = np.array([grid[i].max() for i in range(3)])
    chest_y = extent[1] * rng.uniform(0.68, 0.76)
    centre = np.array([extent[0] / 2, chest_y, extent[2] / 2 + rng.uniform(-3, 3)])
    radii = np.array([extent[0] * 0.9, chest_y * rng.uniform(0.8, 0.9),
                      extent[2] * rng.uniform(0.36, 0.44)])
    inside = sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) <= 1
    breast = inside & (grid[1] <= chest_y)
    chest = grid[1] > chest_y
    return breast, chest, centre, radii


def _smooth_noise(rng: np.random.Generator, shape, spacing, sigma_mm: float) -> np.ndarray:
    """Unit-variance smooth random field with correlation length ≈ sigma_mm."""
    field = gaussian_filter(rng.normal(size=shape), [sigma_mm / s for s in spacing])
    return field / (field.std() + 1e-8)


def _lesion(grid, rng, centre, radii, shape, spacing, rim_only: bool = False,
            signs: DemoClassSigns | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An irregular, randomly rotated ellipsoid inside the breast, its enhancement gain and its
    roughened normalised depth (< 1 inside, 0 at the centre).

    Half the lesions enhance patchily throughout, the others mostly at the rim (dim centre), as
    DCE-MRI lesions do; a threshold on the subtraction therefore misses parts of them. `rim_only`
    (the region variant) makes every lesion rim-enhancing. With `signs` the case's class decides
    margin and kinetics instead (`_classed_lesion`).
    """
    semi = rng.uniform(*LESION_RADIUS_MM, size=3)
    position = centre + radii * rng.uniform([-0.35, -0.75, -0.5], [0.35, -0.25, 0.5])
    angle = rng.uniform(0, np.pi)
    dz, dy, dx = (grid[i] - position[i] for i in range(3))
    u = np.cos(angle) * dy + np.sin(angle) * dx
    v = -np.sin(angle) * dy + np.cos(angle) * dx
    distance = np.sqrt((dz / semi[0]) ** 2 + (u / semi[1]) ** 2 + (v / semi[2]) ** 2)
    if signs is not None:
        return _classed_lesion(distance, rng, shape, spacing, signs)
    distance += rng.uniform(0.1, 0.3) * _smooth_noise(rng, shape, spacing, 2.5)
    if rng.random() < 0.5 and not rim_only:
        gain = 0.75 + 0.5 * (_smooth_noise(rng, shape, spacing, 2.0) > 0)  # patchy
    else:
        gain = 0.4 + 0.85 * np.clip(distance, 0, 1) ** 2  # rim enhancement
    return distance < 1, gain.astype(np.float32), distance


def _classed_lesion(distance: np.ndarray, rng, shape, spacing, signs: DemoClassSigns
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A lesion (its smooth normalised `distance`) showing `signs`: the margin roughened by
    `roughness` at `roughness_mm`, enhancing by `gain` with a little texture."""
    distance = distance + signs.roughness * _smooth_noise(rng, shape, spacing, signs.roughness_mm)
    gain = signs.gain * (1 + 0.15 * _smooth_noise(rng, shape, spacing, 2.0))
    return distance < 1, gain.astype(np.float32), distance


def _vessel(grid, rng, centre, radii, spacing) -> np.ndarray:
    """A thin tube along a random quadratic Bezier curve from the chest wall towards the nipple."""
    z = rng.uniform(-0.5, 0.5)  # vessels run mostly within a slice, slowly crossing slices
    start = centre + radii * np.array([z, 0.0, rng.uniform(-0.8, 0.8)])
    end = centre + radii * np.array([z + rng.uniform(-0.2, 0.2), -0.9, rng.uniform(-0.5, 0.5)])
    bend = (start + end) / 2 + radii * rng.uniform([-0.1, -0.2, -0.5], [0.1, 0.2, 0.5])
    t = np.linspace(0, 1, 400)[:, None]
    points = (1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t**2 * end  # (400, 3) mm
    index = np.round(points / np.array(spacing)).astype(int)
    index = np.clip(index, 0, np.array(grid.shape[1:]) - 1)
    centreline = np.ones(grid.shape[1:], bool)
    centreline[tuple(index.T)] = False
    distance = distance_transform_edt(centreline, sampling=spacing)
    return distance <= rng.uniform(*VESSEL_RADIUS_MM)
