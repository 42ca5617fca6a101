"""Convert a model trained by nnU-Net v2 into an nnlite WORK (`python -m nnlite.convert nnunet-model`).

MODEL_DIR is nnU-Net's `<Trainer>__<Plans>__<configuration>/`: `plans.json`, `dataset.json` and
`fold_<k>/checkpoint_final.pth` (and/or `checkpoint_best.pth`). The result:

    WORK/plans.json     every configuration of nnU-Net's plans, translated (planning/nnunet_plans.py),
                        names kept; the converted one mirrors at test time the axes it was trained with
    WORK/dataset.json   a copy
    WORK/results/<configuration>/fold_<k>/checkpoint_final.pt (and checkpoint_best.pt)
                        the weights renamed onto build_unet's modules (network/nnunet_weights.py)
    WORK/results/<configuration>/postprocessing.json
                        nnU-Net's post-processing decision (its postprocessing.json in MODEL_DIR or
                        MODEL_DIR/crossval_results_folds_*/) as nnlite's steps, for `predict --postprocess`

Every setting the training stored is kept or refused in one line, never replaced: the mirroring
axes; the reader (plans' image_reader_writer: NibabelIOWithReorient becomes plans.extra
"orientation": "RAS", which predict honours; readers that give voxels as stored need nothing; any
other reader is refused); the resampling functions (planning/nnunet_plans.py); the post-processing
functions (keep-largest-component only).

Converting several model folders into one WORK (3d_lowres, then 3d_cascade_fullres) gives a
working cascade: the plans are the same, each conversion adds its configuration's folds.

nnU-Net's checkpoints are pickles. They are read with `torch.load(weights_only=True)` and an
allow-list of exactly the non-tensor objects nnU-Net writes into them (numpy scalars in its
training log, recorded from a checkpoint saved by nnU-Net's own trainer, see
tests/data/nnunet_checkpoint.json); anything else refuses to load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnlite.common.layout import (ALL_FOLD, DATASET_FILE, FOLD_PREFIX, PLANS_FILE, POSTPROCESSING_FILE,
                                  fold_folder, fold_name, plans_file, postprocessing_file, work_dataset_file)
from nnlite.common.errors import UserError
from nnlite.common.files import ensure_writable_dir, read_json_checked, write_atomic, write_json_atomic
from nnlite.common.schema import to_jsonable
from nnlite.data.orientation import PLANS_KEY as ORIENTATION_KEY
from nnlite.network import build_network
from nnlite.network.nnunet_weights import nnunet_to_nnlite
from nnlite.planning.nnunet_plans import (architecture_of, plans_from_nnunet, read_nnunet_plans, reader_settings,
                                          resolve_configuration)
from nnlite.plans import Plans, load_plans, save_plans
from nnlite.training.checkpoints import BEST, FINAL, save_checkpoint

log = logging.getLogger(__name__)

NNUNET_CHECKPOINTS = {"checkpoint_final.pth": FINAL, "checkpoint_best.pth": BEST}
NNUNET_REQUIRED_KEYS = ("network_weights", "init_args")
NNUNET_POSTPROCESSING = POSTPROCESSING_FILE  # nnU-Net names it as nnlite does, beside its postprocessing.pkl
NNUNET_CROSSVAL_PREFIX = "crossval_results_folds_"  # + the folds joined by "_"
# nnU-Net's one post-processing function: keep the largest component of the union of labels_or_regions
LARGEST_COMPONENT_FN = "remove_all_but_largest_component_from_segmentation"


def nnunet_checkpoint_globals() -> list[Any]:
    """The non-tensor globals of nnU-Net's checkpoints: numpy float64 scalars that its logger stores
    (mean_fg_dice, train_losses, …) and the float32 `_best_ema` — the pickle's scalar constructor,
    numpy.dtype and the two dtype classes. Nothing else is allowed."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32)]
    return [scalar, np.dtype, *dtypes]


