"""nnlite from Python: plan, preprocess, train and predict without a shell (docs/python.md).

    import nnlite
    nnlite.plan(RAW, WORK, configs=["3d_fullres"])
    nnlite.preprocess(WORK)
    result = nnlite.train(WORK, fold=0, settings={"training": {"epochs": 5}})
    predictor = nnlite.Predictor(WORK, config="3d_fullres", folds=(0,))
    prediction = predictor.predict(volume, spacing=(3.0, 0.7, 0.7))   # or a file's path
    prediction.labels                                                  # (Z, Y, X), what `predict` writes

Each function calls the stage functions its command calls, with the same arguments and the same
defaults, so a result here is the command's result: `plan` → `planning.work_folder`,
`preprocess` → `preprocessing.runner`, `train` → `training.trainer.train_folds` (settings become
the command's `--set KEY=VALUE`), `Predictor` → `inference.predictor`: the same models, per-case
predictor (`CasePredictor`), preprocessing of the raw case and way back to its geometry
(`prediction_in_original`) as `predict`, which only adds the writing. Bad input raises the
commands' `UserError` (never `SystemExit`); progress goes to `logging` (and tqdm's bars on stderr).

This module imports neither torch nor the networks when it is imported: `plan` and `preprocess` run
without torch, as their commands do; `train` and `Predictor` import it on first use.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from nnlite.common.errors import UserError
from nnlite.common.schema import flat_settings

if TYPE_CHECKING:
    from nnlite.data.image_io import Case
    from nnlite.inference.options import PredictReport
    from nnlite.plans import Plans

log = logging.getLogger(__name__)

Image = str | Path | Sequence[str | Path] | np.ndarray  # a channel file, the case's channel files, or voxels


# --- plan, preprocess, train ----------------------------------------------------------------------

def plan(raw: str | Path | None, work: str | Path, *, configs: Sequence[str] | None = None,
         preset: str = "default", gpu_memory_gb: float | str | None = None, memory_model: str = "bytes",
         workers: int | None = None, folds: int | None = None, overwrite: bool = False,
         network: str | None = None, fingerprint: str | Path | None = None,
         nnunet_plans: str | Path | None = None, plans_from: str | Path | None = None) -> Plans:
    """`python -m nnlite.plan RAW WORK …`: fingerprint RAW, plan, write WORK's dataset.json,
    fingerprint.json, splits.json and plans.json; returns the plans.

    fingerprint: plan from this fingerprint.json instead (raw None); nnunet_plans: take nnU-Net's
    nnUNetPlans.json exactly; plans_from: a planned WORK's plan (to fine-tune its model); network:
    "MODULE:FUNCTION" builds every network. The others are the command's flags of the same names.
    """
    from nnlite.common.cli import default_workers
    from nnlite.planning.work_folder import SPLITS_SOURCE_KEY, summarize

    if (raw is None) == (fingerprint is None):
        raise UserError("plan", "give RAW, or raw=None with fingerprint=FINGERPRINT.json")
    workers = max(1, workers or default_workers())
    configs = None if configs is None else [configs] if isinstance(configs, str) else list(configs)
    common = dict(folds=folds, overwrite=overwrite)
    if nnunet_plans is not None or plans_from is not None:
        plans = _copied_plan(raw, Path(work), configs, workers, common, network=network, fingerprint=fingerprint,
                             nnunet_plans=nnunet_plans, plans_from=plans_from, preset=preset,
                             gpu_memory_gb=gpu_memory_gb, memory_model=memory_model)
    else:
        plans = _planned(raw, Path(work), configs, workers, common, preset=preset, gpu_memory_gb=gpu_memory_gb,
                         memory_model=memory_model, network=network, fingerprint=fingerprint)
    if SPLITS_SOURCE_KEY in plans.extra:
        log.info("splits: using nnU-Net's %s as splits.json", plans.extra[SPLITS_SOURCE_KEY])
    for line in summarize(plans):
        log.info("%s", line)
    return plans


def _planned(raw, work: Path, configs, workers: int, common: dict, *, preset, gpu_memory_gb, memory_model,
             network, fingerprint) -> Plans:
    """The planner's plan of RAW (or of a fingerprint), as the command makes it."""
    from nnlite.plan import network_check
    from nnlite.planning.memory_budget import resolve_gpu_memory
    from nnlite.planning.work_folder import plan_dataset, plan_from_fingerprint

    gb = None if gpu_memory_gb is None else resolve_gpu_memory(gpu_memory_gb)
    options = dict(common, preset=preset, architecture=network, check_network=network_check(network))
    if fingerprint is not None:
        return plan_from_fingerprint(Path(fingerprint), work, gb, configs, memory_model, **options)
    return plan_dataset(Path(raw), work, gb, configs, workers, memory_model, **options)


