"""Prediction with cascade stages and with ensembles of configurations (`predict --best`).

A `StageModel` is one configuration's trained folds; a cascade stage also holds the model of its
previous stage. Per case: read the raw channels once; for each member configuration preprocess
them, run the previous stage first when there is one (its label map in the original geometry goes
through `cascade.seg_to_stage_input`, exactly as the training inputs were made), and predict.
One member: its probabilities are exported as a single configuration's (`export`). Several: their
float16 probabilities in the original geometry are averaged (`export.average_probabilities`),
exactly as the cross-validation ensemble was scored. Post-processing steps apply last. Members
with a classification head give one class-probability vector per case (tiles aggregated as in
`case_classification`), averaged over the members into OUTPUT_DIR/classification.csv.

`results/best.json` (written by `evaluation/selection.py`) is read here: `predict --best` follows it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from nnlite.common.errors import UserError
from nnlite.common.files import ensure_writable_dir, read_json, remove_tmp_leftovers
from nnlite.data.image_io import Case, write_seg
from nnlite.inference.case_classification import predict_with_classes, update_classification
from nnlite.inference.export import (average_probabilities, npz_path_for, probabilities_in_crop,
                                     probabilities_in_original, seg_from_probabilities, seg_in_original,
                                     write_probabilities)
from nnlite.inference.largest_component import POSTPROCESSING_FILE, apply_postprocessing, load_postprocessing
from nnlite.inference.options import (CHECKPOINTS, PredictOptions, PredictReport, check_dicom_seg, check_folders,
                                      dicom_seg_path, find_input_cases, fold_folders, is_done, output_path,
                                      read_input_case, record_failure)
from nnlite.network import build_unet
from nnlite.plans import Plans, load_plans
from nnlite.preprocessing.cascade import input_channels, seg_to_stage_input, stage_labels, with_previous_stage
from nnlite.preprocessing.pipeline import CaseProperties, preprocess_case
from nnlite.training.checkpoints import load_checkpoint
from nnlite.training.precision import resolve_device

log = logging.getLogger(__name__)


@dataclass
class StageModel:
    """The networks (one per fold) of a configuration; `previous`: the stage before a cascade."""

    config_name: str
    networks: list[nn.Module]
    previous: "StageModel | None" = None


Cropped = tuple[np.ndarray, CaseProperties]  # probabilities (K, *shape_after_crop), properties
ClassRows = dict[str, np.ndarray]  # configuration → (K,) case-class probabilities of one case


def load_stage_model(work: Path, plans: Plans, config_name: str, options: PredictOptions,
                     device: torch.device, loaded: dict[str, StageModel] | None = None) -> StageModel:
    """Load a configuration's folds (and, for a cascade, its previous stage with the same folds).

    loaded: models already loaded by configuration (an ensemble member is also a previous stage).
    """
    loaded = {} if loaded is None else loaded
    if config_name in loaded:
        return loaded[config_name]
    networks = load_fold_networks(work, plans, config_name, options, device)
    config = plans.configurations[config_name]
    previous = None
    if config.previous_stage:
        previous = load_stage_model(work, plans, config.previous_stage, options, device, loaded)
    loaded[config_name] = StageModel(config_name, networks, previous)
    return loaded[config_name]


def load_fold_networks(work: Path, plans: Plans, config_name: str, options: PredictOptions,
                       device: torch.device) -> list[nn.Module]:
    """One network per fold of `config_name` (options.folds, default every trained fold), weights
    from checkpoint_<final|best>.pt, without deep supervision, in eval mode on `device`."""
    if config_name not in plans.configurations:
        raise UserError("--config", f"'{config_name}' is not in {work / 'plans.json'}")
    if options.checkpoint not in CHECKPOINTS:
        raise UserError("--checkpoint", f"must be one of {sorted(CHECKPOINTS)}")
    config = plans.configurations[config_name]
    networks = []
    for folder in fold_folders(work / "results" / config_name, options.folds, CHECKPOINTS[options.checkpoint]):
        checkpoint = load_checkpoint(folder / CHECKPOINTS[options.checkpoint])
        network = build_unet(config.network, input_channels(plans, config_name), plans.num_classes,
                             region_outputs=bool(plans.regions))
        network.load_state_dict(checkpoint["network"])
        network.deep_supervision = False
        networks.append(network.to(device).eval())
    return networks


def predict_cropped(model: StageModel, raw: Case, case: str, plans: Plans, options: PredictOptions,
                    device: torch.device, done: dict[str, Cropped], classes: ClassRows) -> Cropped:
    """Probabilities (K, *shape_after_crop) float32 of a raw case, and its properties.

    done: this case's results so far by configuration (3d_lowres+3d_cascade_fullres runs lowres once);
    classes: where a configuration with a classification head leaves the case's class probabilities.
    """
    if model.config_name in done:
        return done[model.config_name]
    data, _, props = preprocess_case(raw.data, None, raw.spacing, plans, model.config_name,
                                     case=case, affine=raw.affine)
    if model.previous is not None:
        cropped, prev_props = predict_cropped(model.previous, raw, case, plans, options, device, done, classes)
        prev_seg = seg_in_original(cropped, prev_props, plans)
        data = with_previous_stage(data, seg_to_stage_input(prev_seg, props, plans, model.config_name),
                                   stage_labels(plans))
    probs, class_probs = predict_with_classes(model.networks, data, plans.configurations[model.config_name],
                                              mirror=options.mirror, step=options.step,
                                              tile_batch=options.tile_batch, device=device,
                                              sigmoid=bool(plans.regions))
    if class_probs is not None:
        classes[model.config_name] = class_probs
    done[model.config_name] = probabilities_in_crop(probs, props, plans, model.config_name), props
    return done[model.config_name]


def predict_case(models: Sequence[StageModel], raw: Case, case: str, plans: Plans, options: PredictOptions,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Label map (*raw shape) of a case, its probabilities (K, *raw shape) when asked for, and its
    class probabilities (mean over the members) when every member has a classification head."""
    done: dict[str, Cropped] = {}
    classes: ClassRows = {}
    members = []
    for model in models:
        cropped, props = predict_cropped(model, raw, case, plans, options, device, done, classes)
        members.append((cropped, props))
    have_heads = all(model.config_name in classes for model in models)
    class_probs = np.mean([classes[m.config_name] for m in models], axis=0) if have_heads else None
    if len(models) == 1:
        cropped, props = members[0]
        probs = probabilities_in_original(cropped, props, plans) if options.save_probabilities else None
        return seg_in_original(cropped, props, plans), probs, class_probs
    probs = average_probabilities([probabilities_in_original(c, p, plans) for c, p in members])
    seg = seg_from_probabilities(probs, plans.regions)
    return seg, probs.astype(np.float16) if options.save_probabilities else None, class_probs


