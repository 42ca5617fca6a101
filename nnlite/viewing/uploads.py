"""A case to predict, from the browser or from `--inputs`: checked, then staged in the app's folder.

Safe by construction: a browser never names a path. Uploaded files are written under names the
app makes (`<case>_<CCCC><ending>`, the case name reduced to letters, digits, `-`, `_` and `.`;
a zip of DICOM series becomes `<case>_<CCCC>/00000.dcm`, …) inside a new folder of the output
folder; a case picked from `--inputs` must be one that
`--inputs` lists and its files must resolve inside it (`confined`). Every problem (too large,
wrong number of channel files or series, unreadable, not 2D/3D, channels of different shapes) is one
`UserError` whose message the page shows; the app keeps running. Files are read with nnlite's own
image reader (`data/image_io.py`), so the formats it reads are the formats the app accepts.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nnlite.common.errors import UserError
from nnlite.common.files import write_atomic
from nnlite.data.image_io import read_case
from nnlite.viewing.settings import MAX_UPLOAD_MB

UPLOAD_WHERE = "upload"
ENDING = re.compile(r"(\.[A-Za-z][A-Za-z0-9]{0,7}){1,2}$")  # ".nii.gz", ".nrrd", ".mha", …
CHANNEL_SUFFIX = re.compile(r"_\d{4}$")  # nnU-Net's `_0000` channel suffix
UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")
DEFAULT_CASE = "upload"


@dataclass(frozen=True)
class Upload:
    """One file as the browser sent it: its (untrusted) name and its bytes."""

    name: str
    data: bytes


def confined(root: Path, path: Path) -> Path:
    """`path` resolved, if it lies inside `root` (links followed); a UserError otherwise."""
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(Path(root).resolve()):
        raise UserError(path, f"is outside {root}: the app reads and writes only its own folders")
    return resolved


def file_ending(name: str) -> str:
    """The ending of an uploaded file's name (`.nii.gz`, `.nii`, `.nrrd`, …)."""
    match = ENDING.search(Path(name).name)
    if match is None:
        raise UserError(UPLOAD_WHERE, f"'{name}' has no file ending (.nii.gz, …)")
    return match[0].lower()


def case_name(name: str) -> str:
    """A safe case name from an uploaded file's name: `demo_001_0000.nii.gz` → `demo_001`."""
    stem = Path(name).name
    match = ENDING.search(stem)
    stem = CHANNEL_SUFFIX.sub("", stem[: match.start()] if match else stem)
    return UNSAFE_CHARACTERS.sub("_", stem).strip("._") or DEFAULT_CASE


def new_folder(outputs: Path, prefix: str = "upload-") -> Path:
    """A new, empty folder inside the output folder, one per prediction."""
    Path(outputs).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=outputs))


def check_upload(files: Sequence[Upload], channels: Sequence[str], max_mb: float = MAX_UPLOAD_MB) -> None:
    """Before anything is written: size, file count (one per channel) and no DICOM zip."""
    if not files:
        raise UserError(UPLOAD_WHERE, "no files: upload one image file per channel")
    size_mb = sum(len(f.data) for f in files) / 2**20
    if size_mb > max_mb:
        raise UserError(UPLOAD_WHERE, f"{size_mb:.1f} MB is over the limit of {max_mb:g} MB")
    if any(f.name.lower().endswith(".zip") for f in files) and len(files) > 1:
        raise UserError(UPLOAD_WHERE, "a zip of DICOM series comes alone: one zip, one folder per channel")
    if len(files) != len(channels) and not files[0].name.lower().endswith(".zip"):
        raise UserError(UPLOAD_WHERE, f"{len(files)} file(s) for a model with {len(channels)} channel(s) "
                        f"({', '.join(channels)}): upload one file per channel")


