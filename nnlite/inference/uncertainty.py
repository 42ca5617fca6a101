"""Per-voxel uncertainty and a per-case quality score from the members prediction already averages.

A prediction averages the probabilities of its members: every network (fold) × every mirrored copy
inside the sliding window, and every configuration of an ensemble. From those members, in the one
pass prediction makes anyway (docs/uncertainty.md):

- entropy: H(p̄) of the averaged probabilities, normalised by its maximum, so 0 (certain) … 1
  (uniform). Classes: −Σ_k p̄_k log p̄_k / log K. Regions (independent sigmoids): the sum of the
  regions' binary entropies / (R log 2), i.e. the entropy of R independent Bernoulli variables.
- disagreement: the mutual information between the prediction and the choice of member,
  H(p̄) − mean_m H(p_m), with the same normaliser; 0 when the members agree (and always with one
  member), at most the entropy. Inside the sliding window it is computed per tile from running
  sums (Σ_m p_m and Σ_m Σ_k p_m,k log p_m,k) and stitched like the probabilities (Gaussian-weighted
  over overlapping tiles); an ensemble combines its configurations' in the original geometry:
  MI = H(p̄) − mean_c (H(p̄_c) − MI_c).

The per-case quality score (higher = less trustworthy) is the Dice error the model expects of
itself: for each foreground class (region) c, with the predicted structure A_c = {p̄_c > 0.5}, the
expected counts under p̄ are TP_c = Σ_A p̄_c, FP_c = Σ_A (1 − p̄_c), FN_c = Σ_not A p̄_c, and
score = mean_c (FP_c + FN_c) / (2 TP_c + FP_c + FN_c) in [0, 1] (0 for a class neither predicted nor
doubted). uncertainty.csv also reports the mean entropy and disagreement in the predicted
structures' boundary band.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from nnlite.common.errors import UserError
from nnlite.common.layout import MAP_SUFFIXES
from nnlite.data.image_io import file_ending
from nnlite.inference.outputs import ChannelSink, Cropped, members_in_original, probabilities_in_crop
from nnlite.plans import Plans
from nnlite.preprocessing.pipeline import CaseProperties, restore_original_geometry

CSV_COLUMNS = ("case", "score", "boundary_entropy", "boundary_disagreement", "expected_errors",
               "foreground_voxels")
PICTURE_ENDINGS = (".png", ".bmp", ".jpg", ".jpeg")  # 8-bit files: the map is written as 0 … 255


def entropy_terms(p: torch.Tensor | np.ndarray, sigmoid: bool) -> torch.Tensor | np.ndarray:
    """−p log p per channel in nats (0 log 0 = 0); for a sigmoid region also −(1−p) log(1−p)."""
    if isinstance(p, np.ndarray):
        p = np.clip(p.astype(np.float32, copy=False), 0.0, 1.0)
        terms = -p * np.log(np.where(p > 0, p, 1.0))
        if sigmoid:
            q = 1.0 - p
            terms = terms - q * np.log(np.where(q > 0, q, 1.0))
        return terms
    p = p.clamp(0.0, 1.0)
    terms = -torch.special.xlogy(p, p)
    return terms - torch.special.xlogy(1.0 - p, 1.0 - p) if sigmoid else terms


def member_entropy(probs: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """(N, K, *S) probabilities → (N, *S) entropy in nats (regions: the sum of binary entropies)."""
    return entropy_terms(probs, sigmoid).sum(dim=1)


def entropy_scale(channels: int, sigmoid: bool) -> float:
    """The largest entropy: log K for K classes, R log 2 for R independent regions."""
    return channels * math.log(2.0) if sigmoid else math.log(channels)


class MemberSums:
    """Running sums over the members of a tile batch: Σ_m p_m (N, K, *S) and Σ_m H(p_m) (N, *S)."""

    def __init__(self, sigmoid: bool, disagreement: bool) -> None:
        self.sigmoid, self.disagreement = sigmoid, disagreement
        self.total: torch.Tensor | None = None
        self.entropy: torch.Tensor | None = None
        self.count = 0

    def add(self, probs: torch.Tensor) -> None:
        self.total = probs if self.total is None else self.total + probs
        self.count += 1
        if self.disagreement:
            h = member_entropy(probs, self.sigmoid)
            self.entropy = h if self.entropy is None else self.entropy + h

    def result(self) -> torch.Tensor:
        """The mean (N, K, *S); with `disagreement`, the members' mutual information in nats as one
        more channel (N, K + 1, *S). One member: exactly 0 (the same entropy subtracted)."""
        mean = self.total / self.count
        if not self.disagreement:
            return mean
        mutual = (member_entropy(mean, self.sigmoid) - self.entropy / self.count).clamp_min(0.0)
        return torch.cat([mean, mutual[:, None]], dim=1)


class UncertaintySums:
    """Fed one class channel at a time by the export (`add`): the averaged channel and its members'
    channels, all in one space (*S). Accumulates H(p̄), each member's H(p_m) (several members
    only), and per class the expected TP, FP, FN of the structure p̄_c > 0.5 and its volume."""

    def __init__(self, channels: int, sigmoid: bool) -> None:
        self.channels, self.sigmoid = channels, sigmoid
        self.entropy: np.ndarray | None = None  # (*S) float32, nats
        self.member_entropy: list[np.ndarray] = []  # per member (*S) float32, nats
        self.expected = np.zeros((channels, 3))  # per class expected TP, FP, FN (voxels)
        self.volume = np.zeros(channels)  # voxels with p̄_c > 0.5

    def add(self, k: int, mean: np.ndarray, members: Sequence[np.ndarray]) -> None:
        terms = entropy_terms(mean, self.sigmoid)
        self.entropy = terms if self.entropy is None else self.entropy + terms
        if len(members) > 1:
            if not self.member_entropy:
                self.member_entropy = [np.zeros(mean.shape, np.float32) for _ in members]
            for total, member in zip(self.member_entropy, members):
                total += entropy_terms(member, self.sigmoid)
        above = mean > 0.5
        inside = float(mean.sum(where=above, dtype=np.float64))
        self.volume[k] = float(np.count_nonzero(above))
        self.expected[k] = inside, self.volume[k] - inside, float(mean.sum(dtype=np.float64)) - inside

    def maps(self, disagreements: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(entropy, disagreement) (*S) float32 in [0, 1] from the members' own mutual information
        (nats, same space as the channels): MI = H(p̄) − mean_m (H(p_m) − MI_m)."""
        member_entropy = self.member_entropy or [self.entropy]  # one member: H(p_1) = H(p̄)
        if len(disagreements) != len(member_entropy):
            raise ValueError(f"{len(disagreements)} disagreement maps for {len(member_entropy)} members")
        within = sum(h - mi for h, mi in zip(member_entropy, disagreements)) / len(member_entropy)
        scale = entropy_scale(self.channels, self.sigmoid)
        entropy = np.clip(self.entropy / scale, 0.0, 1.0).astype(np.float32)
        mutual = np.clip((self.entropy - within) / scale, 0.0, entropy).astype(np.float32)
        return entropy, mutual


