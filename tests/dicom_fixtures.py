"""Write small DICOM MR series with pydicom (shuffled file names) and their NIfTI twins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class SeriesGeometry:
    """Where the slices lie (LPS, as DICOM stores it): spacing (z, y, x) in mm."""

    spacing: tuple[float, float, float] = (2.0, 0.75, 0.5)
    origin: tuple[float, float, float] = (-40.0, -30.0, 12.0)
    row: tuple[float, float, float] = (1.0, 0.0, 0.0)  # direction of increasing column index (x)
    column: tuple[float, float, float] = (0.0, 1.0, 0.0)  # direction of increasing row index (y)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row, self.column)

    def ras_affine(self) -> np.ndarray:
        """The NIfTI affine of the same voxels (computed by hand: LPS → RAS flips x and y)."""
        sz, sy, sx = self.spacing
        lps = np.eye(4)
        lps[:3, :3] = np.stack([np.multiply(self.row, sx), np.multiply(self.column, sy),
                                self.normal * sz], axis=1)
        lps[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def slice_dataset(volume: np.ndarray, k: int, geometry: SeriesGeometry, uids: dict[str, str],
                  slope: float, intercept: float) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.Modality, ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "MR", "P1", "Test^P", "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "", ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 3, k + 1
    ds.Manufacturer = "test"
    sz, sy, sx = geometry.spacing
    ds.ImagePositionPatient = [float(v) for v in np.add(geometry.origin, k * sz * geometry.normal)]
    ds.ImageOrientationPatient = [*map(float, geometry.row), *map(float, geometry.column)]
    ds.PixelSpacing, ds.SliceThickness = [sy, sx], sz
    ds.Rows, ds.Columns = volume.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = np.ascontiguousarray(volume[k], dtype="<i2").tobytes()
    return ds


def write_series(folder: Path, volume: np.ndarray, geometry: SeriesGeometry = SeriesGeometry(),
                 *, seed: int = 0, slope: float = 1.0, intercept: float = 0.0,
                 skip: tuple[int, ...] = (), omit: tuple[str, ...] = ()) -> list[Path]:
    """One file per slice of `volume` (Z, Y, X int16), named in random order (not by position).

    omit: header keywords left out, as SimpleITK-written or anonymised series do
    ("FrameOfReferenceUID", "SliceThickness")."""
    folder.mkdir(parents=True, exist_ok=True)
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    names = np.random.default_rng(seed).permutation(len(volume))
    paths = []
    for k in range(len(volume)):
        if k in skip:
            continue
        path = folder / f"IM{names[k]:04d}"
        ds = slice_dataset(volume, k, geometry, uids, slope, intercept)
        for keyword in omit:
            delattr(ds, keyword)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_nifti_twin(path: Path, volume: np.ndarray, geometry: SeriesGeometry = SeriesGeometry()) -> Path:
    """The same voxels as a NIfTI file (x, y, z order) with the series' affine."""
    nib.save(nib.Nifti1Image(volume.astype(np.int16).transpose(2, 1, 0), geometry.ras_affine()), str(path))
    return path
