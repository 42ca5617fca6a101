"""Temperature scaling of saved probabilities: applied by `predict`, fitted by evaluation.

nnlite saves *probabilities*, not logits: `<case>.npz` holds the softmax averaged over mirrors,
tiles and folds. Temperature scaling on probabilities is q_k = p_k^(1/T) / Σ_j p_j^(1/T). For one
member (p = softmax(z)) this is exactly softmax(z / T), the usual temperature scaling of logits;
for an average of members it scales the average, not each member's logits (the average is what
was fitted and what is saved). A region dataset's sigmoid probability p of each region is
scaled as the two classes (1 − p, p): sigmoid(logit(p) / T), the same formula.

T > 1 softens (less confident), T < 1 sharpens. The most probable class keeps its place for any
T > 0 (a monotone map of every p_k, one normaliser per voxel), and p > 0.5 ⇔ q > 0.5 for a
region, so the label maps never change: only the saved probabilities (and what is computed from
them, such as the uncertainty) do.

Where T is stored (`evaluation/calibration.py` writes it): `results/<config>/temperature.json`
for a configuration (fitted on its cross-validation) and `results/ensembles/<a>+<b>/temperature.json`
for an ensemble; `best.json` records its winner's. `{"temperature": T, ...}`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from nnlite.common.errors import UserError
from nnlite.common.files import read_json
from nnlite.common.layout import temperature_file

log = logging.getLogger(__name__)

TEMPERATURE_KEY = "temperature"
BEST_KEY = "calibration"  # best.json's block: {"temperature": T or null, "file": its temperature.json}
SLAB = 16  # planes of axis 1 scaled at a time: float32 temporaries stay a slab's size


def scale_probabilities(probs: np.ndarray, temperature: float, sigmoid: bool = False) -> np.ndarray:
    """Probabilities (K, *S) → temperature-scaled probabilities (K, *S) float32.

    Softmax: q_k = p_k^(1/T) / Σ_j p_j^(1/T) (a zero stays zero). Sigmoid (regions): each channel
    q = p^(1/T) / (p^(1/T) + (1 − p)^(1/T)). T = 1 returns the input as float32."""
    check_temperature(temperature, "temperature")
    out = np.asarray(probs, dtype=np.float32).copy()
    if temperature == 1.0 or out.ndim < 2:
        return out if out.ndim >= 2 else _scale_block(out[:, None], temperature, sigmoid)[:, 0]
    for start in range(0, out.shape[1], SLAB):  # one slab of (K, SLAB, ...) at a time
        out[:, start : start + SLAB] = _scale_block(out[:, start : start + SLAB], temperature, sigmoid)
    return out


def _scale_block(block: np.ndarray, temperature: float, sigmoid: bool) -> np.ndarray:
    """One block (K, *s) float32, scaled (see `scale_probabilities`)."""
    if sigmoid:
        return sigmoid_scaled(block, temperature)
    powered = powered_probabilities(block, temperature)
    return powered / _at_least_tiny(powered.sum(axis=0, keepdims=True))


def powered_probabilities(probs: np.ndarray, temperature: float) -> np.ndarray:
    """p^(1/T) float32 of probabilities (any shape), clipped to [0, 1] first."""
    return np.power(np.clip(np.asarray(probs, dtype=np.float32), 0.0, 1.0), np.float32(1.0 / temperature))


def normalised_powers(channel: np.ndarray, temperature: float, total: np.ndarray) -> np.ndarray:
    """Softmax scaling of one class channel (*S): p_k^(1/T) / Σ_j p_j^(1/T), `total` being the sum
    (*S) float32 (saved_probabilities.py streams the classes this way)."""
    return powered_probabilities(channel, temperature) / _at_least_tiny(total)


def sigmoid_scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Region (sigmoid) probabilities of any shape, scaled: p^(1/T) / (p^(1/T) + (1 − p)^(1/T))."""
    clipped = np.clip(np.asarray(probs, dtype=np.float32), 0.0, 1.0)
    positive, negative = powered_probabilities(clipped, temperature), powered_probabilities(1.0 - clipped, temperature)
    return positive / _at_least_tiny(positive + negative)


def _at_least_tiny(total: np.ndarray) -> np.ndarray:
    return np.maximum(total, np.finfo(np.float32).tiny)


def check_temperature(value: object, where: str) -> float:
    """A temperature must be a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UserError(where, f"temperature must be a finite number > 0, got {value!r}")
    return float(value)


def read_temperature(path: str | Path) -> float | None:
    """T of a temperature.json; None when the file is absent (no calibration fitted)."""
    path = Path(path)
    if not path.is_file():
        return None
    content = read_json(path)
    if not isinstance(content, dict) or TEMPERATURE_KEY not in content:
        raise UserError(path, f"not a temperature file (no \"{TEMPERATURE_KEY}\" key)")
    return check_temperature(content[TEMPERATURE_KEY], str(path))


def prediction_temperature(work: str | Path, configs: list[str], best: dict | None = None) -> float:
    """The T a prediction applies: best.json's (`predict --best`), else a single configuration's
    results/<config>/temperature.json; 1 (no scaling) when none was fitted."""
    if best is not None:
        value = (best.get(BEST_KEY) or {}).get(TEMPERATURE_KEY)
        return 1.0 if value is None else check_temperature(value, "best.json calibration")
    if len(configs) != 1:
        return 1.0
    found = read_temperature(temperature_file(work, configs[0]))
    if found is not None:
        log.info("applying temperature %.3f to the probabilities (%s)", found, temperature_file(work, configs[0]))
    return 1.0 if found is None else found