def stage_upload(files: Sequence[Upload], folder: Path, channels: Sequence[str],
                 max_mb: float = MAX_UPLOAD_MB) -> tuple[str, list[Path]]:
    """Write the uploaded channel files (in the order of their names) into `folder` as
    `<case>_<CCCC><ending>` (a DICOM zip: `<case>_<CCCC>/` series folders) and read them once;
    returns the case name and the paths in channel order."""
    check_upload(files, channels, max_mb)
    if files[0].name.lower().endswith(".zip"):
        return stage_dicom_zip(files[0], folder, channels, max_mb)
    ordered = sorted(files, key=lambda f: f.name)
    case = case_name(ordered[0].name)
    paths = []
    for channel, upload in enumerate(ordered):
        path = confined(folder, Path(folder) / f"{case}_{channel:04d}{file_ending(upload.name)}")
        paths.append(write_atomic(path, lambda tmp, data=upload.data: tmp.write_bytes(data)))
    originals = {str(path): upload.name for path, upload in zip(paths, ordered)}
    try:
        read_case(paths)
    except UserError as error:  # name the user's file, not the app's copy of it
        where = originals.get(error.where, UPLOAD_WHERE)
        raise UserError(f"{UPLOAD_WHERE} '{where}'" if where != UPLOAD_WHERE else where,
                        error.problem) from None
    return case, paths


def zip_series(upload: Upload, max_mb: float) -> dict[str, list[zipfile.ZipInfo]]:
    """The zip's series: top-level folder → its files (a zip without folders: one series)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(upload.data))
    except zipfile.BadZipFile as error:
        raise UserError(f"{UPLOAD_WHERE} '{upload.name}'", f"not a zip file ({error})") from None
    members = [m for m in archive.infolist() if not m.is_dir() and not Path(m.filename).name.startswith(".")]
    if sum(m.file_size for m in members) / 2**20 > max_mb:  # unpacked size: no zip bombs
        raise UserError(f"{UPLOAD_WHERE} '{upload.name}'", f"unpacks to more than {max_mb:g} MB")
    series: dict[str, list[zipfile.ZipInfo]] = {}
    for member in members:
        parts = Path(member.filename).parts
        series.setdefault(parts[0] if len(parts) > 1 else "", []).append(member)
    return dict(sorted(series.items()))


def stage_dicom_zip(upload: Upload, folder: Path, channels: Sequence[str],
                    max_mb: float = MAX_UPLOAD_MB) -> tuple[str, list[Path]]:
    """A zip holding one folder per channel (folder names in channel order), each one DICOM
    series (a zip of bare files: one series) → `<case>_<CCCC>/` folders; files are written under
    numbered names, never under the zip's own paths."""
    series = zip_series(upload, max_mb)
    if len(series) != len(channels):
        raise UserError(f"{UPLOAD_WHERE} '{upload.name}'", f"holds {len(series)} series folder(s) for a "
                        f"model with {len(channels)} channel(s) ({', '.join(channels)}): one folder per channel")
    case = case_name(upload.name)
    archive = zipfile.ZipFile(io.BytesIO(upload.data))
    paths = []
    for channel, members in enumerate(series.values()):
        target = confined(folder, Path(folder) / f"{case}_{channel:04d}")
        target.mkdir()
        for number, member in enumerate(members):
            (target / f"{number:05d}.dcm").write_bytes(archive.read(member))
        paths.append(target)
    try:
        read_case(paths)
    except UserError as error:
        raise UserError(f"{UPLOAD_WHERE} '{upload.name}'", error.problem) from None
    return case, paths


def input_cases(inputs: Path | None) -> list[str]:
    """The cases `--inputs` offers (`<case>_<CCCC>` files), none without the option."""
    if inputs is None:
        return []
    from nnlite.inference.options import find_input_cases  # torch: not while the command starts

    return sorted(find_input_cases(Path(inputs)))


def copy_input_case(inputs: Path, case: str, folder: Path) -> list[Path]:
    """Copy one case of `--inputs` into `folder` (the predictor reads a whole folder); the case
    must be one that `--inputs` lists and each of its files must lie inside `--inputs`."""
    from nnlite.inference.options import find_input_cases

    cases = find_input_cases(Path(inputs))
    if case not in cases:
        raise UserError(case, f"is not a case of {inputs}")
    copies = []
    for path in cases[case]:
        source = confined(inputs, path)
        copies.append(Path(shutil.copyfile(source, Path(folder) / path.name)))
    read_case(copies)
    return copies
