"""Export in bounded memory: the label map built one class channel at a time equals the whole-array
resample + argmax (regions: painted), and its peak memory does not grow with the number of classes;
saved probabilities are streamed into `<case>.npz` one channel at a time, temperature included."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
import torch

from inference_fixtures import CONFIG, tiny_plans
from nnlite.data.cropping import uncrop
from nnlite.data.regions import parse_region_labels
from nnlite.inference.outputs import export_prediction, members_in_original, probabilities_in_crop
from nnlite.inference.saved_probabilities import (HeldProbabilities, ProbabilityFile, load_probabilities,
                                                  write_probabilities)
from nnlite.inference.temperature import scale_probabilities
from nnlite.plans import Plans
from nnlite.preprocessing.pipeline import CaseProperties, transposed_spacing
from nnlite.preprocessing.resampling import resample_image, separate_z_axis

NETWORK_SPACING = (4.0, 1.0, 1.0)  # preprocessed axis order; coarse along z → separate-z export
BRATS = parse_region_labels("dataset.json", {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                                             "enhancing tumor": 3}, [1, 2, 3])[1]


def _case(network_shape, crop_shape, raw_shape, original_spacing, transpose, offset=1) -> CaseProperties:
    """Properties of a case whose crop starts at `offset` inside the (transposed) raw volume."""
    shape_before = tuple(raw_shape[a] for a in transpose)
    bbox = tuple((offset, offset + n) for n in crop_shape)
    assert all(stop <= size for (_, stop), size in zip(bbox, shape_before))
    return CaseProperties(case="m", original_spacing=original_spacing, shape_before_crop=shape_before,
                          bbox=bbox, shape_after_crop=tuple(crop_shape), spacing=NETWORK_SPACING,
                          shape=tuple(network_shape))


def _plans(classes: int, transpose=(0, 1, 2), regions=()) -> Plans:
    plans = tiny_plans(labels=classes - 1, spacing=NETWORK_SPACING, transpose=transpose)
    if regions:
        plans = replace(plans, labels={"background": 0, "label_1": 1, "label_2": 2, "label_3": 3},
                        regions=tuple(regions))
    return plans


def _tied_probabilities(rng, classes: int, shape) -> np.ndarray:
    """Coarsely quantised probabilities with duplicated channels, so many voxels tie exactly."""
    probs = rng.integers(0, 4, size=(classes, *shape)).astype(np.float32) / 4
    probs[classes - 1] = probs[1]  # the last class ties with class 1 everywhere
    return probs


def _expected(probs: np.ndarray, props: CaseProperties, plans: Plans) -> np.ndarray:
    """The whole-array formula: every channel resampled, then argmax (regions: painted in order),
    uncropped with background, transposed back to the raw axis order."""
    spacing = transposed_spacing(props.original_spacing, plans)
    order = plans.configurations[CONFIG].resampling_order_probabilities
    whole = resample_image(probs, props.shape_after_crop, props.spacing, spacing, order=order)
    if plans.regions:
        seg = np.zeros(whole.shape[1:], np.uint8)
        for region, channel in zip(plans.regions, whole):
            seg[channel > 0.5] = region.painted_as
    else:
        seg = np.argmax(whole, axis=0).astype(np.uint8)
    return uncrop(seg, props.bbox, props.shape_before_crop, 0).transpose(plans.transpose_backward)


@pytest.mark.parametrize("transpose", [(0, 1, 2), (2, 0, 1)])
@pytest.mark.parametrize("regions", [(), BRATS])
def test_per_class_export_equals_the_whole_array_argmax(rng, transpose, regions):
    classes = len(regions) or 5
    plans = _plans(classes, transpose, regions)
    raw = (36, 38, 36)  # raw axis order; both orders hold the crop below
    crop = (6, 26, 34)  # preprocessed axis order
    spacing = tuple(NETWORK_SPACING[transpose.index(a)] / 2 for a in range(3))  # raw order, twice as fine
    props = _case((3, 13, 17), crop, raw, spacing, transpose)
    assert separate_z_axis(props.spacing, transposed_spacing(spacing, plans)) == 0
    probs = _tied_probabilities(rng, classes, props.shape)
    held = HeldProbabilities(classes)
    seg = members_in_original([(probabilities_in_crop(torch.from_numpy(probs), props, plans, CONFIG), props)],
                              plans, held.add)
    saved = held.array
    expected = _expected(probs, props, plans)
    assert seg.dtype == np.uint8 and len(np.unique(expected)) > 2
    np.testing.assert_array_equal(seg, expected)
    assert saved.shape == (classes, *raw) and saved.dtype == np.float16
    if not regions:
        np.testing.assert_array_equal(saved.argmax(0), expected)  # float16 rounding keeps these ties


def test_an_ensemble_is_argmax_of_its_members_mean_one_class_at_a_time(rng):
    plans = _plans(4)
    spacing = (2.0, 0.5, 0.5)
    props = _case((3, 13, 17), (6, 26, 34), (8, 28, 36), spacing, (0, 1, 2))
    members = [_tied_probabilities(rng, 4, props.shape) for _ in range(2)]
    held = HeldProbabilities(4)
    seg = members_in_original([(probabilities_in_crop(m, props, plans, CONFIG), props) for m in members],
                              plans, held.add)
    saved = held.array
    target = transposed_spacing(spacing, plans)
    mean = np.zeros((4, *props.shape_before_crop), np.float32)
    for member in members:
        cropped = resample_image(member, props.shape_after_crop, props.spacing, target, order=1)
        mean += np.stack([uncrop(c, props.bbox, props.shape_before_crop, float(k == 0))
                          for k, c in enumerate(cropped.astype(np.float16))])
    mean /= np.float32(2)
    np.testing.assert_array_equal(seg, np.argmax(mean, axis=0).astype(np.uint8))
    np.testing.assert_array_equal(saved, mean.astype(np.float16))


CROP, RAW = (24, 48, 48), (48, 96, 96)  # network space = the crop; the original grid twice as fine
CHANNEL_BYTES = int(np.prod(RAW)) * 4  # one class channel of the original grid in float32
SLACK_BYTES = 256 * 1024  # interpreter and writer noise between two runs


def _export_peak(tmp_path, classes: int, save_probabilities: bool = False) -> int:
    """Peak bytes traced while exporting one case's label map (network-space input already held),
    and its probabilities (`<case>.npz`) when `save_probabilities`."""
    plans = _plans(classes)
    props = _case(CROP, RAW, RAW, (2.0, 0.5, 0.5), (0, 1, 2), offset=0)
    probs = np.random.default_rng(classes).random((classes, *CROP), dtype=np.float32)
    tracemalloc.start()
    try:
        export_prediction(probs, props, plans, CONFIG, tmp_path / f"k{classes}.nii.gz", save_probabilities,
                          affine=np.eye(4))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_export_peak_memory_grows_by_at_most_one_class_channel(tmp_path):
    few, many = _export_peak(tmp_path, 4), _export_peak(tmp_path, 16)
    assert many - few <= CHANNEL_BYTES + SLACK_BYTES, (
        f"peak {few / 2**20:.1f} MiB with 4 classes, {many / 2**20:.1f} MiB with 16: the export holds "
        f"more than one class channel ({CHANNEL_BYTES / 2**20:.1f} MiB) per class")


def test_saved_probabilities_are_streamed_not_held_whole(tmp_path):
    few, many = _export_peak(tmp_path, 4, save_probabilities=True), _export_peak(tmp_path, 16, save_probabilities=True)
    assert many - few <= CHANNEL_BYTES + SLACK_BYTES, (
        f"peak {few / 2**20:.1f} MiB with 4 classes, {many / 2**20:.1f} MiB with 16 while saving the "
        f"probabilities: the .npz is built whole instead of one class channel at a time")
    saved = load_probabilities(tmp_path / "k16.npz")
    assert saved.shape == (16, *RAW) and saved.dtype == np.float16


def _softmax(rng, classes: int, shape) -> np.ndarray:
    logits = rng.normal(0, 2, size=(classes, *shape)).astype(np.float32)
    exp = np.exp(logits - logits.max(0))
    return (exp / exp.sum(0)).astype(np.float16)


def test_a_streamed_npz_holds_what_np_savez_writes(rng, tmp_path):
    probs = _softmax(rng, 5, (6, 7, 8))
    write_probabilities(tmp_path / "streamed.npz", probs)
    with open(tmp_path / "whole.npz", "wb") as handle:
        np.savez(handle, probabilities=probs)
    with np.load(tmp_path / "streamed.npz") as streamed, np.load(tmp_path / "whole.npz") as whole:
        assert list(streamed.keys()) == list(whole.keys()) == ["probabilities"]
        np.testing.assert_array_equal(streamed["probabilities"], whole["probabilities"])
        assert streamed["probabilities"].dtype == np.float16


@pytest.mark.parametrize("temperature", [0.6, 1.8])
@pytest.mark.parametrize("sigmoid", [False, True])
def test_temperature_applied_while_streaming_equals_scaling_the_whole_array(rng, tmp_path, temperature, sigmoid):
    probs = rng.random((3, 5, 6, 7)).astype(np.float16) if sigmoid else _softmax(rng, 4, (5, 6, 7))
    with ProbabilityFile(tmp_path / "c.npz", len(probs), temperature, sigmoid) as stream:
        for channel in probs:
            stream.add(channel)
        stream.finish()
    expected = scale_probabilities(probs, temperature, sigmoid).astype(np.float16)
    saved = load_probabilities(tmp_path / "c.npz")
    np.testing.assert_allclose(saved.astype(np.float32), expected.astype(np.float32), atol=1e-3)
    assert not np.allclose(saved.astype(np.float32), probs.astype(np.float32), atol=1e-2)  # T changed them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]  # the unscaled pass file is gone


def test_a_stream_that_fails_or_stops_short_leaves_no_file(rng, tmp_path):
    probs = _softmax(rng, 3, (4, 5, 6))
    with pytest.raises(RuntimeError):
        with ProbabilityFile(tmp_path / "a.npz", 3, temperature=0.5) as stream:
            stream.add(probs[0])
            raise RuntimeError("the export of class 1 failed")
    with pytest.raises(ValueError, match="2 of 3"):
        with ProbabilityFile(tmp_path / "b.npz", 3) as stream:
            stream.add(probs[0])
            stream.add(probs[1])
            stream.finish()
    with pytest.raises(RuntimeError):  # finished, but the case's other files failed
        with ProbabilityFile(tmp_path / "c.npz", 1) as stream:
            stream.add(probs[0])
            stream.finish()
            raise RuntimeError("the label map could not be written")
    assert list(tmp_path.iterdir()) == []
