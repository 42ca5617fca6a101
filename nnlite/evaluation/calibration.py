"""How far saved probabilities are from the truth (ECE), and the temperature that brings them closer.

**Expected calibration error (ECE).** Per voxel, the confidence is the probability of the most
probable class (max_k q_k) and the voxel is correct when that class is the reference label. The
voxels are put into ECE_BINS = 15 equal-width confidence bins over [0, 1] (bin b holds
(b/15, (b+1)/15]; a confidence of exactly 0 goes into the first), and
ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b|, over all the cases' voxels pooled.
Two voxel sets are reported:

- `foreground` (the headline): voxels within BAND_VOXELS = 3 voxels (a 7×7×7 cube) of the
  predicted or the reference foreground — where segmentation is decided. Far background is
  excluded: it is millions of voxels predicted at confidence ≈ 1 and correct, which drive the ECE
  over all voxels towards 0 whatever the boundary does.
- `all`: every voxel of the volume.

Voxels with the ignore label are never counted. A region dataset (sigmoid outputs) counts each
region channel of each voxel as a two-class prediction (1 − p, p), correct when p > 0.5 matches
the reference's membership.

**Temperature scaling** (`inference/temperature.py` applies it): one T > 0 for a configuration or
an ensemble, chosen to minimise the mean negative log-likelihood of the reference labels over the
`foreground` voxels of its cross-validation (`fit_temperature`: bounded 1-D minimisation over
log T, scipy), at most FIT_VOXELS_PER_CASE voxels per case (a fixed-seed random subset). Saved
probabilities are float16 and can be exactly 0; in the likelihood they are floored at
PROBABILITY_FLOOR so a confidently wrong voxel costs a finite amount.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage, optimize

from nnlite.common.errors import UserError
from nnlite.common.layout import TEMPERATURE_FILE, crossval_folder, ensemble_folder, temperature_file
from nnlite.data.regions import region_masks
from nnlite.evaluation.metrics import matched_cases, read_label_map, reference_labels, write_summary
from nnlite.inference.outputs import average_probabilities, npz_path_for
from nnlite.inference.saved_probabilities import load_probabilities
from nnlite.inference.temperature import TEMPERATURE_KEY, read_temperature, scale_probabilities
from nnlite.plans import Plans

log = logging.getLogger(__name__)

ECE_BINS = 15  # equal-width confidence bins over [0, 1]
BAND_VOXELS = 3  # the `foreground` set: within this many voxels of predicted or reference foreground
PROBABILITY_FLOOR = 1e-7  # log-likelihood of a saved probability of 0 (float16 underflow)
FIT_VOXELS_PER_CASE = 200_000  # a random subset of a larger case's foreground set
TEMPERATURE_BOUNDS = (0.05, 20.0)  # the search interval of T
VOXEL_SETS = ("foreground", "all")
SEED = 0


@dataclass
class CalibrationBins:
    """Per confidence bin: voxel count, sum of confidences, number correct. Sums of cases (and
    of ranks) add up: `merged`."""

    count: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS, np.int64))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS, np.float64))
    correct: np.ndarray = field(default_factory=lambda: np.zeros(ECE_BINS, np.int64))

    def add(self, confidence: np.ndarray, correct: np.ndarray) -> None:
        """Voxels' confidence (N,) in [0, 1] and whether each is correct (N,) bool."""
        index = np.clip(np.ceil(confidence * ECE_BINS).astype(np.int64) - 1, 0, ECE_BINS - 1)
        self.count += np.bincount(index, minlength=ECE_BINS)
        self.confidence += np.bincount(index, weights=confidence.astype(np.float64), minlength=ECE_BINS)
        self.correct += np.bincount(index, weights=correct.astype(np.float64), minlength=ECE_BINS).astype(np.int64)

    def merged(self, other: "CalibrationBins") -> "CalibrationBins":
        return CalibrationBins(self.count + other.count, self.confidence + other.confidence,
                               self.correct + other.correct)

    def ece(self) -> float:
        """Σ_b (n_b / N) |accuracy_b − confidence_b| (NaN without voxels)."""
        total = self.count.sum()
        if total == 0:
            return math.nan
        return float(np.abs(self.correct - self.confidence).sum() / total)  # n_b |acc − conf| = |Σcorrect − Σconf|


