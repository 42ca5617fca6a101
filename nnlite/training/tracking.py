"""Experiment tracking: what metrics.jsonl logs, also sent to TensorBoard, MLflow or Weights & Biases.

`logging.backends: [tensorboard, mlflow, wandb]` (none by default) names the trackers. Each is an
optional extra (`pip install "nnlite[tensorboard]"`, `[mlflow]`, `[wandb]`) imported only when
named; a named one that is not installed is one error line before the fold folder is made. Every
tracker gets the same values, fed from where metrics.jsonl is written (`trainer.end_epoch`):

- at start: the plan (as in plans.json) and the resolved settings (as in config.json);
- per epoch, at step = the record's `epoch` (0-based, as in metrics.jsonl): each number of the
  record (`train_loss`, `val_loss`, `mean_pseudo_dice`, `ema_pseudo_dice`, `lr`, `epoch_time`,
  `class_loss` with a classification head) and `pseudo_dice/<k>` for the k-th entry of its
  `pseudo_dice` list (k from 1: the foreground class or region); a NaN (null in metrics.jsonl) is
  left out;
- after the final validation, at the last epoch's step: the numbers of validation/summary.json as
  `validation/<key>/…` (its per-case rows left out).

TensorBoard: event files in `<fold>/tensorboard/` (`tensorboard --logdir WORK/results`); a resumed
run opens with purge_step = its first epoch, so TensorBoard drops what a killed run logged after its
checkpoint. MLflow: MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME as mlflow reads them (default
./mlruns). W&B: project WANDB_PROJECT (default "nnlite"), mode WANDB_MODE (online, offline,
disabled). A resumed fold continues its MLflow and W&B runs (their ids in `<fold>/tracking.json`).
"""

from __future__ import annotations

import importlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from nnlite.common.errors import UserError
from nnlite.common.files import write_json_atomic
from nnlite.common.schema import flat_settings
from nnlite.common.layout import PLANS_FILE, SUMMARY_FILE, VALIDATION_DIR

TENSORBOARD_DIR = "tensorboard"
SETTINGS_FILE = "config.json"  # as the fold's own copy (run_setup.CONFIG_FILE; run_setup imports this module)
TRACKING_FILE = "tracking.json"  # {backend: run id} of the MLflow / W&B runs, for a resume
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # backend → what to import
LEFT_OUT = ("per_case", "labels")  # summary.json keys that are no metric (rows per case, label values)
DEFAULT_WANDB_PROJECT = "nnlite"


