"""The cascade: 3d_lowres predicts, 3d_cascade_fullres refines with that prediction as extra input.

The full-resolution stage sees its image channels plus one one-hot channel per foreground label of
the low-resolution prediction (reference §3.6, §7 item 14, §8).

Training input ("previous stage"). Every training case needs a low-resolution prediction from a
model that never saw it: the 3d_lowres cross-validation. Fold k's validation folder provides
exactly the cases of fold k's "val" list (`crossval.fold_sources`), so a case's extra channels
come from the one lowres model that did not train on it. Each prediction (a label map in the
original geometry, `fold_<k>/validation/<case>.nii.gz`) is brought into the cascade's preprocessed
space by `seg_to_stage_input` and stored as

    WORK/preprocessed/<lowres>_predicted_next_stage/<case>_prev.npy   int8 (1, Z, Y, X)
    WORK/preprocessed/<lowres>_predicted_next_stage/<case>_prev.json  provenance (fold, source file)

At prediction time the lowres stage's label map goes through the same `seg_to_stage_input`, so
the cross-validation predictions of the cascade are reproduced exactly by `predict`. (The
reference instead resamples lowres logits during training but a label map at inference.)

Augmentation of the extra channels (the reference's, after every other transform): with p 0.4 a
random binary operator per label (p 0.5 each; dilation, erosion, closing or opening with a ball of
radius U(1, 8) voxels), then with p 0.2 the removal of one random connected component per label
(p 0.5 each) among those smaller than 15 % of the patch. The ball is the integer voxel grid
within the radius; operators act through exact Euclidean distance transforms (`binary_operator`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from nnlite.crossval import fold_sources
from nnlite.errors import UserError
from nnlite.files import read_json, remove_tmp_leftovers, save_npy_atomic, write_json_atomic
from nnlite.io import read_image
from nnlite.plans import Plans
from nnlite.preprocessing import INT8_MAX_LABEL, CaseProperties, load_case_properties, transposed_spacing
from nnlite.resampling import resample_seg
from nnlite.sampling import MAX_OPEN_CASES

if TYPE_CHECKING:  # the augmentation modules import the loader's side; only their types are needed
    from nnlite.augment import AugmentConfig, AugmentParams

log = logging.getLogger(__name__)

NEXT_STAGE_SUFFIX = "_predicted_next_stage"  # WORK/preprocessed/<lowres><this>/
PREV_FILE = "{case}_prev.npy"
PREV_INFO_FILE = "{case}_prev.json"
P_BINARY_OPERATOR = 0.4  # probability that a sample's extra channels get binary operators
P_OPERATOR_PER_LABEL = 0.5  # ... each label, in random order
STREL_RADIUS = (1.0, 8.0)  # ball radius in voxels, U(lo, hi)
OPERATORS = ("dilation", "erosion", "closing", "opening")  # drawn uniformly
P_REMOVE_COMPONENT = 0.2  # probability that a sample loses connected components
P_REMOVE_PER_LABEL = 0.5  # ... one per label, in random order
MAX_COMPONENT_FRACTION = 0.15  # only components smaller than this share of the patch are removed
AUGMENT_STREAM = 0xCA5C  # seeds the extra channels' augmentation apart from the sample's other draws


def previous_stage_name(plans: Plans, config_name: str) -> str | None:
    """The lowres configuration a cascade stage needs, else None."""
    return plans.configurations[config_name].previous_stage


def stage_labels(plans: Plans) -> list[int]:
    """Labels that get one extra input channel each (foreground, without an ignore label)."""
    return plans.foreground_labels


def input_channels(plans: Plans, config_name: str) -> int:
    """Network input channels: the image channels, plus one per foreground label for a cascade."""
    extra = len(stage_labels(plans)) if previous_stage_name(plans, config_name) else 0
    return plans.num_channels + extra


def previous_stage_dir(work: Path, plans: Plans, config_name: str) -> Path:
    """WORK/preprocessed/<lowres>_predicted_next_stage/ for cascade `config_name`."""
    lowres = previous_stage_name(plans, config_name)
    if not lowres:
        raise UserError(config_name, "is not a cascade stage (no previous_stage in plans.json)")
    return Path(work) / "preprocessed" / f"{lowres}{NEXT_STAGE_SUFFIX}"


def seg_to_stage_input(seg: np.ndarray, props: CaseProperties, plans: Plans, config_name: str
                       ) -> np.ndarray:
    """A label map (Z, Y, X) in the raw geometry → int8 (1, *props.shape) in the stage's space
    (int16 when a label exceeds 127).

    The path of preprocessing for labels: transpose, crop to the case's bbox, resample (indicators
    interpolated with the stage's `resampling_order_seg`, separate-z rule) to the preprocessed shape.
    """
    labels = np.asarray(seg, dtype=np.int16).transpose(tuple(plans.transpose))
    if tuple(labels.shape) != tuple(props.shape_before_crop):
        raise UserError(props.case, f"previous-stage prediction has shape {labels.shape} (after "
                        f"transpose), the image {tuple(props.shape_before_crop)}")
    cropped = labels[tuple(slice(a, b) for a, b in props.bbox)][None]
    spacing = transposed_spacing(props.original_spacing, plans)
    order = plans.configurations[config_name].resampling_order_seg
    out = resample_seg(np.ascontiguousarray(cropped), props.shape, spacing, props.spacing, order)
    return out.astype(np.int8 if out.max(initial=0) <= INT8_MAX_LABEL else np.int16)


def one_hot(prev: np.ndarray | torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """Label map (1, *S) → float32 (len(labels), *S), channel i = (prev == labels[i])."""
    prev = prev if isinstance(prev, torch.Tensor) else torch.from_numpy(np.array(prev))
    return torch.stack([(prev[0] == label) for label in labels]).float()


def with_previous_stage(data: np.ndarray | torch.Tensor, prev: np.ndarray,
                        labels: Sequence[int]) -> torch.Tensor:
    """Network input of a cascade stage: data (C, *S) and one-hot prev → float32 (C + L, *S)."""
    data = torch.as_tensor(np.array(data, dtype=np.float32)) if isinstance(data, np.ndarray) else data
    if tuple(prev.shape[1:]) != tuple(data.shape[1:]):
        raise UserError("previous stage", f"shape {tuple(prev.shape[1:])} differs from the image "
                        f"{tuple(data.shape[1:])}")
    return torch.cat([data.float(), one_hot(prev, labels)])


def prepare_previous_stage(work: Path, plans: Plans, config_name: str) -> Path:
    """Write `<case>_prev.npy` for every preprocessed training case from the lowres CV (see the
    module docstring); files whose source prediction did not change are kept. Returns the folder."""
    work = Path(work)
    lowres = previous_stage_name(plans, config_name)
    out = previous_stage_dir(work, plans, config_name)
    if lowres not in plans.configurations:
        raise UserError(work / "plans.json", f"'{config_name}' needs '{lowres}', which is not planned")
    data_dir = work / "preprocessed" / plans.configurations[config_name].data_identifier
    cases = sorted(p.name[: -len("_seg.npy")] for p in data_dir.glob("*_seg.npy"))
    if not cases:
        raise UserError(data_dir, "no preprocessed training cases; run `python -m nnlite.preprocess` first")
    sources = fold_sources(work, lowres)
    missing = [case for case in cases if case not in sources]
    if missing:
        raise UserError(missing[0], f"has no {lowres} cross-validation prediction (no fold of "
                        f"splits.json validates it)")
    out.mkdir(parents=True, exist_ok=True)
    remove_tmp_leftovers(out)
    written = sum(_write_previous_stage(out, data_dir, case, *sources[case], lowres, plans, config_name)
                  for case in tqdm(cases, desc=f"{lowres} → {config_name}", unit="case", leave=False))
    log.info("%s: previous-stage inputs of %d cases in %s (%d rewritten)", config_name, len(cases),
             out, written)
    return out


def _write_previous_stage(out: Path, data_dir: Path, case: str, fold: int, source: Path, lowres: str,
                          plans: Plans, config_name: str) -> bool:
    """Write `<case>_prev.npy` and its provenance unless they are up to date; True if written."""
    stat = source.stat()
    info = {"case": case, "configuration": lowres, "fold": fold, "source": str(source.resolve()),
            "source_mtime_ns": stat.st_mtime_ns, "source_size": stat.st_size}
    info_path = out / PREV_INFO_FILE.format(case=case)
    if (out / PREV_FILE.format(case=case)).is_file() and info_path.is_file() and read_json(info_path) == info:
        return False
    seg = np.rint(read_image(source).array).astype(np.int16)
    props = load_case_properties(data_dir / f"{case}.json")
    info_path.unlink(missing_ok=True)  # the JSON goes last: it marks a complete file
    save_npy_atomic(out / PREV_FILE.format(case=case), seg_to_stage_input(seg, props, plans, config_name))
    write_json_atomic(info_path, info)
    return True


def load_previous_stage(folder: Path, case: str) -> np.ndarray:
    """The stored (1, Z, Y, X) int8 previous-stage label map of a case (memory-mapped)."""
    path = Path(folder) / PREV_FILE.format(case=case)
    if not path.is_file():
        raise UserError(path, "not found: the cascade's previous stage is not prepared "
                        "(train it with `python -m nnlite.train`, which prepares it)")
    return np.load(path, mmap_mode="r", allow_pickle=False)


class PreviousStageStore:
    """Memory-mapped previous-stage label maps of a folder, read box by box (picklable)."""

    def __init__(self, folder: Path, labels: Sequence[int]):
        self.folder = Path(folder)
        self.labels = tuple(int(label) for label in labels)
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "labels": self.labels, "_open": OrderedDict()}

    def region(self, case: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Box [lo, hi) of a case's map as int8 (1, *box); 0 (background) outside the image."""
        if case not in self._open:
            self._open[case] = load_previous_stage(self.folder, case)
            if len(self._open) > MAX_OPEN_CASES:
                self._open.popitem(last=False)
        prev = self._open[case]
        size = tuple(int(n) for n in np.asarray(hi) - np.asarray(lo))
        box = np.zeros((1, *size), dtype=np.int8)
        src_lo, src_hi = np.maximum(lo, 0), np.minimum(hi, prev.shape[1:])
        if np.all(src_hi > src_lo):
            src = (slice(None),) + tuple(slice(int(a), int(b)) for a, b in zip(src_lo, src_hi))
            dst = (slice(None),) + tuple(slice(int(a - l), int(b - l)) for a, b, l in zip(src_lo, src_hi, lo))
            box[dst] = prev[src]
        return box


