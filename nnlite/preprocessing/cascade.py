"""The cascade: 3d_lowres predicts, 3d_cascade_fullres refines with that prediction as extra input.

The full-resolution stage sees its image channels plus one one-hot channel per foreground label of
the low-resolution prediction (Isensee et al., Nature Methods 2021). This module converts such a
prediction into the stage's input, the same way for training and for prediction:
`seg_to_stage_input` brings a label map in the original geometry into the stage's preprocessed
space, `with_previous_stage` appends its one-hot channels to the image channels.

Where the pieces live, in stage order: this conversion (preprocessing); reading, warping and
augmenting the stored maps per patch (`loading/previous_stage.py`); preparing every training
case's map from the lowres cross-validation (`training/lowres_predictions.py`); running the
lowres stage first at prediction time (`inference/predictor.py`). At prediction time the lowres
stage's label map goes through the same `seg_to_stage_input`, so the cross-validation predictions
of the cascade are reproduced exactly by `predict`. (The reference instead resamples lowres logits
during training but a label map at inference.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nnlite.common.layout import preprocessed_folder
from nnlite.common.errors import UserError
from nnlite.plans import Plans
from nnlite.preprocessing.pipeline import CaseProperties, seg_dtype, transposed_spacing
from nnlite.preprocessing.resampling import resample_seg

NEXT_STAGE_SUFFIX = "_predicted_next_stage"  # WORK/preprocessed/<lowres><this>/
PREV_FILE = "{case}_prev.npy"


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
    return preprocessed_folder(work, f"{lowres}{NEXT_STAGE_SUFFIX}")


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
    return out.astype(seg_dtype(out))


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


def load_previous_stage(folder: Path, case: str) -> np.ndarray:
    """The stored (1, Z, Y, X) int8 previous-stage label map of a case (memory-mapped)."""
    path = Path(folder) / PREV_FILE.format(case=case)
    if not path.is_file():
        raise UserError(path, "not found: the cascade's previous stage is not prepared "
                        "(train it with `python -m nnlite.train`, which prepares it)")
    return np.load(path, mmap_mode="r", allow_pickle=False)


def stage_input(work: Path, plans: Plans, config_name: str, case: str,
                data: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """A preprocessed training case's network input: data (C, *S) as is, or for a cascade stage
    with its stored previous-stage channels appended (C + L, *S)."""
    if not previous_stage_name(plans, config_name):
        return data
    prev = load_previous_stage(previous_stage_dir(work, plans, config_name), case)
    return with_previous_stage(data, np.asarray(prev), stage_labels(plans))