class Writer(Protocol):
    """One backend; `Trackers` gives each the same values."""

    run_id: str | None  # a run to continue when the fold is resumed (None: nothing to remember)

    def start(self, plan: dict[str, Any], settings: dict[str, Any], resumed: bool) -> None: ...
    def epoch(self, step: int, scalars: dict[str, float]) -> None: ...
    def summary(self, step: int, scalars: dict[str, float], summary: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def check_installed(backends: Sequence[str]) -> None:
    """Import each named backend's package now: a missing one is one line before anything is written."""
    for name in backends:
        try:
            importlib.import_module(PACKAGES[name])
        except ImportError:
            raise UserError("logging.backends", f"'{name}' is named but not installed "
                                                f"(pip install \"nnlite[{name}]\")") from None


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as {name: value}: its numbers, pseudo_dice/<k> per class; NaN left out."""
    scalars: dict[str, Any] = {}
    for key, value in record.items():
        if key == "pseudo_dice":
            scalars.update({f"pseudo_dice/{k}": dice for k, dice in enumerate(value, start=1)})
        elif key != "epoch":
            scalars[key] = value
    return {key: float(value) for key, value in scalars.items() if _is_number(value)}


def summary_scalars(summary: dict[str, Any], prefix: str = "validation") -> dict[str, float]:
    """The numbers of summary.json as `validation/<key>/…` (lists by index; per-case rows left out)."""
    items = summary.items() if isinstance(summary, dict) else enumerate(summary)
    scalars: dict[str, float] = {}
    for key, value in items:
        name = f"{prefix}/{key}"
        if isinstance(value, (dict, list)) and key not in LEFT_OUT:
            scalars.update(summary_scalars(value, name))
        elif _is_number(value):
            scalars[name] = float(value)
    return scalars


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardWriter:
    """torch.utils.tensorboard's SummaryWriter into `<fold>/tensorboard/`."""

    run_id = None

    def __init__(self, folder: Path, name: str, run_id: str | None, first_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - only when named

        # purge_step: a reader drops the steps ≥ it that an earlier (killed) session wrote
        self.writer = SummaryWriter(str(folder / TENSORBOARD_DIR), purge_step=first_epoch or None)
        self.first_epoch = first_epoch

    def start(self, plan: dict[str, Any], settings: dict[str, Any], resumed: bool) -> None:
        for tag, data in (("plan", plan), ("settings", settings)):
            text = "\n".join("    " + line for line in json.dumps(data, indent=2).splitlines())  # markdown code
            self.writer.add_text(tag, text, self.first_epoch)

    def epoch(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a running fold is readable at once

    def summary(self, step: int, scalars: dict[str, float], summary: dict[str, Any]) -> None:
        self.epoch(step, scalars)

    def close(self) -> None:
        self.writer.close()


class MlflowWriter:
    """One MLflow run per fold: metrics per epoch step, settings as parameters, plan and settings as files."""

    def __init__(self, folder: Path, name: str, run_id: str | None, first_epoch: int) -> None:
        import mlflow  # noqa: PLC0415 - only when named

        self.mlflow = mlflow
        active = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=name)
        self.run_id = active.info.run_id

    def start(self, plan: dict[str, Any], settings: dict[str, Any], resumed: bool) -> None:
        self.mlflow.log_dict(plan, PLANS_FILE)
        self.mlflow.log_dict(settings, SETTINGS_FILE)
        if not resumed:  # MLflow parameters cannot change; an extended run's settings are in config.json
            self.mlflow.log_params(flat_settings(settings))

    def epoch(self, step: int, scalars: dict[str, float]) -> None:
        self.mlflow.log_metrics(scalars, step=step)

    def summary(self, step: int, scalars: dict[str, float], summary: dict[str, Any]) -> None:
        self.mlflow.log_metrics(scalars, step=step)
        self.mlflow.log_dict(summary, f"{VALIDATION_DIR}/{SUMMARY_FILE}")

    def close(self) -> None:
        self.mlflow.end_run()


class WandbWriter:
    """One W&B run per fold (project WANDB_PROJECT, mode WANDB_MODE): metrics per epoch step."""

    def __init__(self, folder: Path, name: str, run_id: str | None, first_epoch: int) -> None:
        import wandb  # noqa: PLC0415 - only when named

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", DEFAULT_WANDB_PROJECT), name=name,
                              id=run_id, resume="allow" if run_id else None, mode=os.environ.get("WANDB_MODE"),
                              dir=str(folder))
        self.run_id = self.run.id

    def start(self, plan: dict[str, Any], settings: dict[str, Any], resumed: bool) -> None:
        self.run.config.update({"settings": settings, "plan": plan}, allow_val_change=True)

    def epoch(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def summary(self, step: int, scalars: dict[str, float], summary: dict[str, Any]) -> None:
        self.run.summary.update(scalars)

    def close(self) -> None:
        self.run.finish()


WRITERS = {"tensorboard": TensorBoardWriter, "mlflow": MlflowWriter, "wandb": WandbWriter}


@dataclass
class Trackers:
    """Every named writer, fed together; without backends every call does nothing."""

    writers: list[Writer] = field(default_factory=list)
    last_epoch: int = -1  # the step of the newest epoch logged (or trained before this call)

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.last_epoch = int(record["epoch"])
        scalars = epoch_scalars(record)
        for writer in self.writers:
            writer.epoch(self.last_epoch, scalars)

    def log_summary(self, summary: dict[str, Any]) -> None:
        scalars = summary_scalars(summary)
        for writer in self.writers:
            writer.summary(self.last_epoch, scalars, summary)

    def close(self) -> None:
        writers, self.writers = self.writers, []
        for writer in writers:
            writer.close()


def open_trackers(backends: Sequence[str], folder: Path, name: str, plan: dict[str, Any],
                  settings: dict[str, Any], first_epoch: int) -> Trackers:
    """Start each backend's run (continuing the fold's earlier ones) and log plan and settings."""
    trackers = Trackers(last_epoch=first_epoch - 1)
    if not backends:
        return trackers
    ids_file = folder / TRACKING_FILE
    ids = json.loads(ids_file.read_text()) if ids_file.is_file() else {}
    for backend in backends:
        try:
            trackers.writers.append(WRITERS[backend](folder, name, ids.get(backend), first_epoch))
        except Exception as error:  # an unreachable server, a bad credential: one line, not a traceback
            trackers.close()
            raise UserError("logging.backends", f"{backend}: could not start a run "
                                                f"({type(error).__name__}: {error})") from None
    ids.update({b: w.run_id for b, w in zip(backends, trackers.writers) if w.run_id is not None})
    if ids:
        write_json_atomic(ids_file, ids)
    for writer in trackers.writers:
        writer.start(plan, settings, resumed=first_epoch > 0)
    return trackers