def previous_stage_store(work: Path, plans: Plans, config_name: str) -> PreviousStageStore | None:
    """The store a cascade configuration's loader reads; None for any other configuration."""
    if not previous_stage_name(plans, config_name):
        return None
    return PreviousStageStore(previous_stage_dir(work, plans, config_name), stage_labels(plans))


def previous_stage_patch(store: PreviousStageStore, case: str, start: tuple[int, ...],
                         params: "AugmentParams", cfg: "AugmentConfig",
                         rng: np.random.Generator | None) -> torch.Tensor:
    """The extra channels of one sample: float32 (L, *patch), warped with the sample's spatial
    parameters (as the reference warps the previous stage with the seg), one-hot, and augmented
    with `rng` (None: validation, no augmentation)."""
    from nnlite.augment import patch_source_box  # noqa: PLC0415 - the loader imports this module
    from nnlite.augment_spatial import apply_spatial  # noqa: PLC0415

    lo, hi, centre = patch_source_box(start, params.spatial, cfg)
    region = torch.from_numpy(store.region(case, lo, hi))
    empty = torch.zeros((0, *region.shape[1:]), dtype=torch.float32)
    values = torch.unique(region)
    if params.spatial.needs_warp and len(values) == 1:
        # one label everywhere: the warp cannot change it (and a 0-channel grid_sample would fail)
        warped = torch.full((1, *cfg.patch_size), int(values[0]), dtype=torch.int8)
    else:
        _, warped = apply_spatial(empty, region, params.spatial, cfg.patch_size, cfg.spatial.planar,
                                  tuple(centre - lo))
    if cfg.squeeze:
        warped = warped[:, 0]
    channels = one_hot(warped, store.labels).numpy()
    if rng is not None:
        channels = augment_one_hot(channels, rng)
    return torch.from_numpy(np.ascontiguousarray(channels, dtype=np.float32))


