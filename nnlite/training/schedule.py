"""The learning rate: nnU-Net's poly decay, and how it continues when a run is extended.

nnU-Net (PolyLRScheduler, one step per epoch): lr(e) = initial_lr · (1 − e / N)^p with p = 0.9 for
the epochs e = 0 … N − 1 of an N-epoch run; `training.lr_step: iteration` counts iterations instead
(step s = e · iters_per_epoch + i over N · iters_per_epoch steps).

Extending a run (`train --resume --epochs N'` after e0 epochs, N' ≠ the planned N): restarting the
planned formula over N' would make the rate jump up (or stall) at e0. Instead the decay restarts from
the last rate trained with, at the last trained step a = e0 − 1 (per iteration: e0 · iters − 1), and
reaches 0 at the new end N':

    lr(s) = lr(a) · (1 − (s − a) / (N' − a))^p      for a < s < N'

It is nnU-Net's poly rule begun at step a with initial rate lr(a): at s = a it gives lr(a) (no jump),
the first continued step is lower by the factor ((N' − e0) / (N' − e0 + 1))^p, and it is 0 at N'.
Each extension adds such a segment; the segments are saved in every checkpoint (`lr_schedule`), so a
killed extended run resumes bit-exactly, and metrics.jsonl logs the rate of every epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from nnlite.common.errors import UserError
from nnlite.training.config import TrainConfig


@dataclass(frozen=True)
class PolySegment:
    """lr(s) = lr · (1 − (s − anchor) / (end − anchor))^p for steps s ≥ start (epochs or iterations,
    per `training.lr_step`): the poly decay through (anchor, lr) that reaches 0 at `end`."""

    start: int  # first step this segment sets
    anchor: int  # the step whose rate is `lr`: `start` for the planned run, start − 1 for a continuation
    lr: float
    end: int  # total steps: the rate is 0 here


Schedule = tuple[PolySegment, ...]


def poly_lr(initial_lr: float, step: int, total_steps: int, exponent: float) -> float:
    """nnU-Net's PolyLR: initial_lr · (1 − step / total)^exponent (no warmup)."""
    return initial_lr * (1 - min(step, total_steps) / total_steps) ** exponent


def step_of(config: TrainConfig, epoch: int, iteration: int) -> int:
    """The schedule step of `iteration` of `epoch`: the epoch itself, or the global iteration."""
    t = config.training
    return epoch if t.lr_step == "epoch" else epoch * t.iters_per_epoch + iteration


def planned_schedule(config: TrainConfig) -> Schedule:
    """nnU-Net's single poly decay from initial_lr over the configured run."""
    return (PolySegment(0, 0, config.training.initial_lr, step_of(config, config.training.epochs, 0)),)


def learning_rate(config: TrainConfig, epoch: int, iteration: int, schedule: Schedule | None = None) -> float:
    """The LR for `iteration` of `epoch`: one poly step per epoch (nnU-Net) or per iteration; with a
    `schedule` (a resumed, extended run), the segment that holds the step."""
    step = step_of(config, epoch, iteration)
    segments = schedule or planned_schedule(config)
    segment = [s for s in segments if s.start <= step][-1]
    return poly_lr(segment.lr, step - segment.anchor, segment.end - segment.anchor,
                   config.training.poly_exponent)


def continued_schedule(schedule: Schedule, config: TrainConfig, done_epochs: int) -> Schedule:
    """`schedule` of a run resumed after `done_epochs` with `config` (its new epochs): unchanged
    when it already ends there, else one more segment from the last trained step's rate to 0."""
    if done_epochs == 0:
        return planned_schedule(config)
    end = step_of(config, config.training.epochs, 0)
    if schedule[-1].end == end:  # the same horizon: a killed run goes on exactly as it was
        return schedule
    start = step_of(config, done_epochs, 0)
    last_lr = learning_rate(config, done_epochs - 1, config.training.iters_per_epoch - 1, schedule)
    return (*schedule, PolySegment(start, start - 1, last_lr, end))


def check_extension(done_epochs: int, epochs: int, where: object) -> None:
    """Fewer epochs than already trained cannot be continued: one clear line."""
    if epochs < done_epochs:
        raise UserError(where, f"cannot continue to {epochs} epochs: {done_epochs} are already trained "
                               f"(use --epochs {done_epochs} or more, or --overwrite to start again)")


def schedule_to_list(schedule: Schedule) -> list[dict[str, Any]]:
    """Plain dicts for the checkpoint (weights_only-loadable)."""
    return [asdict(segment) for segment in schedule]


def saved_schedule(checkpoint: dict[str, Any], saved_config: TrainConfig) -> Schedule:
    """The checkpoint's segments; a checkpoint without them (older, converted) ran the planned decay
    of its own settings."""
    rows: Sequence[dict[str, Any]] = checkpoint.get("lr_schedule") or ()
    if not rows:
        return planned_schedule(saved_config)
    return tuple(PolySegment(int(r["start"]), int(r["anchor"]), float(r["lr"]), int(r["end"])) for r in rows)


def describe(schedule: Schedule, config: TrainConfig) -> str:
    """One log line on the newest segment of an extended run."""
    last, unit = schedule[-1], config.training.lr_step
    return (f"learning rate continues from {last.lr:.3e} (the last trained {unit}'s) down to 0 at "
            f"{unit} {last.end}: lr(s) = {last.lr:.3e} · (1 − (s − {last.anchor}) / "
            f"{last.end - last.anchor})^{config.training.poly_exponent:g} ({unit}s s counted from 0)")