def load_nnunet_checkpoint(path: Path) -> dict[str, Any]:
    """An nnU-Net `.pth` loaded with weights_only=True and the allow-list above, or a UserError."""
    try:
        with torch.serialization.safe_globals(nnunet_checkpoint_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  torch raises several types for refused or torn pickles
        text = str(error).strip().splitlines()
        detail = next((line for line in text if "global" in line.lower() or "got <class" in line),
                      text[0] if text else type(error).__name__)
        raise UserError(path, f"not loaded: it holds objects an nnU-Net checkpoint does not ({detail.strip()}); "
                        "nnlite never unpickles arbitrary objects") from None
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in NNUNET_REQUIRED_KEYS):
        raise UserError(path, f"not an nnU-Net v2 checkpoint (needs keys {list(NNUNET_REQUIRED_KEYS)})")
    return checkpoint


@dataclass
class ConversionReport:
    configuration: str
    trainer: str
    folds: list[str] = field(default_factory=list)
    checkpoints: int = 0

    def summary(self, work: Path) -> str:
        return (f"converted {self.trainer} {self.configuration!r} folds {', '.join(self.folds)} "
                f"({self.checkpoints} checkpoints) into {work}")


def find_fold_checkpoints(model_dir: Path) -> dict[str, dict[str, Path]]:
    """fold name ('0', 'all') → {nnU-Net checkpoint file name: path}, for every fold that has one."""
    folds: dict[str, dict[str, Path]] = {}
    for folder in sorted(model_dir.glob(f"{FOLD_PREFIX}*")):  # nnU-Net names its folds as nnlite does
        fold = fold_name(folder)
        files = {name: folder / name for name in NNUNET_CHECKPOINTS if (folder / name).is_file()}
        if fold is not None and (fold.isdigit() or fold == ALL_FOLD) and folder.is_dir() and files:
            folds[fold] = files
    if not folds:
        raise UserError(model_dir, "holds no fold_<k>/checkpoint_final.pth or checkpoint_best.pth")
    return folds


def configuration_name(model_dir: Path, checkpoint: dict[str, Any]) -> str:
    """The configuration the model was trained as: the checkpoint's init_args, else the folder name."""
    name = (checkpoint.get("init_args") or {}).get("configuration")
    if isinstance(name, str) and name:
        return name
    parts = model_dir.resolve().name.split("__")
    if len(parts) != 3:
        raise UserError(model_dir, "cannot tell the configuration (expected <Trainer>__<Plans>__<configuration>)")
    return parts[2]


def convert_nnunet_model(model_dir: str | Path, work: str | Path, overwrite: bool = False) -> ConversionReport:
    """MODEL_DIR (nnU-Net's trained model folder) → WORK (see the module docstring)."""
    model_dir, work = Path(model_dir), Path(work)
    for name in (PLANS_FILE, DATASET_FILE):
        if not (model_dir / name).is_file():
            raise UserError(model_dir, f"is not an nnU-Net trained model folder ({name} is missing)")
    nnunet_plans = read_nnunet_plans(model_dir / PLANS_FILE)
    dataset = read_json_checked(model_dir / DATASET_FILE)
    folds = find_fold_checkpoints(model_dir)
    first = load_nnunet_checkpoint(next(iter(next(iter(folds.values())).values())))
    config_name = configuration_name(model_dir, first)
    if config_name not in nnunet_plans["configurations"]:
        raise UserError(model_dir / PLANS_FILE, f"has no configuration {config_name!r} (the checkpoint's)")
    plans = _with_reader(plans_from_nnunet(nnunet_plans, dataset), nnunet_plans, dataset)
    plans = _with_mirror_axes(plans, config_name, first.get("inference_allowed_mirroring_axes"))
    plans = _merged_with_existing(work, plans, config_name)
    postprocessing = _nnunet_postprocessing(model_dir, folds, plans)
    _refuse_existing(work, config_name, folds, overwrite)
    report = ConversionReport(config_name, str(first.get("trainer_name", "?")))
    class_name = _resolved_class(nnunet_plans, config_name)
    converted = {}
    for fold, files in folds.items():
        for nnunet_name, path in files.items():
            checkpoint = load_nnunet_checkpoint(path)
            converted[(fold, NNUNET_CHECKPOINTS[nnunet_name])] = _nnlite_checkpoint(
                checkpoint, plans, config_name, class_name, path)
        report.folds.append(fold)
    ensure_writable_dir(work, "work folder")
    dataset_bytes = (model_dir / DATASET_FILE).read_bytes()
    write_atomic(work_dataset_file(work), lambda tmp: tmp.write_bytes(dataset_bytes))
    save_plans(plans, plans_file(work))
    if postprocessing is not None:
        write_json_atomic(postprocessing_file(work, config_name), {**postprocessing, "configuration": config_name})
    for (fold, target), checkpoint in converted.items():
        save_checkpoint(fold_folder(work, config_name, fold) / target, checkpoint)
        report.checkpoints += 1
    return report


