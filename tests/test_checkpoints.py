"""Training settings (YAML + --set), checkpoints (atomic, weights_only, truncation), RNG states, logs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from nnlite.common.errors import UserError
from nnlite.training import checkpoints, progress
from nnlite.training.config import (CONFIG_DIR, TrainConfig, config_differences, config_from_dict,
                                    config_to_dict, load_train_config)

REPO = Path(__file__).resolve().parents[1]


# --- settings ----------------------------------------------------------------------------------

def test_default_yaml_holds_the_reference_defaults():
    config = load_train_config("default")
    t = config.training
    assert (t.epochs, t.iters_per_epoch, t.val_iters) == (1000, 250, 50)
    assert (t.initial_lr, t.momentum, t.nesterov, t.weight_decay) == (1e-2, 0.99, True, 3e-5)
    assert (t.poly_exponent, t.lr_step, t.grad_clip) == (0.9, "epoch", 12.0)
    assert config.data.oversample_foreground == 0.33 and config.checkpoint.every == 1
    assert config == TrainConfig()  # the YAML file and the dataclass defaults agree


def test_repo_configs_are_the_packaged_ones():
    for name in ("default", "debug"):
        assert (REPO / "configs" / f"{name}.yaml").read_text() == (CONFIG_DIR / f"{name}.yaml").read_text()
    assert load_train_config("debug").training.epochs < 10


def test_set_overrides_dotted_keys_and_parses_numbers():
    config = load_train_config("default", ["training.initial_lr=3e-3", "fold=all", "seed=7",
                                           "data.augment=false", "training.lr_step=iteration"])
    assert config.training.initial_lr == pytest.approx(3e-3) and isinstance(config.training.initial_lr, float)
    assert (config.fold, config.seed, config.data.augment) == ("all", 7, False)
    assert config.training.lr_step == "iteration"


@pytest.mark.parametrize("override, named", [("training.initial_rate=1", "training.initial_rate"),
                                             ("bogus=1", "bogus"), ("training.epochs.x=1", "training.epochs")])
def test_unknown_keys_are_rejected_by_name(override, named):
    with pytest.raises(UserError) as error:
        load_train_config("default", [override])
    assert named in str(error.value)


@pytest.mark.parametrize("override", ["training.epochs=abc", "training.lr_step=sometimes", "device=tpu",
                                      "data.oversample_foreground=1.5", "nonsense"])
def test_bad_values_are_user_errors(override):
    with pytest.raises(UserError):
        load_train_config("default", [override])


def test_unknown_key_in_a_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("training:\n  epochs: 3\n  learning_rate: 0.1\n")
    with pytest.raises(UserError, match="learning_rate"):
        load_train_config(path)


def test_config_round_trip_and_differences():
    config = load_train_config("debug", ["seed=3"])
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    other = load_train_config("debug", ["seed=3", "training.initial_lr=0.5"])
    assert config_differences(config, other) == ["training.initial_lr: 0.01 → 0.5"]
    assert config_differences(config, other, ignore=["training.initial_lr"]) == []


# --- checkpoints -------------------------------------------------------------------------------

def tiny_checkpoint(epoch: int = 1) -> dict:
    net = torch.nn.Conv3d(1, 2, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 1, 4, 4, 4)).sum().backward()
    opt.step()
    return {"network": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
            "metrics": [{"epoch": 0, "train_loss": 0.5, "pseudo_dice": [float("nan")]}],
            "rng": checkpoints.capture_rng(), "plan": {"labels": {"background": 0}},
            "config": config_to_dict(load_train_config("debug"))}


def test_checkpoint_is_atomic_and_loads_with_weights_only(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path / checkpoints.LATEST, tiny_checkpoint())
    assert not list(tmp_path.glob("*.tmp"))
    loaded = torch.load(path, weights_only=True)
    assert set(checkpoints.REQUIRED_KEYS) <= set(loaded) and "grad_scaler" not in loaded
    assert loaded["epoch"] == 1 and np.isnan(loaded["metrics"][0]["pseudo_dice"][0])


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    def broken(obj, path):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError):
        checkpoints.save_checkpoint(tmp_path / checkpoints.LATEST, tiny_checkpoint())
    assert list(tmp_path.iterdir()) == []


def test_truncated_checkpoint_is_detected_and_the_previous_good_one_used(tmp_path):
    checkpoints.save_checkpoint(tmp_path / checkpoints.BEST, tiny_checkpoint(epoch=2))
    latest = checkpoints.save_checkpoint(tmp_path / checkpoints.LATEST, tiny_checkpoint(epoch=3))
    assert checkpoints.load_resumable(tmp_path)["epoch"] == 3
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        checkpoints.load_checkpoint(latest)
    assert checkpoints.load_resumable(tmp_path)["epoch"] == 2


def test_all_checkpoints_damaged_is_a_clear_error(tmp_path):
    (tmp_path / checkpoints.LATEST).write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(UserError, match="--overwrite"):
        checkpoints.load_resumable(tmp_path)
    assert checkpoints.load_resumable(tmp_path / "empty") is None


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.rand(5), np.random.rand(3), np.random.randn(), random.random()  # mid-stream, cached gaussian
    checkpoint = tiny_checkpoint()
    expected = torch.rand(4), np.random.randn(4), random.random()
    path = checkpoints.save_checkpoint(tmp_path / checkpoints.LATEST, checkpoint)
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    checkpoints.restore_rng(checkpoints.load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.randn(4), expected[1]) and random.random() == expected[2]


# --- metrics and logs --------------------------------------------------------------------------

def record(epoch: int, dice: float = 0.5) -> dict:
    return {"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "val_loss": float("nan"),
            "pseudo_dice": [dice, float("nan")], "mean_pseudo_dice": dice, "ema_pseudo_dice": dice,
            "lr": 0.01, "epoch_time": 1.5}


def test_metrics_jsonl_torn_line_is_ignored_and_rewritten(tmp_path):
    progress.append_metrics(tmp_path, record(0))
    progress.append_metrics(tmp_path, record(1))
    with open(tmp_path / progress.METRICS_FILE, "a") as handle:
        handle.write('{"epoch": 2, "train_lo')  # killed mid-write
    assert [r["epoch"] for r in progress.read_metrics(tmp_path)] == [0, 1]
    progress.rewrite_metrics(tmp_path, [record(0)])
    lines = (tmp_path / progress.METRICS_FILE).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["val_loss"] is None  # NaN → null (strict JSON)


def test_trim_torn_line(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("one\ntwo\nthr")
    progress.trim_torn_line(path)
    assert path.read_text() == "one\ntwo\n"


def test_progress_png_is_a_valid_png(tmp_path):
    path = tmp_path / progress.PROGRESS_FILE
    progress.plot_progress([record(e, 0.1 * e) for e in range(4)], path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data.endswith(b"IEND\xaeB`\x82")
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[2] in (3, 4)
