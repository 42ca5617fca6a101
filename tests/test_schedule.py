"""The learning-rate schedule: nnU-Net's poly decay unchanged, and its continuation when a run is
extended (`train --resume --epochs N`): no jump at the resume, 0 at the new end, saved segments.

The end-to-end check on a real run (the logged LR of a 2-epoch fold continued to 4) is
tests/test_demo.py::test_a_finished_fold_continues_to_more_epochs_without_a_learning_rate_jump.
"""

from __future__ import annotations

import pytest

from nnlite.common.errors import UserError
from nnlite.training.config import load_train_config, replace_setting
from nnlite.training.schedule import (check_extension, continued_schedule, learning_rate, planned_schedule,
                                      poly_lr, saved_schedule, schedule_to_list)

P = 0.9


def config(epochs: int, lr_step: str = "epoch", iters: int = 4):
    return load_train_config("default", [f"training.epochs={epochs}", f"training.iters_per_epoch={iters}",
                                         f"training.lr_step={lr_step}"])


def rates(cfg, schedule, epochs: range) -> list[float]:
    return [learning_rate(cfg, e, i, schedule) for e in epochs for i in range(cfg.training.iters_per_epoch)]


@pytest.mark.parametrize("lr_step", ["epoch", "iteration"])
def test_the_planned_schedule_is_nnunets_poly_bit_for_bit(lr_step):
    cfg = config(10, lr_step)
    total = 10 if lr_step == "epoch" else 40
    for e in range(10):
        for i in range(4):
            step = e if lr_step == "epoch" else e * 4 + i
            assert learning_rate(cfg, e, i, planned_schedule(cfg)) == learning_rate(cfg, e, i) \
                == poly_lr(1e-2, step, total, P)


def test_a_finished_run_continued_goes_on_from_its_last_rate_down_to_zero():
    """2 epochs trained, continued to 4: lr(e) = lr(1) · (1 − (e − 1) / 3)^0.9 for e = 2, 3."""
    old, new = config(2), config(4)
    schedule = continued_schedule(planned_schedule(old), new, done_epochs=2)
    last = learning_rate(old, 1, 0)
    assert last == poly_lr(1e-2, 1, 2, P)
    assert [learning_rate(new, e, 0, schedule) for e in (0, 1)] == [1e-2, last]  # the trained epochs
    assert learning_rate(new, 2, 0, schedule) == pytest.approx(last * (2 / 3) ** P, rel=1e-12)
    assert learning_rate(new, 3, 0, schedule) == pytest.approx(last * (1 / 3) ** P, rel=1e-12)
    assert learning_rate(new, 4, 0, schedule) == 0.0
    # the planned rule recomputed over 4 epochs would repeat lr(1) at epoch 2 (a plateau), and
    # restarting at initial_lr would jump up: neither is the documented continuation
    assert learning_rate(new, 2, 0, schedule) < learning_rate(new, 2, 0) < 1e-2


def test_per_iteration_the_continuation_starts_below_the_last_trained_iteration():
    old, new = config(2, "iteration"), config(4, "iteration")
    schedule = continued_schedule(planned_schedule(old), new, done_epochs=2)
    before, after = rates(old, None, range(2)), rates(new, schedule, range(2, 4))
    curve = before + after
    assert all(a > b > 0 for a, b in zip(curve, curve[1:]))
    # the first continued step decays by the poly factor of one step of the remaining 9 (8 + anchor)
    assert after[0] == pytest.approx(before[-1] * (8 / 9) ** P, rel=1e-12)
    assert learning_rate(new, 4, 0, schedule) == 0.0
    # the naive rule (poly over the new total from initial_lr) jumps up at the resume: 3.5x here
    assert learning_rate(new, 2, 0) > 3 * before[-1]


def test_a_run_killed_before_its_end_and_extended_twice_stays_continuous():
    cfg5, cfg8, cfg12 = config(5), config(8), config(12)
    first = continued_schedule(planned_schedule(cfg5), cfg8, done_epochs=3)  # killed after 3 of 5
    second = continued_schedule(first, cfg12, done_epochs=8)
    assert len(second) == 3 and second[:2] == first
    curve = [learning_rate(cfg12, e, 0, second) for e in range(12)]
    assert curve[:3] == [learning_rate(cfg5, e, 0) for e in range(3)]
    assert all(a > b > 0 for a, b in zip(curve, curve[1:]))
    assert learning_rate(cfg12, 12, 0, second) == 0.0


def test_the_same_horizon_keeps_the_saved_segments_so_a_killed_run_resumes_exactly():
    cfg2, cfg4 = config(2), config(4)
    extended = continued_schedule(planned_schedule(cfg2), cfg4, done_epochs=2)
    assert continued_schedule(extended, cfg4, done_epochs=3) == extended  # killed in the extension
    assert continued_schedule(planned_schedule(cfg4), cfg4, done_epochs=1) == planned_schedule(cfg4)


def test_segments_round_trip_through_a_checkpoint_and_old_checkpoints_ran_the_planned_decay():
    cfg2, cfg4 = config(2), config(4)
    extended = continued_schedule(planned_schedule(cfg2), cfg4, done_epochs=2)
    assert saved_schedule({"lr_schedule": schedule_to_list(extended)}, cfg4) == extended
    assert saved_schedule({}, cfg2) == planned_schedule(cfg2)  # no `lr_schedule`: older or converted
    assert schedule_to_list(extended)[1] == {"start": 2, "anchor": 1, "lr": poly_lr(1e-2, 1, 2, P), "end": 4}


def test_fewer_epochs_than_trained_is_one_clear_error():
    check_extension(2, 2, "fold_0")  # finished: fine
    with pytest.raises(UserError, match=r"cannot continue to 1 epochs: 2 are already trained.*--epochs 2"):
        check_extension(2, 1, "fold_0")


def test_the_initial_rate_and_exponent_are_the_settings():
    cfg = replace_setting(replace_setting(config(10), "training.initial_lr", 3e-3), "training.poly_exponent", 1.0)
    assert learning_rate(cfg, 5, 0) == pytest.approx(1.5e-3)