def _resolved_class(nnunet_plans: dict, config_name: str) -> str:
    """The configuration's network class, read as plans_from_nnunet reads it (older plans: flat keys)."""
    config = resolve_configuration(nnunet_plans["configurations"], config_name)
    return str(architecture_of(config, f"plans.json: {config_name}").get("network_class_name", "?"))


def _with_mirror_axes(plans: Plans, config_name: str, axes: Any) -> Plans:
    """Record the mirroring axes the model was trained with. None (NoMirroring / NoDA trainers, or
    no key) is nnU-Net's "do not mirror": its predictor mirrors only when the axes are not None."""
    axes = () if axes is None else tuple(int(a) for a in axes)
    config = replace(plans.configurations[config_name], inference_mirror_axes=axes)
    return replace(plans, configurations={**plans.configurations, config_name: config})


def _with_reader(plans: Plans, nnunet_plans: dict, dataset: dict) -> Plans:
    """Record how the model's reader gave it its cases (see planning/nnunet_plans.reader_settings)."""
    settings = reader_settings(nnunet_plans, dataset)
    if not settings:
        return plans
    reason = (f"cases are reoriented to {settings[ORIENTATION_KEY]} on reading and label maps back on "
              "writing, as nnU-Net's reader NibabelIOWithReorient that the model was trained with")
    return replace(plans, extra={**plans.extra, **settings}, reasons=(*plans.reasons, reason))


def _merged_with_existing(work: Path, plans: Plans, config_name: str) -> Plans:
    """Keep what an earlier conversion into WORK recorded for its own configurations (their mirror
    axes); a WORK of another dataset (other labels or channels) is refused."""
    path = plans_file(work)
    if not path.is_file():
        return plans
    old = load_plans(path)
    if old.labels != plans.labels or old.channel_names != plans.channel_names:
        raise UserError(work, "holds plans of another dataset (other labels or channels)",
                        hint="convert into a new WORK folder")
    if old.extra.get(ORIENTATION_KEY) != plans.extra.get(ORIENTATION_KEY):
        raise UserError(work, "holds a model that reads its cases in another orientation (another "
                        "image reader)", hint="convert into a new WORK folder")
    configs = dict(plans.configurations)
    for name, config in old.configurations.items():
        if name != config_name and name in configs and config.inference_mirror_axes is not None:
            configs[name] = replace(configs[name], inference_mirror_axes=config.inference_mirror_axes)
    return replace(plans, configurations=configs)


def find_nnunet_postprocessing(model_dir: Path, folds: dict[str, dict[str, Path]]) -> Path | None:
    """nnU-Net's postprocessing.json of the model: in MODEL_DIR, else in its one
    crossval_results_folds_*/ (several: the one of the converted folds), else None."""
    if (model_dir / NNUNET_POSTPROCESSING).is_file():
        return model_dir / NNUNET_POSTPROCESSING
    found = sorted(model_dir.glob(f"{NNUNET_CROSSVAL_PREFIX}*/{NNUNET_POSTPROCESSING}"))
    if len(found) <= 1:
        return found[0] if found else None
    numbered = "_".join(sorted((f for f in folds if f.isdigit()), key=int))
    wanted = model_dir / f"{NNUNET_CROSSVAL_PREFIX}{numbered}" / NNUNET_POSTPROCESSING
    if wanted in found:
        return wanted
    raise UserError(model_dir, f"holds several post-processing decisions ({', '.join(p.parent.name for p in found)}) "
                    f"and none of folds {numbered.replace('_', ', ')}", hint="remove the ones that do not apply")


