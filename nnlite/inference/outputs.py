"""A predicted case's files: network-space probabilities back to the original geometry, written.

Path back (reference: export_prediction.py): resample the probabilities to the cropped original
shape (preprocessing's inverse, order 1 with the separate-z rule), argmax, put the label map back
into the uncropped volume (background outside the crop), transpose back to the raw axis order and
write `<case>.nii.gz` (or the input's format) with the input's affine (uint8 when the labels fit).
Optional `<case>.npz` (key "probabilities", float16 (K, Z, Y, X) in the original geometry, no
pickle): outside the crop the background probability is 1. A region dataset has one sigmoid
probability per region instead (0 outside the crop) and its label map is painted from them in
`regions_class_order` (`paint_regions`) rather than taken by argmax.

Memory: (K, *original) is never held. Each class channel is resampled on its own
(`CroppedProbabilities.channel`; resampling is per channel anyway, so this is exact) and folded
into a running maximum and its index (`RunningLabelMap`: a later class takes a voxel only where it
is strictly greater, so ties go to the lower class, as argmax), or painted as its region; when the
probabilities are saved, the same channel (float16, uncropped) goes to a `ChannelSink`, which
streams it into the `.npz` (saved_probabilities.py) — or collects the whole array for the Python
API, which returns it.

An ensemble (several configurations, `predict --best`) averages its members' float16
probabilities in the original geometry, one class at a time (`members_in_original`). `write_case_outputs` is the one
writer of a predicted case's files — label map (after the post-processing steps), probabilities,
DICOM-SEG — for `predict`, the final validation, the cross-validation ensembles and post-processing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from nnlite.common.errors import UserError
from nnlite.common.files import TMP_SUFFIX
from nnlite.data.image_io import file_ending, write_image, write_seg
from nnlite.data.regions import paint_region, paint_regions, painted_dtype
from nnlite.inference.largest_component import apply_postprocessing
from nnlite.inference.saved_probabilities import ProbabilityFile, write_probabilities
from nnlite.common.labels import Region
from nnlite.plans import Plans
from nnlite.preprocessing.pipeline import CaseProperties, resample_to_original, restore_original_geometry

log = logging.getLogger(__name__)


class CroppedProbabilities:
    """A configuration's probabilities (K, *shape_after_crop) float32 in the preprocessed axis
    order, kept in network space and resampled one class channel at a time when read."""

    def __init__(self, probs: np.ndarray | torch.Tensor, props: CaseProperties, plans: Plans,
                 config_name: str) -> None:
        if isinstance(probs, torch.Tensor):
            probs = probs.detach().cpu().numpy()
        self.network = probs.astype(np.float32, copy=False)  # (K, *network space)
        self.props, self.plans, self.config_name = props, plans, config_name

    def __len__(self) -> int:
        return self.network.shape[0]

    def channel(self, k: int) -> np.ndarray:
        """Class k resampled → (*shape_after_crop) float32 (read-only: may share the input)."""
        return resample_to_original(self.network[k : k + 1], self.props, self.plans, self.config_name)[0]


Probabilities = np.ndarray | CroppedProbabilities  # (K, *shape_after_crop): whole, or one channel at a time


def probabilities_in_crop(probs: np.ndarray | torch.Tensor, props: CaseProperties, plans: Plans,
                          config_name: str) -> CroppedProbabilities:
    """(K, *network space) → (K, *shape_after_crop) float32 in the preprocessed axis order, each
    class channel resampled when it is read."""
    return CroppedProbabilities(probs, props, plans, config_name)


def class_channel(probs: Probabilities, k: int) -> np.ndarray:
    """Channel k (*S) of whole probabilities or of `CroppedProbabilities`."""
    return probs.channel(k) if isinstance(probs, CroppedProbabilities) else probs[k]


class RunningLabelMap:
    """The label map (*S) of probabilities (K, *S) fed one class channel at a time (`add`), equal
    to `seg_from_probabilities` of their stack: a running maximum (float32) and its index, a later
    class winning only where strictly greater (ties → the lower class, as argmax); for regions,
    each channel painted as its region in order."""

    def __init__(self, classes: int, regions: Sequence[Region] = ()) -> None:
        self.classes, self.regions, self.added = classes, tuple(regions), 0
        self.dtype = painted_dtype(regions) if regions else np.uint8 if classes <= 256 else np.int16
        self.seg: np.ndarray | None = None
        self.best: np.ndarray | None = None

    def add(self, channel: np.ndarray) -> None:
        k, self.added = self.added, self.added + 1
        if self.seg is None:
            self.seg = np.zeros(channel.shape, dtype=self.dtype)
        if self.regions:
            paint_region(self.seg, channel, self.regions[k])
        elif self.best is None:
            self.best = np.array(channel, dtype=np.float32)
        else:
            better = channel > self.best
            self.seg[better] = k
            np.copyto(self.best, channel, where=better)

    def result(self) -> np.ndarray:
        expected = len(self.regions) or self.classes
        if self.added != expected or self.seg is None:
            raise ValueError(f"{self.added} probability channels for {expected} "
                             f"{'regions' if self.regions else 'classes'}")
        return self.seg


def seg_in_original(cropped_probs: Probabilities, props: CaseProperties, plans: Plans) -> np.ndarray:
    """Argmax (regions: painted) of (K, *cropped) → uint8/int16 label map (*raw shape) in the raw
    axis order."""
    return members_in_original([(cropped_probs, props)], plans)


def _outside_crop(plans: Plans, k: int) -> float:
    """Probability of class k outside the crop: background 1, others 0 (regions: every region 0)."""
    return 1.0 if k == 0 and not plans.sigmoid_outputs else 0.0


Cropped = tuple[Probabilities, CaseProperties]  # probabilities (K, *shape_after_crop) float32, properties
ChannelObserver = Callable[[int, np.ndarray, list[np.ndarray]], None]  # (k, mean (*S), members' (*S))
ChannelSink = Callable[[np.ndarray], None]  # takes the saved probabilities (*raw shape) float16, class by class


def members_in_original(members: Sequence[Cropped], plans: Plans, keep: ChannelSink | None = None,
                        observe: ChannelObserver | None = None) -> np.ndarray:
    """Label map (*raw shape) of one configuration's or an ensemble's cropped probabilities; one
    class at a time. keep: given each class's probabilities (*raw shape) float16 in class order
    (saving them). observe(k, channel, members' channels): sees each class as it goes by
    (inference/uncertainty)."""
    classes = len(members[0][0])
    for cropped, _ in members[1:]:
        if len(cropped) != classes:
            raise UserError("ensemble", f"member shapes differ: {len(cropped)} vs {classes} classes")
    labels = RunningLabelMap(classes, plans.regions)
    for k in range(classes):
        channel, kept = _class_of_members(members, plans, k, keep is not None, observe)
        labels.add(channel)
        del channel  # freed before the next class is resampled: one class channel in memory at a time
        if keep is not None:
            keep(kept)
        del kept
    seg = labels.result()
    return restore_original_geometry(seg, members[0][1], plans, 0) if len(members) == 1 else seg


def _class_of_members(members: Sequence[Cropped], plans: Plans, k: int, save: bool,
                      observe: ChannelObserver | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Class k: (the float32 channel its label map is taken from, its float16 (*raw shape) copy when
    `save`). One configuration: its channel in the crop (the label map is uncropped afterwards). An
    ensemble: the mean of its members' float16 channels in the original geometry (float32 sum)."""
    def uncropped(channel: np.ndarray, props: CaseProperties) -> np.ndarray:
        return restore_original_geometry(channel.astype(np.float16), props, plans, _outside_crop(plans, k))

    if len(members) == 1:
        cropped, props = members[0]
        channel = class_channel(cropped, k)
        if observe is not None:
            observe(k, channel, [channel])
        return channel, uncropped(channel, props) if save else None
    channels = [uncropped(class_channel(cropped, k), props) for cropped, props in members]
    mean = average_probabilities(channels)
    if observe is not None:
        observe(k, mean, channels)
    return mean, mean.astype(np.float16) if save else None


def write_case_outputs(out_path: str | Path, seg: np.ndarray, affine: np.ndarray, *,
                       probabilities: np.ndarray | ProbabilityFile | None = None,
                       postprocessing: Sequence[Sequence[int]] = (),
                       dicom: tuple[Path, dict] | None = None,
                       images: Sequence[tuple[Path, np.ndarray]] = ()) -> Path:
    """Write a case's label map (*raw shape) as `out_path` after the keep-largest-component steps
    (never applied to the probabilities), `<case>.npz` beside it when `probabilities` are given
    (an array, or a `ProbabilityFile` whose channels were streamed: finished here, with the others),
    and `<case>.dcm` when `dicom` = (the DICOM series it segments, the dataset's labels);
    `images`: more (path, (*raw shape) array) files (the uncertainty maps), written alike.

    All files are written into `<dir>/.<name>.tmp/` first and moved beside each other only when
    every one succeeded: a case that fails (a DICOM-SEG that cannot be made) leaves no file."""
    out_path = Path(out_path)
    staging = out_path.with_name(f".{out_path.name}{TMP_SUFFIX}")
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's leftover
    staging.mkdir(parents=True)
    try:
        staged = [write_seg(staging / out_path.name, apply_postprocessing(seg, postprocessing), affine)]
        if isinstance(probabilities, ProbabilityFile):
            staged.append(probabilities.finish(staging / npz_path_for(staged[0]).name))
        elif probabilities is not None:
            staged.append(write_probabilities(npz_path_for(staged[0]), probabilities))
        if dicom is not None:
            from nnlite.inference.dicom_seg import write_dicom_seg  # highdicom: only when asked for

            staged.append(write_dicom_seg(staged[0], dicom[0], dicom[1], dicom_seg_path(staged[0])))
        for i, (path, array) in enumerate(images):  # own folder each: a TIFF's .json sidecar goes along
            write_image(staging / str(i) / path.name, array, affine)
        for path in staged:
            os.replace(path, out_path.with_name(path.name))
        for i, (path, _) in enumerate(images):
            path.parent.mkdir(parents=True, exist_ok=True)
            for written in (staging / str(i)).iterdir():
                os.replace(written, path.with_name(written.name))
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
    with probability_file(out_path, len(cropped), save_probabilities) as saved:
        seg = members_in_original([(cropped, props)], plans, None if saved is None else saved.add)
        return write_case_outputs(out_path, seg, output_affine(props, affine), probabilities=saved,
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


def probability_file(seg_path: str | Path, classes: int, save: bool, temperature: float = 1.0,
                     sigmoid: bool = False) -> contextlib.AbstractContextManager[ProbabilityFile | None]:
    """The `<case>.npz` a case's probabilities stream into when `save` (a context giving None
    otherwise); `write_case_outputs` finishes it beside the label map."""
    if not save:
        return contextlib.nullcontext()
    return ProbabilityFile(npz_path_for(seg_path), classes, temperature, sigmoid)


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


def seg_from_probabilities(probs: np.ndarray, regions: Sequence[Region] = ()) -> np.ndarray:
    """Argmax over the class axis of (K, *S) → label map (*S), uint8 when the labels fit; for a
    region dataset, regions above 0.5 painted in `regions_class_order` (`paint_regions`)."""
    if regions:
        return paint_regions(probs, regions)
    dtype = np.uint8 if probs.shape[0] <= 256 else np.int16
    return np.argmax(probs, axis=0).astype(dtype)
