"""Per-epoch metrics: `metrics.jsonl` (one JSON object per epoch), `log.txt` and `progress.png`.

An epoch record is a plain dict: `epoch`, `train_loss`, `val_loss`, `pseudo_dice` (list, one per
foreground class), `mean_pseudo_dice`, `ema_pseudo_dice`, `lr`, `epoch_time` (s).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never a window (servers, workers, tests)
import matplotlib.pyplot as plt  # noqa: E402

from nnlite.common.files import json_ready, write_atomic, write_text_atomic  # noqa: E402

METRICS_FILE = "metrics.jsonl"
LOG_FILE = "log.txt"
PROGRESS_FILE = "progress.png"
PLOT_SIZE_INCHES = (10, 12)  # three stacked panels


def append_metrics(folder: Path, record: dict[str, Any]) -> None:
    """Append one epoch record as a JSON line (NaN written as null)."""
    line = json.dumps({key: json_ready(value) for key, value in record.items()})
    with open(folder / METRICS_FILE, "a") as handle:
        handle.write(line + "\n")


def rewrite_metrics(folder: Path, records: Sequence[dict[str, Any]]) -> None:
    """Make metrics.jsonl hold exactly `records` (on resume: drops a torn last line and epochs
    logged after the checkpoint that the run resumes from)."""
    text = "".join(json.dumps({k: json_ready(v) for k, v in r.items()}) + "\n" for r in records)
    write_text_atomic(folder / METRICS_FILE, text)


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """Records of metrics.jsonl; a torn (unparseable) last line is ignored."""
    path = folder / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def trim_torn_line(path: Path) -> None:
    """Cut a text file after its last complete line (a kill can leave half a line)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def attach_log_file(folder: Path) -> logging.Handler:
    """Send nnlite's log messages to `folder/log.txt` too (appending); returns the handler."""
    trim_torn_line(folder / LOG_FILE)
    handler = logging.FileHandler(folder / LOG_FILE, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    logging.getLogger("nnlite").addHandler(handler)
    return handler


def format_epoch(record: dict[str, Any], epochs: int) -> str:
    """One log line per epoch."""
    dice = ", ".join(f"{d:.4f}" for d in record["pseudo_dice"])
    head = f" (class loss {record['class_loss']:.4f})" if "class_loss" in record else ""
    return (f"epoch {record['epoch'] + 1}/{epochs}: train loss {record['train_loss']:.4f}{head}, "
            f"val loss {record['val_loss']:.4f}, pseudo-Dice [{dice}], "
            f"EMA {record['ema_pseudo_dice']:.4f}, lr {record['lr']:.2e}, "
            f"{record['epoch_time']:.1f} s")


def plot_progress(records: Sequence[dict[str, Any]], path: Path) -> None:
    """progress.png: losses + pseudo-Dice/EMA, epoch time, learning rate (written atomically)."""
    epochs = [r["epoch"] + 1 for r in records]
    figure, (ax_loss, ax_time, ax_lr) = plt.subplots(3, 1, figsize=PLOT_SIZE_INCHES)
    ax_loss.plot(epochs, [r["train_loss"] for r in records], "b-", label="train loss")
    ax_loss.plot(epochs, [_nan(r["val_loss"]) for r in records], "r-", label="val loss")
    if any("class_loss" in r for r in records):  # a classification head
        ax_loss.plot(epochs, [r.get("class_loss", math.nan) for r in records], "m-", label="class loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_dice = ax_loss.twinx()
    ax_dice.plot(epochs, [_nan(r["mean_pseudo_dice"]) for r in records], "g:", label="pseudo Dice")
    ax_dice.plot(epochs, [_nan(r["ema_pseudo_dice"]) for r in records], "g-", label="pseudo Dice (EMA)")
    ax_dice.set_ylabel("pseudo Dice")
    ax_dice.set_ylim(0, 1)
    lines = ax_loss.get_legend_handles_labels()
    more = ax_dice.get_legend_handles_labels()
    ax_loss.legend(lines[0] + more[0], lines[1] + more[1], loc="center right")
    ax_time.plot(epochs, [r["epoch_time"] for r in records], "b-")
    ax_time.set_ylabel("epoch time (s)")
    ax_time.set_ylim(bottom=0)
    ax_lr.plot(epochs, [r["lr"] for r in records], "b-")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)