def boundary_band(seg: np.ndarray, width: int = 1) -> np.ndarray:
    """Voxels within `width` voxels of the predicted foreground's boundary, both sides (bool *S)."""
    foreground = seg > 0
    if not foreground.any():
        return foreground
    cross = ndimage.generate_binary_structure(seg.ndim, 1)
    outer = ndimage.binary_dilation(foreground, cross, iterations=width)
    inner = ndimage.binary_erosion(foreground, cross, iterations=width, border_value=1)
    return outer & ~inner


def quality_row(seg: np.ndarray, entropy: np.ndarray, mutual: np.ndarray, sums: UncertaintySums,
                regions: bool) -> dict[str, float]:
    """The case's row of uncertainty.csv (without "case"): score = mean over foreground classes
    (every region) of the expected Dice error (FP + FN) / (2 TP + FP + FN); a class neither
    predicted nor doubted scores 0."""
    classes = list(range(sums.channels) if regions else range(1, sums.channels))
    tp, fp, fn = sums.expected[classes].T
    errors = fp + fn
    ratios = np.divide(errors, 2 * tp + errors, out=np.zeros_like(errors), where=2 * tp + errors > 0)
    band = boundary_band(seg)
    return {"score": float(np.mean(ratios)) if classes else 0.0,
            "boundary_entropy": float(entropy[band].mean()) if band.any() else 0.0,
            "boundary_disagreement": float(mutual[band].mean()) if band.any() else 0.0,
            "expected_errors": float(errors.sum()),
            "foreground_voxels": float(np.count_nonzero(seg))}