def _copied_plan(raw, work: Path, configs, workers: int, common: dict, *, network, fingerprint, nnunet_plans,
                 plans_from, **planner_options) -> Plans:
    """nnU-Net's plan (nnunet_plans) or another WORK's (plans_from) for RAW: nothing is planned."""
    from nnlite.planning.work_folder import plan_from_nnunet_plans, plan_from_work

    given = "nnunet_plans" if plans_from is None else "plans_from"
    if raw is None or network is not None or (nnunet_plans is not None and plans_from is not None):
        raise UserError(given, "needs RAW, and neither a fingerprint, a network nor the other plan to copy")
    if plans_from is not None and planner_options != dict(preset="default", gpu_memory_gb=None, memory_model="bytes"):
        raise UserError(given, "copies SOURCE_WORK's plan: preset, gpu_memory_gb and memory_model do not apply")
    if plans_from is not None:
        return plan_from_work(Path(raw), work, Path(plans_from), configs, workers, **common)
    return plan_from_nnunet_plans(Path(raw), work, Path(nnunet_plans), configs, workers, **common)


def add_config(work: str | Path, name: str, parent: str, settings: Mapping[str, Any] | None = None) -> Plans:
    """`python -m nnlite.plan WORK --add-config NAME --from PARENT --set KEY=VALUE …`: WORK/plans.json
    gains configuration `name`, which inherits `parent` and changes the fields in `settings`
    (nested or dotted, e.g. {"network.features_per_stage": [8, 16, 32, 64, 80]}); returns the plans."""
    from nnlite.plan import check_added_network
    from nnlite.planning.inheritance import add_configuration

    overrides = [f"{key}={json.dumps(value, default=str)}" for key, value in flat_settings(settings or {}).items()]
    try:
        return add_configuration(Path(work), name, parent, overrides, check=check_added_network)
    except UserError as error:
        raise as_api_error(error) from None


def preprocess(work: str | Path, *, configs: Sequence[str] | None = None, workers: int | None = None,
               overwrite: bool = False, raw: str | Path | None = None) -> int:
    """`python -m nnlite.preprocess WORK …`: every training case for the planned configurations
    (`configs`: only these) into WORK/preprocessed/; returns the number of cases written. A case
    that fails is a UserError naming it, raised once the others are written."""
    from nnlite.common.cli import default_workers
    from nnlite.preprocessing.runner import run_preprocessing

    configs = None if configs is None else [configs] if isinstance(configs, str) else list(configs)
    return run_preprocessing(work, configs, max(1, workers or default_workers()), overwrite, raw)


@dataclass(frozen=True)
class FoldResult:
    """A trained fold: its folder (checkpoints, log.txt, metrics.jsonl, validation/), one record per
    epoch as in metrics.jsonl, and validation/summary.json (None when validation is off)."""

    folder: Path
    epochs: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @property
    def dice(self) -> float | None:
        """The final validation's mean foreground Dice (None without a validation)."""
        return None if self.summary is None else self.summary["foreground_mean"]["dice"]


def train(work: str | Path, fold: int | str = 0, settings: Mapping[str, Any] | None = None, *,
          config: str | None = None, train_config: str | Path = "default", resume: bool = False,
          overwrite: bool = False, pretrained: str | Path | None = None) -> FoldResult:
    """`python -m nnlite.train WORK --fold F …`: train one fold (a number of splits.json, or "all")
    and run its final validation; returns the fold's results.

    settings: what `--set` sets, nested ({"training": {"epochs": 5}}) or dotted
    ({"training.epochs": 5}), over the file `train_config` (a name in nnlite/configs/ or a YAML
    path); config: the plans' configuration (default the settings', 3d_fullres); pretrained: a
    checkpoint_*.pt to start from (`--pretrained`, docs/finetuning.md).
    """
    from nnlite.training.config import load_train_config
    from nnlite.training.progress import read_metrics
    from nnlite.training.trainer import train_folds

    given = {**flat_settings(settings or {}), **({} if config is None else {"configuration": config}),
             **({} if pretrained is None else {"pretrained.checkpoint": str(Path(pretrained).resolve())})}
    overrides = [f"{key}={json.dumps(value, default=str)}" for key, value in given.items()]
    try:
        train_settings = load_train_config(train_config, overrides)
    except UserError as error:
        raise as_api_error(error) from None
    folder = train_folds(Path(work), train_settings, [str(fold)], resume=resume, overwrite=overwrite)[0]
    summary = validation_summary(folder)
    return FoldResult(folder, read_metrics(folder), summary)


