"""nnlite's reading of a NibabelIOWithReorient model's cases against nnU-Net's own reader.

Run with a Python that has nnunetv2 (never needed by nnlite or its tests):
    PYTHONPATH=. /path/to/venv-with-nnunetv2/bin/python benchmarks/nnunet_reorient_check.py [FOLDER]

For NIfTI files stored in every one of 48 axis orientations (permutations × flips of an oblique
affine), it reads each with nnU-Net's NibabelIOWithReorient and with nnlite (read_case +
data.orientation.to_ras) and compares voxels and spacing; then writes a label map back with both
(nnU-Net's write_seg, nnlite's from_ras + write_seg) and compares the written files' voxels and
affines. Prints one line per kind of comparison and exits 1 on any difference.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from nnlite.data.image_io import read_case, write_seg
from nnlite.data.orientation import from_ras, to_ras


def oriented_affines() -> list[np.ndarray]:
    """48 affines: every permutation and sign of the voxel axes, anisotropic, slightly oblique."""
    angle = np.deg2rad(7.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affines = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            linear = np.zeros((3, 3))
            for voxel_axis, (world_axis, sign) in enumerate(zip(perm, signs)):
                linear[world_axis, voxel_axis] = sign * (0.7, 1.3, 3.0)[voxel_axis]
            affine = np.eye(4)
            affine[:3, :3], affine[:3, 3] = rotation @ linear, (12.5, -40.0, 7.25)
            affines.append(affine)
    return affines


def main(folder: Path) -> int:
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

    nnunet = NibabelIOWithReorient()
    rng = np.random.default_rng(0)
    voxels = rng.normal(size=(9, 11, 13)).astype(np.float32)
    labels = (rng.random((9, 11, 13)) * 3).astype(np.uint8)
    worst = {"read voxels": 0.0, "read spacing": 0.0, "written voxels": 0.0, "written affine": 0.0}
    for index, affine in enumerate(oriented_affines()):
        image = folder / f"case_{index:02d}_0000.nii.gz"
        nib.save(nib.Nifti1Image(voxels, affine), image)
        theirs, props = nnunet.read_images([str(image)])
        mine = to_ras(read_case([image]))
        same_shape = theirs.shape == mine.data.shape
        worst["read voxels"] = max(worst["read voxels"], 1.0 if not same_shape else
                                   float(np.mean(theirs != mine.data)))
        worst["read spacing"] = max(worst["read spacing"],
                                    float(np.max(np.abs(np.subtract(props["spacing"], mine.spacing)))))
        seg_ras = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(labels, affine)).dataobj).transpose(2, 1, 0)
        nnunet.write_seg(seg_ras, str(folder / f"theirs_{index:02d}.nii.gz"), props)
        write_seg(folder / f"mine_{index:02d}.nii.gz", from_ras(seg_ras, mine.affine), mine.affine)
        a, b = (nib.load(folder / f"{who}_{index:02d}.nii.gz") for who in ("theirs", "mine"))
        worst["written voxels"] = max(worst["written voxels"], 1.0 if a.shape != b.shape else
                                      float(np.mean(np.asarray(a.dataobj) != np.asarray(b.dataobj))))
        worst["written affine"] = max(worst["written affine"], float(np.max(np.abs(a.affine - b.affine))))
    for name, value in worst.items():
        unit = "fraction of voxels differing" if "voxels" in name else "max abs difference"
        print(f"{name}: worst over 48 orientations {value:.3g} ({unit})")
    return 0 if all(v <= 1e-6 for v in worst.values()) else 1


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp)))