@dataclass
class CaseVoxels:
    """One case flattened for calibration: class probabilities (K, N) float32 of every counted
    voxel (regions: (2, R·N), each region as (1 − p, p)), the reference class (N,) and the
    `foreground` set (N,) bool."""

    probs: np.ndarray
    target: np.ndarray
    near_foreground: np.ndarray


def case_voxels(probs: np.ndarray, ref: np.ndarray, plans: Plans) -> CaseVoxels:
    """Saved probabilities (K, *S) and the reference label map (*S) → `CaseVoxels` (ignore-label
    voxels dropped)."""
    if probs.shape[1:] != ref.shape:
        raise UserError("calibration", f"probabilities of shape {probs.shape[1:]} for a reference of shape {ref.shape}")
    probs = np.asarray(probs, dtype=np.float32)
    counted = np.ones(ref.shape, bool) if plans.ignore_label is None else ref != plans.ignore_label
    if plans.regions:
        member = region_masks(ref, plans.regions)  # (R, *S)
        foreground = (probs > 0.5).any(axis=0) | member.any(axis=0)
        band = _band(foreground)[counted]
        flat = probs[:, counted]  # (R, N)
        two = np.stack([1.0 - flat.ravel(), flat.ravel()])  # (2, R·N)
        return CaseVoxels(two, member[:, counted].ravel().astype(np.int64), np.tile(band, len(plans.regions)))
    foreground = (probs.argmax(axis=0) > 0) | ((ref > 0) & counted)
    return CaseVoxels(probs[:, counted], ref[counted].astype(np.int64), _band(foreground)[counted])


def _band(foreground: np.ndarray) -> np.ndarray:
    """Voxels within BAND_VOXELS (a cube) of `foreground` (*S) bool."""
    return ndimage.maximum_filter(foreground.astype(np.uint8), size=2 * BAND_VOXELS + 1) > 0


def case_bins(voxels: CaseVoxels, temperature: float = 1.0) -> dict[str, CalibrationBins]:
    """The case's bins per voxel set (VOXEL_SETS), after scaling by `temperature`."""
    probs = voxels.probs if temperature == 1.0 else scale_probabilities(voxels.probs, temperature)
    confidence, predicted = probs.max(axis=0), probs.argmax(axis=0)
    correct = predicted == voxels.target
    bins = {name: CalibrationBins() for name in VOXEL_SETS}
    bins["all"].add(confidence, correct)
    bins["foreground"].add(confidence[voxels.near_foreground], correct[voxels.near_foreground])
    return bins


def merge_bins(per_case: Sequence[dict[str, CalibrationBins]]) -> dict[str, CalibrationBins]:
    merged = {name: CalibrationBins() for name in VOXEL_SETS}
    for bins in per_case:
        merged = {name: merged[name].merged(bins[name]) for name in VOXEL_SETS}
    return merged


def ece_report(bins: dict[str, CalibrationBins]) -> dict[str, Any]:
    """summary.json's `calibration` block: ECE per voxel set and how it was measured."""
    return {f"ece_{name}": bins[name].ece() for name in VOXEL_SETS} | {
        "voxels_foreground": int(bins["foreground"].count.sum()), "voxels_all": int(bins["all"].count.sum()),
        "bins": ECE_BINS, "band_voxels": BAND_VOXELS,
        "definition": "docs/uncertainty.md: max-class confidence, 15 equal-width bins"}


def read_case_voxels(seg_path: Path, ref_path: Path, plans: Plans) -> CaseVoxels | None:
    """A predicted case's `CaseVoxels` from its `.npz` beside `seg_path`; None without one."""
    npz = npz_path_for(seg_path)
    if not npz.is_file():
        return None
    ref, _ = read_label_map(ref_path)
    return case_voxels(load_probabilities(npz), ref, plans)


def negative_log_likelihood(samples: CaseVoxels, temperature: float) -> float:
    """Mean −log q_y over the samples, q = p^(1/T) renormalised (log p floored)."""
    log_p = np.log(np.maximum(samples.probs, PROBABILITY_FLOOR)) / temperature  # (K, N)
    top = log_p.max(axis=0)
    log_total = top + np.log(np.exp(log_p - top).sum(axis=0))
    picked = np.take_along_axis(log_p, samples.target[None], axis=0)[0]
    return float(np.mean(log_total - picked))


def fit_temperature(samples: CaseVoxels) -> float:
    """The T in TEMPERATURE_BOUNDS minimising `negative_log_likelihood` (bounded Brent over log T)."""
    if samples.target.size == 0:
        raise UserError("calibration", "no voxels to fit a temperature on")
    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    found = optimize.minimize_scalar(lambda log_t: negative_log_likelihood(samples, math.exp(log_t)),
                                     bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(found.x))