def predict_models(work: str | Path, input_dir: str | Path, output_dir: str | Path,
                   configs: Sequence[str], options: PredictOptions,
                   postprocessing: Sequence[Sequence[int]] | None = None) -> PredictReport:
    """Predict every case of input_dir with the ensemble of `configs` (one or more; cascade stages
    run their previous stage first). postprocessing: the steps to apply; None → with
    `options.postprocess`, results/<config>/postprocessing.json of a single configuration."""
    work, input_dir, output_dir = Path(work), Path(input_dir), Path(output_dir)
    check_folders(input_dir, output_dir)
    cases = find_input_cases(input_dir)
    check_dicom_seg(cases, options)
    device = resolve_device(options.device)
    plans = load_plans(work / "plans.json")
    if postprocessing is None:
        postprocessing = _postprocessing_for(work, configs, options)
    loaded: dict[str, StageModel] = {}
    models = [load_stage_model(work, plans, config, options, device, loaded) for config in configs]
    ensure_writable_dir(output_dir, "output folder")
    remove_tmp_leftovers(output_dir)
    report = PredictReport()
    outputs = {case: output_path(output_dir, case, paths) for case, paths in cases.items()}
    todo = [case for case in cases if options.overwrite or not is_done(outputs[case], options)]
    report.skipped = [case for case in cases if case not in todo]
    class_rows: dict[str, np.ndarray] = {}  # classification heads: one row per case
    for case in tqdm(todo, desc="predict", unit="case"):
        try:
            raw = read_input_case(case, cases[case], plans.num_channels)
            seg, probs, class_probs = predict_case(models, raw, case, plans, options, device)
            if class_probs is not None:
                class_rows[case] = class_probs
            write_seg(outputs[case], apply_postprocessing(seg, postprocessing), raw.affine)
            if probs is not None:
                write_probabilities(npz_path_for(outputs[case]), probs)
            if options.dicom_seg:
                from nnlite.inference.dicom_seg import write_dicom_seg  # highdicom: only when asked for

                write_dicom_seg(outputs[case], cases[case][0], plans.labels, dicom_seg_path(outputs[case]))
            report.predicted.append(case)
        except Exception as error:  # noqa: BLE001  report the case, finish the others
            record_failure(report, case, error)
    if class_rows:
        update_classification(output_dir, class_rows, plans.case_classes)
    return report


def _postprocessing_for(work: Path, configs: Sequence[str], options: PredictOptions) -> list[list[int]]:
    if not options.postprocess:
        return []
    if len(configs) != 1:
        raise UserError("--postprocess", "an ensemble's post-processing comes from best.json (--best)")
    return load_postprocessing(work / "results" / configs[0] / POSTPROCESSING_FILE)


def predict_best(work: str | Path, input_dir: str | Path, output_dir: str | Path,
                 options: PredictOptions) -> PredictReport:
    """Predict with the configuration or ensemble and the post-processing of results/best.json."""
    best = load_best(work)
    log.info("best.json: %s, post-processing steps %s", best["winner"]["name"],
             best["postprocessing"]["steps"])
    return predict_models(work, input_dir, output_dir, best["winner"]["configurations"], options,
                          postprocessing=best["postprocessing"]["steps"])


BEST_FILE = "best.json"


def best_path(work: Path) -> Path:
    return Path(work) / "results" / BEST_FILE


def load_best(work: str | Path) -> dict[str, Any]:
    """results/best.json; missing or malformed is a UserError naming it."""
    path = best_path(Path(work))
    if not path.is_file():
        raise UserError(path, "not found: run `python -m nnlite.best WORK` first")
    best = read_json(path)
    try:
        configs = [str(c) for c in best["winner"]["configurations"]]
        steps = [[int(label) for label in step] for step in best["postprocessing"]["steps"]]
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(path, f"not a best-configuration file ({error})") from None
    return {**best, "winner": {**best["winner"], "configurations": configs},
            "postprocessing": {**best["postprocessing"], "steps": steps}}