COMMAND_FLAGS = {"--from": "parent", "--add-config": "name"}  # a stage's error → the API's argument


def as_api_error(error: UserError) -> UserError:
    """A stage's error that names a command flag (`--set KEY=VALUE`, `--from`) names the API's
    argument instead (`settings['KEY']`, `parent`)."""
    if error.where.startswith("--set "):
        key = error.where.removeprefix("--set ").partition("=")[0].split(" ")[0]
        return UserError(f"settings[{key!r}]", error.problem, error.hint)
    if error.where in COMMAND_FLAGS:
        return UserError(COMMAND_FLAGS[error.where], error.problem, error.hint)
    return error


def validation_summary(folder: Path) -> dict[str, Any] | None:
    from nnlite.common.files import read_json
    from nnlite.common.layout import SUMMARY_FILE, VALIDATION_DIR

    path = folder / VALIDATION_DIR / SUMMARY_FILE
    return read_json(path) if path.is_file() else None


# --- predict ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    """One case predicted. labels (Z, Y, X): the label map `predict` writes for the same input, in
    its dtype (uint8 when the labels fit); affine: the one it is written with; probabilities
    (K, Z, Y, X) float16: what `<case>.npz` holds (only when asked for); class_probabilities (K,):
    a model with a case-classification head's probabilities of `class_names`; uncertainty (with
    `Predictor(uncertainty=True)`): `.entropy` and `.disagreement` (Z, Y, X) maps in [0, 1], what
    `predict --uncertainty` writes, and `.row`, the case's row of uncertainty.csv."""

    labels: np.ndarray
    affine: np.ndarray
    probabilities: np.ndarray | None = None
    class_probabilities: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    uncertainty: Any = None  # inference.uncertainty.CaseUncertainty

    @property
    def predicted_class(self) -> str | None:
        if self.class_probabilities is None:
            return None
        return self.class_names[int(np.argmax(self.class_probabilities))]

    @property
    def class_row(self) -> dict[str, Any] | None:
        """The case's row of classification.csv: predicted_class, p_<class>… (None without a head)."""
        if self.class_probabilities is None:
            return None
        return {"predicted_class": self.predicted_class,
                **{f"p_{name}": float(p) for name, p in zip(self.class_names, self.class_probabilities)}}


