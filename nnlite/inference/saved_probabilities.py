"""`<case>.npz` written one class channel at a time, so that saving probabilities never holds the
whole (K, *original) array.

The file is what `np.savez` writes — an uncompressed zip holding `probabilities.npy`, float16
(K, Z, Y, X) in C order — built channel by channel: the .npy header first, then each channel's
bytes in turn (in C order channel k's bytes follow channel k − 1's). `np.load` reads it as any
other .npz.

Temperature scaling (inference/temperature.py) of softmax outputs needs Σ_j p_j^(1/T) over every
class before the first scaled channel can be written. The unscaled float16 channels therefore go
to a temporary file next to the .npz while the sum is accumulated (float32, one channel), and a
second pass reads them back one at a time and writes q_k = p_k^(1/T) / Σ_j p_j^(1/T). A region
model's sigmoid outputs are scaled channel by channel, in one pass. Held in memory at once: one
channel (float16 and its float32 powers) and, for softmax with T ≠ 1, the sum. The scaled values
equal `scale_probabilities` of the whole float16 array up to float32 rounding (|Δ| ≤ 1e-3 after
float16 rounding).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from nnlite.common.files import tmp_path_for
from nnlite.inference.temperature import normalised_powers, powered_probabilities, sigmoid_scaled

PROBABILITIES_KEY = "probabilities"  # array name inside <case>.npz (as the reference)
SAVED_DTYPE = np.dtype(np.float16)


class ProbabilityFile:
    """Writes `path` (a .npz; streamed into `<path>.tmp`) from `classes` channels (*S) added in
    class order, saved as `dtype`; `temperature` applied as it goes (see the module docstring). A
    context manager: the file appears only when every channel was written (`finish`, which may
    move it elsewhere, e.g. beside the case's other files); if the block fails, nothing is left."""

    def __init__(self, path: str | Path, classes: int, temperature: float = 1.0, sigmoid: bool = False,
                 dtype: np.dtype = SAVED_DTYPE) -> None:
        self.path, self.classes, self.dtype = Path(path), classes, np.dtype(dtype)
        self.temperature, self.sigmoid = temperature, sigmoid
        self.tmp, self.unscaled = tmp_path_for(self.path), self.path.with_name(self.path.name + ".unscaled.tmp")
        self.added, self.shape, self.total, self.written = 0, None, None, None
        self._zip = self._member = self._unscaled = None

    @property
    def two_passes(self) -> bool:
        return self.temperature != 1.0 and not self.sigmoid

    def __enter__(self) -> "ProbabilityFile":
        return self

    def __exit__(self, kind, *rest) -> None:
        self._close()
        if kind is not None:  # a failed case leaves nothing, finished or not
            self.tmp.unlink(missing_ok=True)
            if self.written is not None:
                self.written.unlink(missing_ok=True)
        self.unscaled.unlink(missing_ok=True)

    def add(self, channel: np.ndarray) -> None:
        """The next class's probabilities (*S), any float dtype."""
        if self.added >= self.classes:
            raise ValueError(f"{self.path.name}: more than {self.classes} probability channels")
        if self.shape is None:
            self._open(channel.shape)
        elif channel.shape != self.shape:
            raise ValueError(f"{self.path.name}: channel {self.added} has shape {channel.shape}, not {self.shape}")
        saved = np.ascontiguousarray(channel, dtype=self.dtype)
        if self.two_passes:
            self._unscaled.write(_as_bytes(saved))
            powers = powered_probabilities(saved, self.temperature)
            self.total = powers if self.total is None else np.add(self.total, powers, out=self.total)
        elif self.temperature != 1.0:
            self._write(sigmoid_scaled(saved, self.temperature))
        else:
            self._write(saved)
        self.added += 1

    def finish(self, destination: Path | None = None) -> Path:
        """Write what the second pass needs and move the file to `destination` (default `path`),
        atomically; where it is now."""
        if self.added != self.classes:
            raise ValueError(f"{self.path.name}: {self.added} of {self.classes} probability channels added")
        if self.two_passes:
            self._unscaled.close()
            voxels = int(np.prod(self.shape))
            with open(self.unscaled, "rb") as handle:
                for _ in range(self.classes):
                    saved = np.fromfile(handle, self.dtype, count=voxels).reshape(self.shape)
                    self._write(normalised_powers(saved, self.temperature, self.total))
        self._close()
        self.written = self.tmp.replace(destination or self.path)
        return self.written

    def _open(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._member = self._zip.open(PROBABILITIES_KEY + ".npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(self._member, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                            "fortran_order": False,
                                                            "shape": (self.classes, *self.shape)})
        if self.two_passes:
            self._unscaled = open(self.unscaled, "wb")

    def _write(self, channel: np.ndarray) -> None:
        self._member.write(_as_bytes(np.ascontiguousarray(channel, dtype=self.dtype)))

    def _close(self) -> None:
        for handle in (self._member, self._zip, self._unscaled):
            if handle is not None:
                handle.close()
        self._zip = self._member = self._unscaled = None


def _as_bytes(array: np.ndarray) -> memoryview:
    """A C-contiguous array's bytes without a copy (zipfile counts len() of what it is given)."""
    return memoryview(array).cast("B")


class HeldProbabilities:
    """The channels added in class order, collected into one (K, *S) float16 array (`array`): what
    the Python API returns instead of a file."""

    def __init__(self, classes: int) -> None:
        self.classes, self.added, self.array = classes, 0, None

    def add(self, channel: np.ndarray) -> None:
        if self.array is None:
            self.array = np.empty((self.classes, *channel.shape), SAVED_DTYPE)
        self.array[self.added] = channel
        self.added += 1


def write_probabilities(path: str | Path, probs: np.ndarray) -> Path:
    """Write whole probabilities (K, *S) as `<case>.npz` (key "probabilities", their dtype), atomically."""
    with ProbabilityFile(path, len(probs), dtype=probs.dtype) as stream:
        for channel in probs:
            stream.add(channel)
        return stream.finish()


def load_probabilities(path: str | Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        return archive[PROBABILITIES_KEY]
