"""What a prediction run is given and what it reports, and how it finds its cases.

The user's options, the input folder's `<case>_<CCCC>` channel files, this run's part of them
(`--part I --num-parts N`, or a torchrun launch's rank), the output folder's finished cases and
the per-case failure report (`predictor.py` runs them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from nnlite.common.errors import UserError
from nnlite.data.file_names import split_channel_stem
from nnlite.data.image_io import Case, file_ending, image_format, label_path_for, read_case
from nnlite.data.orientation import read_oriented
from nnlite.inference.outputs import dicom_seg_path, npz_path_for
from nnlite.inference.sliding_window import STEP_SIZE
from nnlite.inference.uncertainty import uncertainty_files
from nnlite.network.hardware import launched_rank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictOptions:
    """What `python -m nnlite.predict` lets the user choose."""

    config: str = "3d_fullres"
    folds: tuple[str, ...] | None = None  # None: every numbered fold folder (else fold "all")
    checkpoint: str = "final"  # "final" or "best"
    mirror: bool = True
    step: float = STEP_SIZE
    postprocess: bool = False
    save_probabilities: bool = False
    overwrite: bool = False
    device: str = "auto"  # "auto", "cpu" or "cuda"
    tile_batch: int | None = None
    dicom_seg: bool = False  # also write <case>.dcm, a DICOM-SEG, for DICOM series inputs
    onnx: str | None = None  # run this ONNX file (nnlite.export onnx) instead of the folds' checkpoints
    part: int = 0  # this run predicts the sorted cases part, part + num_parts, … (select_part)
    num_parts: int = 1
    uncertainty: bool = False  # also the uncertainty maps and uncertainty.csv (inference/uncertainty.py)
    temperature: bool = True  # scale saved probabilities by the fitted temperature, when there is one
    memory_gb: float | None = None  # RAM budget of the run (inference/case_memory.py); None: what is available

    def __post_init__(self) -> None:
        check_part(self.part, self.num_parts)


@dataclass
class PredictReport:
    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # case → problem
    crashed: list[str] = field(default_factory=list)  # failed cases that were not input errors


def channel_of(path: Path) -> tuple[str, int] | None:
    """(case, channel) of `<case>_<CCCC><ending>` (any supported ending) or of a DICOM series
    folder `<case>_<CCCC>`; None for anything else."""
    if path.name.startswith("."):
        return None
    if path.is_dir():
        stem = path.name
    elif path.is_file() and (ending := file_ending(path)) is not None:
        stem = path.name[: -len(ending)]
    else:
        return None
    return split_channel_stem(stem)


def find_input_cases(input_dir: Path) -> dict[str, list[Path]]:
    """Case → its channel files (any supported format) or DICOM series folders, by channel."""
    if not input_dir.is_dir():
        raise UserError(input_dir, "input folder not found")
    cases: dict[str, dict[int, Path]] = {}
    for path in sorted(input_dir.iterdir()):
        found = channel_of(path)
        if found is None:
            continue
        case, channel = found
        if channel in cases.setdefault(case, {}):
            raise UserError(path, f"channel {channel:04d} of case {case} is also given as "
                                  f"{cases[case][channel].name}")
        cases[case][channel] = path
    if not cases:
        raise UserError(input_dir, "holds no <case>_<CCCC> images (files of a supported format, "
                                   "or folders holding one DICOM series)")
    return {case: [files[c] for c in sorted(files)] for case, files in sorted(cases.items())}


def check_part(part: int, num_parts: int) -> None:
    """`--part I --num-parts N` needs N ≥ 1 and 0 ≤ I < N (counted from 0, as nnU-Net's -part_id)."""
    if num_parts < 1:
        raise UserError("--num-parts", f"must be at least 1, got {num_parts}")
    if not 0 <= part < num_parts:
        raise UserError("--part", f"must be one of 0 … {num_parts - 1} (parts count from 0 with "
                                  f"--num-parts {num_parts}), got {part}")


def select_part(cases: Sequence[str], part: int, num_parts: int) -> list[str]:
    """Part `part` of `num_parts`: the sorted case names at positions part, part + N, part + 2N, …

    nnU-Net's `-part_id/-num_parts` rule (`sorted(cases)[part::num_parts]`), taken before finished
    cases are skipped, so a part always owns the same cases and the N parts cover each case once.
    """
    check_part(part, num_parts)
    return sorted(cases)[part::num_parts]


def resolve_part(part: int | None, num_parts: int | None,
                 environ: Mapping[str, str]) -> tuple[int, int, int | None]:
    """(part, num_parts, local rank) of a run: `--part`/`--num-parts` when given (both or neither);
    else, under torchrun (`network.hardware.launched_rank`), part = RANK of
    WORLD_SIZE and the local rank picks the GPU; else the whole folder (0, 1, None)."""
    if (part is None) != (num_parts is None):
        given, missing = ("--part", "--num-parts") if num_parts is None else ("--num-parts", "--part")
        raise UserError(given, f"needs {missing} too (--part I --num-parts N predicts every N-th case)")
    if part is not None:
        check_part(part, num_parts)
        return part, num_parts, None
    rank, world_size, local_rank = launched_rank(environ)
    if world_size == 1:
        return 0, 1, None
    check_part(rank, world_size)
    return rank, world_size, local_rank


def part_file_name(name: str, part: int, num_parts: int) -> str:
    """A run-level file of one part, so parts sharing OUTPUT_DIR never overwrite each other's:
    "classification.csv" → "classification.part-1-of-4.csv"; the name itself for a whole run."""
    if num_parts == 1:
        return name
    stem, dot, ending = name.partition(".")
    return f"{stem}.part-{part}-of-{num_parts}{dot}{ending}"


def part_files(folder: Path, name: str) -> list[Path]:
    """The per-part copies of run-level file `name` in `folder` (any part, any number of parts)."""
    stem, dot, ending = name.partition(".")
    return sorted(folder.glob(f"{stem}.part-*-of-*{dot}{ending}"))


def output_path(output_dir: Path, case: str, paths: Sequence[Path]) -> Path:
    """The label map's path: the input's format (a DICOM series: NIfTI; pictures: PNG)."""
    return label_path_for(output_dir, case, paths[0])


def read_input_case(case: str, paths: Sequence[Path], num_channels: int, orientation: str | None = None) -> Case:
    """Read a case's channels, checking that they are the channels the model needs; oriented as
    the model's plans say (`data.orientation`; the outputs are turned back before writing)."""
    channels = [f"{channel_of(p)[1]:04d}" for p in paths]
    packed = not paths[0].is_dir() and image_format(paths[0]).packs_channels  # RGB: 3 in a file
    wanted = [f"{c:04d}" for c in range(len(paths) if packed else num_channels)]
    if channels != wanted:
        raise UserError(case, f"has channel files {channels}, the model needs "
                              f"{[f'{c:04d}' for c in range(num_channels)]}")
    raw = read_case(paths)
    if raw.data.shape[0] != num_channels:
        raise UserError(paths[0], f"holds {raw.data.shape[0]} channels, the model needs {num_channels}")
    return read_oriented(raw, orientation)


def check_dicom_seg(cases: dict[str, list[Path]], options: PredictOptions) -> None:
    """`--dicom-seg` needs DICOM series inputs: a SEG references the series it segments."""
    if not options.dicom_seg:
        return
    for case, paths in cases.items():
        if not paths[0].is_dir():
            raise UserError("--dicom-seg", f"only for DICOM series inputs (<case>_<CCCC>/ folders); "
                                           f"case {case} is {paths[0].name}")


def is_done(seg_path: Path, options: PredictOptions) -> bool:
    return (seg_path.is_file() and (not options.save_probabilities or npz_path_for(seg_path).is_file())
            and (not options.dicom_seg or dicom_seg_path(seg_path).is_file())
            and (not options.uncertainty or all(path.is_file() for path, _ in uncertainty_files(seg_path))))


def check_folders(input_dir: Path, output_dir: Path) -> None:
    if output_dir.resolve() == input_dir.resolve():
        raise UserError(output_dir, "is the input folder; choose another OUTPUT_DIR "
                                    "(predictions are never written into INPUT_DIR)")


def record_failure(report: PredictReport, case: str, error: Exception) -> None:
    if isinstance(error, UserError):
        report.failed[case] = error.problem if error.where == case else str(error)  # named once
    else:  # not the user's fault: keep the type so the bug can be found
        report.failed[case] = f"{type(error).__name__}: {error}"
        report.crashed.append(case)
    log.error("%s failed: %s", case, report.failed[case])
