"""A predicted case's files: network-space probabilities back to the original geometry, written.

Path back (reference: export_prediction.py): resample the probabilities to the cropped original
shape (preprocessing's inverse, order 1 with the separate-z rule), argmax, put the label map back
into the uncropped volume (background outside the crop), transpose back to the raw axis order and
write `<case>.nii.gz` (or the input's format) with the input's affine (uint8 when the labels fit).
Optional `<case>.npz` (key "probabilities", float16 (K, Z, Y, X) in the original geometry, no
pickle): outside the crop the background probability is 1. A region dataset has one sigmoid
probability per region instead (0 outside the crop) and its label map is painted from them in
`regions_class_order` (`paint_regions`) rather than taken by argmax.

An ensemble (several configurations, `predict --best`) averages its members' float16
probabilities in the original geometry (`members_in_original`). `write_case_outputs` is the one
writer of a predicted case's files — label map (after the post-processing steps), probabilities,
DICOM-SEG — for `predict`, the final validation, the cross-validation ensembles and post-processing.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nnlite.common.errors import UserError
from nnlite.common.files import TMP_SUFFIX, write_atomic
from nnlite.data.image_io import file_ending, write_seg
from nnlite.data.regions import paint_regions
from nnlite.inference.largest_component import apply_postprocessing
from nnlite.plans import Plans, Region
from nnlite.preprocessing.pipeline import CaseProperties, resample_to_original, restore_original_geometry

log = logging.getLogger(__name__)

PROBABILITIES_KEY = "probabilities"  # array name inside <case>.npz (as the reference)


def probabilities_in_crop(probs: np.ndarray | torch.Tensor, props: CaseProperties, plans: Plans,
                          config_name: str) -> np.ndarray:
    """(K, *network space) → (K, *shape_after_crop) float32 in the preprocessed axis order."""
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu().numpy()
    return np.asarray(resample_to_original(probs.astype(np.float32, copy=False), props, plans,
                                           config_name), dtype=np.float32)


def seg_in_original(cropped_probs: np.ndarray, props: CaseProperties, plans: Plans) -> np.ndarray:
    """Argmax (regions: painted) of (K, *cropped) → uint8/int16 label map (*raw shape) in the raw
    axis order."""
    seg = label_map_of(cropped_probs, plans)
    return restore_original_geometry(seg, props, plans, 0)


def probabilities_in_original(cropped_probs: np.ndarray, props: CaseProperties,
                              plans: Plans) -> np.ndarray:
    """(K, *cropped) → (K, *raw shape) float16; outside the crop: background 1, others 0 (regions:
    every region 0)."""
    fill = [0.0 if plans.sigmoid_outputs else 1.0] + [0.0] * (cropped_probs.shape[0] - 1)
    return restore_original_geometry(cropped_probs.astype(np.float16), props, plans, fill)


def write_probabilities(path: str | Path, probs: np.ndarray) -> Path:
    """Write `<case>.npz` with key "probabilities" atomically (uncompressed: it is read often)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # np.savez would append ".npz" to a str/Path name
            np.savez(handle, **{PROBABILITIES_KEY: probs})

    return write_atomic(path, write)


