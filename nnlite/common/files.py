"""Atomic file writes: everything is written under `<name>.tmp` and renamed when complete."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

TMP_SUFFIX = ".tmp"


def tmp_path_for(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` then rename tmp → path; on failure the tmp file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def save_npy_atomic(path: str | Path, array: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # np.save would append ".npy" to a str/Path name
            np.save(handle, array, allow_pickle=False)

    return write_atomic(path, write)


def read_json(path: str | Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


def read_json_checked(path: str | Path) -> Any:
    """Read a JSON file; missing or malformed is a UserError naming the file."""
    from nnlite.common.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(path, "not found")
    try:
        return read_json(path)
    except ValueError as error:
        raise UserError(path, f"not valid JSON ({error})") from None


def ensure_writable_dir(folder: str | Path, role: str = "folder") -> Path:
    """Create `folder` (and its parents) if needed and prove it writable; a UserError otherwise.

    Checked before any expensive work, so a WORK that is a file, sits under a file or cannot be
    written to fails in a second with one line instead of after the whole dataset was read.
    """
    from nnlite.common.errors import UserError

    folder = Path(folder)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(folder, f"cannot be used as the {role}: {blocker} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".nnlite-write-test-{os.getpid()}{TMP_SUFFIX}"  # per process: parts share folders
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)
    except OSError as error:
        raise UserError(folder, f"cannot write to the {role} ({error.strerror or error})") from None
    return folder


def remove_tmp_leftovers(folder: str | Path) -> list[Path]:
    """Delete `*.tmp` files a killed run left behind (recursively); returns what was removed."""
    folder = Path(folder)
    if not folder.exists():
        return []
    removed = sorted(folder.rglob("*" + TMP_SUFFIX))
    for leftover in removed:
        if leftover.is_file():
            leftover.unlink()
    return removed


def start_staging_dir(final: str | Path) -> Path:
    """A fresh `<final>.tmp/` folder to fill before `publish_staging_dir` renames it to `final`.

    `final` must not exist or be an empty folder, in a folder that can be written to; a leftover
    staging folder of a killed run is removed.
    """
    from nnlite.common.errors import UserError

    final = Path(final)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise UserError(final, "already exists and is not empty")
    ensure_writable_dir(final.absolute().parent, "parent folder")
    staging = tmp_path_for(final)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def publish_staging_dir(staging: Path, final: str | Path) -> Path:
    """Rename a completed staging folder to its final name (an empty `final` folder is replaced)."""
    final = Path(final)
    if final.is_dir():
        final.rmdir()
    os.replace(staging, final)
    return final


@contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Fill the yielded `<final>.tmp/` folder; it becomes `final` on success and is deleted on error
    (also when the final rename fails)."""
    staging = start_staging_dir(final)
    try:
        yield staging
        publish_staging_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def json_ready(value: Any) -> Any:
    """NaN → None (JSON null), recursively through dicts and lists; other floats as plain floats."""
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_ready(item) for item in value]
    return value
