"""Side-by-side pictures: input channels, reference, raw and post-processed prediction per slice.

One PNG per case (`<case>.png`): a row per chosen slice along axis 0 (the through-plane axis),
columns = every input channel, then the reference, the prediction and (when given) the
post-processed prediction drawn over channel 0. The slices are those holding foreground in any of
the label maps, evenly thinned to at most `max_slices`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never a window (also on machines without a display)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from nnlite.common.layout import SUMMARY_FILE
from nnlite.common.errors import UserError  # noqa: E402
from nnlite.common.files import ensure_writable_dir, read_json_checked, write_atomic  # noqa: E402
from nnlite.data.image_io import read_case, read_image  # noqa: E402
from nnlite.evaluation.metrics import list_segs  # noqa: E402

log = logging.getLogger(__name__)

MAX_SLICES = 6  # rows per picture
PANEL_INCHES = 2.4  # size of one panel
DPI = 100
WINDOW_PERCENTILES = (0.5, 99.5)  # grey-value window of each channel, robust to outliers
OVERLAY_ALPHA = 0.55
LABEL_COLORS = ListedColormap(plt.get_cmap("tab10").colors[:9])  # label k → colour (k − 1) mod 9


def foreground_slices(segs: Sequence[np.ndarray], max_slices: int = MAX_SLICES) -> list[int]:
    """Indices along axis 0 where any label map has foreground, evenly thinned; else the middle."""
    hits = np.zeros(segs[0].shape[0], dtype=bool)
    for seg in segs:
        hits |= (seg > 0).reshape(seg.shape[0], -1).any(axis=1)
    found = np.flatnonzero(hits)
    if found.size == 0:
        return [segs[0].shape[0] // 2]
    if found.size <= max_slices:
        return found.tolist()
    picks = np.linspace(0, found.size - 1, max_slices).round().astype(int)
    return found[picks].tolist()


def intensity_window(channel: np.ndarray) -> tuple[float, float]:
    """(low, high) grey window of one channel volume (Z, Y, X), the same for every slice."""
    low, high = np.percentile(channel, WINDOW_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def render_case(path: str | Path, data: np.ndarray, panels: dict[str, np.ndarray],
                spacing: Sequence[float], slices: Sequence[int], title: str = "") -> Path:
    """Write a PNG: data (C, Z, Y, X), panels name → label map (Z, Y, X), one row per slice."""
    names = [f"channel {c}" for c in range(data.shape[0])] + list(panels)
    fig, axes = plt.subplots(len(slices), len(names), squeeze=False,
                             figsize=(PANEL_INCHES * len(names), PANEL_INCHES * len(slices)))
    aspect = spacing[1] / spacing[2]  # y/x voxel size: keep the anatomy's proportions
    windows = [intensity_window(channel) for channel in data]
    for row, z in enumerate(slices):
        for col, name in enumerate(names):
            ax = axes[row, col]
            channel = col if col < data.shape[0] else 0
            ax.imshow(data[channel, z], cmap="gray", vmin=windows[channel][0],
                      vmax=windows[channel][1], aspect=aspect, interpolation="nearest")
            if col >= data.shape[0]:
                seg = panels[name][z]
                overlay = np.ma.masked_where(seg <= 0, (seg - 1) % LABEL_COLORS.N)
                ax.imshow(overlay, cmap=LABEL_COLORS, vmin=0, vmax=LABEL_COLORS.N - 1,
                          alpha=OVERLAY_ALPHA, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"slice {z}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)


def _seg(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    seg = read_image(path).array
    if seg.shape != shape:
        raise UserError(path, f"shape {seg.shape} differs from the image's {shape}")
    return np.rint(seg).astype(np.int16)


def visualize_folder(images_dir: str | Path, ref_dir: str | Path, pred_dir: str | Path,
                     out_dir: str | Path, postprocessed_dir: str | Path | None = None,
                     cases: Sequence[str] | None = None, max_slices: int = MAX_SLICES) -> list[Path]:
    """One `<case>.png` in out_dir per predicted case (or per case of `cases`); every case is
    checked to have its image and label maps before the first picture is drawn."""
    from nnlite.inference.options import find_input_cases

    images = find_input_cases(Path(images_dir))
    folders = {"reference": Path(ref_dir), "prediction": Path(pred_dir)}
    if postprocessed_dir is not None:
        folders["post-processed"] = Path(postprocessed_dir)
    listed = {name: list_segs(folder) for name, folder in folders.items()}
    wanted = list(cases) if cases else list(listed["prediction"])
    for case in wanted:
        if case not in images:
            raise UserError(case, f"no image <case>_<CCCC>.nii.gz in {images_dir}")
        missing = next((name for name in folders if case not in listed[name]), None)
        if missing is not None:
            raise UserError(case, f"no label map <case>.nii.gz in {folders[missing]}")
    ensure_writable_dir(out_dir, "output folder")
    written = []
    for case in wanted:
        image = read_case(images[case])
        panels = {name: _seg(listed[name][case], image.data.shape[1:]) for name in folders}
        slices = foreground_slices(list(panels.values()), max_slices)
        written.append(render_case(Path(out_dir) / f"{case}.png", image.data, panels,
                                   image.spacing, slices, title=case))
        log.info("wrote %s", written[-1])
    return written


ROC_FILE = "roc.png"  # visualize: the ROC curve(s) of a folder whose summary.json has a classification


def render_roc(path: str | Path, scores: dict) -> Path:
    """Write a PNG of the ROC curve of summary.json's `classification` block: one curve for two
    classes (the second class positive), one per class (one-vs-rest) for more."""
    from nnlite.evaluation.class_scores import roc_curve

    names = scores["classes"]
    cases = scores["per_case"].values()
    true = np.array([names.index(c["true"]) for c in cases])
    probs = np.array([c["probabilities"] for c in cases])
    positives = [1] if len(names) == 2 else range(len(names))
    fig, ax = plt.subplots(figsize=(4, 4))
    for k in positives:
        fpr, tpr = roc_curve(true == k, probs[:, k])
        ax.plot(fpr, tpr, drawstyle="steps-post", label=f"{names[k]} vs rest")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    auc = "n/a" if scores["auc"] is None else f"{scores['auc']:.3f}"
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02),
           title=f"ROC, AUC {auc} ({scores['num_cases']} cases)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)


def roc_of_folder(pred_dir: str | Path, out_dir: str | Path) -> Path | None:
    """out_dir/roc.png when pred_dir/summary.json holds a classification block, else None."""
    summary = Path(pred_dir) / SUMMARY_FILE
    if not summary.is_file():
        return None
    scores = read_json_checked(summary).get("classification")
    if not scores or not scores.get("per_case"):
        return None
    ensure_writable_dir(out_dir, "output folder")
    return render_roc(Path(out_dir) / ROC_FILE, scores)
