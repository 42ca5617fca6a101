"""data/orientation: cases reoriented to RAS as nnU-Net's NibabelIOWithReorient reads them, and back.

The expectation is nibabel's own `as_closest_canonical` (the RAS orientation nnU-Net's reader asks
nibabel for), never nnlite's code; benchmarks/nnunet_reorient_check.py compares with nnU-Net's
reader itself (all 48 axis orientations: voxels, spacing and written files equal).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from nnlite.common.errors import UserError
from nnlite.data.image_io import read_case
from nnlite.data.orientation import (
    from_ras,
    read_oriented,
    reader_orientation,
    to_ras,
    written_oriented,
)


def stored(path, voxels, axes, signs, zooms=(0.7, 1.3, 3.0)):
    """A NIfTI whose voxel axis a runs along world axis axes[a] with sign signs[a]."""
    affine = np.eye(4)
    affine[:3, :3] = 0
    for voxel_axis, (world_axis, sign) in enumerate(zip(axes, signs)):
        affine[world_axis, voxel_axis] = sign * zooms[voxel_axis]
    affine[:3, 3] = (5.0, -3.0, 8.0)
    nib.save(nib.Nifti1Image(voxels, affine), path)
    return nib.load(path)  # the affine as stored (float32 in the header)


@pytest.mark.parametrize("axes, signs", [((2, 0, 1), (1, -1, 1)), ((0, 1, 2), (-1, -1, 1)),
                                         ((1, 2, 0), (-1, 1, -1))])
def test_a_case_is_read_in_nibabels_closest_canonical_orientation_and_written_back(tmp_path, axes, signs):
    voxels = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    image = stored(tmp_path / "case_0000.nii.gz", voxels, axes, signs)
    canonical = nib.as_closest_canonical(image)
    case = to_ras(read_case([tmp_path / "case_0000.nii.gz"]))
    expected = np.asarray(canonical.dataobj).transpose(2, 1, 0)[None]  # nnlite's (C, Z, Y, X)
    np.testing.assert_array_equal(case.data, expected)
    assert case.spacing == pytest.approx([float(z) for z in canonical.header.get_zooms()[::-1]])
    np.testing.assert_array_equal(case.affine, image.affine)  # the file's: what outputs are written with
    back = from_ras(case.data, case.affine)
    np.testing.assert_array_equal(back, voxels.transpose(2, 1, 0)[None])
    np.testing.assert_array_equal(written_oriented(case.data[0], case.affine, "RAS"), voxels.transpose(2, 1, 0))


def test_a_case_already_in_ras_order_and_no_setting_are_left_as_read(tmp_path):
    voxels = np.arange(120, dtype=np.float32).reshape(4, 5, 6)
    stored(tmp_path / "ras_0000.nii.gz", voxels, (0, 1, 2), (1, 1, 1))
    read = read_case([tmp_path / "ras_0000.nii.gz"])
    assert to_ras(read) is read
    stored(tmp_path / "lps_0000.nii.gz", voxels, (0, 1, 2), (-1, -1, 1))
    other = read_case([tmp_path / "lps_0000.nii.gz"])
    assert read_oriented(other, None) is other
    with pytest.raises(UserError, match="LPS"):
        read_oriented(other, "LPS")


def test_nnunet_reader_names_map_onto_nnlite_or_are_refused():
    assert reader_orientation("plans.json", "NibabelIOWithReorient") == "RAS"
    assert {reader_orientation("plans.json", name) for name in
            ("SimpleITKIO", "NibabelIO", "NaturalImage2DIO", "Tiff3DIO")} == {None}
    with pytest.raises(UserError, match="SimpleITKIOWithReorient"):
        reader_orientation("plans.json", "SimpleITKIOWithReorient")
