"""nnlite.data.image_io: axis order, dtypes, scaled data, 2D images, affine round trip, damaged files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nnlite.common.errors import UserError
from nnlite.data.image_io import (SPACING_2D_FACTOR, read_case, read_header, read_image, write_image,
                                  write_seg)

SCL_OFFSET = 112  # byte offset of scl_slope (then scl_inter) in a NIfTI-1 header
PIXDIM_OFFSET = 76  # byte offset of pixdim[0] (8 float32) in a NIfTI-1 header


def save_nifti(path: Path, voxels: np.ndarray, zooms=(0.5, 0.75, 3.0)) -> Path:
    """Write voxels in NIfTI (x, y, z) order with the given zooms, bypassing nnlite.data.image_io."""
    affine = np.diag([*zooms[: min(3, voxels.ndim)], *[1.0] * (4 - min(3, voxels.ndim))])
    nib.save(nib.Nifti1Image(voxels, affine), str(path))
    return path


def patch_header(path: Path, offset: int, values) -> Path:
    """Overwrite header bytes in place (nibabel's save would recompute scaling and pixdim)."""
    gz = path.name.endswith(".gz")
    raw = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    block = np.asarray(values, "<f4").tobytes()
    raw[offset : offset + len(block)] = block
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    return path


def save_scaled_nifti(path: Path, stored: np.ndarray, slope: float, inter: float) -> Path:
    """Write stored integers with scl_slope/scl_inter in the header."""
    return patch_header(save_nifti(path, stored), SCL_OFFSET, [slope, inter])


def test_axis_order_is_z_y_x(tmp_path, rng):
    voxels = rng.normal(size=(4, 5, 6)).astype(np.float32)  # (x, y, z)
    image = read_image(save_nifti(tmp_path / "a.nii.gz", voxels, zooms=(0.5, 0.75, 3.0)))
    assert image.array.shape == (6, 5, 4)
    assert image.spacing == (3.0, 0.75, 0.5)
    assert image.array[2, 3, 1] == voxels[1, 3, 2]
    np.testing.assert_array_equal(image.array, voxels.transpose(2, 1, 0))
    assert image.array.flags.c_contiguous


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_dtypes_read_as_float32(tmp_path, rng, dtype):
    voxels = rng.integers(0, 200, size=(3, 4, 5)).astype(dtype)
    image = read_image(save_nifti(tmp_path / "a.nii", voxels))
    assert image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, voxels.transpose(2, 1, 0).astype(np.float32))


def test_scl_slope_is_applied(tmp_path, rng):
    voxels = rng.integers(0, 1000, size=(3, 4, 5)).astype(np.int16)
    path = save_scaled_nifti(tmp_path / "scaled.nii.gz", voxels, slope=0.5, inter=-10.0)
    proxy = nib.load(str(path)).dataobj  # nibabel moves the scaling from the header to here
    assert (proxy.slope, proxy.inter) == (0.5, -10.0)
    image = read_image(path)
    np.testing.assert_allclose(image.array, voxels.transpose(2, 1, 0) * 0.5 - 10.0)


def test_2d_image_gets_dummy_slice_axis(tmp_path, rng):
    voxels = rng.normal(size=(7, 9)).astype(np.float32)  # (x, y)
    image = read_image(save_nifti(tmp_path / "flat.nii.gz", voxels, zooms=(0.5, 0.8)))
    assert image.array.shape == (1, 9, 7)
    assert image.spacing == pytest.approx((SPACING_2D_FACTOR * 0.8, 0.8, 0.5))
    np.testing.assert_array_equal(image.array[0], voxels.T)


def test_trailing_singleton_axes_are_dropped(tmp_path, rng):
    voxels = rng.normal(size=(3, 4, 5, 1)).astype(np.float32)
    assert read_image(save_nifti(tmp_path / "a.nii.gz", voxels)).array.shape == (5, 4, 3)


def test_4d_image_is_a_user_error(tmp_path, rng):
    path = save_nifti(tmp_path / "vec.nii.gz", rng.normal(size=(3, 4, 5, 2)).astype(np.float32))
    with pytest.raises(UserError, match="2D or 3D") as info:
        read_image(path)
    assert info.value.where == str(path)


