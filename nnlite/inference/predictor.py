"""Predict cases with trained models: the one per-case path of `predict`, `predict --best`,
ensembles, cascades and the final validation.

Per case: read (raw channels, preprocessed for each member configuration; or a preprocessed case
of WORK) → each member's sliding window over its folds (a cascade stage runs its previous stage
first: that label map in the original geometry goes through `cascade.seg_to_stage_input`, exactly
as the training inputs were made) → the members' probabilities back in the original geometry,
averaged for an ensemble → the case's files (`outputs.write_case_outputs`). A folder is read one
case ahead in a reader thread and exported in a writer thread (one case's probabilities in flight
at most). Case classification observes the sliding window: one `ClassCollector` per
configuration records the head's outputs; members' case probabilities are averaged.

A case that fails (unreadable file, wrong number of channels) is reported by name and the others
still finish; the caller turns failures into exit 2.

`--part I --num-parts N` predicts the sorted cases I, I + N, … (`options.select_part`) into an
OUTPUT_DIR other parts share: a part leaves the others' in-flight `.tmp` files alone and writes
its run-level file as `classification.part-I-of-N.csv`; a later whole-folder run (every case
skipped) merges those into `classification.csv`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nnlite.common.errors import UserError
from nnlite.common.files import ensure_writable_dir, remove_tmp_leftovers, write_text_atomic
from nnlite.common.layout import UNCERTAINTY_FILE, plans_file, postprocessing_file
from nnlite.data.image_io import Case
from nnlite.data.orientation import PLANS_KEY as ORIENTATION_KEY
from nnlite.data.orientation import written_oriented
from nnlite.common.host_memory import memory_budget, resident_bytes
from nnlite.inference.case_memory import MemoryGate
from nnlite.inference.case_queue import predict_cases
from nnlite.inference.case_classification import (CLASSIFICATION_FILE, ClassCollector, format_classification,
                                                  read_classification, update_classification)
from nnlite.inference.largest_component import load_postprocessing
from nnlite.inference.models import StageModel, load_best, load_models
from nnlite.inference.options import (PredictOptions, PredictReport, check_dicom_seg, check_folders,
                                      find_input_cases, is_done, output_path, part_file_name, part_files,
                                      read_input_case, select_part)
from nnlite.inference.outputs import (ChannelSink, Cropped, members_in_original, output_affine,
                                      probabilities_in_crop, probability_file, seg_in_original, write_case_outputs)
from nnlite.inference.sliding_window import predict_preprocessed
from nnlite.inference.uncertainty import CaseUncertainty, format_rows, members_with_uncertainty, read_rows
from nnlite.inference.temperature import prediction_temperature, scale_probabilities
from nnlite.network.hardware import resolve_device
from nnlite.plans import Plans, load_plans
from nnlite.preprocessing.cascade import seg_to_stage_input, stage_labels, with_previous_stage
from nnlite.preprocessing.pipeline import CaseProperties, preprocess_case

log = logging.getLogger(__name__)

NetworkInput = tuple[np.ndarray | torch.Tensor, CaseProperties]  # (C, *network space), properties


@dataclass
class CaseInput:
    """A case as read: its network input per configuration it was preprocessed for, and the raw
    case (cascade stages preprocess it for their previous stage; its affine is the label map's).
    A preprocessed case has no raw case: its properties hold the affine."""

    data: dict[str, NetworkInput]
    raw: Case | None = None


@dataclass
class Member:
    """One member configuration's probabilities of a case: network space until `cropped()`."""

    config_name: str
    props: CaseProperties
    probs: np.ndarray | torch.Tensor  # (K, *network space), or (K, *shape_after_crop) once cropped
    is_cropped: bool = False
    disagreement: torch.Tensor | None = None  # (*network space) members' mutual information, nats

    def cropped(self, plans: Plans) -> Cropped:
        """(K, *shape_after_crop) float32 in the preprocessed axis order, and the properties."""
        if not self.is_cropped:
            self.probs = probabilities_in_crop(self.probs, self.props, plans, self.config_name)
            self.is_cropped = True
        return self.probs, self.props


@dataclass
class CasePrediction:
    members: list[Member]
    class_probs: np.ndarray | None  # (K,) case-class probabilities when every member has a head
    given: CaseInput = field(repr=False)
    uncertainty: CaseUncertainty | None = None  # maps and uncertainty.csv row, once in the original geometry


class CasePredictor:
    """The sliding window of a prediction's models on one case at a time.

    Use as a context manager: the class collectors observe the networks while it is open.
    """

    def __init__(self, models: Sequence[StageModel], plans: Plans, options: PredictOptions,
                 device: torch.device) -> None:
        self.models, self.plans, self.options, self.device = list(models), plans, options, device
        self.collectors = {model.config_name: ClassCollector(model.networks) for model in _with_previous(models)}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "CasePredictor":
        for collector in self.collectors.values():
            self._stack.enter_context(collector)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def __call__(self, case: str, given: CaseInput) -> CasePrediction:
        for collector in self.collectors.values():  # nothing left over from a case that failed
            collector.reset()
        done: dict[str, Member] = {}
        classes: dict[str, np.ndarray] = {}
        members = [self._member(model, case, given, done, classes) for model in self.models]
        have_heads = all(model.config_name in classes for model in self.models)
        class_probs = np.mean([classes[m.config_name] for m in self.models], axis=0) if have_heads else None
        return CasePrediction(members, class_probs, given)

    def _member(self, model: StageModel, case: str, given: CaseInput, done: dict[str, Member],
                classes: dict[str, np.ndarray]) -> Member:
        """The probabilities of one configuration (its previous stage first); `done`: this case's
        members so far (3d_lowres + 3d_cascade_fullres runs lowres once)."""
        if model.config_name in done:
            return done[model.config_name]
        data, props = given.data.get(model.config_name) or preprocess_raw(given.raw, case, self.plans,
                                                                          model.config_name)
        if model.previous is not None:
            cropped, prev_props = self._member(model.previous, case, given, done, classes).cropped(self.plans)
            prev_seg = seg_in_original(cropped, prev_props, self.plans)
            data = with_previous_stage(data, seg_to_stage_input(prev_seg, props, self.plans, model.config_name),
                                       stage_labels(self.plans))
        options = self.options
        probs = predict_preprocessed(model.networks, data, self.plans.configurations[model.config_name],
                                     mirror=options.mirror, step=options.step, tile_batch=options.tile_batch,
                                     device=self.device, sigmoid=self.plans.sigmoid_outputs,
                                     disagreement=options.uncertainty)
        collector = self.collectors[model.config_name]
        if collector.has_head:
            classes[model.config_name] = collector.case_probabilities()
        mutual = probs[-1] if options.uncertainty else None  # the last channel: members' disagreement
        done[model.config_name] = Member(model.config_name, props, probs[:-1] if options.uncertainty else probs,
                                         disagreement=mutual)
        return done[model.config_name]


def _with_previous(models: Sequence[StageModel]) -> list[StageModel]:
    """The models and every previous stage they run, each once."""
    found: dict[str, StageModel] = {}
    for model in models:
        while model is not None:
            found.setdefault(model.config_name, model)
            model = model.previous
    return list(found.values())


def preprocess_raw(raw: Case, case: str, plans: Plans, config_name: str) -> NetworkInput:
    """A raw case preprocessed for `config_name` → (data, properties)."""
    data, _, props = preprocess_case(raw.data, None, raw.spacing, plans, config_name, case=case, affine=raw.affine)
    return data, props


def prediction_in_original(prediction: CasePrediction, plans: Plans, keep: ChannelSink | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """A case's label map (*raw shape) before post-processing and the affine it is written with, in
    the orientation of the case's file: what `write_prediction` writes, and what `nnlite.Predictor`
    returns without writing. keep: given the probabilities (*raw shape) float16 class by class,
    oriented alike (saving them). Members that carry their disagreement (--uncertainty) also give
    `prediction.uncertainty` (inference/uncertainty.py), its maps oriented alike."""
    members = [member.cropped(plans) for member in prediction.members]
    raw = prediction.given.raw
    affine = output_affine(members[0][1], None if raw is None else raw.affine)
    orientation = None if raw is None else plans.extra.get(ORIENTATION_KEY)  # a case read reoriented

    def oriented(array: np.ndarray) -> np.ndarray:  # back to its file's orientation
        return array if raw is None else written_oriented(array, affine, orientation)

    keep_oriented = None if keep is None else (lambda channel: keep(oriented(channel)))
    if all(member.disagreement is not None for member in prediction.members):
        seg, prediction.uncertainty = members_with_uncertainty(
            members, [(m.disagreement, m.config_name) for m in prediction.members], plans, keep_oriented)
        prediction.uncertainty.oriented(oriented)
    else:
        seg = members_in_original(members, plans, keep_oriented)
    return oriented(seg), affine


def calibrated(probabilities: np.ndarray | None, temperature: float, plans: Plans) -> np.ndarray | None:
    """Whole probabilities (K, *S) float16 scaled by `temperature` (inference/temperature.py), as
    `<case>.npz` holds them; None stays None, T = 1 leaves them as they are."""
    if probabilities is None or temperature == 1.0:
        return probabilities
    return scale_probabilities(probabilities, temperature, plans.sigmoid_outputs).astype(np.float16)


def write_prediction(out_path: Path, prediction: CasePrediction, plans: Plans, *, save_probabilities: bool,
                     postprocessing: Sequence[Sequence[int]] = (), dicom_source: Path | None = None,
                     temperature: float = 1.0, uncertainty_dir: Path | None = None) -> Path:
    """A case's files from its members' probabilities (see `outputs.write_case_outputs`); saved
    probabilities streamed into `<case>.npz` (saved_probabilities.py), scaled by `temperature`
    (inference/temperature.py; the label map never changes); with --uncertainty the maps
    `<case>_uncertainty<ending>`, `<case>_disagreement<ending>` go into `uncertainty_dir` (default:
    beside the label map)."""
    classes = len(prediction.members[0].probs)
    with probability_file(out_path, classes, save_probabilities, temperature, plans.sigmoid_outputs) as saved:
        seg, affine = prediction_in_original(prediction, plans, None if saved is None else saved.add)
        dicom = None if dicom_source is None else (dicom_source, plans.labels)
        images = () if prediction.uncertainty is None else prediction.uncertainty.files(out_path, uncertainty_dir)
        return write_case_outputs(out_path, seg, affine, probabilities=saved, postprocessing=postprocessing,
                                  dicom=dicom, images=images)


def predict_models(work: str | Path, input_dir: str | Path, output_dir: str | Path,
                   configs: Sequence[str], options: PredictOptions,
                   postprocessing: Sequence[Sequence[int]] | None = None,
                   temperature: float | None = None) -> PredictReport:
    """Predict every case of input_dir into output_dir/<case><the input's ending> with the ensemble
    of `configs` (one or more; a DICOM series gives <case>.nii.gz, + <case>.dcm with
    options.dicom_seg). postprocessing: the steps to apply; None → with `options.postprocess`,
    results/<config>/postprocessing.json of a single configuration. temperature: the T applied to
    saved probabilities; None → a single configuration's temperature.json (`options.temperature`
    off: none)."""
    work, input_dir, output_dir = Path(work), Path(input_dir), Path(output_dir)
    plans = load_plans(plans_file(work))
    check_folders(input_dir, output_dir)
    cases = find_input_cases(input_dir)
    check_dicom_seg(cases, options)
    mine = select_part(cases, options.part, options.num_parts)
    if options.num_parts > 1:
        log.info("part %d of %d: %d of %d cases", options.part, options.num_parts, len(mine), len(cases))
    device = resolve_device(options.device)
    if postprocessing is None:
        postprocessing = postprocessing_for(work, configs, options)
    models = load_models(work, plans, configs, options.folds, options.checkpoint, device, options.onnx)
    if temperature is None or not options.temperature:
        temperature = prediction_temperature(work, list(configs)) if options.temperature else 1.0
    ensure_writable_dir(output_dir, "output folder")
    if options.num_parts == 1:  # a part never deletes `.tmp` files: other parts' cases are in flight
        remove_tmp_leftovers(output_dir)
    report = PredictReport()
    outputs = {case: output_path(output_dir, case, cases[case]) for case in mine}
    todo = [case for case in mine if options.overwrite or not is_done(outputs[case], options)]
    report.skipped = [case for case in mine if case not in todo]
    if report.skipped:
        log.info("skipping %d already predicted cases (--overwrite redoes them)", len(report.skipped))

    def read(case: str) -> CaseInput:
        raw = read_input_case(case, cases[case], plans.num_channels, plans.extra.get(ORIENTATION_KEY))
        return CaseInput({m.config_name: preprocess_raw(raw, case, plans, m.config_name) for m in models}, raw)

    quality: dict[str, dict[str, float]] = {}  # case → its uncertainty.csv row (--uncertainty)

    def write(case: str, prediction: CasePrediction) -> Path:
        written = write_prediction(outputs[case], prediction, plans, save_probabilities=options.save_probabilities,
                                   postprocessing=postprocessing,
                                   dicom_source=cases[case][0] if options.dicom_seg else None,
                                   temperature=temperature)
        if prediction.uncertainty is not None:
            quality[case] = prediction.uncertainty.row
        return written

    gate = MemoryGate(memory_budget(options.memory_gb), resident_bytes(), plans.num_classes, options.save_probabilities)
    with CasePredictor(models, plans, options, device) as predictor:
        class_rows = predict_cases(predictor, todo, read, write, report, gate)
    if plans.case_classes:
        save_classification(output_dir, class_rows, plans.case_classes, options)
    if options.uncertainty:
        save_uncertainty(output_dir, quality, options)
    return report


def save_uncertainty(output_dir: Path, rows: dict[str, dict[str, float]], options: PredictOptions) -> None:
    """uncertainty.csv as classification.csv (`save_classification`): a part's rows into its own
    `uncertainty.part-I-of-N.csv`, a whole run's merged with the part files (then removed) and with
    the rows of cases predicted earlier."""
    name = part_file_name(UNCERTAINTY_FILE, options.part, options.num_parts)
    parts = [] if options.num_parts > 1 else part_files(output_dir, UNCERTAINTY_FILE)
    earlier = {}
    for path in [output_dir / name, *parts]:  # older rows first: later ones replace them
        earlier.update(read_rows(path) if path.is_file() else {})
    if rows or earlier:
        write_text_atomic(output_dir / name, format_rows({**earlier, **rows}))
    for path in parts:  # only once their rows are in uncertainty.csv
        path.unlink()


def save_classification(output_dir: Path, rows: dict[str, np.ndarray], names: Sequence[str],
                        options: PredictOptions) -> None:
    """A part's rows into its own `classification.part-I-of-N.csv` (its earlier rows kept); a whole
    run's into `classification.csv`, merging in and then removing the part files found there."""
    if options.num_parts > 1:
        path = output_dir / part_file_name(CLASSIFICATION_FILE, options.part, options.num_parts)
        earlier = read_classification(path, names) if path.is_file() else {}
        if rows or earlier:
            write_text_atomic(path, format_classification({**earlier, **rows}, names))
        return
    parts = part_files(output_dir, CLASSIFICATION_FILE)
    merged = {case: row for path in parts for case, row in read_classification(path, names).items()}
    if merged or rows:
        update_classification(output_dir, {**merged, **rows}, names)
    for path in parts:  # only once their rows are in classification.csv
        path.unlink()


def postprocessing_for(work: Path, configs: Sequence[str], options: PredictOptions) -> list[list[int]]:
    """The keep-largest-component steps `options.postprocess` asks for: results/<config>/
    postprocessing.json of a single configuration (none without the option)."""
    if not options.postprocess:
        return []
    if len(configs) != 1:
        raise UserError("--postprocess", "an ensemble's post-processing comes from best.json (--best)")
    return load_postprocessing(postprocessing_file(work, configs[0]))


def predict_folder(work: str | Path, input_dir: str | Path, output_dir: str | Path,
                   options: PredictOptions = PredictOptions()) -> PredictReport:
    """Predict every case of input_dir with the configuration `options.config` (its folds, or
    `options.onnx`); a cascade stage runs its previous stage first."""
    return predict_models(work, input_dir, output_dir, [options.config], options)


def predict_best(work: str | Path, input_dir: str | Path, output_dir: str | Path,
                 options: PredictOptions) -> PredictReport:
    """Predict with the configuration or ensemble and the post-processing of results/best.json."""
    best = load_best(work)
    log.info("best.json: %s, post-processing steps %s", best["winner"]["name"],
             best["postprocessing"]["steps"])
    return predict_models(work, input_dir, output_dir, best["winner"]["configurations"], options,
                          postprocessing=best["postprocessing"]["steps"],
                          temperature=prediction_temperature(work, [], best))
