"""Predict a folder of raw cases with trained models: `python -m nnlite.predict`'s library side.

Per case: read → preprocess (a background thread, one case ahead) → sliding window over every
fold's network (probabilities averaged) → export in another background thread (resample back,
argmax, optional post-processing, write). A case that fails (unreadable file, wrong number of
channels) is reported by name and the others still finish; the caller turns failures into exit 2.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from nnlite.common.errors import UserError
from nnlite.common.files import ensure_writable_dir, remove_tmp_leftovers
from nnlite.inference.case_classification import predict_with_classes, update_classification
from nnlite.inference.export import export_prediction
from nnlite.inference.largest_component import POSTPROCESSING_FILE, load_postprocessing
from nnlite.inference.onnx_model import OnnxNetwork
from nnlite.inference.options import (CHECKPOINTS, PredictOptions, PredictReport, check_dicom_seg, check_folders,
                                      dicom_seg_path, find_input_cases, is_done, output_path,
                                      read_input_case, record_failure)
from nnlite.inference.stage_models import load_fold_networks, predict_models
from nnlite.plans import Plans, load_plans
from nnlite.preprocessing.pipeline import CaseProperties, preprocess_case
from nnlite.training.precision import resolve_device

log = logging.getLogger(__name__)


def load_networks(work: Path, options: PredictOptions, device: torch.device
                  ) -> tuple[Plans, list[nn.Module]]:
    """plans.json and one network per fold, weights from checkpoint_<final|best>.pt, eval mode."""
    plans = load_plans(work / "plans.json")
    if options.config not in plans.configurations:
        raise UserError("--config", f"'{options.config}' is not in {work / 'plans.json'}")
    config = plans.configurations[options.config]
    if config.previous_stage:  # predict_folder hands cascade stages to prediction_models
        raise UserError("--config", f"'{options.config}' is a cascade stage: use predict_folder")
    if options.checkpoint not in CHECKPOINTS:
        raise UserError("--checkpoint", f"must be one of {sorted(CHECKPOINTS)}")
    if options.onnx is not None:  # the exported network, run by onnxruntime in the same sliding window
        return plans, [OnnxNetwork(options.onnx)]
    return plans, load_fold_networks(work, plans, options.config, options, device)


def read_and_preprocess(case: str, paths: list[Path], plans: Plans, config_name: str
                        ) -> tuple[np.ndarray, CaseProperties, np.ndarray]:
    """Read a case's channels and preprocess them → (data, properties, affine)."""
    raw = read_input_case(case, paths, plans.num_channels)
    data, _, props = preprocess_case(raw.data, None, raw.spacing, plans, config_name,
                                     case=case, affine=raw.affine)
    return data, props, raw.affine


def export_case(probs: torch.Tensor, props: CaseProperties, plans: Plans, options: PredictOptions,
                out_path: Path, inputs: list[Path], *, affine: np.ndarray,
                postprocessing: list[list[int]]) -> Path:
    """Write the case's label map (+ probabilities, + a DICOM-SEG of a DICOM series input)."""
    export_prediction(probs, props, plans, options.config, out_path, options.save_probabilities,
                      affine=affine, postprocessing=postprocessing)
    if options.dicom_seg:
        from nnlite.inference.dicom_seg import write_dicom_seg  # highdicom: only when asked for

        write_dicom_seg(out_path, inputs[0], plans.labels, dicom_seg_path(out_path))
    return out_path


def _collect(pending: tuple[str, Future] | None, report: PredictReport) -> None:
    """Wait for the previous case's export (keeps one case's probabilities in flight at most)."""
    if pending is None:
        return
    case, future = pending
    try:
        future.result()
        report.predicted.append(case)
    except Exception as error:  # noqa: BLE001  one case's failure must not stop the others
        record_failure(report, case, error)


def _is_cascade_stage(work: Path, config_name: str) -> bool:
    config = load_plans(work / "plans.json").configurations.get(config_name)
    return config is not None and bool(config.previous_stage)


def predict_folder(work: str | Path, input_dir: str | Path, output_dir: str | Path,
                   options: PredictOptions = PredictOptions()) -> PredictReport:
    """Predict every case of input_dir into output_dir/<case><the input's ending> (see the module
    docstring); a DICOM series gives <case>.nii.gz (+ <case>.dcm with options.dicom_seg)."""
    work, input_dir, output_dir = Path(work), Path(input_dir), Path(output_dir)
    if _is_cascade_stage(work, options.config):  # two stages: the previous one runs first
        if options.onnx is not None:
            raise UserError("--onnx", f"'{options.config}' is a cascade stage; --onnx runs one network")
        return predict_models(work, input_dir, output_dir, [options.config], options)
    check_folders(input_dir, output_dir)
    cases = find_input_cases(input_dir)
    check_dicom_seg(cases, options)
    device = resolve_device(options.device)
    plans, networks = load_networks(work, options, device)
    steps = []
    if options.postprocess:
        steps = load_postprocessing(work / "results" / options.config / POSTPROCESSING_FILE)
    ensure_writable_dir(output_dir, "output folder")
    remove_tmp_leftovers(output_dir)
    report = PredictReport()
    outputs = {case: output_path(output_dir, case, paths) for case, paths in cases.items()}
    todo = [case for case in cases if options.overwrite or not is_done(outputs[case], options)]
    report.skipped = [case for case in cases if case not in todo]
    if report.skipped:
        log.info("skipping %d already predicted cases (--overwrite redoes them)", len(report.skipped))
    config = plans.configurations[options.config]
    class_rows = {}  # a classification head: one row per case
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        def load(i: int) -> Future:
            return reader.submit(read_and_preprocess, todo[i], cases[todo[i]], plans, options.config)

        upcoming = load(0) if todo else None
        pending = None
        for i, case in enumerate(tqdm(todo, desc="predict", unit="case")):
            current, upcoming = upcoming, load(i + 1) if i + 1 < len(todo) else None
            try:
                data, props, affine = current.result()
                probs, class_probs = predict_with_classes(networks, data, config, mirror=options.mirror,
                                                          step=options.step, tile_batch=options.tile_batch,
                                                          device=device, sigmoid=bool(plans.regions))
                if class_probs is not None:
                    class_rows[case] = class_probs
            except Exception as error:  # noqa: BLE001  report the case, finish the others
                record_failure(report, case, error)
                continue
            _collect(pending, report)
            pending = (case, writer.submit(
                export_case, probs, props, plans, options, outputs[case], cases[case],
                affine=affine, postprocessing=steps))
        _collect(pending, report)
    if class_rows:
        update_classification(output_dir, class_rows, plans.case_classes)
    return report