def fit_samples(voxels: CaseVoxels, rng: np.random.Generator) -> CaseVoxels:
    """A case's `foreground` voxels, at most FIT_VOXELS_PER_CASE of them (random, without repeats)."""
    index = np.flatnonzero(voxels.near_foreground)
    if index.size > FIT_VOXELS_PER_CASE:
        index = np.sort(rng.choice(index, FIT_VOXELS_PER_CASE, replace=False))
    return CaseVoxels(voxels.probs[:, index], voxels.target[index], np.ones(index.size, bool))


ProbabilityReader = Callable[[], np.ndarray | None]  # a case's saved probabilities (K, *S); None: none saved


def saved_probabilities(seg_path: Path) -> ProbabilityReader:
    """Reads the `.npz` beside a label map (None when there is none)."""
    npz = npz_path_for(seg_path)
    return lambda: load_probabilities(npz) if npz.is_file() else None


def calibrate_cases(cases: Sequence[tuple[str, ProbabilityReader, Path]], plans: Plans, out_file: Path,
                    fitted_on: str) -> dict[str, Any] | None:
    """Fit T on the probabilities of (case, reader, reference) and write `out_file`
    (temperature.json: T and the ECE before and after); None, and no file (a stale one is
    removed), when a case has no saved probabilities. Two passes over the cases (fit, then the
    ECE after): one case's voxels and the fit's subsets are in memory at a time."""
    rng, samples, before = np.random.default_rng(SEED), [], []
    for case, read, ref_path in cases:
        probs = read()
        if probs is None:
            log.info("%s: no probabilities (.npz) for %s: no temperature fitted", fitted_on, case)
            Path(out_file).unlink(missing_ok=True)
            return None
        voxels = case_voxels(probs, read_label_map(ref_path)[0], plans)
        before.append(case_bins(voxels))
        samples.append(fit_samples(voxels, rng))
    if not samples:
        return None
    pooled = CaseVoxels(np.concatenate([s.probs for s in samples], axis=1),
                        np.concatenate([s.target for s in samples]), np.ones(sum(s.target.size for s in samples), bool))
    temperature = fit_temperature(pooled)
    after = [case_bins(case_voxels(read(), read_label_map(ref)[0], plans), temperature) for _, read, ref in cases]
    result = {TEMPERATURE_KEY: temperature, "fitted_on": fitted_on, "cases": len(samples),
              "fit_voxels": int(pooled.target.size), "ece_before": ece_report(merge_bins(before)),
              "ece_after": ece_report(merge_bins(after))}
    write_summary(result, out_file)
    log.info("%s: temperature %.3f; ECE (foreground voxels) %.4f -> %.4f (%s)", fitted_on, temperature,
             result["ece_before"]["ece_foreground"], result["ece_after"]["ece_foreground"], out_file)
    return result


def calibrate_folder(folder: Path, refs: Path, plans: Plans, out_file: Path, fitted_on: str) -> dict[str, Any] | None:
    """`calibrate_cases` on every label map of `folder` with the `.npz` beside it."""
    cases = [(case, saved_probabilities(seg), ref) for case, seg, ref in matched_cases(folder, refs)]
    return calibrate_cases(cases, plans, out_file, fitted_on)


def winner_calibration(work: Path, plans: Plans, configs: Sequence[str], name: str) -> dict[str, Any]:
    """best.json's `calibration` block for its winner: a configuration's temperature.json (fitted
    by `merge_crossval`), or, for an ensemble, T fitted now on its members' averaged cross-validation
    probabilities into results/ensembles/<name>/temperature.json. {"temperature": null} without one."""
    if len(configs) == 1:
        path = temperature_file(work, configs[0])
    else:
        path = ensemble_folder(work, name) / TEMPERATURE_FILE

        def averaged(case: str) -> ProbabilityReader:
            return lambda: average_probabilities([load_probabilities(crossval_folder(work, c) / f"{case}.npz")
                                                  for c in configs])

        cases = matched_cases(ensemble_folder(work, name), reference_labels(plans))
        calibrate_cases([(case, averaged(case), ref) for case, _, ref in cases], plans, path, f"ensemble {name}")
    temperature = read_temperature(path)
    return {TEMPERATURE_KEY: temperature, "file": None if temperature is None else str(path)}