def load_probabilities(path: str | Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        return archive[PROBABILITIES_KEY]


Cropped = tuple[np.ndarray, CaseProperties]  # probabilities (K, *shape_after_crop) float32, properties


def members_in_original(members: Sequence[Cropped], plans: Plans, save_probabilities: bool
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """Label map (*raw shape) of one configuration's or an ensemble's cropped probabilities, and
    the probabilities (K, *raw shape) float16 when `save_probabilities`."""
    if len(members) == 1:
        cropped, props = members[0]
        probs = probabilities_in_original(cropped, props, plans) if save_probabilities else None
        return seg_in_original(cropped, props, plans), probs
    probs = average_probabilities([probabilities_in_original(c, p, plans) for c, p in members])
    seg = label_map_of(probs, plans)
    return seg, probs.astype(np.float16) if save_probabilities else None


def write_case_outputs(out_path: str | Path, seg: np.ndarray, affine: np.ndarray, *,
                       probabilities: np.ndarray | None = None, postprocessing: Sequence[Sequence[int]] = (),
                       dicom: tuple[Path, dict] | None = None) -> Path:
    """Write a case's label map (*raw shape) as `out_path` after the keep-largest-component steps
    (never applied to the probabilities), `<case>.npz` beside it when `probabilities` are given,
    and `<case>.dcm` when `dicom` = (the DICOM series it segments, the dataset's labels).

    All files are written into `<dir>/.<name>.tmp/` first and moved beside each other only when
    every one succeeded: a case that fails (a DICOM-SEG that cannot be made) leaves no file."""
    out_path = Path(out_path)
    staging = out_path.with_name(f".{out_path.name}{TMP_SUFFIX}")
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's leftover
    staging.mkdir(parents=True)
    try:
        staged = [write_seg(staging / out_path.name, apply_postprocessing(seg, postprocessing), affine)]
        if probabilities is not None:
            staged.append(write_probabilities(npz_path_for(staged[0]), probabilities))
        if dicom is not None:
            from nnlite.inference.dicom_seg import write_dicom_seg  # highdicom: only when asked for

            staged.append(write_dicom_seg(staged[0], dicom[0], dicom[1], dicom_seg_path(staged[0])))
        for path in staged:
            os.replace(path, out_path.with_name(path.name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_path


def export_prediction(probs: np.ndarray | torch.Tensor, props: CaseProperties, plans: Plans,
                      config_name: str, out_path: str | Path, save_probabilities: bool = False,
                      *, affine: np.ndarray | None = None,
                      postprocessing: Sequence[Sequence[int]] = ()) -> Path:
    """Write the label map of one configuration's probs (K, *network space) as `out_path`
    (<case>.nii.gz), with `<case>.npz` beside it when `save_probabilities`.

    affine: the input's affine (default: the one stored in props). postprocessing: the accepted
    keep-largest-component steps (applied to the label map only, never to the probabilities).
    """
    cropped = probabilities_in_crop(probs, props, plans, config_name)
    seg, probabilities = members_in_original([(cropped, props)], plans, save_probabilities)
    return write_case_outputs(out_path, seg, output_affine(props, affine), probabilities=probabilities,
                              postprocessing=postprocessing)


def output_affine(props: CaseProperties, affine: np.ndarray | None) -> np.ndarray:
    """The input's affine: given, else stored in props, else (older files) one from the spacing."""
    if affine is not None:
        return np.asarray(affine, dtype=np.float64)
    if props.affine:
        return np.asarray(props.affine, dtype=np.float64)
    log.warning("%s: no affine stored; writing an axis-aligned one from the spacing", props.case)
    z, y, x = props.original_spacing[-3:]
    return np.diag([x, y, z, 1.0])


def npz_path_for(seg_path: str | Path) -> Path:
    """`<dir>/<case>.npz` for `<dir>/<case>.nii.gz` (or any other supported ending)."""
    seg_path = Path(seg_path)
    ending = file_ending(seg_path)
    name = seg_path.name[: -len(ending)] if ending else seg_path.name
    return seg_path.with_name(name + ".npz")


def dicom_seg_path(seg_path: Path) -> Path:
    """`<dir>/<case>.dcm` beside `<dir>/<case>.nii.gz`."""
    return npz_path_for(seg_path).with_suffix(".dcm")


def average_probabilities(members: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of (K, *S) probability arrays, summed in float32 in the given order."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    total = np.zeros(members[0].shape, dtype=np.float32)
    for probs in members:
        if probs.shape != total.shape:
            raise UserError("ensemble", f"member shapes differ: {probs.shape} vs {total.shape}")
        total += probs
    return total / np.float32(len(members))


def label_map_of(probs: np.ndarray, plans: Plans) -> np.ndarray:
    """The label map (*S) of a dataset's probabilities (K, *S): argmax, or its regions painted."""
    return seg_from_probabilities(probs, plans.regions)


def seg_from_probabilities(probs: np.ndarray, regions: Sequence[Region] = ()) -> np.ndarray:
    """Argmax over the class axis of (K, *S) → label map (*S), uint8 when the labels fit; for a
    region dataset, regions above 0.5 painted in `regions_class_order` (`paint_regions`)."""
    if regions:
        return paint_regions(probs, regions)
    dtype = np.uint8 if probs.shape[0] <= 256 else np.int16
    return np.argmax(probs, axis=0).astype(dtype)