def test_affine_round_trip_of_a_label_map(tmp_path, rng):
    affine = np.array([[0, 0, -2.5, 30], [0, 0.8, 0, -40], [0.7, 0, 0, 12], [0, 0, 0, 1.0]])
    source = nib.Nifti1Image(rng.normal(size=(6, 5, 4)).astype(np.float32), affine)
    nib.save(source, str(tmp_path / "img.nii.gz"))
    image = read_image(tmp_path / "img.nii.gz")
    seg = rng.integers(0, 3, size=image.array.shape).astype(np.int16)
    written = write_seg(tmp_path / "seg.nii.gz", seg, image.affine)
    back = nib.load(str(written))
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(read_image(written).array, seg)
    assert read_image(written).spacing == pytest.approx(image.spacing)
    assert not list(tmp_path.glob("*.tmp*"))


def test_write_image_keeps_values_and_dtype(tmp_path, rng):
    array = rng.normal(size=(4, 6, 5)) * 100
    for dtype in (np.int16, np.float32):
        path = write_image(tmp_path / f"{np.dtype(dtype).name}.nii.gz", array.astype(dtype), np.eye(4))
        assert nib.load(str(path)).get_data_dtype() == dtype
        np.testing.assert_array_equal(read_image(path).array, array.astype(dtype).astype(np.float32))


def test_negative_labels_are_written_as_int16(tmp_path):
    seg = np.array([[[-1, 0], [1, 2]]], dtype=np.int64)
    path = write_seg(tmp_path / "s.nii.gz", seg, np.eye(4))
    np.testing.assert_array_equal(read_image(path).array, seg)


def test_read_case_stacks_channels(tmp_path, rng):
    channels = [rng.normal(size=(3, 4, 5)).astype(np.float32) for _ in range(2)]
    paths = [save_nifti(tmp_path / f"c_{i:04d}.nii.gz", v) for i, v in enumerate(channels)]
    case = read_case(paths)
    assert case.data.shape == (2, 5, 4, 3) and case.data.dtype == np.float32
    np.testing.assert_array_equal(case.data[1], channels[1].transpose(2, 1, 0))


def test_read_case_rejects_shape_and_spacing_mismatch(tmp_path, rng):
    a = save_nifti(tmp_path / "a.nii.gz", rng.normal(size=(3, 4, 5)).astype(np.float32))
    b = save_nifti(tmp_path / "b.nii.gz", rng.normal(size=(3, 4, 6)).astype(np.float32))
    c = save_nifti(tmp_path / "c.nii.gz", rng.normal(size=(3, 4, 5)).astype(np.float32), zooms=(1, 1, 1))
    with pytest.raises(UserError, match="shape") as info:
        read_case([a, b])
    assert info.value.where == str(b)
    with pytest.raises(UserError, match="spacing") as info:
        read_case([a, c])
    assert info.value.where == str(c)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_header_spacing_sees_zero_pixdim(tmp_path, rng, ending):
    path = save_nifti(tmp_path / f"a{ending}", rng.normal(size=(3, 4, 5)).astype(np.float32))
    patch_header(path, PIXDIM_OFFSET + 4 * 3, np.float32(0.0))  # pixdim[3] = z spacing
    assert nib.load(str(path)).header.get_zooms()[2] == 1.0  # what nibabel makes of it
    assert read_header(path)[0] == (0.0, 0.75, 0.5)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_truncated_file_is_a_user_error(tmp_path, rng, ending):
    path = save_nifti(tmp_path / f"a{ending}", rng.normal(size=(20, 20, 20)).astype(np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError) as info:
        read_image(path)
    assert info.value.where == str(path)


def test_garbage_file_is_a_user_error(tmp_path):
    path = tmp_path / "junk.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header at all" * 3))
    with pytest.raises(UserError, match="unreadable"):
        read_image(path)


def test_missing_file_and_other_format(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_image(tmp_path / "none.nii.gz")
    with pytest.raises(UserError, match="unsupported image format"):
        read_image(tmp_path / "scan.xyz")