def augment_one_hot(channels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The reference's augmentation of the previous stage's one-hot channels (L, *P), in place."""
    if rng.random() < P_BINARY_OPERATOR:
        for c in rng.permutation(len(channels)):
            if rng.random() >= P_OPERATOR_PER_LABEL:
                continue
            operator = OPERATORS[int(rng.integers(len(OPERATORS)))]
            before = channels[c] > 0
            after = binary_operator(before, operator, float(rng.uniform(*STREL_RADIUS)))
            added = after & ~before
            channels[:, added] = 0  # a voxel added to this label leaves every other label
            channels[c] = after
    if rng.random() < P_REMOVE_COMPONENT:
        for c in rng.permutation(len(channels)):
            if rng.random() < P_REMOVE_PER_LABEL:
                channels[c][remove_random_component(channels[c] > 0, rng)] = 0
    return channels


def binary_operator(mask: np.ndarray, operator: str, radius: float) -> np.ndarray:
    """Dilation, erosion, closing or opening of a bool mask by a ball {|o| ≤ radius} (voxels).

    Exact via Euclidean distance transforms: dilation = within `radius` of the mask; erosion =
    farther than `radius` from any non-mask voxel inside the patch (the patch border does not
    erode, as the reference's zero-padded convolution of the complement).
    """
    def dilate(m: np.ndarray) -> np.ndarray:
        return m.copy() if not m.any() else ndimage.distance_transform_edt(~m) <= radius

    def erode(m: np.ndarray) -> np.ndarray:
        return m.copy() if m.all() else ndimage.distance_transform_edt(m) > radius

    if operator == "dilation":
        return dilate(mask)
    if operator == "erosion":
        return erode(mask)
    if operator == "closing":
        return erode(dilate(mask))
    if operator == "opening":
        return dilate(erode(mask))
    raise ValueError(f"unknown operator {operator!r} (one of {OPERATORS})")


def remove_random_component(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bool mask of one full-connectivity component of `mask`, drawn uniformly among those
    smaller than MAX_COMPONENT_FRACTION of the patch (all False when there is none)."""
    if not mask.any():
        return np.zeros_like(mask)
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    sizes = np.bincount(components.ravel())[1:]
    small = np.flatnonzero(sizes < MAX_COMPONENT_FRACTION * mask.size) + 1
    if not len(small):
        return np.zeros_like(mask)
    return components == int(small[int(rng.integers(len(small)))])


def prepare_if_cascade(work: Path, plans: Plans, config_name: str) -> None:
    """Before training `config_name`: prepare its previous-stage inputs when it is a cascade stage."""
    config = plans.configurations.get(config_name)
    if config is not None and config.previous_stage:
        prepare_previous_stage(work, plans, config_name)


def stage_input(work: Path, plans: Plans, config_name: str, case: str,
                data: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """A preprocessed training case's network input: data (C, *S) as is, or for a cascade stage
    with its stored previous-stage channels appended (C + L, *S)."""
    if not previous_stage_name(plans, config_name):
        return data
    prev = load_previous_stage(previous_stage_dir(work, plans, config_name), case)
    return with_previous_stage(data, np.asarray(prev), stage_labels(plans))
