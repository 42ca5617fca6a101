"""Pictures: a PNG of the expected size per case with each label's colour in the label panels;
slice choice follows the foreground."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from matplotlib import pyplot as plt

from nnlite.common.cli import run
from nnlite.data.image_io import write_image, write_seg
from nnlite.evaluation.pictures import DPI, PANEL_INCHES, foreground_slices
from nnlite.visualize import main as visualize_main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
AFFINE = np.diag([0.8, 0.8, 3.0, 1.0])


def test_foreground_slices_only_where_labels_are():
    seg = np.zeros((10, 4, 4), np.int16)
    seg[[2, 3, 7], 1, 1] = 1
    assert foreground_slices([seg, np.zeros_like(seg)]) == [2, 3, 7]
    assert foreground_slices([np.zeros_like(seg)]) == [5]
    seg[:, 0, 0] = 2
    picked = foreground_slices([seg], max_slices=4)
    assert len(picked) == 4 and picked[0] == 0 and picked[-1] == 9


def test_png_written_with_signature_and_size(tmp_path, rng):
    images, ref, pred, post = (tmp_path / n for n in ("img", "ref", "pred", "post"))
    for channel in range(2):
        write_image(images / f"case1_{channel:04d}.nii.gz",
                    rng.normal(size=(6, 20, 16)).astype(np.float32), AFFINE)
    seg = np.zeros((6, 20, 16), np.uint8)
    seg[2:4, 5:12, 4:9] = 1
    seg[3, 14:17, 10:13] = 2
    write_seg(ref / "case1.nii.gz", seg, AFFINE)
    noisy = seg.copy()
    noisy[0, 0, 0] = 1
    write_seg(pred / "case1.nii.gz", noisy, AFFINE)
    write_seg(post / "case1.nii.gz", seg, AFFINE)
    out = tmp_path / "pictures"
    assert visualize_main([str(images), str(ref), str(pred), str(out), "--postprocessed", str(post)]) == 0
    png = (out / "case1.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    rows, cols = 3, 2 + 3  # slices 0, 2, 3 hold foreground; 2 channels + ref, pred, post
    assert width == pytest.approx(cols * PANEL_INCHES * DPI, abs=2)
    assert height == pytest.approx(rows * PANEL_INCHES * DPI, abs=2)
    pixels = plt.imread(out / "case1.png")[..., :3]  # (H, W, RGB) in [0, 1]
    blue = pixels[..., 2] - pixels[..., 0] > 0.2  # label 1's colour (tab10 blue) over gray
    orange = pixels[..., 0] - pixels[..., 2] > 0.2  # label 2's colour (tab10 orange)
    assert blue.sum() > 100 and orange.sum() > 20
    image_columns = 2 * width // cols  # the two channel panels show no label colour
    assert not (blue | orange)[:, :image_columns - 2].any()


def test_missing_reference_names_the_case(tmp_path, rng, capsys):
    images, ref, pred = tmp_path / "img", tmp_path / "ref", tmp_path / "pred"
    write_image(images / "lonely_0000.nii.gz", rng.normal(size=(3, 8, 8)).astype(np.float32), AFFINE)
    write_seg(pred / "lonely.nii.gz", np.zeros((3, 8, 8), np.uint8), AFFINE)
    ref.mkdir()
    assert run(visualize_main, [str(images), str(ref), str(pred), str(tmp_path / "o")]) == 2
    assert "error: lonely:" in capsys.readouterr().err


@pytest.mark.parametrize("missing, problem", [("image", "no image"), ("prediction", "no label map")])
def test_the_case_list_is_checked_before_any_picture_is_written(tmp_path, rng, capsys, missing, problem):
    images, ref, pred = tmp_path / "img", tmp_path / "ref", tmp_path / "pred"
    for case in ("a", "b"):
        if not (case == "b" and missing == "image"):
            write_image(images / f"{case}_0000.nii.gz", rng.normal(size=(3, 8, 8)).astype(np.float32), AFFINE)
        write_seg(ref / f"{case}.nii.gz", np.zeros((3, 8, 8), np.uint8), AFFINE)
        if not (case == "b" and missing == "prediction"):
            write_seg(pred / f"{case}.nii.gz", np.zeros((3, 8, 8), np.uint8), AFFINE)
    out = tmp_path / "o"
    assert run(visualize_main, [str(images), str(ref), str(pred), str(out), "--cases", "a", "b"]) == 2
    assert capsys.readouterr().err.startswith(f"error: b: {problem}")
    assert not out.exists()