def _nnunet_postprocessing(model_dir: Path, folds: dict[str, dict[str, Path]], plans: Plans) -> dict | None:
    """nnU-Net's post-processing decision → nnlite's ({"steps": [[label, …], …]} as
    evaluation/postprocessing.py writes it), or None when the model folder has none."""
    path = find_nnunet_postprocessing(model_dir, folds)
    if path is None:
        return None
    decision = read_json_checked(path)
    functions = decision.get("postprocessing_fns") if isinstance(decision, dict) else None
    kwargs = decision.get("postprocessing_kwargs") if isinstance(decision, dict) else None
    if not isinstance(functions, list) or not isinstance(kwargs, list) or len(functions) != len(kwargs):
        raise UserError(path, "not nnU-Net's post-processing decision (needs lists postprocessing_fns and "
                        "postprocessing_kwargs of one length)")
    steps = [_largest_component_step(path, str(fn), kw, plans) for fn, kw in zip(functions, kwargs)]
    return {"steps": steps, "converted_from": str(path)}


def _largest_component_step(path: Path, function: str, kwargs: Any, plans: Plans) -> list[int]:
    """One of nnU-Net's post-processing calls → the labels whose union keeps its largest component."""
    if function.rsplit(".", 1)[-1] != LARGEST_COMPONENT_FN:
        raise UserError(path, f"post-processing function {function!r} cannot be converted (nnlite applies "
                        f"{LARGEST_COMPONENT_FN} only)")
    if not isinstance(kwargs, dict) or "labels_or_regions" not in kwargs \
            or set(kwargs) - {"labels_or_regions", "background_label"} or kwargs.get("background_label", 0) != 0:
        raise UserError(path, f"{LARGEST_COMPONENT_FN} with kwargs {kwargs} cannot be converted (nnlite "
                        "takes labels_or_regions, removed voxels become background 0)")
    # a label, a region (a list of labels) or a list of both: nnU-Net keeps the largest component
    # of the union of their masks, so the step is the flat list of their labels
    labels = [int(v) for v in np.ravel(np.asarray(_flat(kwargs["labels_or_regions"]), dtype=np.int64))]
    unknown = sorted(set(labels) - set(plans.foreground_labels))
    if not labels or unknown:
        raise UserError(path, f"{LARGEST_COMPONENT_FN} of labels {labels}: "
                        f"{unknown or 'none'} not among the dataset's foreground labels {plans.foreground_labels}")
    return list(dict.fromkeys(labels))


def _flat(value: Any) -> list:
    return [x for item in value for x in _flat(item)] if isinstance(value, (list, tuple)) else [value]


def _refuse_existing(work: Path, config_name: str, folds: dict[str, dict[str, Path]], overwrite: bool) -> None:
    for fold in folds:
        folder = fold_folder(work, config_name, fold)
        if not overwrite and folder.is_dir() and any(folder.glob("checkpoint_*.pt")):
            raise UserError(folder, "already holds a trained model", hint="add --overwrite to replace it")


def _nnlite_checkpoint(checkpoint: dict[str, Any], plans: Plans, config_name: str, class_name: str,
                       path: Path) -> dict[str, Any]:
    """nnU-Net checkpoint → nnlite checkpoint (weights renamed and loaded once, strictly, to prove they fit)."""
    try:
        state = nnunet_to_nnlite(checkpoint["network_weights"], class_name)
    except UserError as error:
        raise UserError(path, error.problem) from None
    network = build_network(plans, config_name)
    mine = network.state_dict()
    missing = sorted(set(mine) - set(state))
    if missing:
        raise UserError(path, f"has no weights for nnlite's {missing[0]!r} ({len(missing)} missing)")
    for key, value in state.items():
        if key not in mine or tuple(value.shape) != tuple(mine[key].shape):
            expected = tuple(mine[key].shape) if key in mine else "no such module"
            raise UserError(path, f"weight {key!r} has shape {tuple(value.shape)}, nnlite's plan needs {expected}")
    network.load_state_dict(state)
    return {"network": network.state_dict(), "optimizer": {}, "epoch": int(checkpoint.get("current_epoch", 0)),
            "metrics": [], "rng": {}, "plan": to_jsonable(plans),
            "config": {"converted_from": str(path), "trainer_name": str(checkpoint.get("trainer_name", "")),
                       "configuration": config_name}}
