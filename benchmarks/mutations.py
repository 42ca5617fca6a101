"""Break critical rules on purpose and check that the fast tests notice.

Each mutation is one small semantic change to a copy of the package (the real tree is never
touched): a snippet that must occur exactly once in its file is replaced, and the tests named for
it run against the mutated copy (`pytest -x`, slow tests included when named, hypothesis seeded).
A mutation is CAUGHT only when a test FAILS (an assertion, or an exception raised inside a test's
body); it SURVIVED when they all pass; an ERROR (a collection or import failure, a fixture that
raises, no test selected) and a TIMEOUT are reported as such and never count as caught. Before any
mutation the same tests must pass on the unmutated copy, so a catch is never a broken test.

    python benchmarks/mutations.py              # every mutation: a table, exit 1 if one survives
    python benchmarks/mutations.py --only gauss # the mutations whose name contains "gauss"

Add a mutation with every new rule that matters (see the list below).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HYPOTHESIS_SEED = 0  # a mutation caught by one example is caught again on rerun
COPIED = ("nnlite", "tests", "configs", "docs", "pyproject.toml", "README.md")


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the root


MUTATIONS = (
    Mutation("sliding window: Gaussian weights replaced by ones", "nnlite/inference/sliding_window.py",
             "self.gaussian = gaussian_weights(tile).to(self.device)",
             "self.gaussian = torch.ones_like(gaussian_weights(tile)).to(self.device)",
             ("tests/test_inference.py",)),
    Mutation("prediction: test-time mirroring switched off", "nnlite/inference/sliding_window.py",
             "axes = config.inference_mirror_axes if mirror else ()", "axes = ()", ("tests/test_inference.py",)),
    Mutation("2d on a 3D volume: mirror axes without the slice-axis offset",
             "nnlite/inference/sliding_window.py",
             "mirror_axes = [lead + axis for axis in mirror_axes]",
             "mirror_axes = [axis for axis in mirror_axes]", ("tests/test_inference.py",)),
    Mutation("final validation: mirroring setting ignored", "nnlite/training/validation.py",
             "mirror=config.validation.mirroring", "mirror=False",
             ("tests/test_demo.py::test_final_validation_mirrors_every_axis_when_configured",)),
    Mutation("predict: class observers not emptied between cases", "nnlite/inference/predictor.py",
             "        for collector in self.collectors.values():  # nothing left over from a case that failed\n"
             "            collector.reset()\n", "",
             ("tests/test_classification.py::test_each_case_gets_only_its_own_tiles_class_probabilities",)),
    Mutation("nnU-Net conversion: a NoMirroring model mirrored on every axis", "nnlite/training/nnunet_model.py",
             "axes = () if axes is None else tuple(int(a) for a in axes)",
             "axes = None if axes is None else tuple(int(a) for a in axes)",
             ("tests/test_nnunet_model.py::test_a_model_trained_without_mirroring_is_predicted_without_mirroring",)),
    Mutation("oversampling: int instead of round", "nnlite/loading/sampling.py",
             "threshold = round(batch_size * (1 - fraction))",
             "threshold = int(batch_size * (1 - fraction))",
             ("tests/test_trainer.py", "tests/test_sampling.py")),
    Mutation("training: gradient clipping removed", "nnlite/training/trainer.py",
             "        loss.backward()\n        nn.utils.clip_grad_norm_(state.network.parameters(), grad_clip)\n",
             "        loss.backward()\n", ("tests/test_trainer.py",)),
    Mutation("resume: the RNG state is not restored", "nnlite/training/trainer.py",
             '    checkpoints.restore_rng(checkpoint["rng"])\n', "", ("tests/test_trainer.py",)),
    Mutation("resume: the oldest checkpoint wins", "nnlite/training/checkpoints.py",
             'return max(good, key=lambda checkpoint: checkpoint["epoch"])',
             'return min(good, key=lambda checkpoint: checkpoint["epoch"])', ("tests/test_checkpoints.py",)),
    Mutation("training: poly LR without its exponent", "nnlite/training/trainer.py",
             "return initial_lr * (1 - min(step, total_steps) / total_steps) ** exponent",
             "return initial_lr * (1 - min(step, total_steps) / total_steps)", ("tests/test_trainer.py",)),
    Mutation("planner: anisotropy threshold 2 instead of 3", "nnlite/planning/planner.py",
             "ANISO_THRESHOLD = 3 ", "ANISO_THRESHOLD = 2 ", ("tests/test_planner.py",)),
    Mutation("planner: 16 base features instead of 32", "nnlite/planning/planner.py",
             "BASE_FEATURES = 32 ", "BASE_FEATURES = 16 ", ("tests/test_planner.py",)),
    Mutation("resampling: separate-z threshold 2 instead of 3", "nnlite/preprocessing/resampling.py",
             "ANISOTROPY_THRESHOLD = 3.0 ", "ANISOTROPY_THRESHOLD = 2.0 ", ("tests/test_resampling.py",)),
    Mutation("normalization: CT values not clipped to the percentiles", "nnlite/preprocessing/normalization.py",
             "    np.clip(image, stats.percentile_00_5, stats.percentile_99_5, out=image)\n", "",
             ("tests/test_normalization.py",)),
    Mutation("export: no transpose back to the raw axis order", "nnlite/preprocessing/pipeline.py",
             "back = tuple(range(lead)) + tuple(lead + a for a in plans.transpose_backward)",
             "back = tuple(range(full.ndim))", ("tests/test_inference.py", "tests/test_preprocessing.py")),
    Mutation("loss: soft Dice without the factor 2", "nnlite/network/loss.py",
             "return (2 * intersect + smooth)", "return (intersect + smooth)", ("tests/test_loss.py",)),
    Mutation("loss: the lowest deep-supervision output keeps its weight", "nnlite/network/loss.py",
             "    weights[-1] = 0.0\n", "", ("tests/test_loss.py",)),
    Mutation("sampling: forced patches ignore the foreground", "nnlite/loading/sampling.py",
             "    if not present:\n        return random_start(rng, shape, patch)\n",
             "    if present:\n        return random_start(rng, shape, patch)\n", ("tests/test_sampling.py",)),
    Mutation("post-processing: keeps the smallest component", "nnlite/inference/largest_component.py",
             "out[mask & (components != int(sizes.argmax()))] = 0",
             "out[mask & (components != int(sizes[1:].argmin() + 1))] = 0", ("tests/test_postprocessing.py",)),
    Mutation("post-processing: accepted without a strict improvement", "nnlite/evaluation/postprocessing.py",
             "return not math.isnan(after) and (math.isnan(before) or after > before)",
             "return not math.isnan(after) and (math.isnan(before) or after >= before)",
             ("tests/test_postprocessing.py",)),
    Mutation("pictures: the label overlay is not drawn", "nnlite/evaluation/pictures.py",
             "alpha=OVERLAY_ALPHA, aspect=aspect", "alpha=0.0, aspect=aspect", ("tests/test_pictures.py",)),
    Mutation("device augmentation: masked channels not zeroed outside the mask",
             "nnlite/loading/device_augmentation.py",
             "        image[:, channel].masked_fill_(outside[:, 0], 0.0)\n", "        pass\n",
             ("tests/test_device_augmentation.py",)),
    Mutation("cascade: a changed lowres prediction is not redone", "nnlite/training/lowres_predictions.py",
             '"source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}', '"source_sha256": ""}',
             ("tests/test_cascade.py",)),
    Mutation("evaluation: Dice computed as IoU", "nnlite/evaluation/metrics.py",
             '"dice": 2 * tp / (2 * tp + fp + fn) if union else math.nan',
             '"dice": tp / (tp + fp + fn) if union else math.nan', ("tests/test_metrics.py",)),
    Mutation("regions: painted in reverse order (earlier regions win)", "nnlite/data/regions.py",
             "for region, prob in zip(regions, probs):",
             "for region, prob in reversed(list(zip(regions, probs))):",
             ("tests/test_regions.py::test_overlapping_regions_paint_in_order",)),
    Mutation("region loss: ignored voxels counted in BCE", "nnlite/network/region_loss.py",
             "bce = (bce * valid).sum() / (valid.sum() * self.num_regions).clamp(min=1)", "bce = bce.mean()",
             ("tests/test_regions.py::test_region_loss_matches_a_direct_computation",)),
    Mutation("region targets: the ignore channel dropped",
             "nnlite/network/region_loss.py",
             "    if ignore_label is not None:\n        channels.append(labels == ignore_label)\n", "",
             ("tests/test_regions.py::test_region_targets_are_label_membership",)),
    Mutation("evaluation: only NIfTI label maps are listed", "nnlite/evaluation/metrics.py",
             "    ending = file_ending(path)\n", '    ending = ".nii.gz" if path.name.endswith(".nii.gz") else None\n',
             ("tests/test_metrics.py",)),
    Mutation("DICOM series: slices in file-name order instead of by position", "nnlite/data/dicom_series.py",
             'order = np.argsort(positions, kind="stable")', "order = np.arange(len(positions))",
             ("tests/test_dicom_series.py",)),
    Mutation("image formats: SimpleITK's LPS geometry taken as RAS", "nnlite/data/itk_files.py",
             "LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])", "LPS_TO_RAS = np.eye(3)",
             ("tests/test_image_formats.py",)),
    Mutation("predict: label maps always written as NIfTI", "nnlite/data/image_io.py",
             'return folder / f"{case}{image_format(source).label_ending or file_ending(source)}"',
             'return folder / f"{case}.nii.gz"', ("tests/test_predict_formats.py",)),
    Mutation("TIFF: the sidecar spacing ignored", "nnlite/data/picture_files.py",
             "    if not sidecar.is_file():\n", "    if True:\n", ("tests/test_image_formats.py",)),
    Mutation("nnU-Net weights: residual skip norm not moved past the 1x1 conv", "nnlite/network/nnunet_weights.py",
             '"encoder.stages.{s}.{b}.skip.{k+1}.{p}"', '"encoder.stages.{s}.{b}.skip.{k}.{p}"',
             ("tests/test_nnunet_weights.py",)),
    Mutation("nnU-Net checkpoint: numpy scalars left out of the weights_only allow-list",
             "nnlite/training/nnunet_model.py", "return [scalar, np.dtype, *dtypes]", "return [np.dtype, *dtypes]",
             ("tests/test_nnunet_model.py",)),
    Mutation("nnU-Net plans: inherits_from lets the parent override the child", "nnlite/planning/nnunet_plans.py",
             "return {**resolve_configuration(configurations, parent, seen + (name,)), **own}",
             "return {**own, **resolve_configuration(configurations, parent, seen + (name,))}",
             ("tests/test_nnunet_plans.py",)),
    Mutation("prediction: a converted model's trained mirror axes ignored", "nnlite/inference/sliding_window.py",
             "axes = config.inference_mirror_axes if mirror else ()", "axes = None if mirror else ()",
             ("tests/test_nnunet_model.py",)),
    Mutation("nnU-Net summary: ignored voxels counted as true negatives", "nnlite/evaluation/metrics.py",
             "return int(ref.size - (0 if ignore_label is None else np.count_nonzero(ref == ignore_label)))",
             "return int(ref.size)",
             ("tests/test_nnunet_summary.py",)),
    Mutation("DDP: batch Dice statistics not summed across ranks", "nnlite/network/loss.py",
             "return AllGatherGrad.apply(stats).sum(0)", "return stats",
             ("tests/test_distributed.py::test_batch_dice_over_two_ranks_equals_one_process_with_the_whole_batch",)),
    Mutation("DDP: batch Dice gathered without the gradient's all-reduce", "nnlite/network/loss.py",
             "        dist.all_reduce(grad, op=dist.ReduceOp.SUM)\n", "",
             ("tests/test_distributed.py::test_batch_dice_over_two_ranks_equals_one_process_with_the_whole_batch",)),
    Mutation("DDP: every rank validates every case", "nnlite/training/distributed.py",
             "return range(rank.rank, n_items, rank.world_size)", "return range(n_items)",
             ("tests/test_distributed.py::test_shares_cover_every_item_exactly_once",)),
    Mutation("compile: checkpoints saved from the compiled module", "nnlite/training/trainer.py",
             '"network": state.network.state_dict(),', '"network": state.model.state_dict(),',
             ("tests/test_trainer.py::test_compiled_network_matches_eager_and_saves_plain_keys",)),
    Mutation("statistics: pairwise split not rounded to numpy's multiple of 8", "nnlite/planning/statistics.py",
             "NUMPY_SPLIT_MULTIPLE = 8 ", "NUMPY_SPLIT_MULTIPLE = 4 ", ("tests/test_statistics.py",)),
    Mutation("statistics: percentile lerp always from the lower value", "nnlite/planning/statistics.py",
             "out=result, where=gamma >= 0.5,", "out=result, where=gamma > 1.5,", ("tests/test_statistics.py",)),
    Mutation("fingerprint: samples of a case written at the wrong place", "nnlite/planning/fingerprint.py",
             "samples[:, index])", "samples[:, 0])", ("tests/test_fingerprint.py",)),
    Mutation("plan: the planning library imported with the command (slow --help)", "nnlite/plan.py",
             "from nnlite.common.cli import ArgumentParser, default_workers, run\n",
             "from nnlite.common.cli import ArgumentParser, default_workers, run\n"
             "from nnlite.planning.work_folder import plan_dataset\n", ("tests/test_startup.py",)),
    Mutation("ResEnc presets: shrink with the default planner's reference-batch factor", "nnlite/planning/presets.py",
             "shrink_per_reference_batch=False, max_dataset_covered=1.0",
             "shrink_per_reference_batch=True, max_dataset_covered=1.0", ("tests/test_presets.py",)),
    Mutation("ResEnc presets: the 5 % batch cap kept", "nnlite/planning/presets.py",
             "max_dataset_covered=1.0, plans_name=plans_name", "max_dataset_covered=0.05, plans_name=plans_name",
             ("tests/test_presets.py",)),
    Mutation("attention gate: the coarser decoder signal ignored", "nnlite/network/blocks.py",
             "torch.relu_(self.theta(skip) + self.phi(gate))", "torch.relu_(self.theta(skip) + 0 * self.phi(gate))",
             ("tests/test_network.py::test_attention_gate_scales_the_skip_by_a_map_in_0_1",)),
    Mutation("geometry: attention-gate activations left out of the saved bytes", "nnlite/network/geometry.py",
             "total += (gate_channels(f[level]) + 1) * voxels[level + 1] + voxels[level]", "total += 0",
             ("tests/test_network.py::test_attention_gates_add_the_predicted_bytes",)),
    Mutation("inheritance: a child with another spacing shares its parent's folder", "nnlite/plans.py",
             'merged["data_identifier"] = name  # other arrays: its own folder', "pass",
             ("tests/test_inheritance.py",)),
    Mutation("app: the best case shown as the worst", "nnlite/viewing/runs.py",
             'r["mean dice"], r["case"]))', '-r["mean dice"], r["case"]))', ("tests/test_runs.py",)),
    Mutation("app: a path from the browser may leave the app's folders", "nnlite/viewing/uploads.py",
             "if not resolved.is_relative_to(Path(root).resolve()):", "if False:",
             ("tests/test_uploads.py", "tests/test_runs.py")),
    Mutation("app: a wrong predicted label is not an error in the error map", "nnlite/viewing/slices.py",
             "wrong & (ref > 0)\n", "wrong & (ref > 0) & (pred == 0)\n", ("tests/test_slices.py",)),
    Mutation("app: SIGTERM stops the command but leaves its Streamlit server running", "nnlite/app.py",
             "previous = signal.signal(signal.SIGTERM, _raise_stop)", "previous = signal.getsignal(signal.SIGTERM)",
             ("tests/test_app.py::test_the_command_prints_its_address_serves_and_stops_with_its_server",)),
    Mutation("app: a DICOM zip's member paths used as file names", "nnlite/viewing/uploads.py",
             '(target / f"{number:05d}.dcm")', "(target / member.filename)", ("tests/test_uploads.py",)),
    Mutation("classification: tiles averaged without their foreground weight",
             "nnlite/inference/case_classification.py",
             'weights = np.ones(len(class_probs)) if how == "mean" else foreground + TILE_WEIGHT_FLOOR',
             "weights = np.ones(len(class_probs))",
             ("tests/test_classification.py::test_foreground_weighting_by_hand",)),
    Mutation("classification: class weights not balanced", "nnlite/network/classifier.py",
             "total / (k * counts_t.clamp_min(1))", "torch.ones_like(counts_t)",
             ("tests/test_classification.py::test_balanced_weights_make_each_class_count_equally",)),
    Mutation("classification: AUC ties counted as wins", "nnlite/evaluation/class_scores.py",
             "ranks[order[start:end]] = (start + 1 + end) / 2", "ranks[order[start:end]] = end",
             ("tests/test_class_scores.py",)),
    Mutation("classification: the head-off loss path changed", "nnlite/network/classifier.py",
             "        return seg_loss(seg, targets)\n    target",
             "        return seg_loss(seg, targets) * 1.0000001\n    target",
             ("tests/test_classification.py::test_head_off_seeded_training_is_bit_identical_to_before_the_head",)),
    Mutation("classification: the head pools every voxel, not the predicted lesion", "nnlite/network/classifier.py",
             "weights = pool(foreground, features.shape[2:]).flatten(2)",
             "weights = torch.ones_like(pool(foreground, features.shape[2:])).flatten(2)",
             ("tests/test_classification.py::test_head_pools_the_features_under_the_predicted_foreground",)),
    Mutation("classification: the head's segmentation weights not detached", "nnlite/network/classifier.py",
             "weights = self.foreground(seg_logits.detach().float())", "weights = self.foreground(seg_logits.float())",
             ("tests/test_classification.py::test_class_loss_never_moves_the_segmentation_head",)),
    Mutation("classification: DDP's plain-tuple output taken for a head-off network", "nnlite/network/classifier.py",
             "    if isinstance(outputs, tuple):\n", "    if isinstance(outputs, SegmentAndClass):\n",
             ("tests/test_classification.py::test_joint_loss_adds_the_weighted_class_loss",)),
    Mutation("classification: cross-validation drops the folds' classifications", "nnlite/evaluation/cross_validation.py",
             "        if class_rows is not None:\n            summary[\"classification\"]",
             "        if False:\n            summary[\"classification\"]",
             ("tests/test_cross_validation.py::test_crossval_ensemble_and_best_carry_the_classification",)),
    Mutation("classification: class loss divided by the batch's summed weights (F.cross_entropy's weighted mean)",
             "nnlite/network/classifier.py",
             "return (weights.to(logits.device)[target] * per_sample).mean()",
             "return (weights.to(logits.device)[target] * per_sample).sum() / weights.to(logits.device)[target].sum()",
             ("tests/test_classification.py::test_class_loss_worked_example_80_20",
              "tests/test_classification.py::test_each_class_carries_half_of_the_weight_over_an_epoch")),
    Mutation("classification: a class without training cases weighted 0", "nnlite/network/classifier.py",
             "total / (k * counts_t.clamp_min(1)), torch.ones_like(counts_t))",
             "total / (k * counts_t.clamp_min(1)), torch.zeros_like(counts_t))",
             ("tests/test_classification.py::test_a_class_without_training_cases_gives_a_finite_loss",)),
    Mutation("classification: class weights normalised by every declared class, not those present",
             "nnlite/network/classifier.py",
             "total, k = counts_t.sum(), int(present.sum())", "total, k = counts_t.sum(), len(counts)",
             ("tests/test_classification.py::test_balanced_weights_make_each_class_count_equally",)),
    Mutation("DICOM-SEG: a series without a Frame of Reference UID not given one",
             "nnlite/inference/dicom_seg.py",
             'if any(not getattr(s, "FrameOfReferenceUID", None) for s in slices):', "if False:",
             ("tests/test_dicom_seg.py::test_series_without_frame_of_reference_gets_a_seg_with_a_new_one",)),
    Mutation("case outputs: label map written in place before the DICOM-SEG succeeded",
             "nnlite/inference/outputs.py",
             "staged = [write_seg(staging / out_path.name,", "staged = [write_seg(out_path,",
             ("tests/test_dicom_seg.py::test_a_seg_that_cannot_be_made_leaves_no_file_of_the_case",)),
    Mutation("app: --port 0 gives up when the chosen port was taken meanwhile", "nnlite/app.py",
             "    for _ in range(PORT_TRIES):\n", "    for _ in range(1):\n",
             ("tests/test_app.py::test_any_free_port_replaces_a_port_taken_between_its_choice_and_the_bind",)),
    Mutation("evaluate: the raw dataset.json beside REF_DIR not looked for (regions scored as labels)",
             "nnlite/evaluation/scoring_inputs.py", "    if not beside.is_file():", "    if True:",
             ("tests/test_evaluate.py::test_regions_of_the_raw_dataset_are_scored_without_dataset_json_flag",)),
    Mutation("nnU-Net conversion: a reorienting reader's cases read as stored", "nnlite/data/orientation.py",
             "return case if _checked(orientation) is None else to_ras(case)", "return case",
             ("tests/test_nnunet_model.py::test_a_reorienting_readers_model_predicts_any_stored_orientation_as_nnunet",)),
    Mutation("nnU-Net conversion: a reoriented case's label map not written back in its file's orientation",
             "nnlite/inference/predictor.py", "seg = written_oriented(seg, affine, orientation)", "seg = seg",
             ("tests/test_nnunet_model.py::test_a_reorienting_readers_model_predicts_any_stored_orientation_as_nnunet",)),
    Mutation("nnU-Net conversion: the plans' reader dropped", "nnlite/planning/nnunet_plans.py",
             "return {ORIENTATION_KEY: orientation} if orientation else {}", "return {}",
             ("tests/test_nnunet_model.py::test_a_reorienting_readers_model_predicts_any_stored_orientation_as_nnunet",)),
    Mutation("nnU-Net conversion: an unknown reader read as stored", "nnlite/data/orientation.py",
             "    if reader not in NNUNET_READERS:\n",
             "    if reader not in NNUNET_READERS:\n        return None\n    if False:\n",
             ("tests/test_nnunet_model.py::test_a_reader_nnlite_cannot_honour_is_refused_in_one_line_at_convert",)),
    Mutation("nnU-Net conversion: an unimplemented resampling function accepted", "nnlite/planning/nnunet_plans.py",
             "if _short(function) != RESAMPLING_FUNCTION:", "if False:",
             ("tests/test_nnunet_model.py::test_a_resampling_function_nnlite_does_not_implement_is_refused_naming_it",)),
    Mutation("nnU-Net conversion: an absent force_separate_z read as automatic", "nnlite/planning/nnunet_plans.py",
             'separate_z = kwargs.get("force_separate_z", False)', 'separate_z = kwargs.get("force_separate_z")',
             ("tests/test_nnunet_model.py::test_resampling_kwargs_are_read_with_the_functions_own_defaults",)),
    Mutation("nnU-Net conversion: the model's postprocessing.json ignored", "nnlite/training/nnunet_model.py",
             "    if postprocessing is not None:\n", "    if False:\n",
             ("tests/test_nnunet_model.py::test_nnunets_postprocessing_json_is_applied_by_predict_postprocess",)),
    Mutation("nnU-Net conversion: an unknown post-processing function accepted", "nnlite/training/nnunet_model.py",
             'if function.rsplit(".", 1)[-1] != LARGEST_COMPONENT_FN:', "if False:",
             ("tests/test_nnunet_model.py::test_a_postprocessing_nnlite_cannot_apply_is_refused_in_one_line",)),
    Mutation("nnU-Net conversion: a post-processing step keeps only its first label", "nnlite/training/nnunet_model.py",
             "    return list(dict.fromkeys(labels))\n", "    return list(dict.fromkeys(labels))[:1]\n",
             ("tests/test_nnunet_model.py::test_nnunets_postprocessing_json_is_applied_by_predict_postprocess",)),
    Mutation("converted network: decoder concatenates the skip before the upsampled features",
             "nnlite/network/unet.py", "x = torch.cat((self.up(below), skip), dim=1)",
             "x = torch.cat((skip, self.up(below)), dim=1)",
             ("tests/test_nnunet_parity.py::test_converted_network_reproduces_nnunets_logits",)),
    Mutation("converted network: InstanceNorm eps 1e-6 instead of nnU-Net's 1e-5", "nnlite/network/blocks.py",
             "NORM_EPS = 1e-5", "NORM_EPS = 1e-6",
             ("tests/test_nnunet_parity.py::test_converted_network_reproduces_nnunets_logits",)),
    Mutation("regions: foreground locations stored per integer label, not per region (the old rule)",
             "nnlite/preprocessing/pipeline.py",
             "    if plans.regions:\n        return [tuple(region.labels) for region in plans.regions]\n", "",
             ("tests/test_sampling.py::test_forced_patches_of_a_region_dataset_are_centred_per_region",)),
    Mutation("regions: a region's locations only from its last label", "nnlite/preprocessing/pipeline.py",
             "voxels = np.concatenate([np.argwhere(seg[0] == label) for label in members])",
             "voxels = np.concatenate([np.argwhere(seg[0] == label) for label in members[-1:]])",
             ("tests/test_preprocessing.py::test_region_locations_are_stored_per_region_with_the_reference_stream",)),
    Mutation("regions: a folder with per-label locations is not told apart", "nnlite/preprocessing/records.py",
             "        fields[REGIONS_FIELD] = [list(region.labels) for region in plans.regions]\n",
             "        pass\n",
             ("tests/test_preprocessing.py::test_a_region_folder_with_per_label_locations_is_redone_and_refused",)),
    Mutation("regions: a one-element list makes a dataset region-based", "nnlite/data/regions.py",
             "isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())",
             "isinstance(v, (list, tuple)) for v in labels.values())",
             ("tests/test_regions.py::test_a_dataset_is_region_based_only_with_a_list_of_more_than_one_label",)),
    Mutation("memory model nnunet: a region dataset counts its outputs, not its label keys",
             "nnlite/planning/memory_budget.py",
             "        return 1 + len(regions) + (IGNORE_KEY in labels)", "        return len(regions)",
             ("tests/test_planner.py::test_nnunet_memory_model_counts_dataset_json_label_keys",)),
    Mutation("memory model nnunet: the ignore label not counted", "nnlite/planning/memory_budget.py",
             "    return len(labels)\n", "    return len(labels) - (IGNORE_KEY in labels)\n",
             ("tests/test_planner.py::test_nnunet_memory_model_counts_dataset_json_label_keys",)),
    Mutation("nnU-Net summary: a one-label region [3] keyed '3' instead of '(3,)'", "nnlite/plans.py",
             "str(r.labels[0] if r.scalar else tuple(r.labels))",
             "str(r.labels[0] if r.scalar or len(r.labels) == 1 else tuple(r.labels))",
             ("tests/test_nnunet_summary.py::test_region_keys_are_python_tuple_reprs",)),
    Mutation("nnU-Net summary: a region written as a bare 3 keyed '(3,)' instead of '3'", "nnlite/plans.py",
             "str(r.labels[0] if r.scalar else tuple(r.labels))", "str(tuple(r.labels))",
             ("tests/test_regions.py::test_nnunet_layout_keys_regions_as_nnunet_does",)),
    Mutation("a raw dataset given as WORK not recognised (only 'plans.json: not found')", "nnlite/plans.py",
             "    refuse_raw_dataset(Path(path).parent)\n", "",
             ("tests/test_cli_messages.py::test_a_raw_dataset_given_as_work_says_to_plan_it_first",)),
    Mutation("--set: a key without its section not pointed to its section", "nnlite/training/config.py",
             "if len(same_leaf) == 1 else", "if False else",
             ("tests/test_cli_messages.py::test_a_mistyped_set_key_gets_the_closest_setting",)),
    # --- rules of the reference pinned: training, loss, inference, post-processing, evaluation
    # --- rules of the reference pinned: planning, fingerprint, preprocessing, augmentation
    Mutation("target spacing: mean instead of the per-axis median", "nnlite/planning/planner.py",
             "target = np.percentile(spacings, 50, 0)", "target = np.mean(spacings, 0)",
             ("tests/test_reference_rules_planning.py::test_target_spacing_is_the_per_axis_median_not_the_mean",)),
    Mutation("target spacing: anisotropic axis at the 20th percentile instead of the 10th", "nnlite/planning/planner.py",
             "ANISO_SPACING_PERCENTILE = 10 ", "ANISO_SPACING_PERCENTILE = 20 ",
             ("tests/test_reference_rules_planning.py::test_anisotropic_axis_gets_the_10th_percentile_of_its_spacings",)),
    Mutation("target spacing: anisotropic axis not bounded by the other axes' spacing", "nnlite/planning/planner.py",
             "        if value < other_spacing:\n", "        if False:\n",
             ("tests/test_reference_rules_planning.py::test_anisotropic_target_never_drops_below_the_other_axes_spacing",)),
    Mutation("target spacing: lower bound + 1e-3 instead of + 1e-5", "nnlite/planning/planner.py",
             "ANISO_EPSILON = 1e-5 ", "ANISO_EPSILON = 1e-3 ",
             ("tests/test_reference_rules_planning.py::test_anisotropic_target_never_drops_below_the_other_axes_spacing",)),
    Mutation("target spacing: anisotropy without the size condition", "nnlite/planning/planner.py",
             "if aniso_spacing and aniso_size:", "if aniso_spacing:",
             ("tests/test_reference_rules_planning.py::test_anisotropy_needs_the_size_condition_too",)),
    Mutation("topology: minimal feature-map edge 3 instead of 4", "nnlite/planning/topology.py",
             "MIN_FEATURE_MAP = 4 ", "MIN_FEATURE_MAP = 3 ",
             ("tests/test_reference_rules_planning.py::test_pooling_stops_at_a_feature_map_edge_of_4",)),
    Mutation("topology: a lone pooling axis needs 2x instead of 3x the minimal edge", "nnlite/planning/topology.py",
             "SINGLE_AXIS_MIN_SIZE = 3 * MIN_FEATURE_MAP", "SINGLE_AXIS_MIN_SIZE = 2 * MIN_FEATURE_MAP",
             ("tests/test_reference_rules_planning.py::test_a_lone_pooling_axis_needs_3_times_the_minimal_edge",)),
    Mutation("planner: 3D width cap 256 instead of 320", "nnlite/planning/planner.py",
             "MAX_FEATURES = {3: 320, 2: 512}", "MAX_FEATURES = {3: 256, 2: 512}",
             ("tests/test_reference_rules_planning.py::test_features_double_from_32_and_are_capped_at_320_in_3d_and_512_in_2d",)),
    Mutation("planner: 2D width cap 320 instead of 512", "nnlite/planning/planner.py",
             "MAX_FEATURES = {3: 320, 2: 512}", "MAX_FEATURES = {3: 320, 2: 320}",
             ("tests/test_reference_rules_planning.py::test_features_double_from_32_and_are_capped_at_320_in_3d_and_512_in_2d",)),
    Mutation("memory proxy: 3D reference 600e6 instead of 560e6", "nnlite/planning/presets.py",
             "reference_elements={3: 560_000_000, 2: 85_000_000}", "reference_elements={3: 600_000_000, 2: 85_000_000}",
             ("tests/test_reference_rules_planning.py::test_proxy_batch_is_the_reference_value_over_the_estimate_times_the_reference_batch",)),
    Mutation("memory proxy: 2D reference 90e6 instead of 85e6", "nnlite/planning/presets.py",
             "reference_elements={3: 560_000_000, 2: 85_000_000}", "reference_elements={3: 560_000_000, 2: 90_000_000}",
             ("tests/test_reference_rules_planning.py::test_proxy_batch_is_the_reference_value_over_the_estimate_times_the_reference_batch",)),
    Mutation("memory proxy: the reference values stand for 10 GB instead of 8", "nnlite/planning/presets.py",
             "reference_gb=8.0, shrink_per_reference_batch=True", "reference_gb=10.0, shrink_per_reference_batch=True",
             ("tests/test_reference_rules_planning.py::test_proxy_batch_is_the_reference_value_over_the_estimate_times_the_reference_batch",)),
    Mutation("memory proxy: 2D reference batch 16 instead of 12", "nnlite/planning/memory_budget.py",
             "NNUNET_REFERENCE_BATCH = {3: 2, 2: 12}", "NNUNET_REFERENCE_BATCH = {3: 2, 2: 16}",
             ("tests/test_reference_rules_planning.py::test_proxy_batch_is_the_reference_value_over_the_estimate_times_the_reference_batch",)),
    Mutation("memory proxy: 3D reference batch 3 instead of 2", "nnlite/planning/memory_budget.py",
             "NNUNET_REFERENCE_BATCH = {3: 2, 2: 12}", "NNUNET_REFERENCE_BATCH = {3: 3, 2: 12}",
             ("tests/test_reference_rules_planning.py::test_proxy_batch_is_the_reference_value_over_the_estimate_times_the_reference_batch",)),
    Mutation("default planner: 10 GB budget instead of 8", "nnlite/planning/presets.py",
             "gpu_memory_gb=8.0, reference_elements={3: 560_000_000", "gpu_memory_gb=10.0, reference_elements={3: 560_000_000",
             ("tests/test_reference_rules_planning.py::test_default_planner_budget_is_8_gb",)),
    Mutation("batch cap: 6 % of the dataset's voxels instead of 5 %", "nnlite/planning/presets.py",
             "max_dataset_covered=0.05,", "max_dataset_covered=0.06,",
             ("tests/test_reference_rules_planning.py::test_batch_is_capped_at_5_percent_of_the_dataset_and_at_least_2",)),
    Mutation("batch: minimum 1 instead of 2", "nnlite/planning/memory_budget.py",
             "MIN_BATCH = 2 ", "MIN_BATCH = 1 ",
             ("tests/test_reference_rules_planning.py::test_batch_is_capped_at_5_percent_of_the_dataset_and_at_least_2",)),
    Mutation("configurations: 3D configurations planned for 2D data", "nnlite/planning/planner.py",
             "    if median[0] == 1:\n", "    if False:\n",
             ("tests/test_reference_rules_planning.py::test_2d_data_gets_only_the_2d_configuration_with_batch_dice",)),
    Mutation("configurations: batch Dice for every configuration", "nnlite/planning/planner.py",
             "use_mask_for_norm=mask, batch_dice=False,", "use_mask_for_norm=mask, batch_dice=True,",
             ("tests/test_reference_rules_planning.py::test_no_lowres_when_it_is_not_at_least_2x_smaller",)),
    Mutation("3d_lowres: created below 30 % patch coverage instead of 25 %", "nnlite/planning/planner.py",
             "LOWRES_CREATION_THRESHOLD = 0.25 ", "LOWRES_CREATION_THRESHOLD = 0.3 ",
             ("tests/test_reference_rules_planning.py::test_lowres_spacing_grows_by_1_03_per_step_until_the_patch_covers_a_quarter",)),
    Mutation("3d_lowres: spacing grows by 1.01 per step instead of 1.03", "nnlite/planning/planner.py",
             "LOWRES_SPACING_FACTOR = 1.03 ", "LOWRES_SPACING_FACTOR = 1.01 ",
             ("tests/test_reference_rules_planning.py::test_lowres_spacing_grows_by_1_03_per_step_until_the_patch_covers_a_quarter",)),
    Mutation("3d_lowres: every axis grown at once (fine axes do not catch up first)", "nnlite/planning/planner.py",
             "coarse = max(spacing) / spacing > 2", "coarse = max(spacing) / spacing > 1e9",
             ("tests/test_reference_rules_planning.py::test_lowres_spacing_grows_by_1_03_per_step_until_the_patch_covers_a_quarter",)),
    Mutation("3d_lowres: kept when its median image is less than 2x smaller", "nnlite/planning/planner.py",
             "LOWRES_MIN_SHRINK = 2 ", "LOWRES_MIN_SHRINK = 1 ",
             ("tests/test_reference_rules_planning.py::test_no_lowres_when_it_is_not_at_least_2x_smaller",)),
    Mutation("normalization: channel names not casefolded", "nnlite/planning/planner.py",
             'CHANNEL_NORMALIZATION.get(name.casefold(), "zscore")', 'CHANNEL_NORMALIZATION.get(name, "zscore")',
             ("tests/test_reference_rules_planning.py::test_normalization_follows_the_channel_name_casefolded",)),
    Mutation("normalization: noNorm channels z-scored", "nnlite/planning/planner.py",
             '"nonorm": "none"', '"nonorm": "zscore"',
             ("tests/test_reference_rules_planning.py::test_normalization_follows_the_channel_name_casefolded",)),
    Mutation("normalization: rescale_to_0_1 channels z-scored", "nnlite/planning/planner.py",
             '"rescale_to_0_1": "rescale_0_1"', '"rescale_to_0_1": "zscore"',
             ("tests/test_reference_rules_planning.py::test_normalization_follows_the_channel_name_casefolded",)),
    Mutation("normalization: other channel names left unnormalized instead of z-scored", "nnlite/planning/planner.py",
             'CHANNEL_NORMALIZATION.get(name.casefold(), "zscore")', 'CHANNEL_NORMALIZATION.get(name.casefold(), "none")',
             ("tests/test_reference_rules_planning.py::test_normalization_follows_the_channel_name_casefolded",)),
    Mutation("mask for norm: cropping must remove 50 % instead of 25 %", "nnlite/planning/planner.py",
             "MASK_NORM_CROP_THRESHOLD = 0.75 ", "MASK_NORM_CROP_THRESHOLD = 0.5 ",
             ("tests/test_reference_rules_planning.py::test_mask_for_norm_when_cropping_removed_more_than_a_quarter",)),
    Mutation("mask for norm: also at exactly 75 % kept", "nnlite/planning/planner.py",
             "median_relative_size_after_crop < MASK_NORM_CROP_THRESHOLD",
             "median_relative_size_after_crop <= MASK_NORM_CROP_THRESHOLD",
             ("tests/test_reference_rules_planning.py::test_mask_for_norm_when_cropping_removed_more_than_a_quarter",)),
    Mutation("mask for norm: also for CT and unnormalized channels", "nnlite/planning/planner.py",
             'mask = tuple(cropped and scheme == "zscore" for scheme in schemes)',
             "mask = tuple(cropped for scheme in schemes)",
             ("tests/test_reference_rules_planning.py::test_mask_for_norm_when_cropping_removed_more_than_a_quarter",)),
    Mutation("CT clipping: percentiles 1 / 99 instead of 0.5 / 99.5", "nnlite/planning/statistics.py",
             "PERCENTILES = (0.5, 50.0, 99.5)", "PERCENTILES = (1.0, 50.0, 99.0)",
             ("tests/test_reference_rules_planning.py::test_ct_clipping_percentiles_are_0_5_and_99_5",)),
    Mutation("resampling: images with order 1 instead of 3", "nnlite/plans.py",
             "resampling_order_data: int = 3", "resampling_order_data: int = 1",
             ("tests/test_reference_rules_planning.py::test_planned_resampling_orders_are_3_for_data_1_for_seg_and_probabilities_0_along_z",)),
    Mutation("resampling: labels with order 0 instead of 1", "nnlite/plans.py",
             "resampling_order_seg: int = 1", "resampling_order_seg: int = 0",
             ("tests/test_reference_rules_planning.py::test_planned_resampling_orders_are_3_for_data_1_for_seg_and_probabilities_0_along_z",)),
    Mutation("fingerprint: 1e7 foreground samples instead of 1e8", "nnlite/planning/fingerprint.py",
             "FOREGROUND_SAMPLES_TOTAL = 10e7 ", "FOREGROUND_SAMPLES_TOTAL = 1e7 ",
             ("tests/test_reference_rules_planning.py::test_fingerprint_draws_1e8_foreground_voxels_split_over_the_cases",)),
    Mutation("fingerprint: sampling seed 1235 instead of 1234", "nnlite/planning/fingerprint.py",
             "SAMPLING_SEED = 1234 ", "SAMPLING_SEED = 1235 ",
             ("tests/test_fingerprint.py::test_sampling_draws_what_nnunets_random_choice_draws",)),
    Mutation("augmentation: scaling from 0.75 instead of 0.7", "nnlite/loading/spatial_transforms.py",
             "SCALE_RANGE = (0.7, 1.4)", "SCALE_RANGE = (0.75, 1.4)",
             ("tests/test_reference_rules_planning.py::test_scaling_is_uniform_0_7_to_1_4_shared_by_the_axes",)),
    Mutation("augmentation: scaling up to 1.25 instead of 1.4", "nnlite/loading/spatial_transforms.py",
             "SCALE_RANGE = (0.7, 1.4)", "SCALE_RANGE = (0.7, 1.25)",
             ("tests/test_reference_rules_planning.py::test_scaling_is_uniform_0_7_to_1_4_shared_by_the_axes",)),
    Mutation("augmentation: 3D rotation ±45° instead of ±30°", "nnlite/loading/spatial_transforms.py",
             "ROTATION_3D = math.radians(30)", "ROTATION_3D = math.radians(45)",
             ("tests/test_reference_rules_planning.py::test_rotation_range_follows_the_patch_shape",)),
    Mutation("augmentation: dummy-2D rotation ±90° instead of ±180°", "nnlite/loading/spatial_transforms.py",
             "ROTATION_DUMMY_2D = math.radians(180)", "ROTATION_DUMMY_2D = math.radians(90)",
             ("tests/test_reference_rules_planning.py::test_rotation_range_follows_the_patch_shape",)),
    Mutation("augmentation: elongated 2D rotation ±30° instead of ±15°", "nnlite/loading/spatial_transforms.py",
             "ROTATION_2D_ELONGATED = math.radians(15)", "ROTATION_2D_ELONGATED = math.radians(30)",
             ("tests/test_reference_rules_planning.py::test_rotation_range_follows_the_patch_shape",)),
    Mutation("augmentation: 2D rotation ±90° instead of ±180°", "nnlite/loading/spatial_transforms.py",
             "ROTATION_2D = math.radians(180)", "ROTATION_2D = math.radians(90)",
             ("tests/test_reference_rules_planning.py::test_rotation_range_follows_the_patch_shape",)),
    Mutation("augmentation: 2D patches elongated above a side ratio 1.4 instead of 1.5",
             "nnlite/loading/spatial_transforms.py", "ELONGATED_2D_RATIO = 1.5 ", "ELONGATED_2D_RATIO = 1.4 ",
             ("tests/test_reference_rules_planning.py::test_rotation_range_follows_the_patch_shape",)),
    Mutation("augmentation: dummy 2D above a patch ratio 2.5 instead of 3", "nnlite/loading/spatial_transforms.py",
             "DUMMY_2D_RATIO = 3.0 ", "DUMMY_2D_RATIO = 2.5 ",
             ("tests/test_reference_rules_planning.py::test_rotation_range_follows_the_patch_shape",)),
    Mutation("augmentation: rotation p 0.25 instead of 0.2", "nnlite/loading/spatial_transforms.py",
             "P_ROTATION = 0.2 ", "P_ROTATION = 0.25 ",
             ("tests/test_reference_rules_planning.py::test_every_augmentation_fires_at_the_reference_probability",)),
    Mutation("augmentation: scaling p 0.25 instead of 0.2", "nnlite/loading/spatial_transforms.py",
             "P_SCALING = 0.2 ", "P_SCALING = 0.25 ",
             ("tests/test_reference_rules_planning.py::test_every_augmentation_fires_at_the_reference_probability",)),
    Mutation("augmentation: mirroring p 0.45 per axis instead of 0.5", "nnlite/loading/spatial_transforms.py",
             "P_MIRROR = 0.5 ", "P_MIRROR = 0.45 ",
             ("tests/test_reference_rules_planning.py::test_every_augmentation_fires_at_the_reference_probability",)),
    Mutation("augmentation: noise std up to 0.2 instead of 0.1", "nnlite/loading/intensity_transforms.py",
             "NOISE_SIGMA = (0.0, 0.1)", "NOISE_SIGMA = (0.0, 0.2)",
             ("tests/test_reference_rules_planning.py::test_noise_std_is_uniform_0_to_0_1_shared_by_the_channels",)),
    Mutation("augmentation: noise p 0.15 instead of 0.1", "nnlite/loading/intensity_transforms.py",
             "P_NOISE = 0.1 ", "P_NOISE = 0.15 ",
             ("tests/test_reference_rules_planning.py::test_every_augmentation_fires_at_the_reference_probability",)),
    Mutation("augmentation: blur sigma up to 1.5 instead of 1", "nnlite/loading/intensity_transforms.py",
             "BLUR_SIGMA = (0.5, 1.0)", "BLUR_SIGMA = (0.5, 1.5)",
             ("tests/test_reference_rules_planning.py::test_blur_sigma_is_uniform_0_5_to_1_per_axis_for_half_the_channels",)),
    Mutation("augmentation: blur p 0.25 instead of 0.2", "nnlite/loading/intensity_transforms.py",
             "P_BLUR = 0.2 ", "P_BLUR = 0.25 ",
             ("tests/test_reference_rules_planning.py::test_every_augmentation_fires_at_the_reference_probability",)),
    Mutation("augmentation: every channel blurred (per-channel p 1 instead of 0.5)",
             "nnlite/loading/intensity_transforms.py", "P_BLUR_CHANNEL = 0.5 ", "P_BLUR_CHANNEL = 1.0 ",
             ("tests/test_reference_rules_planning.py::test_blur_sigma_is_uniform_0_5_to_1_per_axis_for_half_the_channels",)),
    Mutation("augmentation: brightness from 0.8 instead of 0.75", "nnlite/loading/intensity_transforms.py",
             "BRIGHTNESS_RANGE = (0.75, 1.25)", "BRIGHTNESS_RANGE = (0.8, 1.25)",
             ("tests/test_reference_rules_planning.py::test_brightness_factor_is_bg_contrast_0_75_to_1_25_per_channel",)),
    Mutation("augmentation: brightness p 0.3 instead of 0.15", "nnlite/loading/intensity_transforms.py",
             "P_BRIGHTNESS = 0.15 ", "P_BRIGHTNESS = 0.3 ",
             ("tests/test_reference_rules_planning.py::test_every_augmentation_fires_at_the_reference_probability",)),
    Mutation("augmentation: one brightness factor shared by all channels", "nnlite/loading/intensity_transforms.py",
             "steps.append(Brightness(tuple(bg_contrast(rng, *BRIGHTNESS_RANGE) for _ in range(c))))",
             "steps.append(Brightness((bg_contrast(rng, *BRIGHTNESS_RANGE),) * c))",
             ("tests/test_reference_rules_planning.py::test_brightness_factor_is_bg_contrast_0_75_to_1_25_per_channel",)),
    Mutation("augmentation: contrast up to 1.3 instead of 1.25", "nnlite/loading/intensity_transforms.py",
             "CONTRAST_RANGE = (0.75, 1.25)", "CONTRAST_RANGE = (0.75, 1.3)",
             ("tests/test_reference_rules_planning.py::test_contrast_factor_is_bg_contrast_0_75_to_1_25_per_channel",)),
    Mutation("augmentation: contrast p 0.2 instead of 0.15", "nnlite/loading/intensity_transforms.py",
             "P_CONTRAST = 0.15 ", "P_CONTRAST = 0.2 ",
             ("tests/test_reference_rules_planning.py::test_every_augmentation_fires_at_the_reference_probability",)),
    Mutation("augmentation: BGContrast below 1 in 30 % of draws instead of half", "nnlite/loading/intensity_transforms.py",
             "if rng.random() < 0.5 and lo < 1:", "if rng.random() < 0.3 and lo < 1:",
             ("tests/test_reference_rules_planning.py::test_contrast_factor_is_bg_contrast_0_75_to_1_25_per_channel",)),
    Mutation("augmentation: low-resolution zoom from 0.6 instead of 0.5", "nnlite/loading/intensity_transforms.py",
             "LOWRES_ZOOM = (0.5, 1.0)", "LOWRES_ZOOM = (0.6, 1.0)",
             ("tests/test_reference_rules_planning.py::test_low_resolution_zoom_is_uniform_0_5_to_1_for_half_the_channels",)),
    Mutation("augmentation: low-resolution p 0.3 instead of 0.25", "nnlite/loading/intensity_transforms.py",
             "P_LOWRES = 0.25 ", "P_LOWRES = 0.3 ",
             ("tests/test_reference_rules_planning.py::test_every_augmentation_fires_at_the_reference_probability",)),
    Mutation("augmentation: every channel at low resolution (per-channel p 1 instead of 0.5)",
             "nnlite/loading/intensity_transforms.py", "P_LOWRES_CHANNEL = 0.5 ", "P_LOWRES_CHANNEL = 1.0 ",
             ("tests/test_reference_rules_planning.py::test_low_resolution_zoom_is_uniform_0_5_to_1_for_half_the_channels",)),
    Mutation("augmentation: gamma up to 2 instead of 1.5", "nnlite/loading/intensity_transforms.py",
             "GAMMA_RANGE = (0.7, 1.5)", "GAMMA_RANGE = (0.7, 2.0)",
             ("tests/test_reference_rules_planning.py::test_gamma_is_bg_contrast_0_7_to_1_5_per_channel",)),
    Mutation("augmentation: inverted gamma p 0.15 instead of 0.1", "nnlite/loading/intensity_transforms.py",
             "P_GAMMA_INVERTED = 0.1 ", "P_GAMMA_INVERTED = 0.15 ",
             ("tests/test_reference_rules_planning.py::test_every_augmentation_fires_at_the_reference_probability",)),
    Mutation("augmentation: gamma p 0.35 instead of 0.3", "nnlite/loading/intensity_transforms.py",
             "P_GAMMA = 0.3 ", "P_GAMMA = 0.35 ",
             ("tests/test_reference_rules_planning.py::test_every_augmentation_fires_at_the_reference_probability",)),
    Mutation("topology: axes within 3x (not 2x) of the finest spacing pooled", "nnlite/planning/topology.py",
             "SPACING_RATIO_LIMIT = 2 ", "SPACING_RATIO_LIMIT = 3 ",
             ("tests/test_reference_rules_planning.py::test_axes_2x_coarser_than_the_finest_are_not_pooled_and_get_kernel_1",)),
    Mutation("topology: initial 3D patch of 224³ instead of 256³", "nnlite/planning/topology.py",
             "INITIAL_PATCH_EDGE = {3: 256, 2: 2048}", "INITIAL_PATCH_EDGE = {3: 224, 2: 2048}",
             ("tests/test_reference_rules_planning.py::test_initial_patch_has_the_volume_of_256_cubed_or_2048_squared",)),
    Mutation("topology: initial 2D patch of 1024² instead of 2048²", "nnlite/planning/topology.py",
             "INITIAL_PATCH_EDGE = {3: 256, 2: 2048}", "INITIAL_PATCH_EDGE = {3: 256, 2: 1024}",
             ("tests/test_reference_rules_planning.py::test_initial_patch_has_the_volume_of_256_cubed_or_2048_squared",)),
    Mutation("planner: the coarsest axis not moved first", "nnlite/planning/planner.py",
             "return (worst,) + tuple(a for a in range(len(spacing)) if a != worst)",
             "return tuple(range(len(spacing)))",
             ("tests/test_planner.py::test_coarse_axis_is_moved_first",)),
    Mutation("class locations: at least 5000 per class instead of 10000", "nnlite/preprocessing/pipeline.py",
             "MIN_LOCATIONS = 10000 ", "MIN_LOCATIONS = 5000 ",
             ("tests/test_preprocessing.py::test_class_locations_count_and_lie_on_their_label",)),
    Mutation("class locations: at least 2 % of a class instead of 1 %", "nnlite/preprocessing/pipeline.py",
             "MIN_LOCATION_FRACTION = 0.01 ", "MIN_LOCATION_FRACTION = 0.02 ",
             ("tests/test_preprocessing.py::test_class_locations_count_and_lie_on_their_label",)),
)


def copy_tree(target: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        else:
            shutil.copy2(source, target / name)


def run_tests(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, str]:
    """(outcome, detail): outcome is "passed", "failed" (a test failed: the mutation is caught),
    "error" (collection, import or fixture error; no test ran) or "timeout"; detail names the first
    failing test or gives the last output line."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
               f"--hypothesis-seed={HYPOTHESIS_SEED}", *tests]
    try:
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout,
                                check=False)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result after {timeout:.0f} s"
    reports = [line for line in result.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    if result.returncode == 0:
        return "passed", last
    first = reports[0].split(" ", 1)[1].split(" - ")[0] if reports else last
    # pytest exits 1 when a test failed or errored; 2-5 are interruptions, internal and usage errors,
    # and "no tests collected". With -x the first report is the one that stopped the run.
    caught = result.returncode == 1 and bool(reports) and reports[0].startswith("FAILED ")
    return ("failed" if caught else "error"), first


def apply(root: Path, mutation: Mutation) -> None:
    path = root / mutation.path
    text = path.read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise SystemExit(f"error: {mutation.path}: the snippet of '{mutation.name}' occurs {count} times "
                         f"(expected once): {mutation.old!r}")
    path.write_text(text.replace(mutation.old, mutation.new))


def check_baseline(tests: tuple[str, ...], timeout: float) -> None:
    """The tests must pass on an unmutated copy (run once per set of tests)."""
    with tempfile.TemporaryDirectory(prefix="nnlite-baseline-") as tmp:
        copy_tree(Path(tmp))
        outcome, detail = run_tests(Path(tmp), tests, timeout)
    if outcome != "passed":
        raise SystemExit(f"error: {' '.join(tests)}: {outcome} without any mutation ({detail})")


def check_mutation(mutation: Mutation, timeout: float) -> tuple[str, float]:
    """'caught by <test>', 'SURVIVED', 'ERROR (...)' or 'TIMEOUT (...)'; the seconds it took."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nnlite-mutation-") as tmp:
        root = Path(tmp)
        copy_tree(root)
        apply(root, mutation)
        outcome, detail = run_tests(root, mutation.tests, timeout)
    result = {"passed": "SURVIVED", "failed": f"caught by {detail}",
              "error": f"ERROR ({detail})", "timeout": f"TIMEOUT ({detail})"}[outcome]
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the mutations whose name contains this text")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one test run may take")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if args.only.lower() in m.name.lower()]
    for tests in dict.fromkeys(m.tests for m in chosen):
        check_baseline(tests, args.timeout)
    print("| mutation | result | seconds |\n|---|---|---|")
    caught = 0
    for mutation in chosen:
        result, seconds = check_mutation(mutation, args.timeout)
        caught += result.startswith("caught")
        print(f"| {mutation.name} | {result} | {seconds:.0f} |", flush=True)
    print(f"\n{len(chosen)} mutations, {caught} caught by a failing test, {len(chosen) - caught} not caught "
          "(survived, error or timeout)")
    return 0 if caught == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