class Predictor:
    """Trained models of WORK loaded once, predicting a case at a time (`predict`) or a folder
    (`predict_folder`, the `predict` command).

    config: a configuration, or several for an ensemble; folds: the folds to average (None: every
    trained fold); best: the configuration or ensemble and post-processing of results/best.json
    (instead of config and postprocess); the other options are `predict`'s flags.
    """

    def __init__(self, work: str | Path, config: str | Sequence[str] = "3d_fullres",
                 folds: Sequence[int | str] | None = (0,), checkpoint: str = "final", device: str = "cpu",
                 *, mirror: bool = True, step: float | None = None, tile_batch: int | None = None,
                 postprocess: bool = False, best: bool = False, onnx: str | Path | None = None,
                 uncertainty: bool = False, temperature: bool = True) -> None:
        from nnlite.common.layout import plans_file
        from nnlite.inference.models import load_best, load_models
        from nnlite.inference.options import PredictOptions
        from nnlite.inference.predictor import postprocessing_for
        from nnlite.inference.sliding_window import STEP_SIZE
        from nnlite.inference.temperature import prediction_temperature
        from nnlite.network.hardware import resolve_device
        from nnlite.plans import load_plans

        self.work = Path(work)
        self.plans = load_plans(plans_file(self.work))
        self.configs = [config] if isinstance(config, str) else list(config)
        if best:
            chosen = load_best(self.work)
            self.configs = chosen["winner"]["configurations"]
        if step is not None and not 0 < step <= 1:
            raise UserError("step", f"must be in (0, 1], got {step}")
        self.options = PredictOptions(
            config=self.configs[0], folds=None if folds is None else tuple(str(f) for f in folds),
            checkpoint=checkpoint, mirror=mirror, step=STEP_SIZE if step is None else step,
            postprocess=postprocess, device=device, tile_batch=tile_batch,
            onnx=None if onnx is None else str(onnx), uncertainty=uncertainty, temperature=temperature)
        self.postprocessing = (chosen["postprocessing"]["steps"] if best
                               else postprocessing_for(self.work, self.configs, self.options))
        # the T `predict` scales saved probabilities by (--no-temperature: temperature=False)
        self.temperature = (1.0 if not temperature else prediction_temperature(self.work, [], chosen) if best
                            else prediction_temperature(self.work, self.configs))
        self.device = resolve_device(device)
        self.models = load_models(self.work, self.plans, self.configs, self.options.folds, checkpoint,
                                  self.device, self.options.onnx)

    def __repr__(self) -> str:
        return (f"Predictor({str(self.work)!r}, config={'+'.join(self.configs)!r}, "
                f"folds={self.options.folds}, checkpoint={self.options.checkpoint!r}, device='{self.device}')")

    def predict(self, image: Image, spacing: Sequence[float] | None = None,
                affine: np.ndarray | None = None, *, probabilities: bool = False) -> Prediction:
        """Predict one case: a file (`<case>_0000.nii.gz`: its other channel files are found beside
        it), the list of its channel files, or an array (C, Z, Y, X) — (Z, Y, X) for one channel —
        with its spacing (z, y, x) in mm and/or its 4×4 affine (the NIfTI affine of the (x, y, z)
        voxel axes; without one, the label map's is diag(x, y, z, 1)); a 2D image: (C, Y, X) with
        its spacing (y, x), read as a picture file is (one slice: results are (1, Y, X)).

        probabilities: also return them, as `predict --save-probabilities` writes them.
        """
        from nnlite.data.image_io import as_written_labels
        from nnlite.inference.largest_component import apply_postprocessing
        from nnlite.inference.predictor import (CaseInput, CasePredictor, calibrated, prediction_in_original,
                                                preprocess_raw)
        from nnlite.inference.saved_probabilities import HeldProbabilities

        raw, case = self._read(image, spacing, affine)
        given = CaseInput({m.config_name: preprocess_raw(raw, case, self.plans, m.config_name)
                           for m in self.models}, raw)
        with CasePredictor(self.models, self.plans, self.options, self.device) as predictor:
            prediction = predictor(case, given)
        held = HeldProbabilities(len(prediction.members[0].probs))
        seg, written_affine = prediction_in_original(prediction, self.plans, held.add if probabilities else None)
        labels = as_written_labels(apply_postprocessing(seg, self.postprocessing))
        return Prediction(labels, written_affine, calibrated(held.array, self.temperature, self.plans),
                          prediction.class_probs, tuple(self.plans.case_classes), prediction.uncertainty)

    def predict_folder(self, input_dir: str | Path, output_dir: str | Path, *, overwrite: bool = False,
                       save_probabilities: bool = False, dicom_seg: bool = False) -> PredictReport:
        """`python -m nnlite.predict WORK INPUT_DIR OUTPUT_DIR` with this predictor's options (the
        command's code: it loads the models itself). Returns the report of predicted and skipped
        cases; a case that failed raises a UserError naming it once the others are written."""
        from nnlite.inference.predictor import predict_models

        options = replace(self.options, overwrite=overwrite, save_probabilities=save_probabilities,
                          dicom_seg=dicom_seg)
        report = predict_models(self.work, input_dir, output_dir, self.configs, options, self.postprocessing,
                                self.temperature)
        if report.failed:
            case, problem = next(iter(report.failed.items()))
            others = f" ({len(report.failed)} cases failed; the others are written)" if len(report.failed) > 1 else ""
            raise UserError(case, problem + others)
        return report

    def _read(self, image: Image, spacing: Sequence[float] | None, affine: np.ndarray | None) -> tuple[Case, str]:
        """The case as `predict` reads it (oriented as the plans say) and its name."""
        from nnlite.data.orientation import PLANS_KEY as ORIENTATION_KEY
        from nnlite.data.orientation import read_oriented
        from nnlite.inference.given_case import ARRAY_CASE, case_of_array, read_files

        orientation = self.plans.extra.get(ORIENTATION_KEY)
        if isinstance(image, (str, Path)) or (isinstance(image, (list, tuple)) and image
                                             and all(isinstance(p, (str, Path)) for p in image)):
            if spacing is not None or affine is not None:
                raise UserError("spacing", "only for an array: a file has its own spacing and affine")
            return read_files(image, self.plans.num_channels, orientation)
        return read_oriented(case_of_array(image, spacing, affine, self.plans.num_channels), orientation), ARRAY_CASE
