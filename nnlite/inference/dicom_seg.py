"""`predict --dicom-seg`: a DICOM Segmentation object beside the label map of a DICOM series.

highdicom builds the SEG: one frame per source slice and segment (BINARY, the label map style),
one segment per foreground label named as in dataset.json, and references to the source series
and to every source instance (ReferencedSeriesSequence), so PACS viewers (3D Slicer, OHIF) overlay
it on the series it came from. The label map is the `<case>.nii.gz` just written in the series'
geometry; its slices are in the order `data.dicom_series` sorts the source slices.

highdicom copies the Frame of Reference UID and the slice thickness from the source images; a
series that lacks them (SimpleITK-written and anonymised series often do) gets them in memory —
a new Frame of Reference UID shared by the series and the SEG, the slice thickness from the slice
positions — with a warning naming the case; the files of the series are never changed.
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path
from typing import Mapping

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from nnlite.common.errors import UserError
from nnlite.common.files import write_atomic
from nnlite.data.dicom_series import sorted_slices
from nnlite.data.image_io import read_image
from nnlite.common.labels import IGNORE_KEY

try:
    VERSION = metadata.version("nnlite")
except metadata.PackageNotFoundError:  # run from a source tree that is not installed
    VERSION = "unknown"
ALGORITHM = hd.AlgorithmIdentificationSequence(
    name="nnlite", version=VERSION, family=codes.cid7162.ArtificialIntelligence)
# highdicom logs every module it copies from the source images at INFO: noise in predict's output
logging.getLogger("highdicom").setLevel(logging.WARNING)
SEG_SERIES_NUMBER = 900  # series number of the SEG objects (a free number, shown by viewers)
log = logging.getLogger(__name__)


def segment_descriptions(labels: Mapping[str, int]) -> list[hd.seg.SegmentDescription]:
    """One segment per foreground label (not background, not the ignore label), numbered by value."""
    foreground = sorted((value, name) for name, value in labels.items()
                        if value != 0 and name != IGNORE_KEY)
    return [hd.seg.SegmentDescription(
        segment_number=value, segment_label=name, segmented_property_category=codes.cid7150.Tissue,
        segmented_property_type=codes.cid7150.Tissue, algorithm_type="AUTOMATIC",
        algorithm_identification=ALGORITHM) for value, name in foreground]


def complete_source_headers(slices: list[Dataset], case: str) -> None:
    """Give the (in-memory) slices, sorted by position, the attributes highdicom copies into a
    SEG when the series lacks them: a new Frame of Reference UID, the slice thickness."""
    missing, given = [], []
    if any(not getattr(s, "FrameOfReferenceUID", None) for s in slices):
        frame = hd.UID()
        for source in slices:
            source.FrameOfReferenceUID = frame
        missing.append("Frame of Reference UID")
        given.append(f"a new one ({frame})")
    if any(getattr(s, "SliceThickness", None) in (None, "") for s in slices):
        thickness = slice_gap(slices)
        for source in slices:
            source.SliceThickness = thickness
        missing.append("slice thickness")
        given.append(f"{thickness:g} mm (the slice spacing)")
    if missing:
        log.warning("%s: the DICOM series has no %s; the DICOM-SEG gets %s", case,
                    " and no ".join(missing), " and ".join(given))


def slice_gap(slices: list[Dataset]) -> float:
    """Distance (mm) between the first two slices along the normal (one slice: its
    SpacingBetweenSlices, else 1)."""
    if len(slices) < 2:
        return float(getattr(slices[0], "SpacingBetweenSlices", None) or 1.0)
    orientation = np.array([float(v) for v in slices[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    first, second = (np.array([float(v) for v in s.ImagePositionPatient]) for s in slices[:2])
    return round(abs(float((second - first) @ normal)), 6)


def write_dicom_seg(label_map: Path, series_folder: Path, labels: Mapping[str, int],
                    out_path: Path) -> Path:
    """Write the SEG of `label_map` ((Z, Y, X) in the series' geometry) as `out_path`."""
    slices, _ = sorted_slices(series_folder)
    complete_source_headers(slices, case_name(out_path))
    seg = read_image(label_map).array
    expected = (len(slices), int(slices[0].Rows), int(slices[0].Columns))
    if seg.shape != expected:
        raise UserError(label_map, f"shape {seg.shape} is not the series' {expected} ({series_folder})")
    try:
        segmentation = build_segmentation(slices, seg, labels)
    except ValueError as error:  # highdicom's checks of the source headers
        raise UserError(series_folder, f"no DICOM-SEG can be made from this series ({error})") from None
    return write_atomic(out_path, lambda tmp: segmentation.save_as(tmp))


def build_segmentation(slices: list[Dataset], seg: np.ndarray, labels: Mapping[str, int]
                       ) -> hd.seg.Segmentation:
    """The SEG of a label map (Z, Y, X) over its source slices, sorted by position."""
    return hd.seg.Segmentation(
        source_images=slices, pixel_array=seg.astype(np.uint8 if seg.max() < 256 else np.uint16),
        segmentation_type="BINARY", segment_descriptions=segment_descriptions(labels),
        series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="nnlite", manufacturer_model_name="nnlite",
        software_versions=VERSION, device_serial_number="none", omit_empty_frames=False,
        series_description="nnlite segmentation")


def case_name(seg_path: Path) -> str:
    """`<case>` of `<dir>/<case>.dcm`."""
    return Path(seg_path).name.removesuffix(".dcm")