def map_for_file(array: np.ndarray, ending: str) -> np.ndarray:
    """A [0, 1] map as written: float32, or 0 … 255 uint8 for 8-bit picture formats (PNG)."""
    if ending.lower() in PICTURE_ENDINGS:
        return np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    return array.astype(np.float32, copy=False)


def format_rows(rows: Mapping[str, Mapping[str, float]]) -> str:
    """{case: row} → uncertainty.csv text, cases sorted; numbers with 6 significant digits."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for case in sorted(rows):
        writer.writerow([case] + [f"{float(rows[case][column]):.6g}" for column in CSV_COLUMNS[1:]])
    return out.getvalue()


def read_rows(path: Path) -> dict[str, dict[str, float]]:
    """uncertainty.csv → {case: {column: value}}; a file without the columns is a UserError."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise UserError(path, f"not an uncertainty file (columns {reader.fieldnames}, "
                                  f"expected {list(CSV_COLUMNS)})")
        try:
            return {row["case"]: {c: float(row[c]) for c in CSV_COLUMNS[1:]} for row in reader}
        except (TypeError, ValueError) as error:
            raise UserError(path, f"holds a value that is not a number ({error})") from None


@dataclass
class CaseUncertainty:
    """A case's maps (*raw shape) float32 in [0, 1] and its row of uncertainty.csv."""

    entropy: np.ndarray
    disagreement: np.ndarray
    row: dict[str, float]

    def oriented(self, turn: Callable[[np.ndarray], np.ndarray]) -> None:
        """Both maps turned as the label map is (a case read reoriented goes back to its file's)."""
        self.entropy, self.disagreement = turn(self.entropy), turn(self.disagreement)

    def files(self, seg_path: Path, folder: Path | None = None) -> list[tuple[Path, np.ndarray]]:
        """(path, map as written) of the two maps (`uncertainty_files`)."""
        (entropy, ending), (mutual, _) = uncertainty_files(seg_path, folder)
        return [(entropy, map_for_file(self.entropy, ending)), (mutual, map_for_file(self.disagreement, ending))]


def uncertainty_files(seg_path: Path, folder: Path | None = None) -> list[tuple[Path, str]]:
    """[(`<case>_uncertainty<ending>`, ending), (`<case>_disagreement<ending>`, ending)] in `folder`
    (default: beside the label map `seg_path`), in the label map's format."""
    seg_path = Path(seg_path)
    ending = file_ending(seg_path) or ""
    case = seg_path.name[: len(seg_path.name) - len(ending)]
    return [(Path(folder or seg_path.parent) / f"{case}{suffix}{ending}", ending) for suffix in MAP_SUFFIXES]


def members_with_uncertainty(members: Sequence[Cropped], disagreements: Sequence[tuple[np.ndarray, str]],
                             plans: Plans, keep: ChannelSink | None = None) -> tuple[np.ndarray, CaseUncertainty]:
    """`outputs.members_in_original` (label map; probabilities to `keep`) watched by `UncertaintySums`,
    and the case's uncertainty. disagreements: per member, (its mutual information (*network space)
    in nats, its configuration); resampled and uncropped as its probabilities are."""
    sums = UncertaintySums(len(members[0][0]), plans.sigmoid_outputs)
    seg = members_in_original(members, plans, keep, observe=sums.add)
    single = len(members) == 1  # its channels are still in the crop; an ensemble's are uncropped

    def in_space(mutual: np.ndarray, props: CaseProperties, config_name: str) -> np.ndarray:
        cropped = probabilities_in_crop(mutual[None], props, plans, config_name).channel(0)
        return cropped if single else restore_original_geometry(cropped, props, plans, 0.0)

    entropy, mutual = sums.maps([in_space(np.asarray(mi), props, config)
                                 for (mi, config), (_, props) in zip(disagreements, members)])
    if single:
        props = members[0][1]
        entropy, mutual = (restore_original_geometry(m, props, plans, 0.0) for m in (entropy, mutual))
    row = quality_row(seg, entropy, mutual, sums, bool(plans.regions))
    return seg, CaseUncertainty(entropy, mutual, row)
